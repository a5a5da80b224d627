"""MLflow: the real library against a real sqlite store and a real ``mlflow server`` started on
127.0.0.1, read back with ``MlflowClient``; the mixin's run follows the distlog run (a restart
continues it); an unreachable store warns and leaves the local run log going."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dist_harness import free_port

import distlog

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

from distlog.mixins import (  # noqa: E402
    MLflowLoggerConfigMixin,
    MLflowLoggerMixin,
    MlflowLoggingParameters,
)

SERVER_TEST = "test_sink_against_a_real_mlflow_server"


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(request, tmp_path_factory):
    """A real ``mlflow server`` on a free 127.0.0.1 port, started before the other tests of
    this module (when the server test is selected) so that its start-up overlaps them; its
    whole process group is stopped at the end. Yields (process, uri) or None."""
    if not any(item.name == SERVER_TEST for item in request.session.items):
        yield None
        return
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root, start_new_session=True,
    )  # fmt: skip
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(server.pid, sig)  # the server and its uvicorn worker
            except ProcessLookupError:
                break
            try:
                server.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def artifact_paths(client, run_id, path=None):
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(artifact_paths(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def log_a_run(logger):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logger.log_config({"model": {"width": 8, "act": "relu"}, "api_key": "s3cret", "lr": 0.1})
    for step in (1, 2, 3):
        logger.log_dict({"train/loss": 1.0 / step, "data/tokens": 10.0 * step})
        if step == 2:
            logger.log_images(torch.rand(2, 3, 8, 8), desc="val/samples")
            fig, ax = plt.subplots()
            ax.plot([0, 1], [1, 0])
            logger.log_plot(fig, desc="val/curve")
            logger.log_table(["x", "y"], [[1, "a"], [2, "b"]], desc="val/table")
            logger.log_histogram(torch.arange(100.0), desc="weights/w", bins=10)
        logger.flush(step)
    logger.finish()


def check_run(client, run_id):
    assert history(client, run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert history(client, run_id, "data/tokens") == [(1, 10.0), (2, 20.0), (3, 30.0)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.width"] == "8" and params["model.act"] == "relu" and params["lr"] == "0.1"
    assert params["api_key"] != "s3cret"  # redacted by the logger before any sink sees it
    paths = artifact_paths(client, run_id)
    assert sum(p.startswith("media/val/samples/") and p.endswith(".png") for p in paths) == 2
    assert any(p.startswith("media/val/curve/") and p.endswith(".png") for p in paths)
    assert any(p.startswith("media/val/table/") and p.endswith(".json") for p in paths)
    [hist] = [p for p in paths if p.startswith("media/weights/w/")]
    record = json.loads(Path(client.download_artifacts(run_id, hist)).read_text())
    assert record["type"] == "histogram" and sum(record["counts"]) == 100


def test_sink_against_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri, experiment="exp", run_name="first")
    logger = distlog.Logger(run_dir=tmp_path / "run", sinks=[sink], async_write=False)
    log_a_run(logger)
    client = MlflowClient(tracking_uri=uri)
    check_run(client, sink.run_id)
    run = client.get_run(sink.run_id)
    assert run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "exp"


def test_non_finite_values_read_back_as_documented(tmp_path, monkeypatch):
    """docs/mlflow.md: NaN stays NaN; MLflow's store records +-inf as +-the largest float,
    while the local run log keeps the infinities."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri, experiment="nonfinite")
    logger = distlog.Logger(
        run_dir=tmp_path / "run", sinks=[sink], async_write=False, nonfinite="ignore"
    )
    for key, value in {"up": math.inf, "down": -math.inf, "nan": math.nan, "one": 1.0}.items():
        logger.log_scalar(key, value)
    logger.flush(0)
    logger.finish()
    client = MlflowClient(tracking_uri=uri)
    got = {k: client.get_metric_history(sink.run_id, k)[0].value for k in ("up", "down", "nan")}
    assert got["up"] == sys.float_info.max and got["down"] == -sys.float_info.max
    assert math.isnan(got["nan"])
    [row] = distlog.read_metrics(tmp_path / "run")
    assert row["up"] == math.inf and row["down"] == -math.inf and math.isnan(row["nan"])


# ------------------------------------------------------------------ the mixin
@dataclass(kw_only=True)
class Config(MLflowLoggerConfigMixin):
    pass


class Loop(MLflowLoggerMixin):
    """The mixin in a hand-written loop."""


def run_loop(steps, **params):
    loop = Loop(
        Config(
            project="proj", experiment="mix", logging_parameters=MlflowLoggingParameters(**params)
        )
    )
    for step in steps:
        loop.global_step = step
        loop.log_scalar("loss", float(step))
        loop.flush_logs()
    loop.finish()
    return loop


