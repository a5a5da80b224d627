"""Media across real gloo ranks: rank-0-only by default, selective gathering, distributed histograms.

Every expected value is recomputed here from each rank's raw input (the inputs are seeded by rank),
never copied from the code under test.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from dist_harness import RankPool
from wandb_helpers import wandb_env

from distlog.media import Images, Table, to_images, to_table, to_videos

pytestmark = pytest.mark.slow

GATHER_WORLD = 4


@pytest.fixture(scope="module")
def pool2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two gloo ranks shared by the tests below (wandb, if used, writes under a temp dir)."""
    pool = RankPool(2, env=wandb_env(tmp_path_factory.mktemp("wandb")))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def pool4() -> Any:
    pool = RankPool(GATHER_WORLD)
    yield pool
    pool.close()


def c10d_ops(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``fn`` under the profiler; return its result and every c10d operation it issued.

    The profiler sees communication whatever Python path issues it (but costs ~5 s to start).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    return result, [e.name for e in prof.events() if e.name.startswith("c10d::")]


_COMM_FUNCS = (
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "reduce",
    "broadcast",
    "gather",
    "scatter",
    "all_to_all",
    "reduce_scatter",
    "barrier",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "all_gather_object",
    "gather_object",
    "broadcast_object_list",
    "send_object_list",
    "recv_object_list",
)


def dist_calls(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``fn`` and list the torch.distributed functions it called (a pass-through counter).

    Cheaper than the profiler; counts calls through ``torch.distributed``, as distlog makes them.
    """
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    calls: list[str] = []
    saved = {name: getattr(dist, name) for name in _COMM_FUNCS if hasattr(dist, name)}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    try:
        for name, real in saved.items():
            setattr(dist, name, counting(name, real))
            setattr(c10d, name, getattr(dist, name))
        result = fn()
    finally:
        for name, real in saved.items():
            setattr(dist, name, real)
            setattr(c10d, name, real)
    return result, calls


def images_of(rank: int, n: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.rand(n if n is not None else rank + 1, 3, 4 + rank, 5, generator=g)


def captions_of(rank: int, n: int) -> list[str]:
    return [f"r{rank}i{i}" for i in range(n)]


def videos_of(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + rank)
    return torch.rand(2, 1, 3, 4, 6, generator=g) * 2 - 1  # (B, C, T, H, W) in [-1, 1]


def table_of(rank: int) -> tuple[list[str], list[list[Any]]]:
    g = torch.Generator().manual_seed(300 + rank)
    rows = [
        [torch.rand(3, 2, 2, generator=g), f"rank{rank}-row{i}", i * 0.5, None] for i in range(rank)
    ]  # rank 0 has no rows at all
    return ["img", "label", "score", "note"], rows


def hist_values(rank: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(400 + rank)
    v = torch.randn(n, generator=g, dtype=torch.float64) * (rank + 1) + rank
    v[: n // 4] = torch.round(v[: n // 4])  # plenty of values exactly on shared bin edges
    return v.to(dtype)


def make_figure(rank: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.plot([0, rank])
    return fig


# --- 1. the default: rank 0 only, nobody else communicates ---------------------------------------


def _default_rank0_only(rank: int) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    from distlog import World
    from distlog.media import (
        collect_histogram,
        collect_images,
        collect_plot,
        collect_table,
        collect_videos,
    )

    world = World.current()
    cols, rows = table_of(2)

    def calls() -> list[Any]:
        if rank == 0:
            inputs: dict[str, Any] = {"images": images_of(0), "videos": videos_of(0)}
        else:  # garbage on the other ranks: never looked at, never an error
            inputs = {"images": torch.full((2, 3, 4, 4), float("nan")), "videos": "not a video"}
        out = [
            collect_images(world, inputs["images"], "cap", desc="val/images"),
            collect_videos(world, inputs["videos"], desc="val/videos", fps=3),
            collect_plot(world, make_figure(rank), desc="val/plot"),
            collect_histogram(world, hist_values(rank, 1000), desc="val/hist", bins=16),
            collect_table(world, cols, rows, desc="val/table"),
        ]
        return out

    # rank 1 makes these calls three times, rank 0 once: any communication would pair wrongly
    results, ops = c10d_ops(lambda: [calls() for _ in range(1 if rank == 0 else 3)])
    check = torch.tensor([rank + 1.0])
    torch.distributed.all_reduce(check)  # the group is still in lock-step
    return {
        "results": results[0],
        "ops": ops,
        "open_figures": plt.get_fignums(),
        "check": check.item(),
    }


def test_default_is_rank0_only_without_communication(pool2: RankPool) -> None:
    out = pool2.run(_default_rank0_only, timeout=120)
    assert [o["ops"] for o in out] == [[], []]
    assert [o["check"] for o in out] == [3.0, 3.0]
    assert [o["open_figures"] for o in out] == [[], []]  # closed on every rank
    assert out[1]["results"] == [None] * 5
    images, videos, plot, hist, table = out[0]["results"]
    want = to_images(images_of(0), "cap", desc="x")
    assert images.captions == ["cap"] and np.array_equal(
        np.stack(images.images), np.stack(want.images)
    )
    want_v = to_videos(videos_of(0), desc="x", fps=3)
    assert [v.caption for v in videos.videos] == [None, None]
    assert all(
        np.array_equal(a.frames, b.frames)
        for a, b in zip(videos.videos, want_v.videos, strict=True)
    )
    assert isinstance(plot, Images) and plot.images[0].shape == (20, 20, 3)
    counts, edges = np.histogram(hist_values(0, 1000).numpy(), bins=16)
    assert np.array_equal(hist.counts, counts) and np.array_equal(hist.edges, edges)
    assert table.columns == table_of(2)[0] and len(table.rows) == 2


# --- 2. gathering from chosen ranks --------------------------------------------------------------


def _gather(rank: int) -> dict[str, Any]:
    import sys

    from distlog import World
    from distlog.media import (
        collect_histogram,
        collect_images,
        collect_plot,
        collect_table,
        collect_videos,
    )

    world = World.current()
    n = rank + 1
    x = images_of(rank)
    if rank == 1:  # ranks may pass different layouts: numpy HWC uint8 here
        x = to_images(x, desc="x").images
        x = np.stack(x)
    cols, rows = table_of(rank)

    def calls() -> list[Any]:
        return [
            collect_images(world, x, captions=captions_of(rank, n), desc="val/images", ranks="all"),
            # ranks that are not chosen may pass anything: their input is never looked at
            collect_videos(
                world,
                videos_of(rank) if rank in (1, 2) else None,
                desc="val/videos",
                fps=2 + rank,
                format="gif",
                ranks=[1, 2],
            ),
            collect_plot(
                world, make_figure(rank) if rank == 2 else "no figure", desc="val/plot", ranks=[2]
            ),
            collect_table(world, cols, rows, desc="val/table", ranks="all"),
            collect_histogram(
                world, hist_values(rank, 500 * n), desc="val/hist", bins=20, ranks=[1, 2]
            ),
        ]

    results, ops = dist_calls(calls)
    plt = sys.modules.get("matplotlib.pyplot")
    return {
        "results": results,
        "ops": ops,
        "open_figures": plt.get_fignums() if plt is not None else [],
    }


def test_gathering_from_chosen_ranks_in_rank_order(pool4: RankPool) -> None:
    out = pool4.run(_gather, timeout=180)
    assert all(o["results"] == [None] * 5 for o in out[1:])
    assert [o["open_figures"] for o in out] == [[]] * GATHER_WORLD
    images, videos, plot, table, hist = out[0]["results"]

    want_imgs, want_caps = [], []
    for r in range(GATHER_WORLD):
        want_imgs += to_images(images_of(r), desc="x").images
        want_caps += [f"rank {r}: {c}" for c in captions_of(r, r + 1)]
    assert images.captions == want_caps
    assert len(images.images) == len(want_imgs) == sum(range(1, GATHER_WORLD + 1))
    assert all(np.array_equal(a, b) for a, b in zip(images.images, want_imgs, strict=True))

    want_v = [(r, v) for r in (1, 2) for v in to_videos(videos_of(r), desc="x").videos]
    assert [v.caption for v in videos.videos] == [f"rank {r}" for r, _ in want_v]
    assert [v.fps for v in videos.videos] == [2.0 + r for r, _ in want_v]
    assert all(
        np.array_equal(a.frames, b.frames) for a, (_, b) in zip(videos.videos, want_v, strict=True)
    )

    assert plot.captions == ["rank 2"] and plot.images[0].shape == (20, 20, 3)

    assert isinstance(table, Table) and table.columns == ["rank", *table_of(0)[0]]
    want_rows = [
        [r, *row] for r in range(GATHER_WORLD) for row in to_table(*table_of(r), desc="x").rows
    ]
    assert [row[0] for row in table.rows] == [row[0] for row in want_rows] == [1, 2, 2, 3, 3, 3]
    for got, want in zip(table.rows, want_rows, strict=True):
        assert np.array_equal(got[1], want[1]) and got[2:] == want[2:]

    allv = np.concatenate([hist_values(r, 500 * (r + 1)).numpy() for r in (1, 2)])
    counts, edges = np.histogram(allv, bins=20)
    assert np.array_equal(hist.edges, edges) and np.array_equal(hist.counts, counts)

    # what moved: one header all_gather per call (+ a count all_reduce for the histogram);
    # pixels travel point to point from the chosen ranks only
    ops0, ops1, ops2, ops3 = (o["ops"] for o in out)
    assert sorted(set(ops0)) == ["all_gather", "all_reduce", "irecv"]
    assert ops0.count("all_gather") == 5 and ops0.count("all_reduce") == 1
    assert ops0.count("irecv") == 2 * (3 + 2 + 1 + 3)  # sizes + payload per sender and call
    assert ops1.count("isend") == 2 * 3  # images, videos, table rows
    assert ops2.count("isend") == 2 * 4  # images, videos, plot, table rows
    assert ops3.count("isend") == 2 * 2  # images, table rows: not chosen for videos and plot
    assert "irecv" not in ops1 + ops2 + ops3


# --- 3. histograms: shared edges, summed counts, DTensors -----------------------------------------


def _histograms(rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from distlog import World
    from distlog.media import collect_histogram

    world = World.current()
    out: dict[str, Any] = {}
    sizes = {0: 700, 1: 1300, 2: 50, 3: 0}  # uneven, and rank 3 has no values at all
    out["all_f32"] = collect_histogram(
        world, hist_values(rank, sizes[rank]), desc="a", bins=33, ranks="all"
    )
    v64 = hist_values(rank, 300, torch.float64)
    if rank == 1:
        v64[:7] = torch.tensor(
            [float("nan"), float("inf"), -float("inf")] * 2 + [float("nan")], dtype=torch.float64
        )
    out["all_f64_nonfinite"] = collect_histogram(world, v64, desc="b", bins=10, ranks="all")
    out["some"] = collect_histogram(world, hist_values(rank, 400), desc="c", bins=8, ranks=[1, 3])

    # communication does not grow with the tensor: same collectives for 10 and 200k values
    _, ops_small = dist_calls(
        lambda: collect_histogram(world, hist_values(rank, 10), desc="d", ranks="all")
    )
    _, ops_big = dist_calls(
        lambda: collect_histogram(world, hist_values(rank, 200_000), desc="d", ranks="all")
    )
    out["ops"] = (ops_small, ops_big)

    g = torch.Generator().manual_seed(7)
    full = torch.randn(4 * 37 + 3, 5, generator=g)  # uneven rows over 4 ranks
    full[:20] = torch.round(full[:20])
    mesh = init_device_mesh("cpu", (4,))
    out["dt_shard"] = collect_histogram(
        world, distribute_tensor(full, mesh, [Shard(0)]), desc="w", bins=25
    )
    tiny = torch.tensor([3.0, -1.0, 2.0])  # 3 elements on 4 ranks: one shard is empty
    out["dt_tiny"] = collect_histogram(
        world, distribute_tensor(tiny, mesh, [Shard(0)]), desc="tiny", bins=4, ranks="all"
    )
    replicated = distribute_tensor(full, mesh, [Replicate()])  # (distributing communicates)
    out["dt_repl"], out["ops_repl"] = dist_calls(
        lambda: collect_histogram(world, replicated, desc="r", bins=25)
    )

    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    out["dt_hsdp"] = collect_histogram(
        world, distribute_tensor(full, mesh2, [Replicate(), Shard(0)]), desc="hsdp", bins=25
    )
    out["dt_2d"] = collect_histogram(
        world, distribute_tensor(full, mesh2, [Shard(0), Shard(1)]), desc="2d", bins=25
    )
    return out


def test_distributed_histograms_equal_numpy_of_all_values(pool4: RankPool) -> None:
    out = pool4.run(_histograms, timeout=180)
    for o in out[1:]:
        assert all(o[k] is None for k in o if k.startswith(("all", "some", "dt")))
    res = out[0]
    sizes = {0: 700, 1: 1300, 2: 50, 3: 0}

    def check(h: Any, values: np.ndarray, bins: int) -> None:
        counts, edges = np.histogram(values, bins=bins)
        assert h.edges.dtype == edges.dtype
        assert np.array_equal(h.edges, edges)
        assert np.array_equal(h.counts, counts)

    check(res["all_f32"], np.concatenate([hist_values(r, sizes[r]).numpy() for r in range(4)]), 33)
    allv = []
    for r in range(4):
        v = hist_values(r, 300, torch.float64).numpy()
        allv.append(v[7:] if r == 1 else v)
    check(res["all_f64_nonfinite"], np.concatenate(allv), 10)
    assert res["all_f64_nonfinite"].nonfinite == 7
    check(res["some"], np.concatenate([hist_values(r, 400).numpy() for r in (1, 3)]), 8)

    g = torch.Generator().manual_seed(7)
    full = torch.randn(4 * 37 + 3, 5, generator=g)
    full[:20] = torch.round(full[:20])
    for key in ("dt_shard", "dt_repl", "dt_hsdp", "dt_2d"):
        check(res[key], full.numpy(), 25)  # each element once, replicas not double-counted
    check(res["dt_tiny"], np.array([3.0, -1.0, 2.0], np.float32), 4)
    assert [o["ops_repl"] for o in out] == [[]] * 4  # replicated: rank 0's copy, no communication

    for o in out:
        small, big = o["ops"]
        assert small == big == ["all_gather", "all_reduce"]


# --- 4. caps, mismatches, rejected input, a rank that never comes --------------------------------


def _outcome(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value: Any = ("ok", fn())
        except Exception as exc:
            value = ("raised", type(exc).__name__, str(exc))
    return value, [str(w.message) for w in caught if "media" in str(w.message)]


def _edge_cases(rank: int) -> dict[str, Any]:
    from distlog import World
    from distlog.media import collect_images, collect_table

    world = World.current()
    out: dict[str, Any] = {}
    unit = 3 * 10 * 10 + len('{"caption": null}')  # bytes one image counts for
    imgs = torch.zeros(4, 3, 10, 10, dtype=torch.uint8) + rank
    out["cap_even"] = _outcome(
        lambda: collect_images(world, imgs, desc="cap", ranks="all", max_bytes=4 * unit + unit // 2)
    )
    few_or_many = imgs[:1] if rank == 0 else torch.cat([imgs, imgs])
    out["cap_fair"] = _outcome(
        lambda: collect_images(world, few_or_many, desc="cap", ranks="all", max_bytes=5 * unit)
    )
    out["mismatch_desc"] = _outcome(
        lambda: collect_images(world, imgs, desc=f"desc-of-rank-{rank}", ranks="all")
    )
    out["mismatch_kind"] = _outcome(
        lambda: (
            collect_images(world, imgs, desc="same", ranks="all")
            if rank == 0
            else collect_table(world, ["a"], [[1]], desc="same", ranks="all")
        )
    )
    bad = torch.full((1, 3, 2, 2), float("nan")) if rank == 1 else imgs
    out["rejected"] = _outcome(lambda: collect_images(world, bad, desc="val/nan", ranks="all"))
    out["after_rejected"] = _outcome(
        lambda: collect_images(world, imgs[:1], desc="ok", ranks="all")
    )
    out["columns"] = _outcome(
        lambda: collect_table(world, ["a", f"b{rank}"], [[1, 2]], desc="t", ranks="all")
    )
    # only rank 1 is chosen and it has no rows: an empty table with its columns (as ranks=0
    # writes), rank 0's input unused
    out["empty_table"] = _outcome(
        lambda: collect_table(
            world, None if rank == 0 else ["a"], None if rank == 0 else [], desc="t0", ranks=[1]
        )
    )
    out["bad_ranks"] = _outcome(lambda: collect_images(world, imgs, desc="r", ranks=[0, 5]))
    # rank 1 is late: rank 0 gets a clear error instead of waiting forever
    if rank == 0:
        t0 = time.monotonic()
        out["late"] = _outcome(
            lambda: collect_images(world, imgs, desc="late", ranks=[0], timeout=1.0)
        )
        out["late_s"] = time.monotonic() - t0
    else:
        time.sleep(2.5)
        out["late"] = _outcome(lambda: collect_images(world, imgs, desc="late", ranks=[0]))
    check = torch.tensor([1.0])
    torch.distributed.all_reduce(check)
    out["check"] = check.item()
    return out


def test_caps_mismatches_rejections_and_timeouts(pool2: RankPool) -> None:
    out = pool2.run(_edge_cases, timeout=120)
    r0, r1 = out

    (status, item), warns = r0["cap_even"]
    assert status == "ok"
    kept = [int(c.split()[1][0]) for c in item.captions]
    assert kept == [0, 0, 1, 1]  # 4.5 units split evenly: 2 whole images from each rank
    assert any("kept 2 of 4 from rank 0, 2 of 4 from rank 1" in w for w in warns)
    assert [int(i.max()) for i in item.images] == kept  # and they are the ranks' own pixels

    (status, item), warns = r0["cap_fair"]
    assert [c for c in item.captions] == ["rank 0"] + ["rank 1"] * 4  # rank 0's 1 + the rest
    assert any("kept 4 of 8 from rank 1" in w for w in warns) and "from rank 0" not in warns[0]
    assert r1["cap_fair"] == (("ok", None), [])

    for r in out:
        assert r["mismatch_desc"][0][:2] == ("raised", "RankDivergenceError")
        assert (
            "desc-of-rank-0" in r["mismatch_desc"][0][2]
            and "desc-of-rank-1" in r["mismatch_desc"][0][2]
        )
        assert r["mismatch_kind"][0][:2] == ("raised", "RankDivergenceError")
        assert (
            "images 'same'" in r["mismatch_kind"][0][2]
            and "table 'same'" in r["mismatch_kind"][0][2]
        )
        assert (
            r["columns"][0][:2] == ("raised", "LogValueError") and "columns" in r["columns"][0][2]
        )
        assert r["bad_ranks"][0][:2] == ("raised", "LogValueError")
        assert "[5]" in r["bad_ranks"][0][2]

    assert [r["empty_table"] for r in out] == [
        (("ok", Table(columns=["rank", "a"], rows=[])), []),
        (("ok", None), []),
    ]
    assert r1["rejected"][0][:2] == ("raised", "LogValueError")
    assert "'val/nan'" in r1["rejected"][0][2] and "NaN" in r1["rejected"][0][2]
    assert r0["rejected"][0] == ("ok", None)
    assert any("rank(s) [1] was rejected" in w for w in r0["rejected"][1])
    assert r0["after_rejected"][0][1].captions == ["rank 0", "rank 1"]

    assert r0["late"][0][:2] == ("raised", "RankDivergenceError")
    # the error is the timeout's (rank 1 arrives 2.5 s late and would have made it succeed);
    # it came no sooner than the timeout asked
    assert "every rank" in r0["late"][0][2] and "within 1s" in r0["late"][0][2]
    assert r0["late_s"] >= 0.9
    assert r1["late"][0] == ("ok", None)
    assert [r["check"] for r in out] == [2.0, 2.0]


# --- 5. through the Logger, into the local run log ------------------------------------------------


def _logger_end_to_end(rank: int, run_dir: str) -> dict[str, Any]:
    import distlog

    logger = distlog.Logger(run_dir=run_dir)
    logger.log_scalar("train/loss", float(rank))
    logger.log_images(
        images_of(rank, 2), captions=captions_of(rank, 2), desc="val/images", ranks="all"
    )
    logger.log_videos(videos_of(rank), desc="val/gif", fps=5)  # rank 0's only
    logger.log_videos(videos_of(rank), ["a", "b"], desc="val/mp4", fps=5, format="mp4", ranks=[1])
    logger.log_histogram(hist_values(rank, 300), desc="val/hist", bins=12, ranks="all")
    logger.log_table(*table_of(rank), desc="val/table", ranks="all")
    logger.log_plot(make_figure(rank), desc="val/plot")
    logger.flush(step=3)
    logger.finish()
    return {"ops": logger.collectives_last_flush}


def test_logger_writes_gathered_media_to_the_run_dir(pool2: RankPool, tmp_path: Any) -> None:
    import imageio.v2 as iio2
    import imageio.v3 as iio
    from PIL import Image

    from distlog.runlog import iter_rows

    pool2.run(_logger_end_to_end, str(tmp_path), timeout=120)
    rows = list(iter_rows(tmp_path))
    media = {k: v for row in rows if "media" in row for k, v in row["media"].items()}
    assert all(row["step"] == 3 for row in rows)
    assert sorted(media) == [
        "val/gif",
        "val/hist",
        "val/images",
        "val/mp4",
        "val/plot",
        "val/table",
    ]

    want = [(r, a) for r in (0, 1) for a in to_images(images_of(r, 2), desc="x").images]
    items = media["val/images"]["items"]
    assert [i["caption"] for i in items] == [
        f"rank {r}: r{r}i{i}" for r in (0, 1) for i in range(2)
    ]
    for item, (_, arr) in zip(items, want, strict=True):
        assert np.array_equal(np.asarray(Image.open(tmp_path / item["path"])), arr)

    gifs = media["val/gif"]["items"]
    assert len(gifs) == 2 and all(g["caption"] is None for g in gifs)
    frames = iio.imread(tmp_path / gifs[0]["path"], index=None)
    src = to_videos(videos_of(0), desc="x").videos[0].frames  # (T, H, W, 1)
    assert frames.shape[:3] == src.shape[:3]
    assert np.abs(frames[..., 0].astype(int) - src[..., 0]).max() <= 8  # GIF palette only

    mp4s = media["val/mp4"]["items"]
    assert [m["caption"] for m in mp4s] == ["rank 1: a", "rank 1: b"]
    reader = iio2.get_reader(tmp_path / mp4s[0]["path"], format="FFMPEG")
    decoded = np.stack(list(reader.iter_data()))
    reader.close()
    assert decoded.shape == (3, 4, 6, 3)

    allv = np.concatenate([hist_values(r, 300).numpy() for r in (0, 1)])
    counts, edges = np.histogram(allv, bins=12)
    assert media["val/hist"]["counts"] == counts.tolist()
    assert media["val/hist"]["edges"] == edges.astype(np.float64).tolist()

    import json

    table = json.loads((tmp_path / media["val/table"]["path"]).read_text())
    assert table["columns"] == ["rank", *table_of(0)[0]]
    assert [row[0] for row in table["data"]] == [1]  # rank 0 had no rows, rank 1 one
    assert table["data"][0][2:] == ["rank1-row0", 0.0, None]
    assert (tmp_path / table["data"][0][1]["path"]).is_file()
    assert (tmp_path / media["val/plot"]["items"][0]["path"]).is_file()


# --- 6. the same media through wandb offline, read back from its files ---------------------------


def _wandb_end_to_end(rank: int, run_dir: str) -> str | None:
    import distlog

    sinks = []
    if rank == 0:
        from distlog.sinks.wandb import WandbSink

        sinks = [WandbSink(project="media")]
    logger = distlog.Logger(run_dir=run_dir, sinks=sinks)
    logger.log_images(
        images_of(rank, 2), captions=captions_of(rank, 2), desc="val/images", ranks="all"
    )
    logger.log_videos(videos_of(rank), desc="val/gif", fps=5, ranks="all")
    logger.log_videos(videos_of(rank), desc="val/mp4", fps=5, format="mp4")
    logger.log_histogram(hist_values(rank, 300), desc="val/hist", bins=12, ranks="all")
    logger.log_table(*table_of(rank + 1), desc="val/table", ranks="all")
    logger.log_plot(make_figure(rank), desc="val/plot")
    logger.flush(step=4)
    wandb_dir = str(sinks[0].run_dir) if sinks else None
    logger.finish()
    return wandb_dir


def test_media_through_wandb_offline(pool2: RankPool, tmp_path: Any) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("moviepy")
    from PIL import Image

    from distlog.wandb_offline import read_run

    wandb_dir = pool2.run(_wandb_end_to_end, str(tmp_path / "run"), timeout=180)[0]
    from pathlib import Path

    files = Path(wandb_dir) / "files"
    row = read_run(wandb_dir).rows_by_step()[4]

    images = row["val/images"]
    assert images["captions"] == [f"rank {r}: r{r}i{i}" for r in (0, 1) for i in range(2)]
    want = [a for r in (0, 1) for a in to_images(images_of(r, 2), desc="x").images]
    for name, arr in zip(images["filenames"], want, strict=True):
        assert np.array_equal(np.asarray(Image.open(files / name)), arr)  # scaled, not black

    gifs = row["val/gif"]["videos"]
    assert [g["caption"] for g in gifs] == ["rank 0", "rank 0", "rank 1", "rank 1"]
    assert all((files / g["path"]).is_file() and g["path"].endswith(".gif") for g in gifs)
    mp4 = row["val/mp4"]["videos"]
    assert len(mp4) == 2 and all((files / m["path"]).stat().st_size > 0 for m in mp4)
    assert all(m["path"].endswith(".mp4") for m in mp4)

    allv = np.concatenate([hist_values(r, 300).numpy() for r in (0, 1)])
    counts, edges = np.histogram(allv, bins=12)
    assert row["val/hist"]["values"] == counts.tolist()
    assert np.allclose(row["val/hist"]["bins"], edges)

    table = row["val/table"]
    assert table["ncols"] == 5 and table["nrows"] == 1 + 2  # rank 0: 1 row, rank 1: 2 rows
    import json

    doc = json.loads((files / table["path"]).read_text())
    assert doc["columns"] == ["rank", *table_of(1)[0]]
    assert [(r[0], r[2]) for r in doc["data"]] == [
        (0, "rank1-row0"),
        (1, "rank2-row0"),
        (1, "rank2-row1"),
    ]

    plot = row["val/plot"]
    assert plot["count"] == 1 and (plot["width"], plot["height"]) == (20, 20)
    assert (files / plot["filenames"][0]).is_file()
