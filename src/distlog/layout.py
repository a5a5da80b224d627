"""What every rank agrees on before numbers travel: key specs, the payload layout, the header.

A flush moves two flat float64 payloads. The **SUM payload** is reduced by addition: every mean,
weighted mean, sum and "last" key, and the additive half of each spread block. The **MAX
payload** is reduced by maximum: every max and min key (a min travels negated) and the extreme
half of each spread block. Each key owns fixed slots in them, of the kinds [Slots][] names, one
in each plane of its block; the [Layout][distlog.layout.Layout] (the agreed specs and their
planes) is identical on every rank, so a key a rank did not log contributes neutral values and
is never paired with another key.

Every payload is O(keys) floats whatever the number of ranks: a spread block is 4 SUM and 3 MAX
slots (the rank with the maximum rides in the low mantissa bits of a MAX slot, see
[pack_rank][distlog.layout.pack_rank]).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from itertools import compress

import numpy as np

from distlog.errors import RankDivergenceError
from distlog.runlog import SPREAD_SUFFIXES  # the row format names the spread columns

__all__ = [
    "PLAIN_DECODE_UP_TO",
    "REDUCTIONS",
    "SPREAD_MAXES",
    "SPREAD_SUFFIXES",
    "SPREAD_SUMS",
    "Header",
    "KeySpec",
    "Layout",
    "Slots",
    "check_headers",
    "decode_row",
    "decode_specs",
    "decode_table",
    "encode_specs",
    "pack_rank",
    "read_headers",
    "reduce_table",
    "spread_keys",
]

REDUCTIONS = ("mean", "sum", "min", "max", "last")


def spread_keys(key: str) -> list[str]:
    """The extra keys written for a key logged with ``spread=True``."""
    return [f"{key}/{suffix}" for suffix in SPREAD_SUFFIXES]


class Slots:
    """The slot schema: the kinds of slot a key sends, by reduction (each kind is one plane of
    its payload, see [Layout][distlog.layout.Layout])."""

    # SUM payload, reduce="mean": sum of value * weight, sum of weights, number of samples.
    MEAN_VALUE, MEAN_WEIGHT, MEAN_COUNT = 0, 1, 2
    # SUM payload, reduce="sum": the sum, the number of samples.
    SUM_VALUE, SUM_COUNT = 0, 1
    # SUM payload, reduce="last": each rank's latest value (summed), ranks that logged it.
    LAST_VALUE, LAST_RANKS = 0, 1
    # MAX payload, reduce="min"/"max": the extreme (negated for min), present, any NaN.
    EXT_VALUE, EXT_PRESENT, EXT_NAN = 0, 1, 2
    # Spread block, SUM part: sum of the ranks' values, of their squares, ranks, non-NaN ranks.
    SPREAD_SUM, SPREAD_SQUARES, SPREAD_RANKS, SPREAD_NUMBERS = 0, 1, 2, 3
    # Spread block, MAX part: max of the non-NaN values, max of their negation, packed argmax.
    SPREAD_MAX, SPREAD_NEG_MIN, SPREAD_ARGMAX = 0, 1, 2

    SUM_WIDTH = {"mean": 3, "sum": 2, "last": 2, "min": 0, "max": 0}
    MAX_WIDTH = {"mean": 0, "sum": 0, "last": 0, "min": 3, "max": 3}
    SPREAD_SUM_WIDTH, SPREAD_MAX_WIDTH = 4, 3


# The blocks of keys that own slots: each reduction, and the spread blocks of spread=True keys.
SPREAD_SUMS, SPREAD_MAXES = "spread_sums", "spread_maxes"
_SUM_SIDE = (("mean", 3), ("sum", 2), ("last", 2))  # (block, slots a key)
_MAX_SIDE = (("min", 3), ("max", 3))


@dataclass(frozen=True, order=True)
class KeySpec:
    """What the ranks agree on for one key: its name, reduction and whether to report spread."""

    key: str
    reduce: str
    spread: bool = False


class Layout:
    """Where every agreed key's slots lie in the SUM and MAX payloads. Identical on every rank.

    Keys keep the order they are given in: the order the group agreed at its key exchanges
    (earlier layouts first, then each rank's new keys in the order that rank first logged
    them, lowest rank first). A rank that logged its keys in that order, the usual case, finds
    each block's keys where its own slots are, and its values travel without a permutation.

    Each payload is a sequence of *planes*: one slot kind of one block (say the weights of the
    means) for every key of that block, contiguous, keys in layout order. The SUM payload holds
    its planes kind by kind: first the value of every mean, sum and last key, then their second
    slots (weights, counts, ranks), then the means' counts, then the four spread planes; the MAX
    payload likewise for min and max keys, then the three spread planes. A slot kind is one
    slice, so decoding reads slices; and in a layout of means and sums the values come first
    and every slot after them counts samples: an unweighted row is one copy and one fill.

    [slot][distlog.layout.Layout.slot] is the one rule for a slot's position.
    """

    def __init__(self, specs: list[KeySpec], version: int = 0) -> None:
        self.version = version
        self.specs = list(specs)
        if len({s.key for s in self.specs}) != len(self.specs):
            raise ValueError("a layout holds each key once")
        self.by_key = {s.key: s for s in self.specs}
        self.keys = [s.key for s in self.specs]
        members = {red: [s.key for s in self.specs if s.reduce == red] for red in REDUCTIONS}
        members[SPREAD_SUMS] = members[SPREAD_MAXES] = [s.key for s in self.specs if s.spread]
        # A key's place among the keys of a block: its offset in each of the block's planes.
        self.place = {block: {k: j for j, k in enumerate(keys)} for block, keys in members.items()}
        self.planes: dict[tuple[str, int], slice] = {}

        def lay_out(side: tuple[tuple[str, int], ...], end: int) -> int:
            for kind in range(max(width for _, width in side)):
                for block, width in side:
                    if kind < width:
                        self.planes[block, kind] = slice(end, end + len(members[block]))
                        end += len(members[block])
            return end

        s = lay_out(((SPREAD_SUMS, Slots.SPREAD_SUM_WIDTH),), lay_out(_SUM_SIDE, 0))
        m = lay_out(((SPREAD_MAXES, Slots.SPREAD_MAX_WIDTH),), lay_out(_MAX_SIDE, 0))
        self.sum_size, self.max_size = s, m
        self.max_init = np.zeros(m)  # present and NaN flags start at 0, extremes at -inf
        for (block, kind), plane in self.planes.items():
            if block == SPREAD_MAXES or (block in ("min", "max") and kind == Slots.EXT_VALUE):
                self.max_init[plane] = -math.inf
        # The values end where the first plane of second slots begins (means-and-sums rows).
        self.values_end = self.planes["mean", 1].start
        # (key, reduction, its slot positions) in layout order: the plain-Python decoding.
        self.runs = [
            (s.key, s.reduce, tuple(self.slot(s.reduce, k, s.key) for k in range(self._width(s))))
            for s in self.specs
        ]
        self.spread_keys = members[SPREAD_SUMS]
        # Per reduction: positions in ``specs``, for vectorised decoding.
        self.positions = {
            red: np.array([i for i, s in enumerate(self.specs) if s.reduce == red], np.int64)
            for red in REDUCTIONS
        }

    @staticmethod
    def _width(spec: KeySpec) -> int:
        return Slots.SUM_WIDTH[spec.reduce] or Slots.MAX_WIDTH[spec.reduce]

    def __len__(self) -> int:
        return len(self.specs)

    def slot(self, block: str, kind: int, key: str) -> int:
        """The position of ``key``'s slot of this ``kind`` in its payload: the SUM payload for
        mean, sum, last and [SPREAD_SUMS][distlog.layout.SPREAD_SUMS], the MAX payload for min,
        max and [SPREAD_MAXES][distlog.layout.SPREAD_MAXES]."""
        return self.planes[block, kind].start + self.place[block][key]

    def slots(self, block: str, kind: int, places: np.ndarray) -> np.ndarray:
        """[slot][distlog.layout.Layout.slot] for many keys, given their places in the block."""
        return self.planes[block, kind].start + places

    def merged(self, specs: list[KeySpec]) -> Layout:
        """The next layout: these specs plus the current ones (a new version)."""
        return Layout([*self.specs, *specs], self.version + 1)


class Header:
    """The control numbers every rank sends with its payload; all must agree but the last two.

    ``flush`` counts the logger's flushes, ``step`` is the log step, ``version`` the layout's
    version; ``new_keys`` says this rank logged keys the layout lacks and ``blob_len`` is the
    length of their JSON specs (the key exchange that follows pads every blob to the longest).
    ``final`` marks the last flush, finish()'s: it travels as the low bit of the flush number
    (``2 * flush + final``), so a finish() on one rank never pairs with a flush() on another.
    """

    __slots__ = ("flush", "step", "version", "new_keys", "blob_len", "final")

    def __init__(
        self,
        flush: int,
        step: int,
        version: int,
        new_keys: bool = False,
        blob_len: int = 0,
        final: bool = False,
    ) -> None:
        self.flush, self.step, self.version = flush, step, version
        self.new_keys, self.blob_len, self.final = new_keys, blob_len, final

    @property
    def flush_id(self) -> int:
        """The flush number as it travels: ``2 * flush``, plus 1 for finish()'s flush."""
        return 2 * self.flush + int(self.final)

    @staticmethod
    def describe_flush_id(flush_id: int) -> str:
        """``flush #3``, or ``finish() as flush #3`` for a final one (for error messages)."""
        return f"{'finish() as ' if flush_id & 1 else ''}flush #{flush_id >> 1}"

    WIDTH = 5
    CHUNKS = 6  # 8-bit chunks per number in the summed encoding: 48 bits
    MAX_STEP = 1 << (8 * CHUNKS)  # steps below it travel exactly in both encodings
    SUMMED_WIDTH = 3 + 3 * 2 * CHUNKS

    def gathered(self) -> list[float]:
        """The encoding for an all-gather: the numbers as they are, checked exactly."""
        return [self.flush_id, self.step, self.version, float(self.new_keys), self.blob_len]

    def summed(self) -> list[float]:
        """The encoding for an all-reduce: ``[1, new_keys, blob_len]`` then, per 8-bit chunk c of
        flush, step and version, ``c`` and ``c*c``. Summed over W ranks, all ranks sent the same
        numbers exactly when ``sum(c) == W*c`` and ``sum(c*c) == W*c*c`` for every chunk
        (``sum((c_i - c)^2) == 0``); exact in float64 for any W below 10^5."""
        slots = [1.0, float(self.new_keys), float(self.blob_len)]
        for number in (self.flush_id, self.step, self.version):
            for i in range(self.CHUNKS):
                c = float((number >> (8 * i)) & 0xFF)
                slots += [c, c * c]
        return slots

    def agrees_with_sum(self, summed: np.ndarray, size: int) -> bool:
        """True when ``summed`` (the all-reduced [summed][distlog.layout.Header.summed]
        encoding of ``size`` ranks) proves every rank sent this header's numbers."""
        mine = self.summed()
        if summed[0] != size:
            return False
        return all(summed[i] == size * mine[i] for i in range(3, len(mine)))


