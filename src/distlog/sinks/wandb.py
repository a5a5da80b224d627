"""Weights & Biases: one run per job, written by the writer rank only.

Only global rank 0 ever constructs a [WandbSink][distlog.sinks.wandb.WandbSink], so a multi-rank job makes exactly one
wandb run and one run directory. Every metric is keyed to the trainer's global step
(``define_metric("*", step_metric=...)``) and each call commits its row at once, so a job killed
between flushes loses nothing already flushed. wandb's own ``step=`` is never passed: a step
that goes backwards (a restart from an older checkpoint) is kept and warned about here, instead
of being dropped by wandb with a warning few people read.

Keys that wandb would overwrite with its own columns (``_step``, ``_runtime``, the step metric)
are logged as ``user/<key>``, and media keys with a path component too long for a file name are
shortened; both with one warning per key, so no value is lost.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distlog.errors import DistlogError
from distlog.media.items import Histogram, Images, Table, Videos

if TYPE_CHECKING:
    from distlog.media.items import MediaItem

__all__ = ["WandbInitError", "WandbSink", "import_wandb", "MAX_HISTOGRAM_BINS"]

MAX_HISTOGRAM_BINS = 512
"""wandb refuses histograms with more bins; larger ones are merged down to fit."""

RESERVED_KEYS = frozenset({"_step", "_runtime", "_timestamp", "_wandb"})
"""Columns wandb writes itself into every row; a user key of that name would be overwritten."""

RENAMED_PREFIX = "user/"
"""What a key that collides with wandb's own columns is logged under (``user/_step``)."""

MEDIA_SUFFIX = "_media"
"""Appended to a media key that is also a scalar key (``loss`` -> ``loss_media``): wandb keeps
one summary value per key, and the media object would replace the scalar's there."""

MAX_MEDIA_COMPONENT_BYTES = 160
"""wandb names a media file ``<key>_<step>_<hash>.<ext>``; a longer key component would make a
file name over the usual 255-byte limit, and the item would be lost."""


class WandbInitError(DistlogError, RuntimeError):
    """``wandb.init`` failed or did not finish in time. The caller can go on without wandb."""


def import_wandb() -> Any:
    """``import wandb``, or an ImportError that says which extra to install."""
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            "the Weights & Biases backend needs the wandb package: pip install 'distlog[wandb]'"
        ) from exc
    return wandb


def has_login() -> bool:
    """True when wandb could log in online without asking: ``WANDB_API_KEY``, or a netrc entry
    for the wandb host (``wandb login`` writes one). Reads no network."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _settings(wandb: Any, init_timeout: float, user: Any) -> Any:
    """Quiet defaults (no system-stats thread, no console capture) that the user may override."""
    values: dict[str, Any] = {
        # wandb's own system stats would come from rank 0's process only; distlog's
        # Logger(system_metrics=True) reports every rank. wandb 0.31 honours x_disable_stats.
        "x_disable_stats": True,
        "console": "off",
        "init_timeout": float(init_timeout),
    }
    if user is None:
        pass
    elif isinstance(user, Mapping):
        values.update(user)
    elif isinstance(user, wandb.Settings):
        values.update(user.model_dump(exclude_unset=True))
    else:
        raise TypeError(
            f"WandbSink(settings=...) takes a dict or wandb.Settings, not {type(user).__name__}"
        )
    try:
        return wandb.Settings(**values)
    except Exception as exc:  # pydantic's ValidationError: an unknown key, a bad value
        raise WandbInitError(f"wandb.Settings rejected settings: {settings_problem(exc)}") from exc


def settings_problem(exc: BaseException) -> str:
    """What ``wandb.Settings(...)`` objected to, one line per setting (pydantic's errors)."""
    errors = getattr(exc, "errors", None)
    try:
        details = errors() if callable(errors) else None
    except Exception:
        details = None
    if not details:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', ())) or '?'}: {d.get('msg', '')}"
        + (f" (got {d['input']!r})" if "input" in d else "")
        for d in details
    )


def _tags(tags: Any) -> list[str] | None:
    """``tags`` as a list of strings. A single string is refused: ``list("a,b")`` would make
    the tags ``a``, ``,`` and ``b``."""
    if tags is None:
        return None
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise TypeError(
            f"WandbSink(tags={tags!r}) takes a list of strings, not a "
            f"{type(tags).__name__}; for one tag write tags=[{tags!r}]"
        )
    out = list(tags)
    bad = [t for t in out if not isinstance(t, str)]
    if bad:
        raise TypeError(f"WandbSink(tags=...) takes strings only, got {bad!r}")
    return out


