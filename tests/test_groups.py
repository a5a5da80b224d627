"""distlog.groups without a process group: the device rule, and the torch internals it relies on."""

from __future__ import annotations

import torch

from distlog import World, groups


def test_the_private_torch_names_still_have_their_shape() -> None:
    """Fails loudly when torch changes the helper distlog builds its named subgroups with."""
    assert groups.private_api_matches(), (
        "torch.distributed.distributed_c10d changed: distlog.groups._named_gloo_group needs "
        f"{groups.PRIVATE_TORCH_NAMES} with parameters {groups.HELPER_PARAMETERS}"
    )


def test_collectives_need_the_gpu_only_with_nccl() -> None:
    cuda, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert groups.collective_device("nccl", cuda) == cuda
    assert groups.collective_device("cpu:gloo,cuda:nccl", cuda) == cuda
    assert groups.collective_device(None, cuda) == cuda  # a world of one on a GPU
    assert groups.collective_device("gloo", cuda) == cpu
    assert groups.collective_device("nccl", cpu) == cpu
    assert World(device=cuda, backend="gloo").comm_device == cpu  # World uses the same rule


def test_no_group_where_nothing_is_sent() -> None:
    assert groups.control_group(World(), 10.0) is None
