"""The .wandb reader against files that real wandb (offline) wrote.

Each test makes a run with the wandb API directly (not through distlog), so the reader is checked
against wandb itself; one test also checks it against wandb's own inspector (`wandb leet`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from wandb_helpers import apply_wandb_env, reset_wandb

from distlog.wandb_offline import (
    BLOCK_SIZE,
    WandbFileError,
    find_run_dirs,
    has_exit_record,
    iter_payloads,
    last_logged_step,
    read_run,
    read_runs,
    wandb_file_of,
)

wandb = pytest.importorskip("wandb")


def _quiet_settings():
    return wandb.Settings(x_disable_stats=True, console="off")


def _make_run(rows, *, config=None, exit_code=0, run_id=None, extra=None):
    """Log ``rows`` (dicts) with a committed row each, finish, and return the run's folder."""
    run = wandb.init(
        project="reader",
        id=run_id,
        config=config,
        settings=_quiet_settings(),
        resume="allow" if run_id else None,
    )
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    for row in rows:
        run.log(row, commit=True)
    if extra is not None:
        extra(run)
    sync_dir = Path(run.settings.sync_dir)
    run.finish(exit_code=exit_code)
    wandb.teardown()  # makes the file complete without relying on the reader (see notes)
    return sync_dir


@pytest.fixture
def env(tmp_path, monkeypatch):
    yield apply_wandb_env(monkeypatch, tmp_path)
    reset_wandb()


def test_history_config_summary_exit_code(env):
    rng = np.random.default_rng(7)
    rows = [
        {"step": s, "train/loss": float(rng.normal()), "count": int(rng.integers(0, 100))}
        for s in range(0, 50, 5)
    ]
    rows[3]["odd/nan"] = math.nan
    rows[4]["odd/inf"] = math.inf
    rows[5]["odd/neg_inf"] = -math.inf
    config = {"lr": 3e-4, "model": {"layers": 4, "names": ["a", "b"]}, "flag": True}

    run_dir = _make_run(
        rows,
        config=config,
        exit_code=7,
        extra=lambda run: run.config.update({"late": {"x": 1}}),
    )
    run = read_run(run_dir)

    assert run.exit_code == 7 and run.complete
    assert run.project == "reader"
    assert run.config == {**config, "late": {"x": 1}}
    by_step = run.rows_by_step("step")
    assert sorted(by_step) == [r["step"] for r in rows]
    for row in rows:
        got = by_step[row["step"]]
        assert set(got) == set(row) - {"step"}
        for key, value in row.items():
            if key == "step":
                continue
            if math.isnan(value):
                assert math.isnan(got[key])
            else:
                assert got[key] == value, key
    assert [r["_step"] for r in run.history] == list(range(len(rows)))
    assert run.summary["train/loss"] == rows[-1]["train/loss"]
    assert run.metrics["*"]["step_metric"] == "step"
    assert has_exit_record(run_dir)