def test_mixin_run_follows_the_distlog_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first = run_loop([1, 2, 3], tracking_uri=uri)
    info = distlog.read_run_info(first.run_dir)
    assert info["mlflow_id"] == first.mlflow_run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.run_name == "mix" and run.data.tags["distlog.run_id"] == info["id"]
    assert client.get_experiment(run.info.experiment_id).name == "proj"

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the launcher restarted the job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_loop([2, 3, 4, 5], tracking_uri=uri)  # from an older checkpoint
    assert again.run_dir == first.run_dir and again.mlflow_run_id == first.mlflow_run_id
    assert history(client, first.mlflow_run_id, "loss") == [(s, float(s)) for s in (1, 2, 3, 4, 5)]
    assert client.get_run(first.mlflow_run_id).info.status == "FINISHED"

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a new launch: a new MLflow run
    new = run_loop([1], tracking_uri=uri)
    assert new.run_dir != first.run_dir and new.mlflow_run_id != first.mlflow_run_id


def test_an_unreachable_store_warns_once_and_the_local_log_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.monotonic()
    with pytest.warns(
        UserWarning, match="MLflow store .* Logging goes on to the local run log"
    ) as rec:
        loop = run_loop([1, 2], tracking_uri=dead, init_timeout=10.0)
    assert time.monotonic() - started < 60
    assert sum("MLflow" in str(w.message) for w in rec) == 1
    assert loop.mlflow_run_id is None
    assert [r["loss"] for r in distlog.read_metrics(loop.run_dir)] == [1.0, 2.0]
    assert "mlflow_id" not in distlog.read_run_info(loop.run_dir)


def test_missing_mlflow_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from distlog.sinks.mlflow import import_mlflow\n"
        "try:\n    import_mlflow()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout  # fmt: skip
    assert "pip install 'distlog[mlflow]'" in out


@pytest.mark.slow
def test_sink_against_a_real_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server, uri = mlflow_server
    deadline = time.monotonic() + 90  # bounded: a server that never answers fails the test
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "mlflow server did not come up within 90 s"
        time.sleep(0.3)
    sink = distlog.MlflowSink(tracking_uri=uri, experiment="served", run_name="r")
    logger = distlog.Logger(run_dir=tmp_path / "run", sinks=[sink], async_write=True)
    log_a_run(logger)
    check_run(MlflowClient(tracking_uri=uri), sink.run_id)


# ------------------------------------------------------------------ names, stores, media names
def test_refused_names_are_renamed_once_and_the_rest_of_the_row_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri, experiment="e")
    long_key = "val/" + "k" * 250
    bad = {"throughput (img/s, rank0)": 1.0, "cost $": 2.0, "pct %": 3.0, "🔥": 4.0}
    with pytest.warns(UserWarning, match="MLflow does not accept") as rec:
        for step in (1, 2):
            sink.log_scalars(step, {"train/loss": 1.0 / step, **bad, long_key: 5.0})
        sink.log_config({"lr": 0.1, "loss_weights": {"ce,aux": 0.5}})
    messages = [str(w.message) for w in rec if "MLflow does not accept" in str(w.message)]
    assert len(messages) == len(bad) + 2  # once per refused key, metrics and params
    assert any("'throughput (img/s, rank0)'" in m and "'throughput _img/s_ rank0_'" in m
               for m in messages)  # fmt: skip
    sink.close()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(sink.run_id)
    assert history(client, sink.run_id, "train/loss") == [(1, 1.0), (2, 0.5)]
    assert history(client, sink.run_id, "throughput _img/s_ rank0_") == [(1, 1.0), (2, 1.0)]
    assert history(client, sink.run_id, "cost _") == [(1, 2.0), (2, 2.0)]
    names = set(run.data.metrics)
    assert len(names) == len(bad) + 2  # nothing lost, no two keys merged
    [long_name] = [n for n in names if n.startswith("val/kkk")]
    assert len(long_name) <= 250 and long_name != long_key[:250]
    assert run.data.params == {"lr": "0.1", "loss_weights.ce_aux": "0.5"}


def test_two_keys_that_sanitise_alike_stay_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri)
    with pytest.warns(UserWarning, match="MLflow does not accept"):
        sink.log_scalars(1, {"a,b": 1.0, "a$b": 2.0, "a_b": 3.0})
    sink.close()
    metrics = MlflowClient(tracking_uri=uri).get_run(sink.run_id).data.metrics
    assert len(metrics) == 3 and metrics["a_b"] == 3.0
    assert sorted(metrics.values()) == [1.0, 2.0, 3.0]


def test_a_directory_store_mlflow_refuses_is_an_mlflow_init_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("MLflow 2 still opens file stores")
    with pytest.raises(distlog.MlflowInitError, match="MLFLOW_ALLOW_FILE_STORE"):
        distlog.MlflowSink(tracking_uri=str(tmp_path / "mlruns"), init_timeout=30)
    with pytest.warns(UserWarning, match="Logging goes on to the local run log"):
        loop = run_loop([1, 2], tracking_uri=str(tmp_path / "mlruns2"))
    assert loop.mlflow_run_id is None
    assert [r["loss"] for r in distlog.read_metrics(loop.run_dir)] == [1.0, 2.0]


