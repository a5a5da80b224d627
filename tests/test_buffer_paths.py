"""Payload building and header reading: the fast paths give exactly what the general ones do."""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
import torch

from distlog.buffer import Buffer, Snapshot
from distlog.layout import (
    REDUCTIONS,
    SPREAD_MAXES,
    SPREAD_SUMS,
    Header,
    HeaderReader,
    KeySpec,
    Layout,
    Slots,
    decode_row,
    read_headers,
)
from distlog.payload import PayloadPlan, host_payloads


def _snapshot(reduces: list[str], seed: int, skip: float = 0.3, repeats: list[int] | None = None):
    rng = random.Random(seed)
    buf = Buffer()
    for i, red in enumerate(reduces):
        buf.add(f"k/{i:03d}", 0.0, reduce=red)  # every key has a slot ...
    buf.swap()
    for i, red in enumerate(reduces):
        if repeats is None and rng.random() < skip:
            continue  # ... but not every key is logged in this window
        for _ in range(rng.randint(1, 4) if repeats is None else repeats[i]):
            buf.add(f"k/{i:03d}", rng.uniform(-5, 5), reduce=red)
    snap = buf.swap()
    layout = Layout(list(buf.known.values()), 1)
    return snap, PayloadPlan(layout, snap.specs, snap.size), layout


def _fused_row_equals_general_path(
    snap: Snapshot, plan: PayloadPlan, lay: Layout, head: list[float]
) -> np.ndarray:
    """Build the row by the fused path (a head given) and the general one: they must agree."""
    fused = np.full(Header.WIDTH + lay.sum_size, np.nan)
    host_payloads(snap, plan, 0, 2, Header.WIDTH, fused, head)
    general = np.full(Header.WIDTH + lay.sum_size, np.nan)
    host_payloads(snap, plan, 0, 2, Header.WIDTH, general)  # no head: the general path
    general[: Header.WIDTH] = head
    np.testing.assert_array_equal(fused, general)
    return fused


@pytest.mark.parametrize("seed", range(5))
def test_fused_row_equals_general_path(seed: int) -> None:
    rng = random.Random(seed)
    reduces = [rng.choice(["mean", "sum"]) for _ in range(rng.randint(1, 40))]
    snap, plan, lay = _snapshot(reduces, seed)
    assert plan.fused(Header.WIDTH) is not None  # means and sums only: the fused path applies
    head = [3.0, 7.0, 1.0, 0.0, 0.0]
    _fused_row_equals_general_path(snap, plan, lay, head)


