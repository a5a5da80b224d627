"""WandbSink on its own (one process): real wandb offline, read back from the .wandb file."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from wandb_helpers import apply_wandb_env, reset_wandb

from distlog.media import Histogram, Images, Table, Video, Videos
from distlog.wandb_offline import find_run_dirs, has_exit_record, read_run, read_runs

wandb = pytest.importorskip("wandb")
from distlog.sinks.wandb import WandbInitError, WandbSink, _rebin  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    yield apply_wandb_env(monkeypatch, tmp_path)
    reset_wandb()


def test_rows_config_and_exit_code_read_back(env):
    rng = np.random.default_rng(1)
    sink = WandbSink(project="p", group="g", name="n", tags=["a", "b"], config={"lr": 0.5})
    assert isinstance(sink, __import__("distlog").Sink)
    written = {}
    for step in (5, 10, 15, 20):
        row = {"train/loss": float(rng.normal()), "data/tokens": float(rng.integers(1, 1000))}
        sink.log_scalars(step, row)
        written[step] = row
    sink.log_config({"model": {"layers": 3}, "lr": 0.25})
    run_dir = sink.run_dir
    sink.close(exit_code=3)
    sink.close(exit_code=0)  # idempotent: the first exit code stands

    assert find_run_dirs(env["WANDB_DIR"]) == [run_dir]
    run = read_run(run_dir)  # read at once: close waited for the exit record
    assert run.exit_code == 3
    assert (run.project, run.group, run.name, run.tags) == ("p", "g", "n", ["a", "b"])
    assert run.config == {"lr": 0.25, "model": {"layers": 3}}
    assert run.rows_by_step() == written
    assert run.metrics["*"]["step_metric"] == "trainer/global_step"
    with pytest.raises(RuntimeError, match="after close"):
        sink.log_scalars(25, {"x": 1.0})


def test_close_leaves_a_complete_file_every_time(env):
    """wandb's finish can return before the exit record is written; close must not."""
    for i in range(4):
        sink = WandbSink(project="p")
        sink.log_scalars(i, {"v": float(i)})
        run_dir = sink.run_dir
        sink.close(exit_code=i)
        assert has_exit_record(run_dir)
        assert read_run(run_dir).exit_code == i


def test_media_conversion(env):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)
    frames = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    values = rng.normal(size=5000)
    counts, edges = np.histogram(values, bins=2000)  # more than wandb's 512

    sink = WandbSink(project="media")
    sink.log_scalars(7, {"x": 1.0})
    sink.log_media(7, "val/images", Images([rgb, gray], captions=["rgb", "gray"]))
    sink.log_media(7, "val/videos", Videos([Video(frames, fps=3, format="gif", caption="v0")]))
    sink.log_media(7, "w/hist", Histogram(counts, edges))
    sink.log_media(
        8, "val/table", Table(["image", "label", "p"], [[rgb, "cat", 0.9], [gray, "dog", 0.1]])
    )
    run_dir = sink.run_dir
    sink.close()

    row = read_run(run_dir).rows_by_step()
    images = row[7]["val/images"]
    assert images["_type"] == "images/separated" and images["count"] == 2
    assert images["captions"] == ["rgb", "gray"]
    for entry in images["filenames"]:
        assert (run_dir / "files" / entry).is_file()
    from PIL import Image

    first = np.asarray(Image.open(run_dir / "files" / images["filenames"][0]))
    np.testing.assert_array_equal(first, rgb)  # uint8 pixels unchanged (png is lossless)

    video = row[7]["val/videos"]["videos"][0]
    assert video["caption"] == "v0" and video["path"].endswith(".gif")
    assert (run_dir / "files" / video["path"]).is_file()

    hist = row[7]["w/hist"]
    assert hist["_type"] == "histogram"
    assert len(hist["values"]) <= 512
    assert sum(hist["values"]) == counts.sum()
    assert hist["bins"][0] == pytest.approx(edges[0]) and hist["bins"][-1] == pytest.approx(
        edges[-1]
    )

    table = row[8]["val/table"]
    assert table["_type"] == "table-file" and table["ncols"] == 3 and table["nrows"] == 2


def test_rebin_keeps_totals_and_outer_edges():
    rng = np.random.default_rng(3)
    for bins in (1, 511, 512, 513, 1024, 2000, 4097):
        counts = rng.integers(0, 50, bins)
        edges = np.sort(rng.normal(size=bins + 1))
        merged, new_edges = _rebin(counts, edges, 512)
        assert len(merged) <= 512 and len(new_edges) == len(merged) + 1
        assert merged.sum() == counts.sum()
        assert new_edges[0] == edges[0] and new_edges[-1] == edges[-1]
        assert set(new_edges.tolist()) <= set(edges.tolist())


