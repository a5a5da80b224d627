"""The ``distlog`` command: look at a run directory without writing any code.

- ``distlog show RUN_DIR``: a summary of the run and, per key, the last/min/max value and how
  many steps logged it; given a project or experiment directory (``runs/<project>``), the
  list of its runs;
- ``distlog plot RUN_DIR -o curves.png [--keys PATTERN ...]``: the curves, one panel per key;
- ``distlog demo [--nproc N]``: runs the demo job under torchrun.

Bad input (a missing, empty, cut-short or foreign directory) prints one line on stderr and
exits with status 1; usage errors exit with 2, as argparse does. No tracebacks: damaged values
inside an otherwise readable run (a non-numeric time, an integer too large for a float, a
histogram record that is not numbers) are skipped or drawn as notes, with one note line on
stderr per kind of damage.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from distlog import runlog
from distlog.sinks.console import format_value

__all__ = ["KeySummary", "RunSummary", "format_runs", "load_run", "main", "plan_plot", "plot_run"]


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
    last_media: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    """Each media key's last record and its step (histograms are drawn from it)."""
    torn_tail: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    has_config: bool = False
    damage: dict[str, str] = field(default_factory=dict)
    """One note per kind of damaged value that was skipped (kind -> first place it was seen)."""

    def note(self, kind: str, where: str) -> None:
        """Remember the first place of one kind of damage (reported once, not per row)."""
        self.damage.setdefault(kind, where)