@pytest.mark.slow  # starts a process
def test_reader_agrees_with_wandb_inspector(env):
    """`wandb leet inspect --json` is wandb's own reader: our history must match it row by row."""
    exe = Path(sys.executable).with_name("wandb")
    if not exe.exists():
        pytest.skip("wandb CLI not next to the interpreter")
    rows = [{"step": s, "a/b": s * 0.5, "c": -s} for s in range(20)]
    run_dir = _make_run(rows)
    out = subprocess.run(
        [str(exe), "leet", "inspect", "--json", str(wandb_file_of(run_dir))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        pytest.skip(f"wandb leet inspect unavailable: {out.stderr[:200]}")
    theirs = []
    for line in out.stdout.splitlines():
        rec = json.loads(line)
        if rec.get("type") == "history":
            theirs.append(rec)
    ours = read_run(run_dir).history
    assert len(ours) == len(theirs) == len(rows)
    # The inspector's JSON shape is its own; compare the values it shows for our keys.
    for mine, raw in zip(ours, theirs, strict=True):
        text = json.dumps(raw)
        for key in ("a/b", "c", "step"):
            assert json.dumps(key) in text
        assert mine["step"] == rows[mine["_step"]]["step"]
        assert mine["a/b"] == rows[mine["_step"]]["a/b"]


def test_records_spanning_blocks(env):
    """Records larger than a block (FIRST/MIDDLE/LAST chunks) and a file of many blocks."""
    big = "x" * (3 * BLOCK_SIZE + 123)
    rows = [{"step": s, "v": float(s), "text_len": len(big)} for s in range(400)]
    run_dir = _make_run(rows, config={"big": big})
    file = wandb_file_of(run_dir)
    assert file.stat().st_size > 4 * BLOCK_SIZE
    run = read_run(run_dir)
    assert run.config["big"] == big
    assert run.values("v", "step") == {s: float(s) for s in range(400)}
    assert run.exit_code == 0
    assert has_exit_record(run_dir, tail_bytes=BLOCK_SIZE)  # tail-only read finds it


def test_torn_tail_is_a_prefix_and_corruption_is_an_error(env, tmp_path):
    rows = [{"step": s, "v": s * 1.5} for s in range(300)]
    run_dir = _make_run(rows)
    file = wandb_file_of(run_dir)
    data = file.read_bytes()
    full = read_run(run_dir).history

    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copy = copy_dir / file.name
    for cut in (len(data) // 3, len(data) // 2 + 5, len(data) - 3):
        copy.write_bytes(data[:cut])
        torn = read_run(copy)
        assert torn.history == full[: len(torn.history)]
        assert torn.exit_code is None and not torn.complete
        assert not has_exit_record(copy)

    corrupt = bytearray(data)
    corrupt[BLOCK_SIZE // 2] ^= 0xFF
    copy.write_bytes(bytes(corrupt))
    with pytest.raises(WandbFileError, match="checksum mismatch"):
        read_run(copy)

    copy.write_bytes(b"not a wandb file at all")
    with pytest.raises(WandbFileError, match="not a .wandb file"):
        read_run(copy)
    with pytest.raises(FileNotFoundError, match="no .wandb file"):
        read_run(tmp_path / "wandb_cache")


def test_payload_framing_without_protobuf():
    """The framing layer alone: FULL, FIRST/MIDDLE/LAST and block padding, built by hand."""
    import struct
    import zlib

    def chunk(kind: int, payload: bytes) -> bytes:
        crc = zlib.crc32(payload, zlib.crc32(bytes([kind])))
        return struct.pack("<IHB", crc, len(payload), kind) + payload

    header = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    a = b"a" * 10
    first_room = BLOCK_SIZE - len(header) - 7 - len(a) - 7
    b1 = b"b" * first_room
    b2 = b"c" * 50
    data = header + chunk(1, a) + chunk(2, b1) + chunk(4, b2) + chunk(1, b"z")
    assert list(iter_payloads(data)) == [a, b1 + b2, b"z"]
    # padding: a block tail shorter than a header is skipped
    pad_to = BLOCK_SIZE - 3
    filler = b"f" * (pad_to - len(header) - 7)
    data = header + chunk(1, filler) + b"\x00" * 3 + chunk(1, b"next")
    assert list(iter_payloads(data)) == [filler, b"next"]


def test_find_run_dirs_orders_restarts_of_one_id(env):
    first = _make_run([{"step": s, "v": 1.0} for s in range(3)], run_id="same1")
    second = _make_run([{"step": s, "v": 2.0} for s in range(3, 6)], run_id="same1")
    other = _make_run([{"step": 0, "v": 3.0}])
    wandb_dir = env["WANDB_DIR"]

    assert find_run_dirs(wandb_dir, "same1") == [first, second]
    assert find_run_dirs(Path(wandb_dir) / "wandb", "same1") == [first, second]
    assert set(find_run_dirs(wandb_dir)) == {first, second, other}
    runs = read_runs(wandb_dir, "same1")
    assert [r.run_id for r in runs] == ["same1", "same1"]
    assert last_logged_step(runs, "step") == 5
    assert find_run_dirs(Path(wandb_dir) / "missing") == []
    shutil.rmtree(other)
    assert set(find_run_dirs(wandb_dir)) == {first, second}