def test_mode_none_lets_wandb_mode_decide(env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sink = WandbSink(project="p")
    sink.log_scalars(1, {"x": 1.0})
    sink.close()
    assert find_run_dirs(env["WANDB_DIR"]) == []
    # an explicit mode beats the environment
    sink = WandbSink(project="p", mode="offline")
    sink.log_scalars(1, {"x": 2.0})
    run_dir = sink.run_dir
    sink.close()
    assert read_run(run_dir).values("x") == {1: 2.0}


def test_init_failure_is_a_wandb_init_error(env):
    # online with no API key and no network: wandb refuses at once
    with pytest.raises(WandbInitError, match="wandb.init failed"):
        WandbSink(project="p", mode="online", init_timeout=30)


def test_init_timeout_is_a_wandb_init_error_and_leaves_no_open_run(env):
    # An offline init takes ~1 s here: a 1 ms budget is a real init that is too slow.
    start = time.monotonic()
    with pytest.raises(WandbInitError, match="did not finish within"):
        WandbSink(project="slow", init_timeout=0.001)
    assert time.monotonic() - start < 5.0  # generous for a loaded machine; no wait for the init
    # the abandoned init finishes its run in the background, with a failure exit code
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dirs = find_run_dirs(env["WANDB_DIR"])
        if dirs and has_exit_record(dirs[0]):
            break
        time.sleep(0.1)
    [abandoned] = find_run_dirs(env["WANDB_DIR"])
    assert read_run(abandoned).exit_code == 1
    # and a new sink works afterwards
    sink = WandbSink(project="p")
    sink.log_scalars(1, {"x": 1.0})
    sink.close()


@pytest.mark.slow  # starts a process
def test_missing_wandb_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['wandb'] = None\n"
        "from distlog.sinks.wandb import WandbSink\n"
        "try:\n    WandbSink(project='p')\n"
        "except ImportError as e:\n    print('IMPORT-ERROR:', e)\n"
    )
    from dist_harness import subprocess_env

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert "IMPORT-ERROR:" in out.stdout, out.stderr
    assert "distlog[wandb]" in out.stdout