_HEADER_ROW = struct.Struct(f"{Header.WIDTH}d")  # one row's header, read in one C call


class HeaderReader:
    """Answers, for one gathered table reused flush after flush, the steady-state question of
    every gather flush: do all ranks' (flush, step, version) match, and how long is the longest
    new-key blob (0: none)? The table's first [Header.WIDTH][distlog.layout.Header] columns
    are the ranks' headers.

    It must be cheap. Up to 16 rows, each row's header is unpacked as Python numbers from a
    buffer view taken once (right after a collective, even reading ``table.dtype`` or
    ``table.strides`` costs microseconds on a cold cache); above that, one numpy comparison.
    A mismatch is then explained by [check_headers][distlog.layout.check_headers]; NaN (a
    row the collective did not fill) never matches.
    """

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        small = len(table) <= 16 and table.dtype == np.float64 and table.flags.c_contiguous
        self.data = table.data if small else None
        self.offsets = range(0, table.strides[0] * len(table), table.strides[0])

    def read(self) -> tuple[bool, int]:
        data = self.data
        if data is None:
            table = self.table
            heads = table[:, :3]
            agree = bool((heads == heads[0]).all())
            return agree, int(table[:, 4].max()) if table[:, 3].any() else 0
        unpack = _HEADER_ROW.unpack_from
        flush, step, version, _, _ = unpack(data, 0)
        agree = flush == flush  # NaN: rank 0's row was not filled
        blob = 0.0
        for offset in self.offsets:
            f, s, v, new_keys, blob_len = unpack(data, offset)
            if f != flush or s != step or v != version:
                agree = False
            if new_keys and blob_len > blob:
                blob = blob_len
        return agree, int(blob)


