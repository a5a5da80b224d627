"""The ``distlog`` command: look at a run directory without writing any code.

- ``distlog show RUN_DIR``: a summary of the run and, per key, the last/min/max value and how
  many steps logged it;
- ``distlog plot RUN_DIR -o curves.png [--keys PATTERN ...]``: the curves, one panel per key;
- ``distlog demo [--nproc N]``: runs the demo job under torchrun.

Bad input (a missing, empty, cut-short or foreign directory) prints one line on stderr and
exits with status 1; usage errors exit with 2, as argparse does. No tracebacks.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distlog import runlog
from distlog.sinks.console import format_value

__all__ = ["KeySummary", "RunSummary", "load_run", "main"]


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


@dataclass
class KeySummary:
    """What one key did over the run. ``min``/``max`` ignore non-finite values."""

    key: str
    steps_logged: list[int] = field(default_factory=list, repr=False)
    values: list[float] = field(default_factory=list, repr=False)
    last: float = math.nan
    last_step: int = 0
    min: float = math.inf
    max: float = -math.inf
    steps: int = 0
    non_finite: int = 0

    @property
    def series(self) -> list[tuple[int, float]]:
        return list(zip(self.steps_logged, self.values, strict=True))

    def finalise(self) -> None:
        """Compute the statistics from the collected values (vectorised: runs can be long)."""
        import numpy as np

        values = np.asarray(self.values, dtype=np.float64)
        self.steps = int(values.size)
        if not values.size:
            return
        self.last, self.last_step = float(values[-1]), self.steps_logged[-1]
        finite = np.isfinite(values)
        self.non_finite = int(values.size - finite.sum())
        if finite.any():
            self.min = float(values[finite].min())
            self.max = float(values[finite].max())


@dataclass
class RunSummary:
    """A run directory read back: scalar keys, media keys, time span, metadata."""

    run_dir: Path
    rows: int = 0
    first_step: int | None = None
    last_step: int | None = None
    first_time: float | None = None
    last_time: float | None = None
    keys: dict[str, KeySummary] = field(default_factory=dict)
    media: dict[str, int] = field(default_factory=dict)
    torn_tail: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    has_config: bool = False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _find_runs_below(path: Path, limit: int = 5) -> list[str]:
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []
    return [str(p) for p in children if (p / runlog.METRICS_FILE).is_file()][:limit]


def load_run(run_dir: str | Path) -> RunSummary:
    """Read ``<run_dir>/metrics.jsonl`` (and run.json, when present) into a summary.

    Raises:
        CliError: the directory is missing, is not a run directory, or holds no complete row.
    """
    path = Path(run_dir)
    if not path.exists():
        raise CliError(f"{path}: no such directory")
    if not path.is_dir():
        raise CliError(f"{path}: not a directory (give the run directory, not a file in it)")
    metrics = path / runlog.METRICS_FILE
    if not metrics.is_file():
        hint = ""
        runs = _find_runs_below(path)
        if runs:
            hint = f"; run directories inside it: {', '.join(runs)}"
        raise CliError(f"{path}: not a distlog run directory (no {runlog.METRICS_FILE}){hint}")

    summary = RunSummary(run_dir=path, has_config=(path / runlog.CONFIG_FILE).is_file())
    try:
        raw = metrics.read_bytes()
    except OSError as exc:
        raise CliError(f"{metrics}: cannot read ({exc.strerror})") from None
    if not raw.strip():
        raise CliError(f"{metrics} is empty: the run has not logged a row yet")
    summary.torn_tail = runlog.torn_tail(path) is not None
    try:
        rows = list(runlog.iter_rows(path))
    except UnicodeDecodeError:
        raise CliError(f"{metrics} is not text: not a distlog metrics file") from None
    except ValueError as exc:
        raise CliError(f"{exc} (not a distlog metrics file, or damaged)") from None
    if not rows:
        raise CliError(f"{metrics} holds no complete row (cut short while the first was written)")

    keys = summary.keys
    for number, row in enumerate(rows, start=1):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise CliError(f"{metrics}: row {number} has no integer 'step': not a distlog run")
        summary.rows += 1
        summary.first_step = step if summary.first_step is None else min(summary.first_step, step)
        summary.last_step = step if summary.last_step is None else max(summary.last_step, step)
        raw_time = row.get("time")
        if isinstance(raw_time, int | float) and not isinstance(raw_time, bool):
            stamp = float(raw_time)
            first, last = summary.first_time, summary.last_time
            summary.first_time = stamp if first is None else min(first, stamp)
            summary.last_time = stamp if last is None else max(last, stamp)
        media = row.get("media")
        if isinstance(media, dict):
            for key in media:
                summary.media[key] = summary.media.get(key, 0) + 1
            continue
        for key, value in row.items():
            kind = type(value)
            if (kind is float or kind is int) and key != "step" and key != "time":
                ks = keys.get(key)
                if ks is None:
                    ks = keys[key] = KeySummary(key)
                ks.steps_logged.append(step)
                ks.values.append(value)
    for ks in keys.values():
        ks.finalise()

    if (path / runlog.RUN_FILE).is_file():
        meta = runlog.read_run_info(path)
        summary.meta = meta if meta is not None else {"run.json": "unreadable"}
    return summary


def _fmt(value: float) -> str:
    return format_value(value, digits=6)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    numeric = [i > 0 for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_summary(summary: RunSummary) -> str:
    """The text ``distlog show`` prints."""
    out = [f"run: {summary.run_dir}"]
    for name in ("id", "name", "world_size", "exit_code"):
        if name in summary.meta and not isinstance(summary.meta[name], dict | list):
            out.append(f"{name}: {summary.meta[name]}")
    out.append(
        f"rows: {summary.rows}   steps: {summary.first_step} .. {summary.last_step}"
        f"   keys: {len(summary.keys)}"
        + (f"   media keys: {len(summary.media)}" if summary.media else "")
    )
    if summary.first_time is not None and summary.last_time is not None:
        start = _dt.datetime.fromtimestamp(summary.first_time).isoformat(
            sep=" ", timespec="seconds"
        )
        out.append(f"time: {start} + {_duration(summary.last_time - summary.first_time)} (h:mm:ss)")
    if summary.has_config:
        out.append(f"config: {summary.run_dir / runlog.CONFIG_FILE}")
    out.append("")
    rows = []
    for key in sorted(summary.keys):
        ks = summary.keys[key]
        rows.append(
            [
                key,
                _fmt(ks.last),
                _fmt(ks.min) if ks.steps > ks.non_finite else "-",
                _fmt(ks.max) if ks.steps > ks.non_finite else "-",
                str(ks.steps),
                str(ks.last_step),
                str(ks.non_finite) if ks.non_finite else "",
            ]
        )
    header = ["key", "last", "min", "max", "steps", "last step", "non-finite"]
    if not any(r[6] for r in rows):
        header, rows = header[:6], [r[:6] for r in rows]
    if rows:
        out.extend(_table(header, rows))
    else:
        out.append("(no scalar keys)")
    if summary.media:
        out.append("")
        out.extend(
            _table(["media key", "items"], [[k, str(n)] for k, n in sorted(summary.media.items())])
        )
    return "\n".join(out)


def _select_keys(summary: RunSummary, patterns: Sequence[str] | None) -> list[str]:
    available = sorted(summary.keys)
    if not patterns:
        return available
    chosen = [k for k in available if any(k == p or fnmatch.fnmatchcase(k, p) for p in patterns)]
    if not chosen:
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise CliError(f"no key matches {list(patterns)}; keys in the run: {shown or '(none)'}")
    return chosen


PLOT_MAX_POINTS = 4000
"""Longer series are drawn as a band (min to max per bucket) around the bucket means."""


def _draw_envelope(ax: Any, steps: Any, values: Any, buckets: int = 1000) -> None:
    """Every point of a long series in ``buckets`` columns: spikes stay visible, drawing is fast."""
    edges = np.linspace(0, len(steps), buckets + 1).astype(int)
    starts = edges[:-1]
    x = steps[np.minimum(starts + (edges[1:] - starts) // 2, len(steps) - 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN buckets stay holes
        finite = np.isfinite(values)
        totals = np.add.reduceat(np.where(finite, values, 0.0), starts)
        counts = np.add.reduceat(finite.astype(np.float64), starts)
        mean = np.where(counts > 0, totals / np.maximum(counts, 1.0), np.nan)
        low = np.fmin.reduceat(values, starts)
        high = np.fmax.reduceat(values, starts)
    ax.fill_between(x, low, high, color="tab:blue", alpha=0.25, linewidth=0, label="min-max")
    for edge in (low, high):  # thin outlines keep single-point spikes visible
        ax.plot(x, edge, "-", linewidth=0.6, color="tab:blue", alpha=0.5)
    ax.plot(x, mean, "-", linewidth=1.2, color="tab:blue", label=f"mean of {len(steps)} points")
    ax.legend(fontsize=7, loc="best")


def plot_run(summary: RunSummary, output: Path, keys: Sequence[str] | None = None) -> list[str]:
    """Draw one panel per key (step on x) into ``output``; returns the keys drawn."""
    chosen = _select_keys(summary, keys)
    if not chosen:
        raise CliError(f"{summary.run_dir}: no scalar keys to plot")
    try:
        import matplotlib
    except ImportError:
        raise CliError("plotting needs matplotlib: pip install 'distlog[media]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(4.2 * columns, 2.8 * rows),
        squeeze=False,
        sharex=True,
        constrained_layout=True,
    )
    for ax, key in zip(axes.flat, chosen, strict=False):
        ks = summary.keys[key]
        steps = np.asarray(ks.steps_logged, dtype=np.float64)
        values = np.asarray(ks.values, dtype=np.float64)
        finite = np.isfinite(values)
        shown = np.where(finite, values, np.nan)  # holes where values are NaN or infinite
        if len(steps) > PLOT_MAX_POINTS:
            _draw_envelope(ax, steps, shown)
        else:
            style = "o-" if len(steps) <= 30 else "-"
            ax.plot(steps, shown, style, markersize=3, linewidth=1.4, color="tab:blue")
        if not finite.all():  # mark where the curve has holes
            ax.plot(
                steps[~finite],
                np.full(int((~finite).sum()), 0.02),
                "x",
                color="tab:red",
                markersize=6,
                transform=ax.get_xaxis_transform(),
                label="non-finite",
            )
            ax.legend(fontsize=7, loc="upper right")
        title = key if not ks.non_finite else f"{key}  ({ks.non_finite} non-finite)"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8, labelbottom=True)  # sharex would hide them above
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    fig.suptitle(str(summary.run_dir), fontsize=11)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(output, dpi=110)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write {output}: {exc}") from None
    finally:
        plt.close(fig)
    return chosen


def demo_command(nproc: int, extra: Sequence[str] = ()) -> list[str]:
    """The torchrun command line ``distlog demo`` runs."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "distlog.demo",
        *extra,
    ]


