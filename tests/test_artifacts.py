"""log_artifact: a file and a directory from rank 0 into the run directory, a wandb Artifact
(offline, read back from the .wandb file) and MLflow artifacts (a sqlite store, read back with
MlflowClient); a missing path is an error naming it at the call; other ranks do nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from dist_harness import run_ranks
from wandb_helpers import apply_wandb_env, reset_wandb

import distlog
from distlog.mixins import LoggerConfigMixin, LoggerMixin


@pytest.fixture
def files(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(bytes(range(256)) * 40)
    data = tmp_path / "samples"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a")
    (data / "sub" / "b.txt").write_text("b")
    return ckpt, data


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_artifacts_reach_the_run_dir_wandb_and_mlflow(tmp_path, monkeypatch, files):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    from distlog.wandb_offline import find_run_dirs, iter_records, wandb_file_of

    ckpt, data = files
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns
    env = apply_wandb_env(monkeypatch, tmp_path)
    try:
        wandb_sink = distlog.WandbSink(project="art", mode="offline")
        uri = f"sqlite:///{tmp_path / 'm.db'}"
        mlflow_sink = distlog.MlflowSink(tracking_uri=uri, experiment="art")
        logger = distlog.Logger(run_dir=tmp_path / "run", sinks=[wandb_sink, mlflow_sink])
        logger.log_scalar("x", 1.0)
        logger.flush(1)
        logger.log_artifact(ckpt, name="checkpoint", type="model")
        logger.log_artifact(data, type="dataset")  # name: the directory's own
        logger.finish()
    finally:
        reset_wandb()

    run = tmp_path / "run" / "artifacts"
    assert tree(run / "checkpoint") == {"model.pt": ckpt.read_bytes()}
    assert tree(run / "samples") == tree(data)

    [wandb_dir] = find_run_dirs(env["WANDB_DIR"])
    found = {
        r.artifact.name: (r.artifact.type, sorted(e.path for e in r.artifact.manifest.contents))
        for r in iter_records(wandb_file_of(wandb_dir))
        if r.WhichOneof("record_type") == "artifact"
    }
    assert found == {
        "checkpoint": ("model", ["model.pt"]),
        "samples": ("dataset", ["a.txt", "sub/b.txt"]),
    }

    client = mlflow.MlflowClient(tracking_uri=uri)
    listed = {a.path for a in client.list_artifacts(mlflow_sink.run_id, "checkpoint")}
    assert listed == {"checkpoint/model.pt"}
    got = Path(client.download_artifacts(mlflow_sink.run_id, "samples", str(tmp_path / "dl")))
    assert tree(got) == tree(data)


def test_a_missing_path_is_an_error_naming_it_at_the_call(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path / "run", async_write=False)
    missing = tmp_path / "nope.pt"
    with pytest.raises(distlog.LogValueError, match=r"nope\.pt does not exist"):
        logger.log_artifact(missing)
    with pytest.raises(distlog.LogValueError, match="name"):
        logger.log_artifact(tmp_path / "run" / "run.json", name="")
    logger.finish()
    assert not (tmp_path / "run" / "artifacts").exists()


@dataclass(kw_only=True)
class Config(LoggerConfigMixin):
    pass


class Loop(LoggerMixin):
    pass


def test_the_mixins_counterpart(tmp_path, monkeypatch, files):
    monkeypatch.chdir(tmp_path)
    ckpt, _ = files
    loop = Loop(Config(experiment="art"))
    loop.log_artifact(ckpt, name="best", type="model")
    loop.finish()
    assert tree(loop.run_dir / "artifacts" / "best") == {"model.pt": ckpt.read_bytes()}


def _ranks_log(rank: int, root: str) -> list[str]:
    logger = distlog.Logger(run_dir=Path(root) / "run", timeout=60)
    mine = Path(root) / f"rank{rank}.bin"
    if rank == 0:
        mine.write_bytes(b"zero")
    logger.log_artifact(mine, name="weights")  # rank 1's path does not exist: a no-op there
    logger.log_scalar("x", float(rank))
    logger.flush(1)
    logger.finish()
    return sorted(p.name for p in (Path(root) / "run").rglob("*.bin"))


@pytest.mark.slow
def test_other_ranks_do_nothing(tmp_path):
    results = run_ranks(_ranks_log, 2, str(tmp_path))
    assert results[0] == ["rank0.bin"]
    assert tree(tmp_path / "run" / "artifacts" / "weights") == {"rank0.bin": b"zero"}


def test_an_artifact_folder_that_holds_the_run_directory_is_refused_at_the_call(tmp_path):
    """Copied into the run it would copy itself again and again: a RecursionError on the writer
    and a tree hundreds of levels deep, which wandb or MLflow would then upload."""
    import distlog

    outputs = tmp_path / "outputs"
    (outputs / "ckpt").mkdir(parents=True)
    (outputs / "ckpt" / "model.pt").write_bytes(b"weights")
    logger = distlog.Logger(run_dir=outputs / "run1", async_write=False)
    with pytest.raises(distlog.LogValueError, match="holds this run's directory"):
        logger.log_artifact(outputs)
    logger.log_artifact(outputs / "ckpt")  # a subfolder is fine
    logger.finish()
    assert (outputs / "run1" / "artifacts" / "ckpt" / "model.pt").read_bytes() == b"weights"
    assert not (outputs / "run1" / "artifacts" / "outputs").exists()