def read_headers(table: np.ndarray) -> tuple[bool, int]:
    """[HeaderReader][distlog.layout.HeaderReader]'s answer for a table read once."""
    return HeaderReader(table).read()


def check_headers(step: int, rows: np.ndarray, ranks: tuple[int, ...]) -> None:
    """The one rule for divergence: raise unless every rank's (flush, step, version) agree.

    ``rows`` holds each rank's [gathered][distlog.layout.Header.gathered] header, in group order.
    Every rank sees the same table, so every rank raises alike.
    """
    ids = np.asarray(rows)[:, :3]
    if not (ids == ids[0]).all() or np.isnan(ids).any():
        ints = [[int(x) if math.isfinite(x) else -1 for x in r] for r in ids.tolist()]
        if len({r[0] for r in ints}) > 1 or len({r[1] for r in ints}) > 1:
            detail = ", ".join(
                f"rank {ranks[i]}: {Header.describe_flush_id(r[0]) if r[0] >= 0 else 'nothing'}"
                f" at step {r[1]}"
                for i, r in enumerate(ints)
            )
            raise RankDivergenceError(
                f"ranks flushed out of step at log step {step}: {detail}. Every rank must call "
                "flush() at the same steps, and finish() after the same number of flushes."
            )
        raise RankDivergenceError(
            f"ranks disagree on the key layout at log step {step} (versions "
            f"{[r[2] for r in ints]}): a rank restarted without the others?"
        )