def test_two_media_items_of_one_key_at_one_step_are_both_kept(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri, experiment="e")
    logger = distlog.Logger(run_dir=tmp_path / "run", sinks=[sink], async_write=False)
    logger.log_images(torch.zeros(1, 3, 4, 4), desc="val/samples")  # black
    logger.log_images(torch.ones(1, 3, 4, 4), desc="val/samples")  # white
    logger.log_histogram(torch.zeros(10), desc="w")
    logger.log_histogram(torch.ones(10), desc="w")
    logger.flush(3)
    logger.log_images(torch.ones(1, 3, 4, 4), desc="val/samples")
    logger.flush(4)
    logger.finish()
    client = MlflowClient(tracking_uri=uri)
    paths = artifact_paths(client, sink.run_id, "media")
    images = [p for p in paths if p.startswith("media/val/samples/step00000003")]
    local = sorted((tmp_path / "run/media/val/samples").glob("step00000003*"))
    assert sorted(p.rsplit("/", 1)[1] for p in images) == [p.name for p in local]
    pixels = sorted(
        int(
            np.asarray(Image.open(client.download_artifacts(sink.run_id, p, str(tmp_path))))[
                0, 0, 0
            ]
        )
        for p in images
    )
    assert pixels == [0, 255]
    assert "media/val/samples/step00000004_0.png" in paths
    hists = [p for p in paths if p.startswith("media/w/")]
    assert len(hists) == 2
    means = sorted(
        json.loads(Path(client.download_artifacts(sink.run_id, p, str(tmp_path))).read_text())[
            "edges"
        ][0]
        for p in hists
    )
    assert len(set(means)) == 2  # the zeros and the ones, not one of them twice


def test_a_key_keeps_its_mlflow_name_across_flushes_and_restarts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri)
    with pytest.warns(UserWarning) as rec:
        sink.log_scalars(1, {"acc@1": 0.5, "val/a/b": 1.0})  # sent as acc_1; val/a/b is valid
        sink.log_scalars(2, {"acc_1": 99.0, "val//a/b": 2.0})  # a later key of those names
        sink.log_scalars(3, {"acc@1": 0.7, "acc_1": 98.0})
    messages = [str(w.message) for w in rec]
    assert len(messages) == 3  # once per renamed key
    assert any("'acc_1' is already used by 'acc@1'" in m for m in messages)
    sink.close()
    client = MlflowClient(tracking_uri=uri)
    names = set(client.get_run(sink.run_id).data.metrics)
    assert len(names) == 4  # four keys, four names
    assert history(client, sink.run_id, "acc_1") == [(1, 0.5), (3, 0.7)]
    assert history(client, sink.run_id, "val/a/b") == [(1, 1.0)]
    [acc] = [n for n in names if n.startswith("acc_1-")]
    assert history(client, sink.run_id, acc) == [(2, 99.0), (3, 98.0)]
    [val] = [n for n in names if n.startswith("val/a/b-")]
    assert history(client, sink.run_id, val) == [(2, 2.0)]

    # a restarted job continues the run in a new process: every key keeps its name
    again = distlog.MlflowSink(tracking_uri=uri, run_id=sink.run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is renamed anew
        again.log_scalars(4, {"acc_1": 97.0, "acc@1": 0.8, "val//a/b": 3.0, "val/a/b": 4.0})
    again.close()
    assert history(client, sink.run_id, "acc_1") == [(1, 0.5), (3, 0.7), (4, 0.8)]
    assert history(client, sink.run_id, acc) == [(2, 99.0), (3, 98.0), (4, 97.0)]
    assert history(client, sink.run_id, val) == [(2, 2.0), (4, 3.0)]
    assert history(client, sink.run_id, "val/a/b") == [(1, 1.0), (4, 4.0)]


def test_a_second_log_config_adds_its_new_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sink = distlog.MlflowSink(tracking_uri=uri)
    sink.log_config({"lr": 0.1, "model": {"width": 8}})
    with pytest.warns(UserWarning, match="MLflow cannot change a param") as rec:
        sink.log_config({"lr": 0.2, "epochs": 3, "data": {"path": "/x"}, "model": {"width": 8}})
    assert len(rec) == 1 and "'lr'" in str(rec[0].message) and "'0.2'" in str(rec[0].message)
    sink.close()
    client = MlflowClient(tracking_uri=uri)
    expected = {"lr": "0.1", "model.width": "8", "epochs": "3", "data.path": "/x"}
    assert client.get_run(sink.run_id).data.params == expected

    again = distlog.MlflowSink(tracking_uri=uri, run_id=sink.run_id)  # a resumed run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same values again: nothing to say
        again.log_config({"lr": 0.1, "epochs": 3, "seed": 7})
    again.close()
    assert client.get_run(sink.run_id).data.params == {**expected, "seed": "7"}
