"""Start real multi-process gloo groups for tests, and never hang.

``run_ranks(fn, world_size, *args)`` spawns ``world_size`` processes, each with torchrun's
environment variables set and a gloo process group initialised, calls ``fn(rank, *args)`` in each
and returns the list of return values in rank order. A rank that raises fails the test with its
traceback; a job that outlives ``timeout`` is killed and fails the test, so a distributed bug
becomes a red test, never a stuck CI run.

``fn`` must be importable by the child processes: define it at module level in a test file.

The processes are started by a fork server that imported torch once (``forkserver`` with torch
preloaded): each rank is still a fresh process with its own gloo group and its own import of
distlog, but does not pay the ~2 s of importing torch again, which on a 2-core machine was a
third of the suite. Each child gets the parent's environment and working directory at the call,
as with ``spawn``.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch.multiprocessing as mp

T = TypeVar("T")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def wait_for_file(path: str | Path, seconds: float) -> None:
    """Stay away (hang, or compute) until another rank creates ``path``, at most ``seconds``:
    a rank that plays the missing one leaves as soon as the others have seen their errors,
    with no fixed sleep to sit out."""
    import time

    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# Ports for the tests' own rendezvous come from a block below the kernel's ephemeral range
# (32768-60999 on Linux), one block per pytest-xdist worker, handed out in turn: a port asked of
# the kernel (bind to port 0) can be handed to the other worker, or taken by one of gloo's
# own connections, between the pick and the rendezvous's bind.
_PORT_LOW, _PORT_BLOCKS, _PORT_BLOCK = 12000, 8, 2500
_next_port: list[int] = []


def _port_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... under xdist
    digits = "".join(ch for ch in worker if ch.isdigit())
    return int(digits or 0) % _PORT_BLOCKS


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on, from this test worker's own block."""
    start = _PORT_LOW + _port_block() * _PORT_BLOCK
    if not _next_port:  # two test runs at once (rare) start at different places in the block
        _next_port.append(os.getpid() % _PORT_BLOCK)
    for _ in range(_PORT_BLOCK):
        port = start + _next_port[0]
        _next_port[0] = (_next_port[0] + 1) % _PORT_BLOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {start}-{start + _PORT_BLOCK - 1}")


def default_signals() -> None:
    """``preexec_fn`` for a child that a test signals: SIGINT and SIGTERM act by default in it.

    A harness that runs the suite in the background (``cmd &`` in a script, ``nohup``) ignores
    SIGINT, every child inherits that, and an ignored signal is one distlog rightly leaves
    alone: a test of what Ctrl-C does would wait for a signal that never comes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process (torchrun, python -m ...) that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env


def _context() -> Any:
    """The multiprocessing context every rank of a test is started from."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed"])  # neither starts a thread
    return ctx


def _as_at_spawn(env: dict[str, str]) -> None:
    """Give a forked child the environment its parent had at the call (``spawn`` semantics)."""
    for key in set(os.environ) - set(env):
        del os.environ[key]
    os.environ.update(env)


def _child(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
    backend: str,
    env: dict[str, str],
    init: bool,
) -> None:
    _as_at_spawn(env)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
    )
    import torch.distributed as dist

    try:
        if init:
            try:
                dist.init_process_group(backend, rank=rank, world_size=world_size)
            except Exception:  # the harness's own setup failed, before any test code ran
                results.put((rank, "init-error", traceback.format_exc()))
                return
        value = fn(rank, *args)
        results.put((rank, "ok", value))
    except BaseException:  # report everything, SystemExit included
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
        sys.stdout.flush()


# Two tries: on a loaded 2-core host gloo's connectFullMesh has failed, rarely, before any test
# code ran ("Connection closed by peer"); that is the harness's setup, not what a test checks.
_INIT_ATTEMPTS = 2


def _until_formed(start: Callable[[], T | None]) -> T:
    """The first start of the ranks whose group formed (``start`` returns None when not)."""
    for _ in range(_INIT_ATTEMPTS):
        started = start()
        if started is not None:
            return started
    raise AssertionError(f"the gloo group did not form in {_INIT_ATTEMPTS} attempts")


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    expect_errors: bool = False,
    init: bool = True,
) -> list[Any]:
    """Run ``fn(rank, *args)`` on ``world_size`` fresh processes and return results by rank.

    With ``expect_errors=True`` a rank's failure is returned as ``("error", traceback)`` in its
    slot instead of failing at once, for tests that check what each rank raised. With
    ``init=False`` no process group is made: ``fn`` finds torchrun's environment and makes it.
    """
    collected = _until_formed(
        lambda: _run_once(fn, world_size, args, backend, timeout, env, expect_errors, init)
    )
    failed = [r for r in range(world_size) if collected[r][0] != "ok"]
    if failed and not expect_errors:  # every failed rank: the first is often only the echo
        raise AssertionError("\n".join(f"rank {r} failed:\n{collected[r][1]}" for r in failed))
    out: list[Any] = []
    for rank in range(world_size):
        status, value = collected[rank]
        out.append(value if status == "ok" else (status, value))
    return out


