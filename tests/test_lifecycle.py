"""How a run ends and restarts, in one process: signal handlers, exit codes, run.json, resume.

The multi-rank versions (real kills of real jobs) are in tests/distributed/test_faults.py and
test_restarts.py; these pin down each rule on its own, fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
from dist_harness import default_signals

import distlog
from distlog import lifecycle, runlog
from distlog.runlog import METRICS_FILE

SRC = os.path.dirname(os.path.dirname(distlog.__file__))


def run_script(tmp_path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter that imports this checkout's distlog."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    full_env = {**os.environ, "PYTHONPATH": SRC, **env}
    full_env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return subprocess.run(
        [sys.executable, str(script)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=default_signals,
    )


def info(run_dir) -> dict:
    result = runlog.read_run_info(run_dir)
    assert result is not None
    return result


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    "signum,status,code",
    [(signal.SIGTERM, -signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT, 130)],
)
@pytest.mark.slow  # starts a process
def test_a_signal_closes_the_run_then_ends_the_process_as_before(tmp_path, signum, status, code):
    proc = run_script(
        tmp_path,
        f"""
        import os, distlog
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        for step in range(5):
            logger.log_scalar("x", float(step))
            logger.flush(step)
        logger.log_scalar("x", 99.0)  # logged after the last flush: never reduced, not written
        os.kill(os.getpid(), {int(signum)})
        print("not reached")
        """,
    )
    assert proc.returncode == status, proc.stderr
    assert "not reached" not in proc.stdout
    rows = distlog.read_metrics(tmp_path / "run")
    assert [r["x"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert info(tmp_path / "run")["exit_code"] == code
    assert info(tmp_path / "run")["last_step"] == 4


@pytest.mark.slow  # starts a process
def test_an_ignored_sigint_stays_ignored_and_nothing_is_lost(tmp_path):
    proc = run_script(
        tmp_path,
        f"""
        import os, signal, distlog
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started with `cmd &`
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        logger.log_scalar("x", 1.0)
        logger.flush(0)
        os.kill(os.getpid(), signal.SIGINT)
        logger.log_scalar("x", 2.0)
        logger.finish()
        print("went on", signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "went on True" in proc.stdout
    assert [r["x"] for r in distlog.read_metrics(tmp_path / "run")] == [1.0, 2.0]
    assert info(tmp_path / "run")["exit_code"] == 0


@pytest.mark.slow  # starts a process
def test_the_previous_python_handler_still_runs(tmp_path):
    proc = run_script(
        tmp_path,
        f"""
        import os, signal, distlog
        calls = []
        signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))  # the job's own handler
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        logger.log_scalar("x", 1.0)
        logger.flush(0)
        os.kill(os.getpid(), signal.SIGTERM)
        print("after", calls, logger.closed, signal.getsignal(signal.SIGTERM).__name__)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "after [15] True <lambda>" in proc.stdout  # chained, and the old handler restored
    assert info(tmp_path / "run")["exit_code"] == 143


@pytest.mark.slow  # starts a process
def test_an_ignored_signal_stays_ignored(tmp_path):
    proc = run_script(
        tmp_path,
        f"""
        import os, signal, distlog
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        os.kill(os.getpid(), signal.SIGTERM)
        print("alive", logger.closed)
        logger.finish()
        """,
    )
    assert "alive False" in proc.stdout, proc.stderr
    assert info(tmp_path / "run")["exit_code"] == 0


def test_handlers_are_installed_on_the_writer_and_removed_when_it_finishes(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    logger = distlog.Logger(run_dir=tmp_path, handle_signals=(signal.SIGUSR1,))
    assert signal.getsignal(signal.SIGUSR1) is lifecycle._on_signal
    assert signal.SIGUSR1 in lifecycle.installed_signals()
    logger.finish()
    assert signal.getsignal(signal.SIGUSR1) is before
    quiet = distlog.Logger(run_dir=tmp_path / "q", handle_signals=False)
    assert signal.getsignal(signal.SIGUSR1) is before
    quiet.finish()


def test_a_chosen_signal_finishes_every_open_logger_and_chains(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        a = distlog.Logger(run_dir=tmp_path / "a", handle_signals=(signal.SIGUSR1,))
        b = distlog.Logger(run_dir=tmp_path / "b", handle_signals=(signal.SIGUSR1,))
        a.log_scalar("x", 1.0)
        a.flush(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert a.closed and b.closed and seen == [signal.SIGUSR1]
        assert info(tmp_path / "a")["exit_code"] == info(tmp_path / "b")["exit_code"] == 138
        assert distlog.read_metrics(tmp_path / "a")[0]["x"] == 1.0
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_no_handler_from_a_thread_other_than_main(tmp_path):
    before = signal.getsignal(signal.SIGUSR2)
    made = []
    t = threading.Thread(
        target=lambda: made.append(
            distlog.Logger(run_dir=tmp_path, handle_signals=(signal.SIGUSR2,))
        )
    )
    t.start()
    t.join()
    assert signal.getsignal(signal.SIGUSR2) is before
    made[0].finish()


# ----------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "body,status,code",
    [
        ("raise ValueError('boom')", 1, 1),
        ("sys.exit(0)", 0, 0),
        ("pass  # never finished", 0, 0),
    ],
)
@pytest.mark.slow  # starts a process
def test_interpreter_exit_closes_open_loggers(tmp_path, body, status, code):
    proc = run_script(
        tmp_path,
        f"""
        import sys, distlog
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        logger.log_scalar("x", 1.0)
        logger.flush(0)
        logger.log_scalar("tail", 2.0)
        {body}
        """,
    )
    assert proc.returncode == status, proc.stderr
    assert info(tmp_path / "run")["exit_code"] == code
    # a world of one has nobody to wait for: the value logged after the flush is written too
    assert distlog.read_metrics(tmp_path / "run")[-1].get("tail") == (2.0 if code == 0 else None)


@pytest.mark.slow  # starts a process
def test_an_uncaught_exception_is_seen_even_with_a_replaced_excepthook(tmp_path):
    proc = run_script(
        tmp_path,
        f"""
        import sys, distlog
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        sys.excepthook = lambda *a: None  # e.g. a pretty-traceback library
        raise RuntimeError("boom")
        """,
    )
    assert proc.returncode == 1
    assert info(tmp_path / "run")["exit_code"] == 1


@pytest.mark.parametrize(
    "exc,code",
    [(SystemExit(3), 3), (SystemExit(None), 0), (SystemExit("bye"), 1), (KeyboardInterrupt(), 130)],
)
def test_leaving_a_with_block_on_an_exception_records_its_exit_status(tmp_path, exc, code):
    with pytest.raises(type(exc)), distlog.Logger(run_dir=tmp_path) as logger:
        logger.log_scalar("x", 1.0)
        logger.flush(0)
        raise exc
    assert logger.closed and info(tmp_path)["exit_code"] == code
    assert distlog.read_metrics(tmp_path)[0]["x"] == 1.0


# ----------------------------------------------------------------------------- run.json, resume


def test_run_json_keeps_the_id_and_records_each_start(tmp_path):
    first = distlog.Logger(run_dir=tmp_path)
    run_id = first.run_id
    first.log_scalar("x", 1.0)
    first.flush(0)
    first.finish(exit_code=143)
    second = distlog.Logger(run_dir=tmp_path, resume=True)  # continued on purpose
    assert second.run_id == run_id and len(run_id) == 8
    second.finish()
    data = info(tmp_path)
    assert [s["exit_code"] for s in data["starts"]] == [143, 0]
    assert data["exit_code"] == 0 and data["last_step"] == 0
    assert json.loads((tmp_path / "run.json").read_text()) == data


def test_an_id_made_before_the_logger_is_the_one_it_keeps(tmp_path):
    """What the wandb mixin does on rank 0: take the id before the Logger records its start."""
    run_dir = tmp_path / "new"
    made = runlog.ensure_run_info(run_dir)  # creates run.json, records no start
    assert made == runlog.read_run_info(run_dir) and "starts" not in made
    assert runlog.ensure_run_info(run_dir, wandb_id="other1")["id"] == made["id"]
    logger = distlog.Logger(run_dir=run_dir)
    assert logger.run_id == made["id"]
    logger.finish()
    data = info(run_dir)
    assert data["wandb_id"] == "other1" and [s["exit_code"] for s in data["starts"]] == [0]
    assert "wandb_id" not in runlog.ensure_run_info(run_dir, wandb_id=None)  # None removes it
    assert info(run_dir)["starts"] == data["starts"]
    with pytest.raises(ValueError, match="run id is not changed"):
        runlog.ensure_run_info(run_dir, id="x")


def write_steps(run_dir, steps, **kw):
    logger = distlog.Logger(run_dir=run_dir, async_write=False, **kw)
    returned = []
    for step in steps:
        logger.log_scalar("x", float(step))
        returned.append(logger.flush(step, block=True))
    logger.finish()
    return returned


def test_resume_writes_no_step_twice(tmp_path):
    write_steps(tmp_path, range(0, 10))
    with pytest.warns(UserWarning) as record:
        returned = write_steps(tmp_path, range(6, 14), resume=True)  # restarted from step 6
    messages = [str(w.message) for w in record]
    assert any("steps up to 9 are already written" in m for m in messages)
    assert sum("is at or below step 9" in m for m in messages) == 1  # one warning, not four
    assert [r["x"] for r in returned] == [float(s) for s in range(6, 14)]  # rows still returned
    assert [r["step"] for r in distlog.read_metrics(tmp_path)] == list(range(14))
    assert info(tmp_path)["starts"][1]["resumed_after_step"] == 9


def test_resume_auto_follows_the_launchers_restart_count(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = tmp_path / "exp"
    write_steps(run, range(5))
    with pytest.warns(UserWarning, match="this launch is a new run in .*exp-2"):
        write_steps(run, range(3, 6))  # a second launch: a run of its own, never appended
    assert [r["step"] for r in distlog.read_metrics(run)] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in distlog.read_metrics(tmp_path / "exp-2")] == [3, 4, 5]
    assert info(run)["id"] != info(tmp_path / "exp-2")["id"]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the launcher restarted that job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_steps(run, range(4, 8))
    assert [r["step"] for r in distlog.read_metrics(tmp_path / "exp-2")] == [3, 4, 5, 6, 7]
    assert info(tmp_path / "exp-2")["starts"][-1]["restart"] == 1
    assert [r["step"] for r in distlog.read_metrics(run)] == [0, 1, 2, 3, 4]  # untouched


def test_a_restart_continues_the_run_its_launch_started(tmp_path, monkeypatch):
    """Two launches of one directory; the first one's job restarts: its launch id picks it."""
    run = tmp_path / "exp"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    write_steps(run, range(3))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-b")
    with pytest.warns(UserWarning, match="new run"):
        write_steps(run, range(2))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger = distlog.Logger(run_dir=run, async_write=False)
    assert logger.run_dir == run and logger.run_id == info(run)["id"]
    logger.finish()
    assert [s.get("launch") for s in info(run)["starts"]] == ["launch-a", "launch-a"]


def test_another_tools_directory_is_refused(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    with pytest.raises(distlog.RunDirError, match="metrics.jsonl has no distlog rows"):
        distlog.Logger(run_dir=tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text('{"name": "not ours"}')
    with pytest.raises(distlog.RunDirError, match="not a distlog run file"):
        distlog.Logger(run_dir=other, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"loss": 1.0}\n'  # left alone


def test_bad_resume_argument():
    with pytest.raises(distlog.LogValueError, match="resume"):
        distlog.Logger(run_dir=None, sinks=[], resume="yes")


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    write_steps(tmp_path, range(3))
    with open(tmp_path / METRICS_FILE, "a") as fh:
        fh.write('{"step": 3, "x": 3')  # the writer was killed mid-line
    assert runlog.last_step(tmp_path) == 2
    with pytest.warns(UserWarning, match="partial row"):
        write_steps(tmp_path, [3, 4], resume=True)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3, 4]


def test_last_step_reads_from_the_end_of_a_large_file(tmp_path):
    path = tmp_path / METRICS_FILE
    pad = "p" * 5000
    with path.open("w") as fh:
        for step in range(40):  # ~200 KiB: rows cross the 64 KiB blocks the reader uses
            fh.write(runlog.encode_row({"step": step, "pad": pad}) + "\n")
        fh.write('{"step": 40, "pad": "' + "p" * 70000)  # a torn row longer than a block
    assert runlog.last_step(tmp_path) == 39
    assert runlog.last_step(tmp_path / "missing") is None


@pytest.mark.slow  # starts a process
def test_an_interactive_session_keeps_ctrl_c_for_interrupting_cells(tmp_path):
    proc = run_script(
        tmp_path,
        f"""
        import sys, signal, distlog
        sys.ps1 = ">>> "  # what the REPL sets; Jupyter is detected by ipykernel being loaded
        before = signal.getsignal(signal.SIGINT)
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        print(signal.getsignal(signal.SIGINT) is before,
              signal.getsignal(signal.SIGTERM).__name__)
        logger.finish()
        """,
    )
    assert "True _on_signal" in proc.stdout, proc.stderr


@pytest.mark.slow  # starts a process
def test_importing_distlog_changes_no_global_state_and_the_last_logger_restores_it() -> None:
    """sys.excepthook and the exit handler: installed by the first logger, gone after the last."""
    import subprocess
    import sys

    code = """
import sys
def mine(*a): sys.__excepthook__(*a)
sys.excepthook = mine
import distlog
from distlog import lifecycle
lifecycle.exit_code_at_exit = lambda: print("exit handler ran") or 0  # observe the handler
assert sys.excepthook is mine, "importing distlog replaced the exception hook"
a = distlog.Logger(sinks=[], handle_signals=False)
b = distlog.Logger(sinks=[], handle_signals=False)
assert sys.excepthook is not mine and lifecycle.process_hooks_installed()
a.finish()
assert lifecycle.process_hooks_installed(), "b is still open"
b.finish()
assert sys.excepthook is mine, "the last logger did not restore the exception hook"
if sys.argv[1] == "leave-one-open":
    c = distlog.Logger(sinks=[], handle_signals=False)  # a later logger installs them again
    assert lifecycle.process_hooks_installed()
print("ok")
"""
    for mode, want in [("all-finished", "ok"), ("leave-one-open", "ok\nexit handler ran")]:
        out = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and out.stdout.strip() == want, (mode, out.stderr[-3000:])


# ----------------------------------------------------------------------------- forked children
# A DataLoader worker or a multiprocessing helper started by fork inherits copies of the open
# loggers, of distlog's signal handlers and of its exit hook. The run is the parent's.


def rows_of(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # starts processes
def test_a_dataloader_worker_that_logs_gets_an_error_naming_the_key_and_the_fork(tmp_path):
    run = tmp_path / "run"
    proc = run_script(
        tmp_path,
        f"""
        import json, torch, distlog
        from torch.utils.data import DataLoader, Dataset
        logger = distlog.Logger(run_dir={str(run)!r})

        class Logs(Dataset):
            def __len__(self):
                return 8
            def __getitem__(self, i):
                logger.log_scalar("data/items", 1.0, reduce="sum")  # in a forked worker
                return torch.tensor(float(i))

        loader = DataLoader(Logs(), num_workers=1, multiprocessing_context="fork")
        try:
            for _ in loader:
                pass
            print(json.dumps(None))
        except Exception as exc:
            print(json.dumps([type(exc).__name__, str(exc)]))
        logger.log_scalar("train/loss", 2.5)  # the parent's logger is untouched
        logger.flush(0)
        logger.finish()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    raised = json.loads(proc.stdout.strip().splitlines()[-1])
    assert raised is not None, "the worker's samples were silently dropped"
    name, message = raised
    assert name == "LoggerClosedError"
    assert "'data/items'" in message and "fork of the process that created" in message
    assert "DataLoader worker" in message
    assert [{k: v for k, v in r.items() if k != "time"} for r in rows_of(run)] == [
        {"step": 0, "train/loss": 2.5}
    ]


@pytest.mark.parametrize("async_write", [True, False])
@pytest.mark.slow  # starts processes
def test_a_terminated_forked_child_dies_at_once_and_leaves_the_parents_run_alone(
    tmp_path, async_write
):
    run = tmp_path / "run"
    proc = run_script(
        tmp_path,
        f"""
        import json, os, signal, sys, time, multiprocessing as mp
        import distlog
        from distlog import runlog
        logger = distlog.Logger(run_dir={str(run)!r}, async_write={async_write})
        logger.log_scalar("x", 1.0)
        logger.flush(1)
        logger.wait()

        def helper(ready):
            ready.set()
            time.sleep(60)

        ready = mp.get_context("fork").Event()
        child = mp.get_context("fork").Process(target=helper, args=(ready,))
        child.start()
        ready.wait(30)
        start = time.monotonic()
        os.kill(child.pid, signal.SIGTERM)
        child.join(30)
        seconds = time.monotonic() - start
        ended = runlog.read_run_info({str(run)!r})["ended"]
        logger.log_scalar("x", 2.0)
        logger.flush(2)
        logger.finish()
        print(json.dumps([child.exitcode, seconds, ended]))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    exitcode, seconds, ended = json.loads(proc.stdout.strip().splitlines()[-1])
    assert exitcode == -signal.SIGTERM  # died of the signal, as without distlog
    assert seconds < 10, "the child waited for writer threads it does not have"
    assert ended is None, "the child marked its parent's run as ended"
    assert "distlog" not in proc.stderr, proc.stderr  # no handler ran in the child
    assert [r["x"] for r in rows_of(run)] == [1.0, 2.0]
    assert info(run)["exit_code"] == 0


@pytest.mark.parametrize("async_write", [True, False])
@pytest.mark.slow  # starts a process
def test_a_forked_child_that_exits_writes_nothing_and_restores_the_hooks(tmp_path, async_write):
    run = tmp_path / "run"
    facts = tmp_path / "child.json"
    proc = run_script(
        tmp_path,
        f"""
        import json, os, signal, sys, time
        import distlog
        from distlog import lifecycle
        logger = distlog.Logger(run_dir={str(run)!r}, async_write={async_write})
        logger.log_scalar("x", 1.0)
        logger.flush(1)
        logger.log_scalar("x", 2.0)  # the tail: the parent's finish writes it, once
        pid = os.fork()
        if pid == 0:
            with open({str(facts)!r}, "w") as f:
                json.dump({{
                    "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                    "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                    "hooks": lifecycle.process_hooks_installed(),
                    "closed": logger.closed,
                }}, f)
            sys.exit(0)  # a normal exit: atexit runs in the child
        deadline = time.monotonic() + 60
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "the forked child hangs at exit"
            time.sleep(0.05)
        logger.finish()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "distlog" not in proc.stderr, proc.stderr
    assert json.loads(facts.read_text()) == {
        "sigterm_default": True, "sigint_default": True, "hooks": False, "closed": True
    }  # fmt: skip
    assert [(r["step"], r["x"]) for r in rows_of(run)] == [(1, 1.0), (2, 2.0)]
    assert info(run)["exit_code"] == 0


@pytest.mark.slow  # starts processes
def test_a_child_forked_while_a_parent_thread_logs_raises_instead_of_hanging(tmp_path):
    """A parent thread inside a ``log_*`` call at the fork leaves the child's copy of the
    buffer's lock held for good. The child's buffer gets a fresh lock: before, 27 of 40
    children's ``log_dict`` hung forever instead of raising LoggerClosedError."""
    proc = run_script(
        tmp_path,
        f"""
        import json, os, signal, threading, time
        import distlog
        logger = distlog.Logger(run_dir={str(tmp_path / "run")!r})
        logger.log_dict({{"a": 1.0, "b": 2.0}})
        logger.flush(0)
        stop = threading.Event()

        def loader():
            while not stop.is_set():
                logger.log_dict({{"a": 1.0, "b": 2.0}})  # takes the buffer's lock

        thread = threading.Thread(target=loader)
        thread.start()
        time.sleep(0.2)
        outcomes = {{}}
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)  # a child that hangs dies of SIGALRM
                try:
                    logger.log_dict({{"a": 1.0, "b": 2.0}})
                    os._exit(3)
                except distlog.LoggerClosedError:
                    os._exit(0)
                except BaseException:
                    os._exit(4)
            _, status = os.waitpid(pid, 0)
            outcome = (
                "hung" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
                else "raised LoggerClosedError" if os.WEXITSTATUS(status) == 0 else "other"
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        stop.set()
        thread.join()
        logger.finish()
        print(json.dumps(outcomes))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"raised LoggerClosedError": 20}
