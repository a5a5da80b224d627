"""Where ranks sit: several nodes, SLURM, a 2-D DeviceMesh, pipeline stages.

- Two torchrun agents (``--nnodes=2``, c10d rendezvous on 127.0.0.1), two ranks each: exactly
  one writer in the whole job, values reduced over all four ranks, World reporting node ranks as
  torchrun assigned them (the rendezvous, not ``--node-rank``, decides them).
- ``srun`` without torchrun: World falls back to SLURM's variables.
- dp x tp mesh: aggregating over "dp" does not count tensor-parallel replicas twice.
- pipeline: a key only the last stage logs reaches the writer with the default world group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import world_job
from dist_harness import free_port, run_ranks, subprocess_env

import distlog

pytestmark = pytest.mark.slow  # every test here starts several processes

JOB = str(Path(world_job.__file__).resolve())


def test_two_agents_four_ranks_one_writer(tmp_path):
    port = free_port()
    agents = []
    for node in range(2):
        log = (tmp_path / f"agent{node}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node-rank={node}",
            "--nproc_per_node=2",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=multinode",
            "--max-restarts=0",
            "--monitor-interval=0.1",
            JOB,
            "--out",
            str(tmp_path),
        ]
        agents.append(
            subprocess.Popen(cmd, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        )
    try:
        codes = [a.wait(timeout=240) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    logs = "\n".join((tmp_path / f"agent{n}.log").read_text()[-3000:] for n in range(2))
    assert codes == [0, 0], logs
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]

    # World matches torchrun's real environment on every rank
    for r, rep in enumerate(reports):
        w, env = rep["world"], rep["env"]
        assert w["rank"] == r == int(env["RANK"]) and w["world_size"] == 4
        assert w["local_rank"] == int(env["LOCAL_RANK"]) and w["local_world_size"] == 2
        assert w["node_rank"] == int(env["GROUP_RANK"])
        assert w["num_nodes"] == int(env["GROUP_WORLD_SIZE"]) == 2
        assert w["rank"] == w["node_rank"] * 2 + w["local_rank"]
        assert w["is_local_zero"] == (w["local_rank"] == 0)
    assert sorted(rep["world"]["node_rank"] for rep in reports) == [0, 0, 1, 1]

    # exactly one writer: sinks and rows on global rank 0 only, one run log in the whole job
    assert [rep["sinks"] for rep in reports] == [1, 0, 0, 0]
    assert [rep["world"]["is_global_zero"] for rep in reports] == [True, False, False, False]
    assert all(row is None for rep in reports[1:] for row in rep["rows"])
    writer_node = reports[0]["world"]["node_rank"]
    assert sorted(p.parent.name for p in tmp_path.glob("node*/run")) == [f"node{writer_node}"]

    # values reduced over all four ranks, each rank's node counted once
    rows = distlog.read_metrics(tmp_path / f"node{writer_node}" / "run")
    assert [r["step"] for r in rows] == list(world_job.STEPS)
    for row, returned in zip(rows, reports[0]["rows"], strict=True):
        step = row["step"]
        assert row["rank/mean"] == 1.5 and row["rank/sum"] == 6 + 4 * step
        assert row["rank/max"] == 3 and row["rank/min"] == 0
        assert row["node/mean"] == 0.5
        assert row["spread/rank_argmax"] == 3 and row["spread/rank_min"] == 0
        assert row["spread/rank_max"] == 30
        assert {k: v for k, v in row.items() if k not in ("step", "time")} == returned


def world_under_srun(rank: int):
    """What World says when SLURM started the ranks (no torchrun variables)."""
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "NODE_RANK"):
        os.environ.pop(name, None)
    os.environ.update(
        SLURM_PROCID=str(rank),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(rank),
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="1",
    )
    w = distlog.World.current()
    return w.rank, w.local_rank, w.local_world_size, w.node_rank, w.num_nodes


def test_world_reads_slurm_variables_without_torchrun():
    # one task per node on two nodes
    assert run_ranks(world_under_srun, 2) == [(0, 0, 1, 0, 2), (1, 0, 1, 1, 2)]


def dp_tp_mesh(rank: int, tmp: str):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp = mesh.get_local_rank("dp")
    tp = mesh.get_local_rank("tp")
    from torch.distributed.tensor import DTensor, Partial, Replicate

    logger = distlog.Logger(run_dir=tmp, mesh=mesh, mesh_dim="dp", async_write=False)
    rows, collectives = [], []
    # a replicated DTensor (say a loss under tensor parallelism) is logged from its local value;
    # a partial one would need a collective to mean anything: refused at the call, on this rank
    logger.log_scalar(
        "dtensor", DTensor.from_local(torch.tensor(2.0 + dp), mesh["tp"], [Replicate()])
    )
    try:
        logger.log_scalar("partial", DTensor.from_local(torch.tensor(1.0), mesh["tp"], [Partial()]))
        refused = ""
    except distlog.LogValueError as exc:
        refused = str(exc)
    for step in range(3):
        # tensor-parallel replicas hold the same loss and batch: only dp differs
        logger.log_scalar("loss", 10.0 * dp + step)
        logger.log_scalar("samples", 8, reduce="sum")
        logger.log_scalar("loss_max", 10.0 * dp + step, reduce="max")
        rows.append(logger.flush(step, block=True))
        collectives.append(logger.collectives_last_flush)
    logger.finish()
    return (dp, tp), logger.world.group_ranks, rows, collectives, refused


def test_dp_aggregation_on_a_dp_x_tp_mesh_counts_each_replica_once(tmp_path):
    res = run_ranks(dp_tp_mesh, 4, str(tmp_path), timeout=240)
    coords = [r[0] for r in res]
    assert coords == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # dp groups are the mesh columns; only the writer's column exchanges anything
    assert [r[1] for r in res] == [(0, 2), (1, 3), (0, 2), (1, 3)]
    counts = [r[3] for r in res]
    assert counts[1] == counts[3] == [0, 0, 0]  # tp replicas of other columns: no exchange
    assert counts[0] == counts[2] and all(n > 0 for n in counts[0])
    rows = res[0][2]
    assert rows[0].pop("dtensor") == 2.5  # mean over the dp replicas (2.0 and 3.0)
    assert all("'partial'" in r[4] and "full_tensor()" in r[4] for r in res)
    for step, row in enumerate(rows):
        # reference over the dp replicas (ranks 0 and 2): tp copies are not counted again
        assert row == {"loss": (step + 10.0 + step) / 2, "samples": 16.0, "loss_max": 10.0 + step}
    written = distlog.read_metrics(tmp_path)
    assert [r["samples"] for r in written] == [16.0, 16.0, 16.0] and written[0]["dtensor"] == 2.5


def pipeline_last_stage(rank: int, tmp: str):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "dp"))
    last_stage = mesh.get_local_rank("pp") == 1
    logger = distlog.Logger(run_dir=tmp, async_write=False)  # the default world group
    for step in range(2):
        logger.log_scalar("throughput", 100.0 + rank, reduce="sum")
        if last_stage:  # only the last stage computes the loss
            logger.log_scalar("train/loss", 1.0 + rank + step)
        logger.flush(step)
    logger.finish()
    return last_stage


def test_a_key_only_the_last_pipeline_stage_logs_reaches_the_writer(tmp_path):
    stages = run_ranks(pipeline_last_stage, 4, str(tmp_path), timeout=240)
    assert stages == [False, False, True, True]
    rows = distlog.read_metrics(tmp_path)
    for step, row in enumerate(rows):
        assert row["train/loss"] == ((3.0 + step) + (4.0 + step)) / 2  # ranks 2 and 3 only
        assert row["throughput"] == 400.0 + 0 + 1 + 2 + 3
