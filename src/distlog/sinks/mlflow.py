"""MLflow from global rank 0: one batched call per flush, config as params, media as artifacts.

Scalars of a flush go in one ``MlflowClient.log_batch`` (chunked at MLflow's 1000 metrics a
call) at their step; [log_config][distlog.logger.Logger.log_config] becomes params with nested keys
flattened (``model.width``), already redacted by the logger; images, figures, videos and tables
become artifacts under ``media/<key>/`` in the files the local run log writes, and histograms a
JSON artifact. Reaching the store is time-boxed like ``wandb.init``: a store that cannot be
reached, or that MLflow refuses to open, raises
[MlflowInitError][distlog.sinks.mlflow.MlflowInitError], and the mixin goes on with the local
run log.

MLflow refuses a whole ``log_batch`` for one name it does not accept, so metric and param names
are checked with MLflow's own rule first; a refused name is sent under a sanitised one (with a
warning naming both, once per key) instead of losing the rest of the row. Each key keeps its
MLflow name for the whole run and no two keys share one: a key whose name another key already
uses (in any earlier flush, or before a restart) gets a hashed name. Renames are recorded as
run tags (``distlog.key.<hash>``) so that a resumed run maps every key as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from distlog.errors import DistlogError

if TYPE_CHECKING:
    from distlog.media import MediaItem

__all__ = [
    "MlflowInitError",
    "MlflowSink",
    "flatten_params",
    "import_mlflow",
    "mlflow_name",
    "valid_mlflow_name",
]

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
MAX_NAME_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 5000
"""MLflow's limits for one ``log_batch``, for one param value (longer ones are cut) and for a
metric or param name (longer ones are shortened by `mlflow_name`), and for the value of the
tag that records a rename (a longer one is not recorded)."""

RENAME_TAG_PREFIX = "distlog.key."
"""Run tags ``distlog.key.<hash of the MLflow name>`` = ``[MLflow name, distlog key]``: which key
a renamed (or hashed) MLflow name stands for, read back when a run is resumed."""

_DOCUMENTED_NAME = re.compile(r"^[/\w.\- :]*$")
"""MLflow's documented rule, used when ``mlflow.utils.validation`` is not importable."""

T = TypeVar("T")


class MlflowInitError(DistlogError, RuntimeError):
    """The MLflow store could not be reached in time, or refused the run. Callers may go on
    without MLflow."""


def import_mlflow() -> Any:
    """``import mlflow``, or an ImportError that says which extra to install."""
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError(
            "the MLflow backend needs the mlflow package: pip install 'distlog[mlflow]'"
        ) from exc
    return mlflow


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as MLflow params: ``{"model": {"width": 8}}`` -> ``{"model.width": "8"}``.

    Lists stay one value (their JSON-like text); values longer than MLflow accepts are cut.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = str(value)
            out[name] = (
                text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
            )
    return out


def _rule() -> tuple[Callable[[str], Any], Callable[[str], bool]]:
    """MLflow's own name checks (its character rule is platform dependent), else the documented
    rule: alphanumerics, ``_ - . / :`` and spaces, and a path that normalises to itself."""
    try:
        from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name
    except ImportError:  # pragma: no cover - older or trimmed mlflow

        def validate_param_and_metric_name(name: str) -> Any:
            return _DOCUMENTED_NAME.match(name)

        def path_not_unique(name: str) -> bool:
            norm = posixpath.normpath(name)
            return norm != name or norm == "." or norm.startswith(("..", "/"))

    return validate_param_and_metric_name, path_not_unique


def valid_mlflow_name(name: str) -> bool:
    """True when MLflow accepts ``name`` as a metric or param name."""
    chars_ok, not_unique = _rule()
    return (
        bool(name)
        and len(name) <= MAX_NAME_LENGTH
        and bool(chars_ok(name))
        and not not_unique(name)
    )


