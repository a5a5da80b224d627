"""The distlog command: show, plot, demo; bad input gives one clear line and a non-zero exit."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dist_harness import subprocess_env

import distlog
from distlog import runlog
from distlog.cli import load_run, main
from distlog.sinks.jsonl import JsonlSink


def write_run(run_dir: Path, seed: int = 0) -> dict[str, list[tuple[int, float]]]:
    """A run written by the real JsonlSink; returns what was written, by key."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[int, float]]] = {"train/loss": [], "train/lr": [], "val/acc": []}
    sink = JsonlSink(run_dir)
    sink.log_config({"lr": 0.1, "model": {"layers": 2}})
    for step in range(0, 200, 10):
        row = {
            "train/loss": float(2.0 * math.exp(-step / 60) + rng.normal(0, 0.05)),
            "train/lr": 0.1 * (1 - step / 200),
        }
        if step % 50 == 0:
            row["val/acc"] = float(1 - math.exp(-step / 80) + rng.normal(0, 0.01))
        if step == 120:
            row["train/loss"] = math.nan
        sink.log_scalars(step, row)
        for key, value in row.items():
            written[key].append((step, value))
    sink.close()
    # a media row as JsonlSink writes them: it is counted, not summarised as a scalar
    with (run_dir / runlog.METRICS_FILE).open("a") as fh:
        fh.write(runlog.encode_row({"step": 190, "time": 1.0, "media": {"val/img": {}}}) + "\n")
    return written


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``distlog`` console script (``python -m distlog.cli`` where it is not installed)."""
    script = Path(sys.executable).parent / "distlog"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "distlog.cli"]
    return subprocess.run(
        [*command, *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("key "))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_show_summarises_every_key(tmp_path, capsys):
    written = write_run(tmp_path / "run")
    assert main(["show", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    rows = table_rows(out.out)
    assert set(rows) == set(written)
    for key, series in written.items():
        finite = [v for _, v in series if math.isfinite(v)]
        last, low, high, steps = rows[key][:4]
        assert float(last) == pytest.approx(series[-1][1], rel=1e-5)
        assert float(low) == pytest.approx(min(finite), rel=1e-5)
        assert float(high) == pytest.approx(max(finite), rel=1e-5)
        assert int(steps) == len(series)
        assert int(rows[key][4]) == series[-1][0]  # last step
    assert rows["train/loss"][5] == "1"  # the NaN row is counted as non-finite
    assert "rows: 21" in out.out and "steps: 0 .. 190" in out.out
    assert "val/img" in out.out and "config:" in out.out and "time:" in out.out


def test_load_run_matches_what_was_written(tmp_path):
    written = write_run(tmp_path)
    summary = load_run(tmp_path)
    for key, series in written.items():
        got = summary.keys[key].series
        assert [s for s, _ in got] == [s for s, _ in series]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in series])
    assert summary.media == {"val/img": 1}


@pytest.mark.slow  # starts a process
def test_show_as_a_command(tmp_path):
    write_run(tmp_path)
    done = run_cli("show", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "train/loss" in done.stdout and done.stderr == ""


@pytest.mark.slow  # starts a process
def test_python_dash_m_distlog_is_the_command(tmp_path):
    write_run(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "distlog", "show", str(tmp_path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "train/loss" in done.stdout


def bad_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope", "no such directory")
    a_file = tmp_path / "file.txt"
    a_file.write_text("hi")
    cases["file"] = (a_file, "not a directory")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    cases["foreign"] = (foreign, "not a distlog run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    cases["empty"] = (empty, "is empty")
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "metrics.jsonl").write_text('{"step": 0, "time": 1.0, "a"')
    cases["truncated"] = (torn, "no complete row")
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "metrics.jsonl").write_bytes(bytes(range(256)) * 4 + b"\n")
    cases["binary"] = (binary, "is not text")
    other_json = tmp_path / "other"
    other_json.mkdir()
    (other_json / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    cases["foreign_json"] = (other_json, "no integer 'step'")
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "metrics.jsonl").write_text('{"step": 0, "a": 1}\nnot json\n{"step": 1, "a": 2}\n')
    cases["garbled"] = (garbled, ":2: not a JSON line")
    return cases


@pytest.mark.parametrize(
    "case",
    ["missing", "file", "foreign", "empty", "truncated", "binary", "foreign_json", "garbled"],
)
@pytest.mark.parametrize("command", ["show", "plot"])
def test_bad_directories(tmp_path, capsys, case, command):
    path, message = bad_dirs(tmp_path)[case]
    extra = ["-o", str(tmp_path / "out.png")] if command == "plot" else []
    assert main([command, str(path), *extra]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert message in out.err and str(path) in out.err
    assert "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


@pytest.mark.slow  # starts a process
def test_bad_directory_as_a_command_has_no_traceback(tmp_path):
    foreign = tmp_path / "logs"
    (foreign / "exp1").mkdir(parents=True)
    (foreign / "exp1" / "notes.txt").write_text("not a run")
    done = run_cli("show", str(foreign))
    assert done.returncode == 1 and done.stdout == ""
    assert "not a distlog run directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_show_lists_the_runs_of_a_project_directory(tmp_path):
    project = tmp_path / "runs" / "proj"
    for name in ("exp1/20261201-100000", "exp1/20261201-110000", "exp2/20261201-120000"):
        write_run(project / name)
    done = run_cli("show", str(project))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{project}: 3 runs"
    assert [line.split()[0] for line in lines[2:]] == [
        "exp1/20261201-100000",
        "exp1/20261201-110000",
        "exp2/20261201-120000",
    ]


def test_usage_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["show"])
    assert exc.value.code == 2 and "RUN_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["show", "x", "--bogus"])
    assert exc.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_torn_last_line_is_skipped_with_a_note(tmp_path, capsys):
    written = write_run(tmp_path)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 200, "time": 5.0, "train/lo')
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "cut short" in out.err
    assert table_rows(out.out)["train/loss"][3] == str(len(written["train/loss"]))


def test_plot_writes_a_png_of_the_chosen_keys(tmp_path, capsys):
    from PIL import Image

    write_run(tmp_path / "run")
    output = tmp_path / "plots" / "curves.png"
    assert main(["plot", str(tmp_path / "run"), "-o", str(output), "--keys", "train/*"]) == 0
    assert "2 keys" in capsys.readouterr().out
    with Image.open(output) as image:
        assert image.format == "PNG"
        two_panels = image.size
    assert main(["plot", str(tmp_path / "run"), "-o", str(output)]) == 0
    with Image.open(output) as image:
        assert image.size[0] > two_panels[0]  # a third panel
    assert main(["plot", str(tmp_path / "run"), "-o", str(output), "--keys", "nope/*"]) == 1
    err = capsys.readouterr().err
    assert "no key matches" in err and "train/loss" in err


HAVE_DEMO = importlib.util.find_spec("distlog.demo") is not None


def test_demo_command_line(capsys):
    code = main(["demo", "--nproc", "3", "--dry-run", "--", "--steps", "5"])
    out = capsys.readouterr()
    if not HAVE_DEMO:
        assert code == 1 and "no demo module" in out.err
        return
    assert code == 0
    assert (
        "torch.distributed.run --standalone --nproc_per_node=3 -m distlog.demo --steps 5" in out.out
    )


def test_demo_rejects_bad_nproc(capsys):
    assert main(["demo", "--nproc", "0"]) == 1
    assert "--nproc" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DEMO, reason="distlog.demo has not landed")
def test_demo_then_show_and_plot(tmp_path, capsys):
    """The whole tour a new user takes: run the demo, look at it, draw it."""
    run_dir = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distlog.cli",
            "demo",
            "--nproc",
            "2",
            "--steps",
            "20",
            "--log-every",
            "5",
            "--batch-size",
            "16",
            "--quiet",
            "--run-dir",
            str(run_dir),
        ],
        env=subprocess_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = runlog.read_metrics(run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert main(["show", str(run_dir)]) == 0
    table = table_rows(capsys.readouterr().out)
    assert float(table["train/loss"][0]) == pytest.approx(rows[-1]["train/loss"], rel=1e-5)
    assert table["train/samples"][3] == "4"
    assert main(["plot", str(run_dir), "-o", str(tmp_path / "c.png"), "--keys", "train/*"]) == 0


def test_long_series_are_drawn_as_an_envelope_that_keeps_spikes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distlog.cli import PLOT_MAX_POINTS, _draw_envelope

    n = 3 * PLOT_MAX_POINTS
    rng = np.random.default_rng(7)
    values = rng.normal(size=n)
    values[1234] = 50.0  # one spike
    values[5000] = -40.0
    values[777] = math.nan
    fig, ax = plt.subplots()
    _draw_envelope(ax, np.arange(n, dtype=float), values)
    drawn = [line.get_ydata() for line in ax.get_lines()]
    assert max(np.nanmax(y) for y in drawn) == 50.0
    assert min(np.nanmin(y) for y in drawn) == -40.0
    mean_line = drawn[-1]
    assert len(mean_line) < n and np.nanmean(mean_line) == pytest.approx(
        np.nanmean(values), abs=0.05
    )
    plt.close(fig)

    sink = JsonlSink(tmp_path / "long")
    for step in range(n):
        sink.log_scalars(step, {"loss": float(values[step])})
    sink.close()
    assert main(["plot", str(tmp_path / "long"), "-o", str(tmp_path / "long.png")]) == 0
    assert (tmp_path / "long.png").stat().st_size > 1000


def test_plot_folds_spread_lists_constants_and_draws_histograms(tmp_path):
    from PIL import Image

    from distlog.cli import load_run, plan_plot, plot_run

    logger = distlog.Logger(run_dir=tmp_path / "run", async_write=False)
    for step in range(1, 6):
        logger.log_scalar("time/step_ms", 10.0 + step, spread=True)
        logger.log_scalar("world", 2.0)  # constant: listed, not a line
        logger.log_scalar("train/loss", 1.0 / step)
        if step == 5:
            logger.log_histogram(np.arange(50.0), desc="weights/w", bins=5)
        logger.flush(step)
    logger.finish()
    summary = load_run(tmp_path / "run")
    curves, spread, flat, histograms = plan_plot(summary, None)
    assert curves == ["time/step_ms", "train/loss"]  # no rank_* panels
    assert set(spread["time/step_ms"]) == {"rank_min", "rank_max", "rank_std", "rank_argmax"}
    assert flat == ["world"] and histograms == ["weights/w"]
    assert summary.last_media["weights/w"][1]["counts"] == [10, 10, 10, 10, 10]
    out = tmp_path / "p.png"
    assert plot_run(summary, out) == ["time/step_ms", "train/loss", "weights/w", "world"]
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # 3 columns x 2 rows


def test_plot_of_a_media_only_run_shows_its_media_index(tmp_path, capsys):
    import torch

    logger = distlog.Logger(run_dir=tmp_path / "run", async_write=False)
    logger.log_images(torch.rand(1, 3, 4, 4), desc="val/samples")
    logger.flush(1)
    logger.finish()
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "m.png")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "m.png").stat().st_size > 0


# ------------------------------------------------------------------ damaged values inside a run
def damaged_runs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Run directories whose rows parse but hold values no writer of distlog produces."""
    cases: dict[str, tuple[Path, str]] = {}
    lines = {
        "nan_time": ('{"step":1,"time":"NaN","x":1.0}\n{"step":2,"time":2.0,"x":2.0}\n', "time"),
        "huge_time": ('{"step":1,"time":1e300,"x":1.0}\n', "time"),
        "huge_int": ('{"step":1,"time":1.0,"x":1.0}\n{"step":2,"x":1' + "0" * 400 + "}\n",
                     "integer too large"),
        "huge_step": ('{"step":1,"x":1.0}\n{"step":1' + "0" * 30 + ',"x":2.0}\n', "step"),
        "bad_histogram": ('{"step":1,"x":1.0}\n{"step":2,"x":3.0}\n{"step":2,"media":{"h":'
                          '{"type":"histogram","counts":"?","edges":[0,1]}}}\n', "histogram"),
        "bad_items": ('{"step":2,"media":{"m":{"type":"images","items":7}}}\n', ""),
        "binary_run_json": ('{"step":1,"time":1.0,"x":1.0}\n', "run.json"),
    }  # fmt: skip
    for name, (text, note) in lines.items():
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text(text)
        cases[name] = (run, note)
    (tmp_path / "binary_run_json" / "run.json").write_bytes(b"\xff\xfe\x00junk")
    return cases