@pytest.mark.parametrize(
    "size, repeats",
    [
        (63, "uniform"),
        (64, "uniform"),
        (300, "uniform"),
        (300, "one differs"),
        (300, "one unlogged"),
    ],
)
def test_fused_row_with_equal_counts_equals_general_path(size: int, repeats: str) -> None:
    """From 64 slots the fused row fills equal counts at once: the same row either way."""
    rng = random.Random(size)
    reduces = [rng.choice(["mean", "sum"]) for _ in range(size)]
    counts = [3] * size
    if repeats == "one differs":
        counts[size // 2] = 4
    elif repeats == "one unlogged":
        counts[-1] = 0
    snap, plan, lay = _snapshot(reduces, size, repeats=counts)
    assert snap.n == counts
    head = [3.0, 7.0, 1.0, 0.0, 0.0]
    _fused_row_equals_general_path(snap, plan, lay, head)


def test_fused_row_with_a_key_this_rank_never_logged_equals_general_path() -> None:
    """A layout key this rank has no slot for (another rank's) stays neutral, counts included,
    even when every slot of this rank was logged equally often."""
    reduces = ["mean"] * 200 + ["sum"] * 100
    snap, _, lay = _snapshot(reduces, 1, repeats=[2] * 300)
    lay = Layout([*lay.specs, KeySpec("a/other", "mean"), KeySpec("zz/other", "sum")], 2)
    plan = PayloadPlan(lay, snap.specs, snap.size)
    fused = _fused_row_equals_general_path(snap, plan, lay, [3.0, 7.0, 2.0, 0.0, 0.0])
    body = fused[Header.WIDTH :]
    for key, red in (("a/other", "mean"), ("zz/other", "sum")):
        assert [body[lay.slot(red, kind, key)] for kind in range(3 if red == "mean" else 2)] == [
            0.0
        ] * (3 if red == "mean" else 2)
    assert decode_row(lay, body, fused[:0], (0,)).keys() == {s.key for s in snap.specs}


@pytest.mark.parametrize("size", [1, 32, 200])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("order", ["as logged", "reversed"])
def test_fused_row_in_layout_order_is_packed_straight_into_the_row(
    size: int, reduce: str, order: str
) -> None:
    """A rank whose slots are in layout order packs its values into the row with no take, at
    any size; in another order they are permuted. Both give the general path's row."""
    snap, _, lay = _snapshot([reduce] * size, 3, repeats=[2] * size)
    if order == "reversed":
        lay = Layout(lay.specs[::-1], 2)
    plan = PayloadPlan(lay, snap.specs, snap.size)
    fused = plan.fused(Header.WIDTH)
    assert fused is not None and fused.in_order is (order == "as logged" or size == 1)
    row = _fused_row_equals_general_path(snap, plan, lay, [3.0, 7.0, 1.0, 0.0, 0.0])
    values = [row[Header.WIDTH + lay.slot(reduce, 0, s.key)] for s in snap.specs]
    assert values == snap.a


@pytest.mark.parametrize("size", [100, 8])
def test_one_row_reused_flush_after_flush_is_always_the_general_paths(size: int) -> None:
    """The send row is kept from flush to flush and its count slots are refilled only when
    the count changed: whatever the sequence of windows, each row is the general path's."""
    keys = [f"k/{i:03d}" for i in range(size)]
    buf = Buffer()
    for key in keys:
        buf.add(key, 0.0)
    buf.swap()
    lay = Layout(list(buf.known.values()), 1)
    out = np.full(Header.WIDTH + lay.sum_size, np.nan)
    filled = None
    rng = random.Random(0)
    n = size
    windows = [[1] * n, [1] * n, [2] * n, [1] * (n - 1) + [3], [2] * n, [0] * n, [1] * n]
    for flush, counts in enumerate(windows):
        for key, count in zip(keys, counts, strict=True):
            for _ in range(count):
                buf.add(key, rng.uniform(-5, 5))
        snap = buf.swap()
        plan = PayloadPlan(lay, snap.specs, snap.size)
        fused = plan.fused(Header.WIDTH)
        assert fused is not None and fused.in_order
        head = [float(flush), 7.0, 1.0, 0.0, 0.0]
        filled = fused.build(snap, head, out, filled)
        assert filled == (counts[0] if len(set(counts)) == 1 else None)
        general = np.full(Header.WIDTH + lay.sum_size, np.nan)
        host_payloads(snap, plan, 0, 2, Header.WIDTH, general)
        general[: Header.WIDTH] = head
        np.testing.assert_array_equal(out, general)


@pytest.mark.parametrize("seed", range(8))
def test_every_slot_of_a_layout_has_a_position_of_its_own(seed: int) -> None:
    """The planes tile each payload exactly: no two slots share a position, none is left over,
    a slot kind of a block is one contiguous slice in layout order, and in a layout of means
    and sums the values come before every slot that counts samples."""
    rng = random.Random(seed)
    specs = [
        KeySpec(f"k/{i:03d}", rng.choice(REDUCTIONS), rng.random() < 0.3)
        for i in range(rng.randint(0, 30))
    ]
    lay = Layout(specs, 1)
    sums: list[int] = []
    maxes: list[int] = []
    for spec in lay.specs:
        side, width = (
            (maxes, 3) if spec.reduce in ("min", "max") else (sums, Slots.SUM_WIDTH[spec.reduce])
        )
        side += [lay.slot(spec.reduce, kind, spec.key) for kind in range(width)]
        if spec.spread:
            sums += [lay.slot(SPREAD_SUMS, k, spec.key) for k in range(Slots.SPREAD_SUM_WIDTH)]
            maxes += [lay.slot(SPREAD_MAXES, k, spec.key) for k in range(Slots.SPREAD_MAX_WIDTH)]
    assert sorted(sums) == list(range(lay.sum_size))
    assert sorted(maxes) == list(range(lay.max_size))
    for (block, kind), plane in lay.planes.items():
        keys = [
            s.key
            for s in lay.specs
            if s.reduce == block or (block.startswith("spread") and s.spread)
        ]
        assert [lay.slot(block, kind, k) for k in keys] == list(range(plane.start, plane.stop))
    plain = Layout([s for s in specs if s.reduce in ("mean", "sum")], 1)
    values = [plain.slot(s.reduce, 0, s.key) for s in plain.specs]
    assert sorted(values) == list(range(plain.values_end))


def test_fused_row_is_not_used_for_other_reductions() -> None:
    _, plan, _ = _snapshot(["mean", "max"], 0, skip=0.0)
    assert plan.fused(Header.WIDTH) is None


def test_weighted_snapshot_takes_the_general_path() -> None:
    buf = Buffer()
    buf.add("a", 2.0, weight=3.0)
    buf.add("a", 4.0)
    snap = buf.swap()
    lay = Layout(list(buf.known.values()), 1)
    plan = PayloadPlan(lay, snap.specs, snap.size)
    out = np.empty(Header.WIDTH + lay.sum_size)
    sums, _ = host_payloads(snap, plan, 0, 1, Header.WIDTH, out, [1.0, 1.0, 1.0, 0.0, 0.0])
    # value 2*3 + 4*1, weight 3 + 1, two samples
    assert sums[Header.WIDTH :].tolist() == [10.0, 4.0, 2.0]


@pytest.mark.parametrize("reused", [False, True], ids=["read_headers", "one HeaderReader"])
@pytest.mark.parametrize("ranks", [2, 5, 16, 17, 40])
def test_read_headers(ranks: int, reused: bool) -> None:
    """A fresh read and one reader kept across in-place changes of its table (as the gather
    protocol keeps it, flush after flush) see the same thing, on both sides of 16 rows."""
    table = np.zeros((ranks, Header.WIDTH + 3))
    reader = HeaderReader(table)

    def read() -> tuple[bool, int]:
        return reader.read() if reused else read_headers(table)

    table[:, :3] = [4, 10, 2]
    assert read() == (True, 0)
    table[ranks - 1, 3:5] = [1, 57]  # the last rank brings new keys
    table[0, 3:5] = [1, 12]
    assert read() == (True, 57)
    table[ranks // 2, 1] = 11  # one rank is at another step
    assert read()[0] is False
    table[ranks // 2, 1] = 10
    table[0, 0] = math.nan  # a row the collective did not fill
    assert read()[0] is False
    table[0, 0] = 4
    table[ranks - 1, 0] = math.nan
    assert read()[0] is False
    table[:, 0] = 5  # the next flush: every rank at flush 5, nobody with new keys
    table[:, 3:5] = 0
    assert read() == (True, 0)


def test_cpu_tensors_fold_like_numbers() -> None:
    import torch

    from distlog.errors import LogTypeError, LogValueError

    fast, slow = Buffer(), Buffer()
    values = [
        torch.tensor(1.5),
        torch.tensor(2.0, dtype=torch.bfloat16),
        torch.tensor(3, dtype=torch.int64),
        torch.tensor([4.0]),  # one element, not 0-d
        torch.tensor(5.0, requires_grad=True),
    ]
    for v in values:
        fast.add("x", v)
        slow.add_many({"x": v})  # the full path: prepare() and commit
    rows = []
    for buf in (fast, slow):
        snap = buf.swap()
        lay = Layout(list(buf.known.values()), 1)
        sums, _ = host_payloads(snap, PayloadPlan(lay, snap.specs, snap.size), 0, 1)
        rows.append(sums.tolist())
    assert rows[0] == rows[1] == [1.5 + 2.0 + 3 + 4.0 + 5.0, 5.0, 5.0]  # value, weight, count
    with pytest.raises((LogTypeError, LogValueError), match="'pair'"):
        fast.add("pair", torch.tensor([1.0, 2.0]))
    assert "pair" not in fast.known  # refused before anything was buffered


def test_a_prepared_window_takes_keys_registered_after_it() -> None:
    """The clean lists a flush builds while its collective is in flight (prepare_window) are
    used by the next swap; a key first logged in between still gets its slot there."""
    buf = Buffer()
    buf.add("a", 1.0)
    buf.add("m", 5.0, reduce="max")
    buf.swap()
    buf.prepare_window()
    buf.add("late", 2.0, reduce="min")  # registered after the window was built
    snap = buf.swap()
    assert snap.size == 3 and snap.n == [0, 0, 1] and snap.a[2] == 2.0
    buf.add("late", 4.0, reduce="min")
    buf.add("m", 7.0, reduce="max")
    snap = buf.swap()  # the window the swap before gave out, extended to the late key
    assert snap.n == [0, 1, 1]
    assert snap.a == [0.0, 7.0, 4.0]
    assert len(buf.swap().a) == 3  # and every later window has its slot too


def test_a_prepared_window_is_not_used_after_a_spec_change() -> None:
    """A slot whose reduction changed since the window was built starts from the new
    reduction's neutral value (a max must not start at the 0.0 of a mean)."""
    buf = Buffer()
    buf.add("x", 1.0)
    buf.swap()
    buf.prepare_window()
    buf.respec("x", KeySpec("x", "max"), None)  # what a key exchange may do
    buf.add("x", -3.0, reduce="max")
    assert buf.swap().a == [-3.0]
    buf.add("x", -5.0, reduce="max")  # into the window that swap gave out
    assert buf.swap().a == [-5.0]  # it started at -inf, so max(-inf, -5) = -5


SPECIAL = [0.0, -0.0, 1.0, -2.5, math.inf, -math.inf, math.nan, 1e308, 5e-324]


@pytest.mark.parametrize("seed", range(12))
def test_plain_decoding_equals_the_numpy_one(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small layouts are decoded as Python numbers: the same row, key for key and bit for bit
    (NaN, infinities, signed zeros, zero weights, keys nobody logged), as numpy's decoding."""
    import distlog.layout as layout_module

    rng = random.Random(seed)
    specs = [
        KeySpec(f"k/{i:02d}", rng.choice(["mean", "sum", "min", "max", "last"]), rng.random() < 0.2)
        for i in range(rng.randint(1, layout_module.PLAIN_DECODE_UP_TO))
    ]
    lay = Layout(specs, 1)

    def number() -> float:
        return rng.choice(SPECIAL) if rng.random() < 0.4 else rng.uniform(-9, 9)

    sums = np.array([number() for _ in range(lay.sum_size)])
    maxes = np.array([number() for _ in range(lay.max_size)])
    S = Slots
    for spec in specs:  # presence slots: often absent, sometimes zero weight
        red, key = spec.reduce, spec.key
        if red in ("min", "max"):
            maxes[lay.slot(red, S.EXT_PRESENT, key)] = rng.choice([0.0, 1.0])
            maxes[lay.slot(red, S.EXT_NAN, key)] = rng.choice([0.0, 0.0, 1.0])
        elif red == "mean":
            sums[lay.slot(red, S.MEAN_COUNT, key)] = rng.choice([0.0, 1.0, 3.0])
            if rng.random() < 0.3:
                sums[lay.slot(red, S.MEAN_WEIGHT, key)] = 0.0
        else:
            count = S.SUM_COUNT if red == "sum" else S.LAST_RANKS
            sums[lay.slot(red, count, key)] = rng.choice([0.0, 1.0, 3.0])
    plain = decode_row(lay, sums, maxes, (0, 1, 2))
    monkeypatch.setattr(layout_module, "PLAIN_DECODE_UP_TO", 0)
    vectorised = decode_row(lay, sums, maxes, (0, 1, 2))
    assert list(plain) == list(vectorised)  # the same keys, in the same order
    for key, value in vectorised.items():
        assert struct.pack("d", plain[key]) == struct.pack("d", value) or (
            math.isnan(plain[key]) and math.isnan(value)
        ), key


@pytest.mark.parametrize("seed", range(12))
def test_a_small_table_reduced_as_python_numbers_is_numpys_bit_for_bit(seed: int) -> None:
    """The writer reduces a small gathered table of means and sums with Python additions in
    rank order: the row equals numpy's reduction and decoding, bit for bit (magnitudes far
    apart, so any other order of additions would show)."""
    import distlog.layout as layout_module

    rng = random.Random(seed)
    reduces = [rng.choice(["mean", "sum", "last"]) for _ in range(rng.randint(1, 64))]
    lay = Layout([KeySpec(f"k/{i:02d}", r) for i, r in enumerate(reduces)], 1)
    ranks = rng.randint(1, layout_module.PLAIN_REDUCE_UP_TO)
    table = np.array(
        [
            [float(h) for h in (3, 7, 1, 0, 0)]
            + [
                rng.choice([1e16, -1e16, 1.0, 3.3e-7, -0.0]) * rng.random()
                for _ in range(lay.sum_size)
            ]
            for _ in range(ranks)
        ]
    )
    for spec in lay.specs:  # counts: some keys logged by no rank
        count = {"mean": Slots.MEAN_COUNT, "sum": Slots.SUM_COUNT, "last": Slots.LAST_RANKS}
        table[:, Header.WIDTH + lay.slot(spec.reduce, count[spec.reduce], spec.key)] = rng.choice(
            [0.0, 1.0]
        )
    group = tuple(range(ranks))
    plain = layout_module.decode_table(lay, table, group)
    sums, _ = layout_module.reduce_table(table, lay)
    numpy_row = decode_row(lay, sums, np.zeros(0), group)
    assert list(plain) == list(numpy_row)
    for key, value in numpy_row.items():
        assert struct.pack("d", plain[key]) == struct.pack("d", value), key


@pytest.mark.parametrize("newer", ["float", "tensor"])
def test_a_restored_last_tensor_never_replaces_a_newer_sample(newer: str) -> None:
    """A flush the ranks refused puts its snapshot back; a ``last`` key logged again since
    keeps that newer sample. Before, the snapshot's (older) buffered tensor came back over a
    newer float: an asynchronous flush refused for out-of-step ranks wrote the older value."""
    buf = Buffer(fold_host_tensors=False)  # CPU tensors buffered as a CUDA tensor would be
    buf.add("lr", torch.tensor(1.0), reduce="last")
    snap = buf.swap()
    buf.add("lr", 2.0 if newer == "float" else torch.tensor(2.0), reduce="last")
    buf.restore(snap)
    again = buf.swap()
    got = float(again.lasts[0]) if 0 in again.lasts else again.a[0]
    assert got == 2.0 and again.n == [2]


def test_a_restored_last_tensor_comes_back_when_nothing_newer_was_logged() -> None:
    buf = Buffer(fold_host_tensors=False)
    buf.add("lr", torch.tensor(1.0), reduce="last")
    buf.restore(buf.swap())
    again = buf.swap()
    assert float(again.lasts[0]) == 1.0 and again.n == [1]