def _short_hash(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def mlflow_name(name: str, *, hashed: bool = False) -> str:
    """``name`` made acceptable to MLflow: refused characters become ``_``, empty, ``.`` and
    ``..`` path components are dropped or neutralised, and a name over 250 characters is cut
    and ends in a short hash of the original (``hashed=True`` adds the hash anyway, to tell
    apart two names that sanitise alike). A valid name is returned unchanged."""
    if valid_mlflow_name(name) and not hashed:
        return name
    chars_ok, _ = _rule()
    text = "".join(c if chars_ok(c) else "_" for c in name)
    parts = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        parts.append("__" if part == ".." else part)
    text = "/".join(parts) or "_"
    if hashed or len(text) > MAX_NAME_LENGTH:
        suffix = f"-{_short_hash(name)}"
        text = text[: MAX_NAME_LENGTH - len(suffix)] + suffix
    return text


def _timed(call: Callable[[], T], timeout: float, what: str) -> T:
    """``call()`` on a helper thread, given up on after ``timeout`` seconds (MLflow's HTTP
    client retries a refused connection for minutes)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target, name="distlog-mlflow-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise MlflowInitError(f"{what} did not answer within {timeout:g}s (init_timeout)")
    if "error" in result:
        exc = result["error"]
        raise MlflowInitError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    return result["value"]  # type: ignore[no-any-return]


class MlflowSink:
    """Writes a distlog run to one MLflow run.

    Args:
        tracking_uri: the store: ``sqlite:///path.db``, ``http://host:5000``, or a directory
            (a file store: MLflow 3 opens one only with ``MLFLOW_ALLOW_FILE_STORE=true``, else
            `MlflowInitError`); None means MLflow's default (``MLFLOW_TRACKING_URI``, else,
            with MLflow 3, ``sqlite:///mlflow.db`` in the working directory, or ``./mlruns``
            when that already holds runs).
        experiment: experiment name, created if missing (None: MLflow's default experiment).
        run_name: the run's display name.
        run_id: continue this MLflow run instead of creating one (a restarted job:
            ``MLflowLoggerMixin`` passes the id kept in ``run.json``).
        tags: run tags.
        init_timeout: seconds to reach the store and create or reopen the run.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        *,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        init_timeout: float = 30.0,
    ) -> None:
        if init_timeout <= 0:
            raise ValueError(f"MlflowSink(init_timeout={init_timeout!r}) must be positive")
        mlflow = import_mlflow()
        from mlflow.entities import Metric, Param, RunTag

        self._metric, self._param, self._tag = Metric, Param, RunTag
        self.tracking_uri = tracking_uri
        self.client: Any = None
        self._known: Any = None
        """The resumed run as the store had it (its metric, param and tag names)."""
        where = f"the MLflow store {tracking_uri or _default_uri(mlflow)}"

        def connect() -> str:
            # the client resolves and opens the store: MLflow 3 refuses a directory (a file
            # store) here unless MLFLOW_ALLOW_FILE_STORE=true, so it belongs inside the guard
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            return self._open_run(experiment, run_name, run_id, dict(tags or {}))

        self.run_id: str = _timed(connect, init_timeout, where)
        self.resumed = run_id is not None
        self._closed = False
        self._names: dict[str, str] = {}
        """Each key seen so far (metric or param) and the MLflow name it is sent under."""
        self._taken: dict[str, str] = {}
        """Each MLflow name in use and the key it stands for (two keys never share one)."""
        self._params: dict[str, str] = {}
        """The params the run has (MLflow name -> value): params are write-once in MLflow."""
        self._param_warned: set[tuple[str, str]] = set()
        if self._known is not None:
            self._learn(self._known)
            self._known = None
        self._media_names: dict[str, tuple[int, set[str]]] = {}
        """Per key folder, the last step with media and the files sent for it: a second item
        of that key at that step gets a new name instead of overwriting the first."""

    def _open_run(
        self, experiment: str | None, run_name: str | None, run_id: str | None, tags: dict
    ) -> str:
        if run_id is not None:
            self._known = self.client.get_run(run_id)  # raises when the store has no such run
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        if experiment is None:
            experiment_id = "0"
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(experiment)
            )
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        return str(run.info.run_id)

    # ------------------------------------------------------------------------ the protocol
    def _learn(self, run: Any) -> None:
        """What a resumed run already holds: the renames recorded in its tags, then every other
        metric and param name as taken by the key of that name, and its params' values."""
        for tag, value in run.data.tags.items():
            if not tag.startswith(RENAME_TAG_PREFIX):
                continue
            try:
                name, key = json.loads(value)
            except (ValueError, TypeError):
                continue
            if isinstance(name, str) and isinstance(key, str):
                self._names.setdefault(key, name)
                self._taken.setdefault(name, key)
        for name in (*run.data.metrics, *run.data.params):
            self._taken.setdefault(name, name)
            if self._taken[name] == name:
                self._names.setdefault(name, name)
        self._params.update(run.data.params)

    def _names_for(self, keys: Iterable[str]) -> tuple[dict[str, str], list[Any]]:
        """The MLflow name of each key, and the tags that record the new renames. Keys MLflow
        accepts are resolved first, so that within one flush a valid key keeps its own name."""
        out: dict[str, str] = {}
        new: list[str] = []
        for key in keys:
            name = self._names.get(key)
            if name is None:
                new.append(key)
            else:
                out[key] = name
        tags: list[Any] = []
        for key in sorted(dict.fromkeys(new), key=lambda k: not valid_mlflow_name(k)):
            out[key] = self._resolve(key, tags)
        return out, tags

    def _resolve(self, key: str, tags: list[Any]) -> str:
        """The name ``key`` is sent under for the whole run: itself when MLflow accepts it and
        no other key uses it, else a sanitised (and, when that is taken, hashed) name that no
        other key uses (warned about once)."""
        name = self._names.get(key)
        if name is not None:
            return name
        valid = valid_mlflow_name(key)
        name = mlflow_name(key)
        if self._taken.get(name, key) != key:
            name = mlflow_name(key, hashed=True)
            n = 1
            while self._taken.get(name, key) != key:  # a key that is that hashed name
                n += 1
                name = f"{mlflow_name(key, hashed=True)[: MAX_NAME_LENGTH - 1 - len(str(n))]}-{n}"
        self._names[key] = name
        self._taken[name] = key
        if name == key:
            return name
        record = json.dumps([name, key])
        if len(record) <= MAX_TAG_VALUE_LENGTH:
            tags.append(self._tag(f"{RENAME_TAG_PREFIX}{_short_hash(name)}", record))
        why = (
            f"the MLflow name {key!r} is already used by {self._taken[key]!r}"
            if valid
            else f"MLflow does not accept the name {key!r} (only alphanumerics, _ - . / : and "
            f"spaces, at most {MAX_NAME_LENGTH} characters)"
        )
        warnings.warn(f"{why}; it is logged to MLflow as {name!r}", UserWarning, stacklevel=4)
        return name

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        names, tags = self._names_for(values)
        metrics = [self._metric(names[key], float(v), now, int(step)) for key, v in values.items()]
        for start in range(0, max(len(metrics), 1), MAX_METRICS_PER_BATCH):
            chunk = metrics[start : start + MAX_METRICS_PER_BATCH]
            if chunk or tags:
                self.client.log_batch(self.run_id, metrics=chunk, tags=tags)
            tags = []

    def log_config(self, config: Mapping[str, Any]) -> None:
        flat = flatten_params(config)
        names, tags = self._names_for(flat)
        # params are write-once in MLflow (a batch with one changed value is refused whole):
        # send only the ones the run lacks, and say which changed values MLflow keeps as before
        params = []
        for key, value in flat.items():
            name = names[key]
            old = self._params.get(name)
            if old is None:
                params.append(self._param(name, value))
            elif old != value and (name, value) not in self._param_warned:
                self._param_warned.add((name, value))
                warnings.warn(
                    f"MLflow cannot change a param: {name!r} stays {old!r} in the MLflow run; "
                    f"the new value {value!r} is kept in the local run log",
                    UserWarning,
                    stacklevel=3,
                )
        for start in range(0, max(len(params), 1), MAX_PARAMS_PER_BATCH):
            chunk = params[start : start + MAX_PARAMS_PER_BATCH]
            if chunk or tags:
                self.client.log_batch(self.run_id, params=chunk, tags=tags)
                self._params.update((p.key, p.value) for p in chunk)
            tags = []

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        from distlog.media.files import safe_relative_key, save_media

        folder = safe_relative_key(key)
        entry = self._media_names.get(folder.as_posix())
        if entry is None or entry[0] != int(step):  # only the current step can clash
            entry = self._media_names[folder.as_posix()] = (int(step), set())
        sent = entry[1]
        with tempfile.TemporaryDirectory(prefix="distlog-mlflow-") as tmp:
            media = Path(tmp) / "media"
            # placeholders for the files this run already has here, so that save_media picks
            # new names (as it does in the local run log) instead of overwriting them
            placeholders = [media / folder / name for name in sent]
            for path in placeholders:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            record = save_media(item, media, key, step)
            for path in placeholders:
                path.unlink()
            new = [p for p in media.rglob("*") if p.is_file()]
            if new:
                self.client.log_artifacts(self.run_id, str(media), artifact_path="media")
                sent.update(p.relative_to(media / folder).as_posix() for p in new)
            if record.get("type") == "histogram":
                base, name, n = f"step{step}_histogram", f"step{step}_histogram.json", 1
                while name in sent:
                    name, n = f"{base}-{n}.json", n + 1
                sent.add(name)
                self.client.log_dict(
                    self.run_id, _finite(record), f"media/{folder.as_posix()}/{name}"
                )

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """A file or a directory, under the artifact folder ``name``."""
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path=name)

    def close(self, exit_code: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        status = "FINISHED" if exit_code == 0 else "KILLED" if exit_code >= 128 else "FAILED"
        self.client.set_terminated(self.run_id, status=status)


def _default_uri(mlflow: Any) -> str:
    """MLflow's default store, for messages (resolving it must not raise before the guard)."""
    try:
        return str(mlflow.get_tracking_uri())
    except Exception:  # noqa: BLE001 - only a label
        return "(MLflow's default)"


def _finite(value: Any) -> Any:
    """JSON-safe copy of a record: non-finite floats as strings, as in ``metrics.jsonl``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [_finite(v) for v in value]
    return value
