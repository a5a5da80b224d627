"""MLflow from global rank 0: one batched call per flush, config as params, media as artifacts.

Scalars of a flush go in one ``MlflowClient.log_batch`` (chunked at MLflow's 1000 metrics a
call) at their step; [log_config][distlog.logger.Logger.log_config] becomes params with nested keys
flattened (``model.width``), already redacted by the logger; images, figures, videos and tables
become artifacts under ``media/<key>/`` in the files the local run log writes, and histograms a
JSON artifact. Reaching the store is time-boxed like ``wandb.init``: a store that cannot be
reached raises [MlflowInitError][distlog.sinks.mlflow.MlflowInitError], and the mixin goes on
with the local run log.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from distlog.errors import DistlogError

if TYPE_CHECKING:
    from distlog.media import MediaItem

__all__ = ["MlflowInitError", "MlflowSink", "flatten_params", "import_mlflow"]

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
"""MLflow's limits for one ``log_batch`` and for one param value (longer ones are cut)."""

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
        tracking_uri: the store: ``sqlite:///path.db``, ``http://host:5000``, a directory;
            None means MLflow's default (``MLFLOW_TRACKING_URI``, else ``./mlruns``).
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
        from mlflow.entities import Metric, Param

        self._metric, self._param = Metric, Param
        self.tracking_uri = tracking_uri
        self.client: Any = mlflow.MlflowClient(tracking_uri=tracking_uri)
        where = f"the MLflow store {tracking_uri or mlflow.get_tracking_uri()}"
        self.run_id: str = _timed(
            lambda: self._open_run(experiment, run_name, run_id, dict(tags or {})),
            init_timeout,
            where,
        )
        self.resumed = run_id is not None
        self._closed = False

    def _open_run(
        self, experiment: str | None, run_name: str | None, run_id: str | None, tags: dict
    ) -> str:
        if run_id is not None:
            self.client.get_run(run_id)  # raises when the store has no such run
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
    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(key, float(v), now, int(step)) for key, v in values.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH]
            )

    def log_config(self, config: Mapping[str, Any]) -> None:
        flat = flatten_params(config)
        known = self.client.get_run(self.run_id).data.params if self.resumed else {}
        # params are write-once in MLflow: a resumed run re-logs only the ones it lacks
        params = [self._param(k, v) for k, v in flat.items() if k not in known]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        from distlog.media.files import safe_relative_key, save_media

        with tempfile.TemporaryDirectory(prefix="distlog-mlflow-") as tmp:
            media = Path(tmp) / "media"
            record = save_media(item, media, key, step)
            if media.is_dir() and any(media.rglob("*")):
                self.client.log_artifacts(self.run_id, str(media), artifact_path="media")
            if record.get("type") == "histogram":
                name = f"media/{safe_relative_key(key).as_posix()}/step{step}_histogram.json"
                self.client.log_dict(self.run_id, _finite(record), name)

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


def _finite(value: Any) -> Any:
    """JSON-safe copy of a record: non-finite floats as strings, as in ``metrics.jsonl``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [_finite(v) for v in value]
    return value