def test_resume_same_id_continues_and_warns_when_step_goes_back(env):
    first = WandbSink(project="p", id="resume1")
    for step in (10, 20, 30):
        first.log_scalars(step, {"loss": step / 10})
    first.close()

    # restart from a checkpoint taken at step 20: the next flush is at 25 < 30
    second = WandbSink(project="p", id="resume1")
    with pytest.warns(UserWarning, match=r"step 25 is not after 30.*by an earlier start"):
        second.log_scalars(25, {"loss": 9.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # going forward again: no more warnings
        second.log_scalars(35, {"loss": 8.0})
    second.close()

    # a restart that logs the last step again: its rows would be plotted twice
    third = WandbSink(project="p", id="resume1")
    with pytest.warns(UserWarning, match=r"step 35 is not after 35"):
        third.log_scalars(35, {"loss": 7.5})
    third.log_scalars(40, {"loss": 7.0})
    third.close()
    # within one start, a step lower than the last is caught too; equal steps are normal
    fourth = WandbSink(project="p", id="resume1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fourth.log_scalars(41, {"loss": 6.0})
        fourth.log_scalars(41, {"other": 1.0})
    with pytest.warns(UserWarning, match=r"step 39 is not after 41") as caught:
        fourth.log_scalars(39, {"loss": 5.0})
    assert "earlier start" not in str(caught[0].message)
    fourth.close()

    runs = read_runs(env["WANDB_DIR"], "resume1")
    assert [r.run_id for r in runs] == ["resume1"] * 4
    assert [r.values("loss") for r in runs] == [
        {10: 1.0, 20: 2.0, 30: 3.0},
        {25: 9.0, 35: 8.0},
        {35: 7.5, 40: 7.0},
        {41: 6.0, 39: 5.0},
    ]  # every row kept, nothing dropped


def test_watch_and_log_code(env, tmp_path):
    import torch

    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "train.py").write_text("print('hello')\n")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    sink = WandbSink(project="p")
    sink.watch([model], log="all", log_freq=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sink.log_scalars(step, {"loss": loss.item()})
    artifact = sink.log_code(code_dir)
    run_dir = sink.run_dir
    sink.close()
    assert artifact is not None
    keys = set().union(*(row.keys() for row in read_run(run_dir).history))
    # wandb prefixes "graph_N" once a process has watched several models: match the tail
    assert any(k.startswith("gradients/") and k.endswith("0.weight") for k in keys), sorted(keys)
    assert any(k.startswith("parameters/") and k.endswith("0.weight") for k in keys), sorted(keys)


def test_bad_arguments(env):
    with pytest.raises(ValueError, match="init_timeout"):
        WandbSink(project="p", init_timeout=0)
    with pytest.raises(TypeError, match="settings"):
        WandbSink(project="p", settings=42)
    sink = WandbSink(project="p", settings={"x_disable_stats": True})
    with pytest.raises(TypeError, match="cannot log a str"):
        sink.log_media(1, "k", "not media")  # type: ignore[arg-type]
    sink.close()
    assert Path(sink.run_dir).is_dir()


def test_one_pixel_high_or_wide_images_keep_their_shape(env):
    from PIL import Image

    strip = np.zeros((1, 8, 3), dtype=np.uint8)
    strip[..., 0] = 255  # 1 x 8, red
    column = np.zeros((8, 1, 3), dtype=np.uint8)
    column[..., 1] = 255  # 8 x 1, green
    dot = np.full((1, 1, 1), 77, dtype=np.uint8)  # 1 x 1, gray
    sink = WandbSink(project="strip")
    sink.log_media(1, "strip", Images([strip, column, dot]))
    run_dir = sink.run_dir
    sink.close()
    row = read_run(run_dir).rows_by_step()[1]
    written = [np.asarray(Image.open(run_dir / "files" / f)) for f in row["strip"]["filenames"]]
    assert [w.shape for w in written] == [(1, 8, 3), (8, 1, 3), (1, 1)]
    np.testing.assert_array_equal(written[0], strip)
    np.testing.assert_array_equal(written[1], column)
    assert written[2][0, 0] == 77
    # offline, wandb keeps a table's image cells for the artifact upload: read the files the
    # cells' wandb.Image objects wrote
    table = sink.to_wandb(Table(["image"], [[strip], [column]]))
    cells = [np.asarray(Image.open(row[0]._path)) for row in table.data]
    assert [c.shape for c in cells] == [(1, 8, 3), (8, 1, 3)]


def test_keys_of_wandbs_own_columns_are_renamed_not_lost(env):
    sink = WandbSink(project="reserved")
    row = {"trainer/global_step": 12345.0, "_step": 7.0, "_runtime": 3.5, "loss": 1.0}
    with pytest.warns(UserWarning, match="collides with a column") as rec:
        sink.log_scalars(10, row)
        sink.log_scalars(11, row)
    assert sum("collides" in str(w.message) for w in rec) == 3  # once per key
    run_dir = sink.run_dir
    sink.close()
    got = read_run(run_dir).history[0]
    assert got["user/trainer/global_step"] == 12345.0
    assert got["user/_step"] == 7.0 and got["user/_runtime"] == 3.5 and got["loss"] == 1.0
    assert got["trainer/global_step"] == 10 and got["_step"] == 0


@pytest.mark.parametrize("first", ["renamed", "genuine"])
def test_a_renamed_key_never_takes_the_column_of_a_genuine_key(env, first):
    """``_step`` is sent as ``user/_step``; a key genuinely named ``user/_step`` must keep a
    column of its own (it was overwritten), and the same one whichever key comes first, so a
    resumed run (another order) writes each key's history where it was."""
    sink = WandbSink(project="rename-collide")
    rows = [{"_step": 1.0}, {"user/_step": 2.0}, {"_step": 3.0, "user/_step": 4.0}]
    if first == "genuine":
        rows = [rows[1], rows[0], rows[2]]
    with pytest.warns(UserWarning) as rec:
        for step, row in enumerate(rows):
            sink.log_scalars(step, row)
    said = " ".join(str(w.message) for w in rec)
    assert "'user/_step' is the name '_step' is logged under" in said
    run_dir = sink.run_dir
    sink.close()
    got = read_run(run_dir).rows_by_step()
    assert got[2]["user/_step"] == 3.0 and got[2]["user/user/_step"] == 4.0
    values = {k: v for r in got.values() for k, v in r.items() if k.startswith("user/")}
    assert set(values) == {"user/_step", "user/user/_step"}


def test_a_media_key_with_a_long_component_is_shortened_not_lost(env):
    key = "val/" + "sample_" * 40  # a 280-byte component
    sink = WandbSink(project="long")
    with pytest.warns(UserWarning, match="too long"):
        sink.log_media(1, key, Images([np.zeros((4, 4, 3), dtype=np.uint8)]))
        sink.log_media(1, key + "x", Images([np.ones((4, 4, 3), dtype=np.uint8)]))
    run_dir = sink.run_dir
    sink.close()
    row = read_run(run_dir).rows_by_step()[1]
    media = sorted(k for k in row if k.startswith("val/"))
    assert len(media) == 2 and all(len(k.encode()) < 200 for k in media)
    for k in media:
        [name] = row[k]["filenames"]
        assert (run_dir / "files" / name).is_file()


def test_a_media_key_equal_to_a_scalar_key_never_replaces_the_scalar(env):
    """wandb keeps one summary value per key: a histogram logged as 'loss' next to the scalar
    'loss' would make the run's summary (runs table, sweeps) a histogram."""
    counts, edges = np.array([1, 3]), np.array([0.0, 0.5, 1.0])
    sink = WandbSink(project="collide")
    sink.log_scalars(0, {"loss": 0.25, "acc_media": 0.5, "acc": 0.75})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sink.log_media(0, "loss", Histogram(counts, edges))
        sink.log_media(0, "acc", Histogram(counts, edges))  # acc_media is a scalar too
        sink.log_scalars(1, {"loss": 0.125})
        sink.log_media(1, "loss", Histogram(counts, edges))
    texts = [str(w.message) for w in rec]
    assert sum("also a scalar key" in t for t in texts) == 2  # once per key
    assert any("'loss' is also a scalar key" in t and "as 'loss_media'" in t for t in texts)
    assert any("'acc' is also a scalar key" in t and "as 'acc_media_media'" in t for t in texts)
    run_dir = sink.run_dir
    sink.close()
    run = read_run(run_dir)
    assert run.summary["loss"] == 0.125 and run.summary["acc"] == 0.75
    assert run.summary["acc_media"] == 0.5
    rows = run.rows_by_step()
    assert rows[0]["loss"] == 0.25 and rows[1]["loss"] == 0.125
    assert rows[0]["loss_media"]["_type"] == "histogram"
    assert rows[0]["loss_media"]["values"] == [1, 3]
    assert rows[0]["acc_media_media"]["_type"] == "histogram"
    assert run.summary["loss_media"]["_type"] == "histogram"


def test_a_scalar_after_media_of_the_same_key_is_warned_about(env):
    sink = WandbSink(project="collide")
    sink.log_media(0, "loss", Histogram(np.array([2]), np.array([0.0, 1.0])))
    with pytest.warns(UserWarning, match="scalar key 'loss' was already logged to wandb as media"):
        sink.log_scalars(1, {"loss": 0.5})
    run_dir = sink.run_dir
    sink.close()
    assert read_run(run_dir).summary["loss"] == 0.5


def test_logger_scalar_and_media_under_one_key_through_wandb(env, tmp_path):
    import torch

    import distlog

    values = torch.randn(100, generator=torch.Generator().manual_seed(0))
    sink = WandbSink(project="collide")
    with pytest.warns(UserWarning, match="also a scalar key"):
        logger = distlog.Logger(run_dir=tmp_path / "run", sinks=[sink])
        logger.log_scalar("loss", 0.25)
        logger.log_histogram(values, desc="loss", bins=8)
        logger.flush(step=0)
        run_dir = sink.run_dir
        logger.finish()
    run = read_run(run_dir)
    assert run.summary["loss"] == 0.25
    counts, _ = np.histogram(values.numpy(), bins=8)
    assert run.rows_by_step()[0]["loss_media"]["values"] == counts.tolist()
    # the local run log keeps both under the original key
    rows = list(distlog.runlog.iter_rows(tmp_path / "run"))
    assert [r["loss"] for r in rows if "loss" in r] == [0.25]
    assert [r["media"]["loss"]["counts"] for r in rows if "media" in r] == [counts.tolist()]


def test_two_media_keys_never_share_a_column(env):
    """Media 'loss' goes to loss_media (a scalar 'loss' exists); a genuine media key
    'loss_media' went there too, and the column held two histograms at one step."""
    counts, edges = np.array([1, 3]), np.array([0.0, 0.5, 1.0])
    sink = WandbSink(project="media-collide")
    sink.log_scalars(0, {"loss": 0.5})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sink.log_media(1, "loss", Histogram(counts, edges))
        sink.log_media(1, "loss_media", Histogram(counts * 2, edges))
    said = " ".join(str(w.message) for w in rec)
    assert "would share wandb's column 'loss_media' with the media key 'loss'" in said
    run_dir = sink.run_dir
    sink.close()
    row = read_run(run_dir).rows_by_step()[1]
    assert {"loss_media", "loss_media_media"} <= set(row)