MAX_STEP = 2**53
"""Larger steps cannot be drawn (a float64 x axis); rows with one are damaged."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    """``float(value)``, with an integer beyond the float range as the infinity of its sign
    (a damaged value: the summary counts it as non-finite instead of failing)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _timestamp_ok(stamp: float) -> bool:
    """A time that can be shown as a date (not NaN, infinite or out of the calendar)."""
    if not math.isfinite(stamp):
        return False
    try:
        _dt.datetime.fromtimestamp(stamp)
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _read_meta(path: Path) -> dict[str, Any] | None:
    """``run.json``, or None when it cannot be read or decoded (never an exception)."""
    try:
        meta = runlog.read_run_info(path)
    except (OSError, ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    return meta if isinstance(meta, dict) else None


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
        if abs(step) > MAX_STEP:
            summary.note("step", f"row {number} has step {str(step)[:20]}..., skipped")
            continue
        summary.rows += 1
        summary.first_step = step if summary.first_step is None else min(summary.first_step, step)
        summary.last_step = step if summary.last_step is None else max(summary.last_step, step)
        raw_time = row.get("time")
        stamp = math.nan
        if isinstance(raw_time, int | float) and not isinstance(raw_time, bool):
            stamp = _as_float(raw_time)
        if _timestamp_ok(stamp):
            first, last = summary.first_time, summary.last_time
            summary.first_time = stamp if first is None else min(first, stamp)
            summary.last_time = stamp if last is None else max(last, stamp)
        elif raw_time is not None:
            summary.note("time", f"row {number} has time {str(raw_time)[:40]!r}, ignored")
        media = row.get("media")
        if isinstance(media, dict):
            for key, record in media.items():
                summary.media[key] = summary.media.get(key, 0) + 1
                if isinstance(record, dict):
                    summary.last_media[key] = (step, record)
            continue
        for key, value in row.items():
            kind = type(value)
            if (kind is float or kind is int) and key != "step" and key != "time":
                ks = keys.get(key)
                if ks is None:
                    ks = keys[key] = KeySummary(key)
                ks.steps_logged.append(step)
                if kind is int:
                    number_value = _as_float(value)
                    if not math.isfinite(number_value):
                        summary.note(
                            "int", f"row {number}: {key!r} is an integer too large for a float, "
                            "counted as non-finite"
                        )  # fmt: skip
                    value = number_value
                ks.values.append(value)
    for ks in keys.values():
        ks.finalise()

    if (path / runlog.RUN_FILE).is_file():
        meta = _read_meta(path)
        summary.meta = meta if meta is not None else {"run.json": "unreadable"}
        if meta is None:
            summary.note("run.json", f"{path / runlog.RUN_FILE} cannot be read, ignored")
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
            _table(["media key", "steps"], [[k, str(n)] for k, n in sorted(summary.media.items())])
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


def _is_flat(ks: KeySummary) -> bool:
    """One value all along (a constant such as a world size): a line says nothing."""
    finite = [v for v in ks.values if math.isfinite(v)]
    return len(finite) > 1 and min(finite) == max(finite) and ks.non_finite == 0


def plan_plot(
    summary: RunSummary, keys: Sequence[str] | None
) -> tuple[list[str], dict[str, dict[str, str]], list[str], list[str]]:
    """What ``distlog plot`` draws: curves, their spread columns (``{key: {suffix: column}}``),
    constant keys (listed, not drawn) and histogram keys (their last histogram drawn). Spread columns (``key/rank_min``...) whose key is in
    the run belong to that key's panel; ``rank_argmax`` is a rank index, never a curve."""
    scalar = set(summary.keys)

    def wanted(key: str) -> bool:
        return not keys or any(key == p or fnmatch.fnmatchcase(key, p) for p in keys)

    histograms = sorted(
        k for k, (_, rec) in summary.last_media.items() if rec.get("type") == "histogram"
    )
    histograms = [k for k in histograms if wanted(k)]
    chosen = [k for k in sorted(scalar) if wanted(k)]
    if keys and not chosen and not histograms:
        _select_keys(summary, keys)  # raises: no key matches, naming the run's keys
    spread: dict[str, dict[str, str]] = {}
    curves: list[str] = []
    flat: list[str] = []
    for key in chosen:
        parts = runlog.split_spread(key, scalar)
        if parts is not None:
            spread.setdefault(parts[0], {})[parts[1]] = key
        elif key.rpartition("/")[2] == "rank_argmax":
            continue  # a rank index without its key: nothing to draw
        elif _is_flat(summary.keys[key]):
            flat.append(key)
        else:
            curves.append(key)
    return curves, spread, flat, histograms


def _draw_curve(ax: Any, summary: RunSummary, key: str, spread: dict[str, str]) -> None:
    ks = summary.keys[key]
    steps = np.asarray(ks.steps_logged, dtype=np.float64)
    values = np.asarray(ks.values, dtype=np.float64)
    finite = np.isfinite(values)
    shown = np.where(finite, values, np.nan)  # holes where values are NaN or infinite
    if "rank_min" in spread and "rank_max" in spread:
        low = summary.keys[spread["rank_min"]]
        high = summary.keys[spread["rank_max"]]
        by_step_low = dict(low.series)
        by_step_high = dict(high.series)
        band_steps = [s for s in ks.steps_logged if s in by_step_low and s in by_step_high]
        ax.fill_between(
            band_steps,
            [by_step_low[s] for s in band_steps],
            [by_step_high[s] for s in band_steps],
            color="tab:orange",
            alpha=0.25,
            linewidth=0,
            label="ranks' min-max",
        )
        ax.legend(fontsize=7, loc="best")
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
    argmax = summary.keys.get(spread.get("rank_argmax", ""))
    if argmax is not None and argmax.values:
        ranks = [int(v) for v in argmax.values if math.isfinite(v)]
        if ranks:
            top = max(set(ranks), key=ranks.count)
            title += f"  (max on r{top} in {100 * ranks.count(top) // len(ranks)}% of steps)"
    ax.set_title(title, fontsize=10, loc="left", parse_math=False)  # keys may hold '$'
    ax.set_xlabel("step", fontsize=8)
    ax.grid(True, alpha=0.3)


def _histogram_arrays(record: dict[str, Any]) -> tuple[Any, Any] | None:
    """A histogram record's counts and edges as drawable arrays; None when it is damaged."""
    try:
        counts = np.asarray(record.get("counts", []), dtype=np.float64)
        edges = np.asarray(record.get("edges", []), dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if counts.ndim != 1 or edges.ndim != 1 or len(edges) != len(counts) + 1:
        return None
    if not len(counts) or not np.isfinite(counts).all() or not np.isfinite(edges).all():
        return None
    if np.any(np.diff(edges) < 0):
        return None
    return counts, edges


def _draw_histogram(ax: Any, summary: RunSummary, key: str) -> None:
    step, record = summary.last_media[key]
    arrays = _histogram_arrays(record)
    if arrays is not None:
        ax.stairs(arrays[0], arrays[1], fill=True, color="tab:green", alpha=0.6)
    else:
        summary.note("histogram", f"the histogram of {key!r} at step {step} is not numbers")
        ax.text(0.5, 0.5, "damaged histogram record", ha="center", va="center",
                transform=ax.transAxes, fontsize=8, color="tab:red")  # fmt: skip
    ax.set_title(f"{key}  (histogram, step {step})", fontsize=10, loc="left", parse_math=False)
    ax.set_ylabel("count", fontsize=8)
    ax.grid(True, alpha=0.3)


def _draw_text(ax: Any, title: str, lines: Sequence[str]) -> None:
    ax.axis("off")
    ax.set_title(title, fontsize=10, loc="left", parse_math=False)
    shown = list(lines[:16]) + ([f"... and {len(lines) - 16} more"] if len(lines) > 16 else [])
    ax.text(0.0, 1.0, "\n".join(shown), va="top", ha="left", family="monospace", fontsize=8,
            transform=ax.transAxes, parse_math=False)  # fmt: skip


def _media_index(summary: RunSummary) -> list[str]:
    lines = []
    for key in sorted(summary.media):
        step, record = summary.last_media.get(key, (None, {}))
        kind = record.get("type", "media")
        items = record.get("items")
        where = record.get("path") or next(
            (
                i.get("path")
                for i in (items if isinstance(items, list) else [])
                if isinstance(i, dict)
            ),
            "",
        )
        lines.append(f"{key}: {summary.media[key]} x {kind}, last at step {step}")
        if where:
            lines.append(f"    {where}")
    return lines


MAX_PANELS = 60
"""Most panels ``distlog plot`` draws in one picture: 800 keys took 378 s, 1.4 GB and an
82,000-pixel-high image, 3000 never finished; more is a clear error asking for ``--keys``."""


def _suggested_patterns(keys: Sequence[str]) -> str:
    """A few ``--keys`` patterns by the keys' first path part, most keys first."""
    groups: dict[str, int] = {}
    for key in keys:
        head = key.split("/", 1)[0]
        groups[head] = groups.get(head, 0) + 1
    top = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return " ".join(f"'{head}/*'" if count > 1 else f"'{head}'" for head, count in top)


def plot_run(summary: RunSummary, output: Path, keys: Sequence[str] | None = None) -> list[str]:
    """Draw the run into ``output``; returns the keys drawn.

    One panel per scalar key (step on x), its cross-rank spread as a band when it was logged
    with ``spread=True``; constant keys listed in one text panel, not drawn as lines; the last
    histogram of each histogram key; and, for a run without curves, the index of its media.
    """
    curves, spread, flat, histograms = plan_plot(summary, keys)
    panels: list[tuple[str, Callable[[Any], None]]] = []
    for key in curves:
        panels.append(
            (key, partial(_draw_curve, summary=summary, key=key, spread=spread.get(key, {})))
        )
    for key in histograms:
        panels.append((key, partial(_draw_histogram, summary=summary, key=key)))
    if flat:
        lines = [f"{k} = {_fmt(summary.keys[k].last)}" for k in flat]
        panels.append(("constant keys", partial(_draw_text, title="constant keys", lines=lines)))
    if not curves and summary.media and not keys:
        index = _media_index(summary)
        panels.append(("media index", partial(_draw_text, title="media", lines=index)))
    if not panels:
        raise CliError(f"{summary.run_dir}: no scalar keys or media to plot")
    if len(panels) > MAX_PANELS:
        raise CliError(
            f"{summary.run_dir}: {len(panels)} panels to draw, more than one picture can hold "
            f"({MAX_PANELS}); choose keys with --keys, e.g. --keys "
            f"{_suggested_patterns(curves + histograms)}"
        )
    try:
        import matplotlib
    except ImportError:
        raise CliError("plotting needs matplotlib: pip install 'distlog[media]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(4.2 * columns if columns > 1 else 7.0, 2.8 * rows),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, (_, draw) in zip(axes.flat, panels, strict=False):
        draw(ax)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(str(summary.run_dir), fontsize=11, parse_math=False)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=110)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    except ValueError as exc:  # matplotlib could not draw something; the file is not to blame
        raise CliError(f"cannot draw the plot of {summary.run_dir}: {exc}") from None
    finally:
        plt.close(fig)
    drawn = [*curves, *histograms, *flat]
    return drawn if drawn else sorted(summary.media)


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

    show = sub.add_parser(
        "show", help="summary of a run (per key last, min, max, steps), or a project's runs"
    )
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
            path = Path(args.run_dir)
            if path.is_dir() and not (path / runlog.METRICS_FILE).is_file():
                try:
                    runs = runlog.find_runs(path)
                except (OSError, ValueError, TypeError) as exc:
                    raise CliError(
                        f"{path}: cannot list the runs in it ({type(exc).__name__}: {exc})"
                    ) from None
                if runs:  # a project or experiment directory: list its runs
                    print(format_runs(path, runs))
                    return 0
            print(format_summary(_load_and_note(args.run_dir)))
        elif args.command == "plot":
            summary = _load_and_note(args.run_dir)
            output = Path(args.output)
            known = set(summary.damage)
            drawn = plot_run(summary, output, args.keys)
            _print_damage(summary, skip=known)
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
    except (OSError, ValueError, TypeError, OverflowError) as exc:
        # damage no check above foresaw: still one line, never a traceback
        where = getattr(args, "run_dir", "")
        print(
            f"distlog {args.command}: {where}: cannot read the run ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    return 0


def format_runs(root: Path, runs: Sequence[Path]) -> str:
    """One line per run below ``root`` (oldest start first): where, id, start, steps, exit."""
    lines = [f"{root}: {len(runs)} run{'s' if len(runs) != 1 else ''}"]
    table = [("run", "id", "started", "starts", "last step", "exit")]
    for run in runs:
        info = _read_meta(run) or {}
        raw = info.get("starts")
        starts: list[Any] = raw if isinstance(raw, list) else []
        begun = starts[0].get("time") if starts and isinstance(starts[0], dict) else None
        begun = begun or info.get("created")
        when = (
            _dt.datetime.fromtimestamp(float(begun)).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(begun, int | float)
            else "-"
        )
        try:
            last = runlog.last_step(run)
        except (OSError, ValueError, TypeError):
            last = None
        code = info.get("exit_code")
        table.append(
            (
                str(run.relative_to(root)) if run != root else ".",
                str(info.get("id", "-")),
                when,
                str(len(starts)),
                "-" if last is None else str(last),
                "running" if code is None and starts else str(code if code is not None else "-"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table
    ]
    return "\n".join(line.rstrip() for line in lines)


def _load_and_note(run_dir: str) -> RunSummary:
    summary = load_run(run_dir)
    if summary.torn_tail:
        print(
            f"distlog: note: the last line of {summary.run_dir / runlog.METRICS_FILE} is cut "
            "short (the writer stopped mid-row); it was skipped",
            file=sys.stderr,
        )
    _print_damage(summary)
    return summary


def _print_damage(summary: RunSummary, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """One stderr note per kind of damaged value the run held (the first place it was seen)."""
    for kind, where in summary.damage.items():
        if kind not in skip:
            print(f"distlog: note: {summary.run_dir}: {where}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