def _init_with_timeout(wandb: Any, kwargs: dict[str, Any], timeout: float) -> Any:
    """``wandb.init(**kwargs)``, given up on after ``timeout`` seconds.

    wandb's own ``init_timeout`` does not cover every way init can hang, and a hung init on the
    writer holds every other rank in its next collective. init runs on a helper thread; if it
    is abandoned and later succeeds, that run is finished at once so it does not linger.
    """
    result: dict[str, Any] = {}
    abandoned = threading.Event()

    def target() -> None:
        try:
            run = wandb.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            result["error"] = exc
            return
        result["run"] = run
        if abandoned.is_set():
            try:
                run.finish(exit_code=1)
            except Exception:
                pass

    thread = threading.Thread(target=target, name="distlog-wandb-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        abandoned.set()
        if "run" in result:  # finished between join's timeout and the flag
            return result["run"]
        raise WandbInitError(
            f"wandb.init did not finish within {timeout:g}s (init_timeout); "
            "continuing without wandb"
        )
    if "error" in result:
        exc = result["error"]
        raise WandbInitError(f"wandb.init failed: {type(exc).__name__}: {exc}") from exc
    return result["run"]


def _rebin(counts: np.ndarray, edges: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins so at most ``max_bins`` remain; totals and outer edges are kept."""
    n = len(counts)
    if n <= max_bins:
        return counts, edges
    group = math.ceil(n / max_bins)
    starts = np.arange(0, n, group)
    merged = np.add.reduceat(counts, starts)
    new_edges = np.append(edges[starts], edges[-1])
    return merged, new_edges


def _image(image: np.ndarray) -> Any:
    """HWC uint8 as a PIL image, so wandb keeps its shape: given an array, wandb guesses the
    channel axis and turns a 1-pixel-high or -wide image (``1 x W x 3``) into a wrong one."""
    from PIL import Image

    arr = np.ascontiguousarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr)


def _short_component(part: str) -> str:
    """A key component cut to `MAX_MEDIA_COMPONENT_BYTES` bytes of UTF-8, ending in a short hash
    of the whole so that two long keys stay apart."""
    if len(part.encode("utf-8", "surrogatepass")) <= MAX_MEDIA_COMPONENT_BYTES:
        return part
    suffix = "-" + hashlib.sha1(part.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    room = MAX_MEDIA_COMPONENT_BYTES - len(suffix)
    cut = part.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return cut + suffix


class WandbSink:
    """Writes the aggregated rows, media and config of one job to one wandb run.

    Args:
        project, entity, group, name, id, tags, dir, config: passed to ``wandb.init``.
            ``tags`` is a list of strings; a single string is refused with a TypeError.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; None lets ``WANDB_MODE`` decide
            (an explicit mode would override the user's environment).
        resume: ``wandb.init``'s resume policy; with the same ``id`` a restarted job continues
            the same run (offline: a new folder with the same id, uploaded in order by
            ``wandb sync``).
        init_timeout: seconds to wait for ``wandb.init`` before raising `WandbInitError`.
        step_metric: the metric every other metric is plotted against.
        finish_timeout: seconds ``close`` waits for wandb to finish writing the ``.wandb`` file.
        settings: extra ``wandb.Settings`` (a dict or a Settings object). Settings that
            ``wandb.Settings`` rejects (an unknown key, a bad value) raise `WandbInitError`.

    Raises:
        ImportError: wandb is not installed (names the ``distlog[wandb]`` extra).
        WandbInitError: ``wandb.init`` failed or timed out.
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        id: str | None = None,  # noqa: A002 - wandb's name for it
        tags: Iterable[str] | None = None,
        mode: str | None = None,
        dir: str | Path | None = None,  # noqa: A002 - wandb's name for it
        config: Mapping[str, Any] | None = None,
        *,
        resume: str | bool | None = "allow",
        init_timeout: float = 90.0,
        step_metric: str = "trainer/global_step",
        finish_timeout: float = 30.0,
        settings: Any = None,
    ) -> None:
        wandb = import_wandb()
        self._wandb = wandb
        self.step_metric = step_metric
        self.finish_timeout = finish_timeout
        if init_timeout <= 0:
            raise ValueError(f"WandbSink(init_timeout={init_timeout!r}) must be positive")
        kwargs: dict[str, Any] = {
            "project": project,
            "entity": entity,
            "group": group,
            "name": name,
            "id": id,
            "tags": _tags(tags),
            "config": dict(config) if config is not None else None,
            "resume": resume if id is not None else None,
            "settings": _settings(wandb, init_timeout, settings),
        }
        if mode is not None:
            kwargs["mode"] = mode
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(dir)
        self.run: Any = _init_with_timeout(wandb, kwargs, init_timeout)
        self._closed = False
        self.run.define_metric(step_metric)
        self.run.define_metric("*", step_metric=step_metric, step_sync=True)
        self._last_step: int | None = self._previous_last_step()
        self._first_row = True
        self._keys: dict[tuple[str, bool], str] = {}
        """(key, is media) -> the key sent to wandb, so each rename is decided and warned once."""
        self._scalar_names: set[str] = set()
        """The wandb keys scalars went to, which a media key must not take."""
        self._media_names: set[str] = set()
        """The wandb keys media went to."""
        self._media_owners: dict[str, str] = {}
        """wandb key -> the one media key sent there."""

    # -- where things are ------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return str(self.run.id)

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (``.../wandb/offline-run-<time>-<id>``); None when disabled."""
        sync_dir = getattr(self.run.settings, "sync_dir", None)
        return Path(sync_dir) if sync_dir else None

    def _previous_last_step(self) -> int | None:
        """The last step a previous start of this run logged, to catch a step going backwards.

        Online, wandb restores the summary of a resumed run; offline, earlier starts are earlier
        folders with the same id next to this one, read with `distlog.wandb_offline`.
        """
        try:
            value = self.run.summary.get(self.step_metric)
        except Exception:
            value = None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return int(value)
        run_dir = self.run_dir
        if run_dir is None or not self.run.settings._offline:
            return None
        from distlog.wandb_offline import find_run_dirs, last_logged_step, read_run

        earlier = [
            d
            for d in find_run_dirs(run_dir.parent, self.run_id)
            if d.resolve() != run_dir.resolve()
        ]
        if not earlier:
            return None
        try:
            return last_logged_step([read_run(d) for d in earlier], self.step_metric)
        except Exception as exc:  # an unreadable old folder must not stop a new run
            warnings.warn(
                f"wandb run {self.run_id}: could not read earlier offline folders ({exc})",
                stacklevel=2,
            )
            return None

    # -- the Sink protocol -------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"WandbSink.{what} called after close (run {self.run_id})")

    def _note_step(self, step: int) -> None:
        """Warn when a row's step is not after the steps already in this run.

        Within one start, only a step lower than the last is suspicious (several rows share a
        step: scalars, media, validation). The first row after a restart must be beyond
        everything an earlier start logged, or those steps appear twice.
        """
        last = self._last_step
        resumed = self._first_row and last is not None
        if last is not None and (step < last or (resumed and step == last)):
            earlier = " by an earlier start of this run" if resumed else ""
            warnings.warn(
                f"wandb run {self.run_id}: {self.step_metric} {step} is not after {last}, the "
                f"last step already logged{earlier} (a restart from an older checkpoint?). The "
                f"rows are kept; steps {step}..{last} appear twice when plotted against "
                f"{self.step_metric}.",
                UserWarning,
                stacklevel=3,
            )
        self._first_row = False
        self._last_step = step

    def _key(self, key: str, media: bool = False) -> str:
        """The key sent to wandb: ``user/<key>`` for one of wandb's own columns or the step
        metric, media keys with over-long components shortened, ``<key>_media`` for a
        media key that a scalar already uses, and one more ``user/`` for a genuine key of that
        form (``user/_step`` -> ``user/user/_step``); warned about once per key."""
        known = self._keys.get((key, media))
        if known is not None:
            return known
        name, why = key, ""
        bare = key
        while bare.startswith(RENAMED_PREFIX):
            bare = bare[len(RENAMED_PREFIX) :]
        if bare in RESERVED_KEYS or bare == self.step_metric:
            # One more prefix for every key of this family (``_step`` -> ``user/_step``, a
            # genuine ``user/_step`` -> ``user/user/_step``): never two keys in one column,
            # and the same name whatever order the keys come in (a resumed run agrees).
            name = RENAMED_PREFIX + key
            why = (
                "collides with a column wandb or this sink writes into every row"
                if bare == key
                else f"is the name {bare!r} is logged under"
            )
        if media:
            short = "/".join(_short_component(part) for part in name.split("/"))
            if short != name:
                name = short
                why = why or (
                    f"has a path component over {MAX_MEDIA_COMPONENT_BYTES} bytes, too long "
                    "for wandb's media file name"
                )
            owners = self._media_owners

            def taken(n: str) -> bool:
                return n in self._scalar_names or n in RESERVED_KEYS or owners.get(n, key) != key

            if taken(name):
                clash = name
                while taken(name):
                    name += MEDIA_SUFFIX
                why = why or (
                    "is also a scalar key: wandb keeps one summary value per key (what the runs "
                    "table and sweeps read), and the media would replace the scalar's"
                    if clash in self._scalar_names or clash in RESERVED_KEYS
                    else f"would share wandb's column {clash!r} with the media key "
                    f"{owners[clash]!r}"
                )
            owners[name] = key
            self._media_names.add(name)
        else:
            self._scalar_names.add(name)
            if name in self._media_names:
                warnings.warn(
                    f"wandb run {self.run_id}: the scalar key {key!r} was already logged to "
                    f"wandb as media under {name!r}; from now on wandb's summary for {name!r} "
                    "holds the scalar and its history mixes both. Give media keys no scalar "
                    "uses (a media key logged after the scalar is renamed, not mixed)",
                    UserWarning,
                    stacklevel=3,
                )
        if name != key:
            warnings.warn(
                f"wandb run {self.run_id}: the key {key!r} {why}; it is logged to wandb as "
                f"{name!r} (the local run log keeps {key!r})",
                UserWarning,
                stacklevel=3,
            )
        self._keys[(key, media)] = name
        return name

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._check_open("log_scalars")
        self._note_step(step)
        row: dict[str, Any] = {self._key(key): float(value) for key, value in values.items()}
        row[self.step_metric] = int(step)
        self.run.log(row, commit=True)

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        self._check_open("log_media")
        self._note_step(step)
        self.run.log(
            {self._key(key, media=True): self.to_wandb(item), self.step_metric: int(step)},
            commit=True,
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._check_open("log_config")
        self.run.config.update(dict(config), allow_val_change=True)

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """A wandb Artifact (offline too: it is uploaded by ``wandb sync``)."""
        import re

        artifact = self._wandb.Artifact(
            re.sub(r"[^\w.-]+", "-", name).strip("-.") or "artifact", type=type
        )
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, exit_code: int = 0) -> None:
        """Finish the run and wait until wandb has written its exit record (idempotent)."""
        if self._closed:
            return
        self._closed = True
        run_dir = self.run_dir
        self.run.finish(exit_code=int(exit_code))
        if run_dir is None or self.run.settings.mode == "disabled":
            return
        self._wait_for_exit_record(run_dir)

    def _wait_for_exit_record(self, run_dir: Path) -> None:
        """``finish`` may return before the ``.wandb`` file holds the exit record; wait for it."""
        from distlog.wandb_offline import has_exit_record

        deadline = time.monotonic() + self.finish_timeout
        delay = 0.01
        while time.monotonic() < deadline:
            try:
                if has_exit_record(run_dir):
                    return
            except FileNotFoundError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        warnings.warn(
            f"wandb run {self.run_id}: the exit record did not reach {run_dir} within "
            f"{self.finish_timeout:g}s; the run may show as crashed after sync",
            stacklevel=3,
        )

    # -- beyond the protocol -----------------------------------------------------------------

    def watch(self, models: Any, log: str | None = "gradients", log_freq: int = 1000) -> None:
        """Log gradients and/or parameters of ``models`` every ``log_freq`` backward passes.

        DDP/FSDP wrappers are unwrapped so parameter names match the plain model.
        """
        self._check_open("watch")
        items = list(models) if isinstance(models, (list, tuple)) else [models]
        plain = [getattr(m, "module", m) for m in items]
        self.run.watch(plain, log=log, log_freq=log_freq)

    def log_code(self, root: str | Path = ".", name: str | None = None) -> Any:
        """Save the ``.py`` files under ``root`` as the run's code artifact."""
        self._check_open("log_code")
        return self.run.log_code(root=str(root), name=name)

    def to_wandb(self, item: MediaItem) -> Any:
        """A distlog media item as the wandb object (or list of objects) that displays it."""
        wandb = self._wandb
        if isinstance(item, Images):
            captions: list[str | None] = list(item.captions or [])
            captions += [None] * (len(item.images) - len(captions))
            return [
                wandb.Image(_image(img), caption=cap)
                for img, cap in zip(item.images, captions, strict=False)
            ]
        if isinstance(item, Videos):
            out = []
            for video in item.videos:
                frames = video.frames
                if frames.shape[-1] == 1:
                    frames = np.repeat(frames, 3, axis=-1)
                out.append(
                    wandb.Video(
                        np.ascontiguousarray(frames.transpose(0, 3, 1, 2)),  # THWC -> TCHW
                        caption=video.caption,
                        fps=max(1, round(video.fps)),
                        format=video.format,
                    )
                )
            return out
        if isinstance(item, Histogram):
            counts, edges = _rebin(
                np.asarray(item.counts),
                np.asarray(item.edges, dtype=np.float64),
                MAX_HISTOGRAM_BINS,
            )
            return wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))
        if isinstance(item, Table):
            rows = [
                [wandb.Image(_image(c)) if isinstance(c, np.ndarray) else c for c in row]
                for row in item.rows
            ]
            return wandb.Table(columns=list(item.columns), data=rows)
        raise TypeError(f"WandbSink cannot log a {type(item).__name__}")
