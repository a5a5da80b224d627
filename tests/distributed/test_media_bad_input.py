"""Bad input or a bad argument on one rank of a gathering media call, across real gloo ranks.

The rank that made the mistake raises a LogValueError / LogTypeError naming the key and the
argument; it still takes part in the header exchange, so the other ranks learn of it at once
(rank 0 warns, nobody waits for the timeout) and every rank stays at the same call number: the
next gathering call works. Expected values are recomputed here from each rank's raw input.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from dist_harness import RankPool, run_ranks

from distlog.media import Images, Table, to_images

pytestmark = pytest.mark.slow

TIMEOUT = 20.0  # what a rank would wait for a missing peer; every outcome here must be quicker
QUICK = TIMEOUT / 2


@pytest.fixture(scope="module")
def pool2() -> Any:
    pool = RankPool(2)
    yield pool
    pool.close()


def images_of(rank: int, tag: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * tag + rank)
    return torch.rand(1, 3, 4, 5, generator=g)


def _outcome(fn: Callable[[], Any]) -> tuple[Any, list[str], float]:
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value: Any = ("ok", fn())
        except Exception as exc:
            value = ("raised", type(exc).__name__, str(exc))
    return value, [str(w.message) for w in caught], time.monotonic() - t0


def _cases(rank: int) -> dict[str, Callable[[], Any]]:
    """name -> a gathering call that is wrong on rank 1 only (good on rank 0)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from distlog import World
    from distlog.media import collect_histogram, collect_images, collect_table, collect_videos

    world = World.current()
    bad = rank == 1
    values = torch.randn(100, generator=torch.Generator().manual_seed(rank))
    imgs = images_of(rank, 0)
    mesh = init_device_mesh("cpu", (2,))
    sharded = distribute_tensor(torch.arange(10.0), mesh, [Shard(0)])
    t = TIMEOUT
    return {
        "bins": lambda: collect_histogram(
            world, values, desc="acts", ranks="all", bins=0 if bad else 64, timeout=t
        ),
        "bins_type": lambda: collect_histogram(
            world, values, desc="acts", ranks="all", bins="8" if bad else 8, timeout=t
        ),
        "dtensor_bins": lambda: collect_histogram(
            world, sharded, desc="w", bins=-1 if bad else 4, timeout=t
        ),
        "dtensor_ranks": lambda: collect_histogram(
            world, sharded, desc="w", bins=4, ranks=[1] if bad else "all", timeout=t
        ),
        "max_bytes": lambda: collect_images(
            world, imgs, desc="imgs", ranks="all", max_bytes=-1 if bad else 2**20, timeout=t
        ),
        "max_bytes_videos": lambda: collect_videos(
            world,
            torch.rand(1, 3, 2, 4, 4),
            desc="vids",
            ranks="all",
            max_bytes=1.5 if bad else 2**20,
            timeout=t,
        ),
        "max_rows": lambda: collect_table(
            world, ["a"], [[1]], desc="tab", ranks="all", max_rows=-5 if bad else 10, timeout=t
        ),
        "ranks_outside": lambda: collect_images(
            world, imgs, desc="imgs", ranks=[0, 7] if bad else "all", timeout=t
        ),
        "ranks_type": lambda: collect_images(
            world, imgs, desc="imgs", ranks=None if bad else "all", timeout=t
        ),
        "desc": lambda: collect_images(
            world, imgs, desc="bad\ud800" if bad else "imgs", ranks="all", timeout=t
        ),
        "cell_datetime": lambda: collect_table(
            world,
            ["a", "b"],
            [[np.datetime64("2020-01-01") if bad else 1, "x"]],
            desc="val/table",
            ranks="all",
            timeout=t,
        ),
        "cell_complex": lambda: collect_table(
            world,
            ["a"],
            [[torch.tensor([1 + 2j]) if bad else 2.5]],
            desc="val/table",
            ranks="all",
            timeout=t,
        ),
        "cell_surrogate": lambda: collect_table(
            world, ["s"], [["x\udcff" if bad else "x"]], desc="val/table", ranks="all", timeout=t
        ),
        "caption_bytes": lambda: collect_images(
            world, imgs, desc="imgs", captions=b"a" if bad else ["a"], ranks="all", timeout=t
        ),
        "uint16_out_of_range": lambda: collect_images(
            world,
            np.full((4, 4, 3), 300 if bad else 7, np.uint16),
            desc="u16",
            ranks="all",
            timeout=t,
        ),
    }


