"""World: derived group fields, and a logger created before the process group (failure mode 5)."""

from __future__ import annotations

import pytest

import distlog
from distlog import DistlogError, World


def test_group_size_and_rank_derive_from_the_group_ranks() -> None:
    w = World(rank=5, world_size=8, group_ranks=(1, 5, 7))
    assert (w.group_size, w.group_rank) == (3, 1)
    assert (World().group_size, World().group_rank) == (1, 0)
    with pytest.raises(DistlogError, match="rank 2 is not a member"):
        _ = World(rank=2, world_size=8, group_ranks=(1, 5)).group_rank


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2"),
        ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}, "SLURM_STEP_NUM_TASKS=4"),
        ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"}, "SLURM_NTASKS=4"),
        ({"SLURM_STEPID": "3", "SLURM_NPROCS": "2"}, "SLURM_NPROCS=2"),
    ],
)
def test_a_logger_before_init_process_group_in_a_job_of_several_ranks_is_an_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistlogError, match="torch.distributed is not initialized") as info:
        distlog.Logger(sinks=[], handle_signals=False)
    assert named in str(info.value)


def test_a_batch_script_of_one_process_in_a_big_allocation_is_a_world_of_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sbatch --ntasks=4 running one plain ``python``: SLURM_NTASKS=4, but no job step."""
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    monkeypatch.delenv("SLURM_STEPID", raising=False)
    log = distlog.Logger(sinks=[], handle_signals=False)
    assert log.world.world_size == 1
    log.log_scalar("x", 1.0)
    assert log.flush(block=True) == {"x": 1.0}
    log.finish()
