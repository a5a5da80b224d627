"""Who am I, which group do I aggregate over, which device do I compute on.

[World][distlog.World] is a frozen snapshot read from ``torch.distributed`` and torchrun's environment.
It works without any process group (a world of one), so the same code runs in a notebook, in a
single-process test and under ``torchrun``.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from distlog import groups
from distlog.errors import DistlogError

__all__ = ["World", "init_distributed"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise DistlogError(f"environment variable {name}={raw!r} is not an integer") from exc


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _launched_world_size() -> tuple[str, int] | None:
    """The launcher's variable that says this job has several ranks, and its value, if any.

    torchrun sets ``WORLD_SIZE``; ``srun`` sets ``SLURM_STEP_NUM_TASKS`` in each task of a job
    step, and ``SLURM_NTASKS`` / ``SLURM_NPROCS`` there too. Those two are read only inside a
    step (``SLURM_STEP_ID`` set): a batch script that runs one ``python`` in an allocation of
    several tasks is a single process.
    """
    names = ["WORLD_SIZE"]
    if os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID", "")) != "":
        names += ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"]
    for name in names:
        n = _env_int(name, 1)
        if n > 1:
            return name, n
    return None


def _group_of(group: Any, rank: int, world_size: int) -> tuple[str, tuple[int, ...]]:
    """The backend and global ranks of ``group`` (None: the world); a non-member is an error."""
    if group is None:
        return str(dist.get_backend()), tuple(range(world_size))
    try:
        ranks = tuple(dist.get_process_group_ranks(group))
        backend = str(dist.get_backend(group))
    except (ValueError, RuntimeError, KeyError) as exc:  # torch: "Invalid process group"
        raise DistlogError(
            f"rank {rank} is not a member of the group it was given ({exc}); only the ranks "
            "of a group may create a Logger over it"
        ) from None
    if rank not in ranks:
        raise DistlogError(
            f"rank {rank} is not a member of the group it was given (global ranks "
            f"{list(ranks)}); only the ranks of a group may create a Logger over it"
        )
    return backend, ranks


@dataclass(frozen=True)
class World:
    """The calling process's place in the job.

    ``rank``/``world_size`` are global; ``group_ranks`` are the global ranks of ``group``, the
    process group that scalars are aggregated over (``None`` means the default, whole world),
    and ``group_rank``/``group_size`` derive from them.
    The writer is always global rank 0: only it talks to sinks.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    group: Any = None
    group_ranks: tuple[int, ...] = (0,)

    @property
    def group_size(self) -> int:
        """How many ranks the aggregation group has."""
        return len(self.group_ranks)

    @property
    def group_rank(self) -> int:
        """This rank's index within the aggregation group."""
        try:
            return self.group_ranks.index(self.rank)
        except ValueError:
            raise DistlogError(
                f"rank {self.rank} is not a member of the group (global ranks "
                f"{list(self.group_ranks)})"
            ) from None

    @property
    def is_global_zero(self) -> bool:
        """True on the one process that writes to sinks."""
        return self.rank == 0

    @property
    def is_local_zero(self) -> bool:
        return self.local_rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one member is in use."""
        return self.backend is not None and self.world_size > 1

    @property
    def writer_in_group(self) -> bool:
        """True when global rank 0 is a member of the aggregation group.

        Groups without the writer (say the other tensor-parallel replicas of a data-parallel
        dimension) have nobody to deliver results to, so their flushes move nothing.
        """
        return 0 in self.group_ranks

    @property
    def comm_device(self) -> torch.device:
        """Where the fused payload lives.

        The GPU with NCCL, and in a world of one on a GPU (no communication, so nothing forces
        the host): the training thread then never waits for the device. The host with gloo,
        whose collectives run on host memory.
        """
        return groups.collective_device(self.backend, self.device)

    @classmethod
    def current(
        cls,
        group: Any = None,
        *,
        mesh: Any = None,
        mesh_dim: int | str | None = None,
        device: torch.device | str | None = None,
    ) -> World:
        """Read the world from ``torch.distributed`` and torchrun's environment.

        Args:
            group: process group to aggregate over (default: the whole world).
            mesh: a ``DeviceMesh``; with ``mesh_dim`` (name or index) its group along that
                dimension is used, e.g. the data-parallel dimension of a dp x tp mesh, so that
                tensor-parallel replicas are not counted twice.
            device: override the compute device (default ``cuda:LOCAL_RANK`` when CUDA is
                available and in use, else cpu).
        """
        if mesh is not None:
            if group is not None:
                raise DistlogError("pass either group= or mesh=, not both")
            group = mesh.get_group(mesh_dim) if mesh_dim is not None else mesh.get_group()
        elif mesh_dim is not None:
            raise DistlogError("mesh_dim= needs mesh=")

        initialized = _initialized()
        if not initialized:
            if group is not None:
                raise DistlogError("group= was given but torch.distributed is not initialized")
            launched = _launched_world_size()
            if launched is not None:
                raise DistlogError(
                    f"{launched[0]}={launched[1]} says this job has several ranks, but "
                    "torch.distributed is not initialized: call distlog.init_distributed() (or "
                    "torch.distributed.init_process_group) before creating the logger, or every "
                    "rank would write the run as a world of one"
                )
            rank, world_size, backend = 0, 1, None
            group_ranks: tuple[int, ...] = (0,)
        else:
            rank, world_size = dist.get_rank(), dist.get_world_size()
            backend, group_ranks = _group_of(group, rank, world_size)

        # torchrun's variables first; SLURM's (``srun python train.py``, no torchrun) next,
        # only for a real process group: a single process inside an allocation is a world of one.
        slurm = initialized and "SLURM_PROCID" in os.environ
        local_rank = _env_int("LOCAL_RANK", _env_int("SLURM_LOCALID", 0) if slurm else 0)
        local_world_size = _env_int(
            "LOCAL_WORLD_SIZE",
            _env_int("SLURM_NTASKS_PER_NODE", world_size) if slurm else world_size,
        )
        num_nodes = _env_int(
            "GROUP_WORLD_SIZE",
            _env_int("SLURM_NNODES", 0) if slurm else 0,
        ) or max(1, world_size // max(1, local_world_size))
        node_rank = _env_int(
            "GROUP_RANK",
            _env_int(
                "NODE_RANK",
                _env_int("SLURM_NODEID", rank // max(1, local_world_size))
                if slurm
                else rank // max(1, local_world_size),
            ),
        )

        if device is not None:
            dev = torch.device(device)
        elif torch.cuda.is_available() and (backend is None or "nccl" in backend or initialized):
            dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        else:
            dev = torch.device("cpu")

        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            node_rank=node_rank,
            num_nodes=num_nodes,
            device=dev,
            backend=backend,
            group=group,
            group_ranks=group_ranks,
        )

    def check_still_current(self) -> None:
        """Raise if a process group appeared after this world was read as a world of one.

        A logger created before ``init_process_group`` would otherwise flush as a world of one
        on every rank: every rank a writer, values never reduced. Cheap enough for every flush.
        """
        if self.backend is None and _initialized() and dist.get_world_size() > 1:
            raise DistlogError(
                f"this logger was created before torch.distributed was initialized, as a world "
                f"of one; the job now has {dist.get_world_size()} ranks. Create the Logger after "
                "init_process_group (distlog.init_distributed())"
            )


def init_distributed(backend: str | None = None, *, timeout: timedelta | None = None) -> World:
    """Initialise ``torch.distributed`` from torchrun's environment if it is not already.

    Picks NCCL when CUDA is available and gloo otherwise, and selects ``cuda:LOCAL_RANK`` as the
    current device. Outside torchrun (no ``WORLD_SIZE``), does nothing and returns a world of one.

    A gloo process group started here is destroyed at interpreter exit, after distlog's loggers
    closed: a process that exits with a live gloo group aborts in about a third of exits with
    torch 2.13 ("terminate called without an active exception", SIGABRT, which torchrun reports
    as a failed job; measured: 10 of 30 two-rank runs, none of 30 with the group destroyed). A
    group you started yourself is yours to destroy (``dist.destroy_process_group()``).
    """
    if dist.is_available() and not dist.is_initialized() and _env_int("WORLD_SIZE", 1) > 1:
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "nccl" in backend:
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
        kwargs: dict[str, Any] = {"backend": backend}
        if timeout is not None:
            kwargs["timeout"] = timeout
        dist.init_process_group(**kwargs)
        if backend == "gloo":
            atexit.unregister(_destroy_at_exit)  # at most once, however often a group starts
            atexit.register(_destroy_at_exit)  # runs after the loggers' exit hook (LIFO)
    return World.current()


def _destroy_at_exit() -> None:
    """Destroy the process group [init_distributed][distlog.world.init_distributed] started,
    unless someone already did (see there why)."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # exiting anyway: never turn a clean exit into a traceback
            pass