# what the bad rank's error must say (besides the key): the argument or the cell
WANT = {
    "bins": ("LogValueError", "'acts'", "bins"),
    "bins_type": ("LogValueError", "'acts'", "bins"),
    "dtensor_bins": ("LogValueError", "'w'", "bins"),
    "dtensor_ranks": ("LogValueError", "'w'", "ranks must be 0 or 'all'"),
    "max_bytes": ("LogValueError", "'imgs'", "max_bytes"),
    "max_bytes_videos": ("LogValueError", "'vids'", "max_bytes"),
    "max_rows": ("LogValueError", "'tab'", "max_rows"),
    "ranks_outside": ("LogValueError", "'imgs'", "ranks [7]"),
    "ranks_type": ("LogTypeError", "'imgs'", "ranks must be"),
    "desc": ("LogValueError", "media key", "surrogate"),
    "cell_datetime": ("LogTypeError", "'val/table'", "row 0, column 'a'"),
    "cell_complex": ("LogTypeError", "'val/table'", "row 0, column 'a'"),
    "cell_surrogate": ("LogValueError", "'val/table'", "row 0, column 's'"),
    "caption_bytes": ("LogTypeError", "'imgs'", "caption"),
    "uint16_out_of_range": ("LogValueError", "'u16'", "[300, 300]"),
}


def _bad_on_rank1(rank: int) -> dict[str, Any]:
    from distlog import World
    from distlog.media import collect_images

    world = World.current()
    out: dict[str, Any] = {}
    for n, (name, call) in enumerate(_cases(rank).items(), start=1):
        out[name] = _outcome(call)
        # the next gathering call works: every rank is still at the same call number
        out[name + "/after"] = _outcome(
            lambda n=n: collect_images(
                world, images_of(rank, n), desc="after", ranks="all", timeout=TIMEOUT
            )
        )
    return out


def test_a_bad_argument_on_one_rank_is_raised_there_and_nobody_waits(pool2: RankPool) -> None:
    r0, r1 = pool2.run(_bad_on_rank1, timeout=240)
    for n, name in enumerate(WANT, start=1):
        kind, key, what = WANT[name]
        (status, *rest), _, took1 = r1[name]
        assert status == "raised" and rest[0] == kind, (name, rest)
        assert key in rest[1] and what in rest[1], (name, rest[1])
        (status0, *value0), warns0, took0 = r0[name]
        assert status0 == "ok" and value0 == [None], (name, value0)
        assert any("rank(s) [1]" in w or "another rank" in w for w in warns0), (name, warns0)
        assert took0 < QUICK and took1 < QUICK, (name, took0, took1)  # no timeout sat out

        (status, item), _, _ = r0[name + "/after"]
        assert status == "ok" and isinstance(item, Images), (name, item)
        assert item.captions == ["rank 0", "rank 1"]
        want = [to_images(images_of(r, n), desc="x").images[0] for r in (0, 1)]
        assert all(np.array_equal(a, b) for a, b in zip(item.images, want, strict=True))
        assert r1[name + "/after"][0] == ("ok", None)


def _same_bad_everywhere(rank: int) -> dict[str, Any]:
    from distlog import World
    from distlog.media import collect_histogram, collect_images, collect_table

    world = World.current()
    imgs = images_of(rank, 0)
    t = TIMEOUT
    out = {
        "ranks_str": _outcome(lambda: collect_images(world, imgs, desc="i", ranks="every")),
        "ranks_empty": _outcome(lambda: collect_images(world, imgs, desc="i", ranks=[])),
        "bins_disagree": _outcome(
            lambda: collect_histogram(
                world, [1.0, 2.0], desc="h", bins=8 + 8 * rank, ranks="all", timeout=t
            )
        ),
        "rank_columns": _outcome(
            lambda: collect_table(
                world, ["rank", "_rank", "x"], [[rank * 10, rank * 100, 1.5]], desc="t", ranks="all"
            )
        ),
        "empty_gathered": _outcome(
            lambda: collect_table(world, ["a", "b"], [], desc="e", ranks=[1], timeout=t)
        ),
    }
    out["after"] = _outcome(
        lambda: collect_images(world, images_of(rank, 99), desc="after", ranks="all", timeout=t)
    )
    return out


def test_the_same_mistake_on_every_rank_and_disagreeing_ranks(pool2: RankPool) -> None:
    out = pool2.run(_same_bad_everywhere, timeout=120)
    for r in out:
        for name, err, what in [
            ("ranks_str", "LogValueError", "'every'"),
            ("ranks_empty", "LogValueError", "empty"),
            ("bins_disagree", "LogValueError", "disagree on bins (from 8 to 16)"),
        ]:
            (status, *rest), _, took = r[name]
            assert (status, rest[0]) == ("raised", err) and what in rest[1], (name, rest)
            assert took < QUICK
    (status, table), _, _ = out[0]["rank_columns"]
    assert table == Table(
        columns=["__rank", "rank", "_rank", "x"], rows=[[0, 0, 0, 1.5], [1, 10, 100, 1.5]]
    )
    # the chosen rank had no rows: an empty table with its columns, as ranks=0 would write
    assert out[0]["empty_gathered"][0] == ("ok", Table(columns=["rank", "a", "b"], rows=[]))
    assert out[1]["empty_gathered"][0] == ("ok", None)
    (status, item), _, _ = out[0]["after"]
    assert status == "ok" and item.captions == ["rank 0", "rank 1"]