SHOWN = ["nan_time", "huge_time", "huge_int", "huge_step", "binary_run_json"]
"""Damage ``show`` reads; ``plot`` also draws histograms and the media index."""


@pytest.mark.parametrize(
    ("command", "case"),
    [("show", c) for c in SHOWN] + [("plot", c) for c in [*SHOWN, "bad_histogram", "bad_items"]],
)
def test_damaged_values_give_a_note_not_a_traceback(tmp_path, capsys, case, command):
    path, note = damaged_runs(tmp_path)[case]
    out_png = tmp_path / "out.png"
    extra = ["-o", str(out_png)] if command == "plot" else []
    assert main([command, str(path), *extra]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    if note:
        [line] = out.err.strip().splitlines()
        assert line.startswith("distlog: note:") and note in line and str(path) in line
    else:
        assert out.err == ""
    if command == "plot":
        assert out_png.stat().st_size > 0
    else:
        assert out.out.startswith(f"run: {path}")


def test_an_integer_beyond_float_counts_as_non_finite(tmp_path):
    path, _ = damaged_runs(tmp_path)["huge_int"]
    summary = load_run(path)
    x = summary.keys["x"]
    assert x.steps == 2 and x.non_finite == 1 and x.max == 1.0


def test_runs_that_cannot_be_listed_are_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "proj" / "run1"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step":1,"x":1.0}\n')

    def unreadable(path):  # a run.json the reader chokes on, whatever the damage
        raise ValueError("could not convert string to float: 'yesterday'")

    monkeypatch.setattr(runlog, "find_runs", unreadable)
    assert main(["show", str(tmp_path / "proj")]) == 1
    out = capsys.readouterr()
    [line] = out.err.strip().splitlines()
    assert (
        line.startswith("distlog show:") and "cannot list the runs" in line and "yesterday" in line
    )
    assert out.out == ""


def test_unforeseen_damage_is_still_one_line(tmp_path, capsys, monkeypatch):
    import distlog.cli

    write_run(tmp_path)

    def broken(summary):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(distlog.cli, "format_summary", broken)
    assert main(["show", str(tmp_path)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"distlog show: {tmp_path}: cannot read the run (OverflowError")


def test_plot_draws_keys_with_dollar_signs_literally(tmp_path, capsys):
    from distlog.cli import plot_run

    sink = JsonlSink(tmp_path / "run")
    for step in (1, 2, 3):
        sink.log_scalars(step, {"cost $x$": float(step), "bad $\\frac$ math": 1.0 / step})
    sink.close()
    out = tmp_path / "p.png"
    assert main(["plot", str(tmp_path / "run"), "-o", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0 and "cannot" not in capsys.readouterr().err

    import matplotlib.pyplot as plt

    closed = plt.close
    titles: list[str] = []

    def keep_titles(fig=None):  # read the titles before plot_run closes the figure
        if fig is not None and hasattr(fig, "axes"):
            titles.extend(ax.get_title(loc="left") for ax in fig.axes)
        closed(fig)

    plt.close = keep_titles
    try:
        plot_run(load_run(tmp_path / "run"), tmp_path / "q.png")
    finally:
        plt.close = closed
    assert sorted(titles) == ["bad $\\frac$ math", "cost $x$"]


def test_plot_of_too_many_keys_asks_for_keys_instead_of_drawing_for_minutes(tmp_path, capsys):
    """3000 keys drew for over 5 minutes in 4.6 GB and never finished; 800 took 378 s for an
    82,000-pixel-high picture (found by a hostile-test pass)."""
    run = tmp_path / "run"
    logger = distlog.Logger(run_dir=run, async_write=False, handle_signals=False)
    for step in range(2):
        logger.log_dict({f"layer{i % 3}/w{i}": float(i + step) for i in range(200)})
        logger.flush(step)
    logger.finish()
    output = tmp_path / "x.png"
    start = time.monotonic()
    assert main(["plot", str(run), "-o", str(output)]) == 1
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err
    assert "200 panels" in err and "--keys" in err and "'layer0/*'" in err, err
    assert not output.exists()
    assert main(["plot", str(run), "-o", str(output), "--keys", "layer0/w0", "layer1/*"]) == 1
    assert main(["plot", str(run), "-o", str(output), "--keys", "layer0/w*"]) == 1  # 67 > 60
    assert main(["plot", str(run), "-o", str(output), "--keys", "layer0/w1*"]) == 0
    assert output.exists()