def encode_specs(specs: list[KeySpec]) -> bytes:
    """Key specs as JSON bytes for the key exchange (JSON, never pickle: safe to decode)."""
    return json.dumps([[s.key, s.reduce, s.spread] for s in specs]).encode() if specs else b""


def decode_specs(blob: bytes) -> list[KeySpec]:
    text = blob.decode().strip()
    return [KeySpec(k, r, bool(s)) for k, r, s in json.loads(text)] if text else []


# --------------------------------------------------------------------------- spread: argmax
_RANK_BITS_MAX = 24
_FLIP = np.int64(0x7FFFFFFFFFFFFFFF)
_BIG = np.finfo(np.float64).max


def rank_bits(size: int) -> int:
    """Low mantissa bits that carry a rank for a group of ``size``."""
    return max(1, int(size - 1).bit_length())


def pack_rank(values: np.ndarray, group_rank: int, size: int) -> np.ndarray:
    """Values whose maximum over ranks also names the lowest rank holding it.

    Each finite float64 is mapped to an order-preserving int64, its low ``rank_bits(size)`` bits
    are replaced by ``size - 1 - group_rank`` and it is mapped back: a MAX reduction then picks
    the largest value (to 2^-(52 - bits) relative, 2e-10 for 2^20 ranks) and, among equal ones,
    the lowest rank. Infinities are clamped to the largest finite value first; NaN stays NaN
    becomes -inf, the neutral value of a MAX reduction.
    """
    bits = rank_bits(size)
    if bits > _RANK_BITS_MAX:
        raise ValueError(f"a group of {size} ranks is too large for the packed argmax")
    v = np.clip(np.asarray(values, dtype=np.float64), -_BIG, _BIG)
    i = v.view(np.int64)
    key = np.where(i >= 0, i, i ^ _FLIP)
    mask = np.int64((1 << bits) - 1)
    key = (key & ~mask) | np.int64(size - 1 - group_rank)
    back = np.where(key >= 0, key, key ^ _FLIP)
    out = back.view(np.float64).copy()
    out[np.isnan(values)] = -np.inf
    return out


def unpack_rank(packed: float, size: int) -> int:
    """The group rank a [pack_rank][distlog.layout.pack_rank]-ed maximum names."""
    i = np.array([packed], dtype=np.float64).view(np.int64)[0]
    key = i if i >= 0 else i ^ _FLIP
    return int(size - 1 - (int(key) & ((1 << rank_bits(size)) - 1)))