def _logger_aftermath(rank: int, run_dir: str) -> dict[str, Any]:
    import distlog

    out: dict[str, Any] = {}
    logger = distlog.Logger(run_dir=run_dir, timeout=TIMEOUT)
    logger.log_table(["a"], [[rank]], desc="earlier", ranks="all")
    bad = rank == 1
    out["bins"] = _outcome(
        lambda: logger.log_histogram(
            torch.randn(10), desc="acts", ranks="all", bins=0 if bad else 8
        )
    )
    out["ranks"] = _outcome(
        lambda: logger.log_images(images_of(rank, 1), desc="i", ranks=[0, 9] if bad else "all")
    )
    out["cell"] = _outcome(
        lambda: logger.log_table(
            ["a"], [[np.datetime64("2020") if bad else 1]], desc="val/table", ranks="all"
        )
    )
    out["max_rows"] = _outcome(
        lambda: logger.log_table(["a"], [[1]], desc="tab", ranks="all", max_rows=-1 if bad else 5)
    )
    logger.log_images(images_of(rank, 2), desc="after", ranks="all", caption=f"from{rank}")
    logger.log_histogram(torch.full((10,), float(rank)), desc="h2", ranks="all", bins=2)
    logger.log_scalar("x", 1.0)
    logger.flush(step=1)
    logger.finish()
    return out


def test_through_the_logger_nothing_is_lost_and_later_calls_work(
    pool2: RankPool, tmp_path: Any
) -> None:
    from PIL import Image

    from distlog.runlog import iter_rows

    r0, r1 = pool2.run(_logger_aftermath, str(tmp_path), timeout=180)
    for name in ("bins", "ranks", "cell", "max_rows"):
        assert r1[name][0][0] == "raised" and r1[name][2] < QUICK, (name, r1[name])
        assert r0[name][0] == ("ok", None) and r0[name][2] < QUICK, (name, r0[name])
        assert any("rejected" in w for w in r0[name][1]), (name, r0[name][1])
    rows = list(iter_rows(tmp_path))
    media = {k: v for row in rows if "media" in row for k, v in row["media"].items()}
    assert sorted(media) == ["after", "earlier", "h2"]
    import json

    doc = json.loads((tmp_path / media["earlier"]["path"]).read_text())
    assert doc == {"columns": ["rank", "a"], "data": [[0, 0], [1, 1]]}
    items = media["after"]["items"]
    assert [i["caption"] for i in items] == ["rank 0: from0", "rank 1: from1"]
    for item, r in zip(items, (0, 1), strict=True):
        want = to_images(images_of(r, 2), desc="x").images[0]
        assert np.array_equal(np.asarray(Image.open(tmp_path / item["path"])), want)
    counts, edges = np.histogram(np.array([0.0] * 10 + [1.0] * 10), bins=2)
    assert media["h2"]["counts"] == counts.tolist() and media["h2"]["edges"] == edges.tolist()
    assert [r["x"] for r in rows if "x" in r] == [1.0]


def _bad_ranks_while_others_make_the_default_call(rank: int) -> Any:
    from distlog import World
    from distlog.media import collect_images

    world = World.current()
    t0 = time.monotonic()
    try:  # rank 0 makes the default call (no communication); rank 1 a wrong gathering one
        collect_images(world, images_of(rank, 0), desc="i", ranks=None if rank else 0, timeout=2)
        out: Any = ("ok",)
    except Exception as exc:
        cause = exc.__cause__
        out = ("raised", type(exc).__name__, str(exc), type(cause).__name__ if cause else None)
    took = time.monotonic() - t0
    if rank == 0:
        time.sleep(3.0)  # stay in the group: rank 1 must time out, not see a departed peer
    return out, took


def test_a_bad_ranks_among_default_calls_still_names_the_mistake() -> None:
    """Nobody exchanges with the bad rank: it waits its timeout, then raises its own error
    (with the timeout as its cause), not an anonymous divergence."""
    (r0, took0), (r1, took1) = run_ranks(_bad_ranks_while_others_make_the_default_call, 2)
    assert r0 == ("ok",) and took0 < 1.5
    assert r1[:2] == ("raised", "LogTypeError") and "'i'" in r1[2] and "ranks must be" in r1[2]
    assert r1[3] == "RankDivergenceError" and took1 >= 1.5