def _run_once(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...],
    backend: str,
    timeout: float,
    env: dict[str, str] | None,
    expect_errors: bool,
    init: bool,
) -> dict[int, tuple[str, Any]] | None:
    """One start of the ranks: their results by rank, or None when the group did not form."""
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    child_env = {**os.environ, **(env or {})}
    procs = [
        ctx.Process(
            target=_child,
            args=(rank, world_size, port, fn, args, results, backend, child_env, init),
            daemon=False,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    collected: dict[int, tuple[str, Any]] = {}
    try:
        import time

        deadline = time.monotonic() + timeout
        while len(collected) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(collected))
                raise TimeoutError(
                    f"ranks {missing} did not finish within {timeout:.0f}s "
                    f"(finished: {sorted(collected)})"
                )
            try:
                rank, status, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [
                    r
                    for r, p in enumerate(procs)
                    if not p.is_alive() and r not in collected and p.exitcode not in (0, None)
                ]
                if dead and not expect_errors:
                    raise RuntimeError(
                        f"rank(s) {dead} died with exit codes "
                        f"{[procs[r].exitcode for r in dead]} before reporting"
                    ) from None
                if dead and expect_errors:
                    for r in dead:
                        collected[r] = ("died", procs[r].exitcode)
                continue
            if status == "init-error":
                sys.stderr.write(f"rank {rank}: the gloo group did not form:\n{value}")
                for p in procs:  # the others wait in the rendezvous: stop them now
                    p.kill()
                return None
            collected[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return collected


def _pool_worker(
    rank: int, world_size: int, port: int, jobs: Any, results: Any, env: dict[str, str]
) -> None:
    _as_at_spawn(env)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
    )
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    except Exception:
        results.put((rank, "init-error", traceback.format_exc()))
        return
    results.put((rank, "up", None))
    try:
        while True:
            job = jobs.get()
            if job is None:
                break
            fn, args = job
            try:
                results.put((rank, "ok", fn(rank, *args)))
            except BaseException:
                results.put((rank, "error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class RankPool:
    """A long-lived gloo group of ``world_size`` processes that runs one job after another.

    For property-based tests: hypothesis draws an example in the parent, every rank runs
    ``fn(rank, *args)`` on it, and the parent compares the results with a reference. Starting
    the processes once keeps a hundred examples within seconds.
    """

    def __init__(self, world_size: int, env: dict[str, str] | None = None) -> None:
        self.world_size = world_size
        self._env = {**os.environ, **(env or {})}
        _until_formed(lambda: self._start() or None)

    def _start(self, timeout: float = 120.0) -> bool:
        """Start the ranks and wait until each has joined the group; False (all killed) if
        one could not."""
        ctx = _context()
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(self.world_size)]
        port = free_port()
        self._procs = [
            ctx.Process(
                target=_pool_worker,
                args=(r, self.world_size, port, self._jobs[r], self._results, self._env),
            )
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        for _ in range(self.world_size):
            try:
                rank, status, value = self._results.get(timeout=timeout)
            except queue.Empty:
                status, rank, value = "init-error", -1, f"no rank joined within {timeout:.0f}s"
            if status != "up":
                sys.stderr.write(f"rank {rank}: the gloo group did not form:\n{value}")
                for p in self._procs:
                    p.kill()
                    p.join(timeout=5)
                return False
        return True

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> list[Any]:
        for q in self._jobs:
            q.put((fn, args))
        out: dict[int, Any] = {}
        errors: list[str] = []
        while len(out) + len(errors) < self.world_size:
            try:
                rank, status, value = self._results.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise TimeoutError(
                    f"pool job did not finish within {timeout}s; errors so far: {errors}"
                ) from None
            if status == "ok":
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
        if errors:
            raise AssertionError("\n".join(errors))
        return [out[r] for r in range(self.world_size)]

    def close(self) -> None:
        for q in self._jobs:
            q.put(None)
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