# --------------------------------------------------------------------------- decoding
PLAIN_DECODE_UP_TO = 64  # keys; a layout this small is decoded as Python numbers
PLAIN_REDUCE_UP_TO = 16  # ranks; a small table of means and sums is reduced as Python numbers


def reduce_table(table: np.ndarray, lay: Layout) -> tuple[np.ndarray, np.ndarray | None]:
    """Column sums of the SUM part and maxima of the MAX part of a gathered table (a header,
    then each rank's payloads, a row a rank), in rank order, so every reader gets the same
    numbers."""
    body = table[:, Header.WIDTH :]
    sums = body[:, : lay.sum_size].sum(axis=0)
    maxes = body[:, lay.sum_size :].max(axis=0) if lay.max_size else None
    return sums, maxes


def decode_table(
    layout: Layout, table: np.ndarray, group_ranks: tuple[int, ...]
) -> dict[str, float]:
    """The row of a gathered table: [reduce_table][distlog.layout.reduce_table], then
    [decode_row][distlog.layout.decode_row].

    A small table of means and sums (the usual row of a few dozen keys) is reduced as Python
    numbers: one ``tolist`` and the same additions in the same order (0.0, plus rank 0's row,
    plus rank 1's, ...), so the row is bit for bit numpy's. On the writer thread of a busy host the
    numpy calls cost 30-50 us a row for 32 keys, several times the loop.
    """
    if layout.max_size or len(layout) > PLAIN_DECODE_UP_TO or len(table) > PLAIN_REDUCE_UP_TO:
        sums, maxes = reduce_table(table, layout)
        row = decode_row(layout, sums, maxes if maxes is not None else np.zeros(0), group_ranks)
        if layout.spread_keys:
            _spread_std_from_table(layout, table, row)
        return row
    start, end = Header.WIDTH, Header.WIDTH + layout.sum_size
    total = [0.0] * layout.sum_size  # numpy adds to its identity: -0.0 sums to 0.0 there too
    for row in table.tolist():
        total = [a + b for a, b in zip(total, row[start:end], strict=True)]
    return _decode_plain(layout, total, [])


def decode_row(
    layout: Layout, sums: np.ndarray, maxes: np.ndarray, group_ranks: tuple[int, ...]
) -> dict[str, float]:
    """Final values from reduced payloads. Keys that no rank logged this flush are left out.

    Vectorised per reduction with numpy (each slot kind is a slice), so decoding costs about
    the same for 1 or 1000 keys; up to [PLAIN_DECODE_UP_TO][distlog.layout.PLAIN_DECODE_UP_TO]
    keys the same rule runs on Python numbers instead (a dozen numpy calls cost more than the
    loop; 32 keys: 6 against 17 us warm, several times that on the writer thread of a busy host).
    """
    if len(layout) <= PLAIN_DECODE_UP_TO:
        row = _decode_plain(layout, sums.tolist(), maxes.tolist())
    else:
        row = _decode_numpy(layout, sums, maxes)
    if layout.spread_keys:
        size = len(group_ranks)
        for key in layout.spread_keys:
            if key in row:
                s = [sums[layout.slot(SPREAD_SUMS, k, key)] for k in range(Slots.SPREAD_SUM_WIDTH)]
                m = [
                    maxes[layout.slot(SPREAD_MAXES, k, key)] for k in range(Slots.SPREAD_MAX_WIDTH)
                ]
                row.update(_spread(key, s, m, group_ranks, size))
    return row


def _decode_plain(layout: Layout, sums: list[float], maxes: list[float]) -> dict[str, float]:
    """[decode_row][distlog.layout.decode_row]'s rule, key by key (the same IEEE operations)."""
    nan = math.nan
    row: dict[str, float] = {}
    for key, red, at in layout.runs:
        if red == "mean":
            value, weight, count = at
            if sums[count] > 0:
                den = sums[weight]
                row[key] = sums[value] / den if den != 0 else nan
        elif red == "sum":
            value, count = at
            if sums[count] > 0:
                row[key] = sums[value]
        elif red == "last":
            value, ranks = at
            if sums[ranks] > 0:
                row[key] = sums[value] / max(sums[ranks], 1.0)
        else:
            value, present, has_nan = at
            if maxes[present] > 0:
                best = maxes[value] if red == "max" else -maxes[value]
                row[key] = nan if maxes[has_nan] > 0 else best
    return row


