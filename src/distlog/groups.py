"""Process groups: the gloo groups distlog talks over, and where a group's tensors must live.

Two rules, written once:

* [control_group][distlog.groups.control_group]: the logger's own gloo group over its ranks,
  with the logger's timeout, so a missing rank is an error and not a hang, and so distlog's
  messages never pair with the user's collectives. The scalar exchange and the media gather
  each get one (built the same way), so they never pair with each other either.
* [collective_device][distlog.groups.collective_device]: a collective's tensors live on the GPU
  for an NCCL group and on the host otherwise.

Why not ``torch.distributed.new_group(ranks, use_local_synchronization=True)`` for a subgroup:
torch names such a group after its ranks *and the number of groups this process already holds*,
so when members of a group hold different numbers of groups (pipeline stage pairs: rank 1 is in
``[0, 1]`` and ``[1, 2]``, rank 0 only in ``[0, 1]``) they wait for each other under different
store keys until the timeout. distlog names its groups itself: the ranks and how many control
groups distlog has built over that rank set in this process, which every member computes alike
without talking to the others.
"""

from __future__ import annotations

import inspect
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from distlog.errors import DistlogError, RankDivergenceError

if TYPE_CHECKING:
    from distlog.world import World

__all__ = ["collective_device", "control_group", "group_device", "not_all_constructed"]

# Control groups built so far per rank set (in this process). Every member of a rank set builds
# its loggers' control groups in the same order, so all members count alike.
_BUILT: dict[tuple[int, ...], int] = {}


def collective_device(backend: str | None, device: torch.device) -> torch.device:
    """Where a collective's tensors must live, for a group of ``backend`` on ``device``.

    The GPU with NCCL, and in a world of one on a GPU (``backend`` None: nothing is
    communicated, so nothing forces the host); the host with gloo, whose collectives run on
    host memory.
    """
    if device.type == "cuda" and (backend is None or "nccl" in backend):
        return device
    return torch.device("cpu")


def group_device(group: Any) -> torch.device:
    """[collective_device][distlog.groups.collective_device] for an existing process group."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    cuda = torch.device("cuda", torch.cuda.current_device())
    return collective_device(str(dist.get_backend(group)), cuda)


def all_gather_json(obj: Any, group: Any) -> list[Any]:
    """Every rank's ``obj``, exchanged as JSON bytes (never pickle: nothing a rank receives
    can run code), in two small all_gathers on the group's device."""
    size = dist.get_world_size(group)
    device = group_device(group)
    data = json.dumps(obj).encode()
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length, group=group)
    sizes = [int(t.item()) for t in lengths]
    buffer = torch.zeros(max(sizes), dtype=torch.uint8)
    buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    buffer = buffer.to(device)
    buffers = [torch.empty_like(buffer) for _ in range(size)]
    dist.all_gather(buffers, buffer, group=group)
    return [json.loads(b[:n].cpu().numpy().tobytes()) for b, n in zip(buffers, sizes, strict=True)]


def control_group(world: World, timeout: float) -> Any:
    """A new gloo group over ``world``'s aggregation group, or None where nothing is sent.

    None in a world of one and in a group without the writer (nobody to deliver to). Every
    member of the group must call it, in the same order as its other control groups; a member
    that does not makes the others raise [RankDivergenceError][distlog.RankDivergenceError]
    after ``timeout`` seconds.
    """
    if world.group_size <= 1 or not world.writer_in_group:
        return None
    tmo = timedelta(seconds=timeout)
    ranks = tuple(world.group_ranks)
    try:
        if world.group is None:
            # The whole world: every rank calls, and torch's own naming agrees on every rank.
            return dist.new_group(backend="gloo", timeout=tmo)
        count = _BUILT.get(ranks, 0) + 1
        _BUILT[ranks] = count
        name = f"distlog-control-{'-'.join(map(str, ranks))}-{count}"
        return _named_gloo_group(name, list(ranks), world.rank, tmo)
    except RuntimeError as exc:  # the store's wait timeout, or gloo's connectFullMesh
        raise not_all_constructed(
            "building distlog's control group", ranks, world.rank, timeout, exc
        ) from exc


def not_all_constructed(
    what: str, ranks: tuple[int, ...], rank: int, timeout: float, exc: BaseException
) -> RankDivergenceError:
    """The error of a collective made while constructing a Logger that did not complete: a
    rank of the group did not construct it (in time, or in the same order)."""
    return RankDivergenceError(
        f"{what} over global ranks {list(ranks)} did not complete within {timeout:g}s on rank "
        f"{rank}: every rank of the group must construct the Logger (and its earlier loggers "
        f"over these ranks) in the same order, within the timeout of each other. Cause: "
        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    )


# torch has no public way to build a registered subgroup under a name of the caller's choice:
# new_group() derives the name from process-local state (see the module docstring). So this
# uses the helper new_group() itself calls, plus the rank map new_group() fills in. Both are
# private; tests/test_groups.py fails loudly when their shape changes.
_C10D = dist.distributed_c10d
PRIVATE_TORCH_NAMES = ("_new_process_group_helper", "_world")
HELPER_PARAMETERS = ("group_size", "group_rank", "global_ranks_in_group", "backend", "store")


def _named_gloo_group(name: str, ranks: list[int], rank: int, timeout: timedelta) -> Any:
    helper: Any = _C10D._new_process_group_helper
    default = dist.group.WORLD
    if default is None:
        raise DistlogError("torch.distributed is not initialized")
    store = default.get_group_store()  # public: the default group's store
    pg, _ = helper(len(ranks), ranks.index(rank), ranks, "gloo", store, name, timeout=timeout)
    _C10D._world.pg_group_ranks[pg] = {g: i for i, g in enumerate(ranks)}
    return pg


def private_api_matches() -> bool:
    """True when the private torch names this module uses still have the expected shape."""
    if not all(hasattr(_C10D, n) for n in PRIVATE_TORCH_NAMES):
        return False
    params = tuple(inspect.signature(_C10D._new_process_group_helper).parameters)
    return (
        params[: len(HELPER_PARAMETERS)] == HELPER_PARAMETERS
        and "group_name" in params
        and "timeout" in params
        and hasattr(_C10D._world, "pg_group_ranks")
    )