def _run_demo(nproc: int, extra: Sequence[str], dry_run: bool) -> int:
    import importlib.util

    if nproc < 1:
        raise CliError(f"--nproc must be at least 1, not {nproc}")
    if importlib.util.find_spec("distlog.demo") is None:
        raise CliError("this distlog installation has no demo module (distlog.demo)")
    command = demo_command(nproc, extra)
    if dry_run:
        print(" ".join(command))
        return 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(command, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distlog", description="Look at distlog run directories; run the demo job."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="summary of a run: per key last, min, max, steps")
    show.add_argument("run_dir", metavar="RUN_DIR")

    plot = sub.add_parser("plot", help="draw the curves of a run into an image")
    plot.add_argument("run_dir", metavar="RUN_DIR")
    plot.add_argument(
        "-o", "--output", default="curves.png", help="image file (default: %(default)s)"
    )
    plot.add_argument(
        "--keys", nargs="+", metavar="KEY", help="keys or shell patterns such as 'train/*'"
    )

    demo = sub.add_parser("demo", help="run the demo job under torchrun")
    demo.add_argument("--nproc", type=int, default=2, help="processes (default: %(default)s)")
    demo.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    demo.epilog = "Other arguments (--steps 50, --run-dir DIR, ...) are passed on to distlog.demo."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distlog`` command; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "show":
            print(format_summary(_load_and_note(args.run_dir)))
        elif args.command == "plot":
            summary = _load_and_note(args.run_dir)
            output = Path(args.output)
            drawn = plot_run(summary, output, args.keys)
            print(f"wrote {output} ({len(drawn)} keys)")
        elif args.command == "demo":
            return _run_demo(args.nproc, [a for a in unknown if a != "--"], args.dry_run)
    except CliError as exc:
        print(f"distlog {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `distlog show RUN | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


def _load_and_note(run_dir: str) -> RunSummary:
    summary = load_run(run_dir)
    if summary.torn_tail:
        print(
            f"distlog: note: the last line of {summary.run_dir / runlog.METRICS_FILE} is cut "
            "short (the writer stopped mid-row); it was skipped",
            file=sys.stderr,
        )
    return summary


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