def _decode_numpy(layout: Layout, sums: np.ndarray, maxes: np.ndarray) -> dict[str, float]:
    n = len(layout)
    values = np.full(n, np.nan)
    present = np.zeros(n, dtype=bool)
    S, P = Slots, layout.planes
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for red in REDUCTIONS:
            pos = layout.positions[red]
            if not len(pos):
                continue
            if red == "mean":
                present[pos] = sums[P["mean", S.MEAN_COUNT]] > 0
                den = sums[P["mean", S.MEAN_WEIGHT]]
                num = sums[P["mean", S.MEAN_VALUE]]
                values[pos] = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
            elif red == "sum":
                present[pos] = sums[P["sum", S.SUM_COUNT]] > 0
                values[pos] = sums[P["sum", S.SUM_VALUE]]
            elif red == "last":  # each rank's latest value, averaged over the ranks that logged it
                ranks = sums[P["last", S.LAST_RANKS]]
                present[pos] = ranks > 0
                values[pos] = sums[P["last", S.LAST_VALUE]] / np.maximum(ranks, 1.0)
            else:
                present[pos] = maxes[P[red, S.EXT_PRESENT]] > 0
                best = maxes[P[red, S.EXT_VALUE]]
                best = best if red == "max" else -best
                values[pos] = np.where(maxes[P[red, S.EXT_NAN]] > 0, np.nan, best)
    if present.all():
        return dict(zip(layout.keys, values.tolist(), strict=True))
    kept = values[present].tolist()
    return dict(zip(compress(layout.keys, present.tolist()), kept, strict=True))


def _spread_std_from_table(layout: Layout, table: np.ndarray, row: dict[str, float]) -> None:
    """Each spread key's ``rank_std`` from the ranks' own values in a gathered table, in two
    passes (the mean, then the squared deviations from it). The one-pass rule from the summed
    payload, E[v^2] - E[v]^2, cancels once the values are ~1e8 times their spread: three ranks
    at 1.7e9 + rank (a timestamp) gave 0.0 instead of 0.816. Only the gather sees every rank's
    value; the all-reduce protocols keep the one-pass rule (docs/aggregation.md)."""
    keys = [k for k in layout.spread_keys if f"{k}/rank_std" in row]
    if not keys:
        return
    places = np.array([layout.place[SPREAD_SUMS][k] for k in keys], dtype=np.int64)
    body = table[:, Header.WIDTH :]
    values = body[:, layout.slots(SPREAD_SUMS, Slots.SPREAD_SUM, places)]
    logged = body[:, layout.slots(SPREAD_SUMS, Slots.SPREAD_RANKS, places)] > 0
    ranks = np.maximum(logged.sum(axis=0), 1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mean = np.where(logged, values, 0.0).sum(axis=0) / ranks
        deviations = np.where(logged, values - mean, 0.0)
        # Scaled by the largest deviation, so squares of values past 1.3e154 do not overflow
        # (1e200 and 1.0 gave inf for 5e199).
        scale = np.abs(deviations).max(axis=0)
        scale = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
        scaled = deviations / scale
        std = scale * np.sqrt((scaled * scaled).sum(axis=0) / ranks)
    for key, value in zip(keys, std.tolist(), strict=True):
        row[f"{key}/rank_std"] = value


def _spread(
    key: str, s: list[float], m: list[float], group_ranks: tuple[int, ...], size: int
) -> dict[str, float]:
    total, squares, ranks, numbers = (float(x) for x in s)
    if ranks <= 0:
        return {}
    mean = total / ranks
    var = squares / ranks - mean * mean
    std = math.sqrt(var) if var > 0 else (0.0 if var == var else math.nan)
    out = {f"{key}/rank_std": std}
    if numbers > 0:
        argmax = unpack_rank(float(m[Slots.SPREAD_ARGMAX]), size)
        out[f"{key}/rank_argmax"] = float(group_ranks[argmax])
        out[f"{key}/rank_max"] = float(m[Slots.SPREAD_MAX])
        out[f"{key}/rank_min"] = -float(m[Slots.SPREAD_NEG_MIN])
    else:
        out[f"{key}/rank_argmax"] = out[f"{key}/rank_max"] = out[f"{key}/rank_min"] = math.nan
    return dict(sorted(out.items()))
