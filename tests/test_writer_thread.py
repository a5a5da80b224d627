"""A row that fails on the writer thread must not stop the thread (or finish() blocks forever)."""

from __future__ import annotations

import threading
import warnings

import distlog


def test_a_failing_row_leaves_the_writer_running(tmp_path):
    finished = threading.Event()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under `python -W error` or pytest's filterwarnings
        logger = distlog.Logger(run_dir=tmp_path)
        logger.log_scalar("a", float("nan"))
        logger.flush(block=False)  # decoded on the writer thread: the NaN warning raises there
        logger.log_scalar("b", 1.0)
        logger.flush(block=False)

        def finish() -> None:
            logger.finish()
            finished.set()

        t = threading.Thread(target=finish, daemon=True)
        t.start()
        t.join(30)
    assert finished.is_set(), "finish() blocked: the writer thread died on the failed row"
    rows = distlog.read_metrics(tmp_path)
    assert [r["b"] for r in rows if "b" in r] == [1.0]  # the next row was still written
    assert logger._writer is not None and len(logger._writer.errors) == 1
