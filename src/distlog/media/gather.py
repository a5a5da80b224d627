"""The selective gather: which rank's media reaches the writer, and how it travels.

* ``ranks=0`` (the default for every kind): global rank 0 converts its own input and every other
  rank returns ``None`` at once, without looking at its input and without any communication.
* ``ranks="all"``, a list of global ranks, or another single rank: a *gathering call*. Every rank
  of the logger's group must make it. The ranks first exchange a small fixed-size header (call
  fingerprint, status, sizes), so a rank in a different media call, or a rank whose input was
  rejected, is noticed instead of hanging; then each chosen rank sends its items to rank 0 point
  to point as one uint8 tensor (JSON metadata + raw pixels). Nothing received is ever unpickled.
  Captions (table rows: a ``rank`` column) name the rank each item came from, and a byte cap per
  call bounds what travels, with a [MediaWarning][distlog.MediaWarning] when it is hit.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from distlog.errors import LogTypeError, LogValueError, RankDivergenceError
from distlog.groups import group_device
from distlog.media.convert import (
    check_cap,
    check_desc,
    close_figure,
    figure_to_images,
    label,
    to_images,
    to_table,
    to_videos,
)
from distlog.media.items import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    Images,
    MediaWarning,
    RanksArg,
    Table,
    TableCell,
    Video,
    Videos,
)

if TYPE_CHECKING:
    from distlog.world import World


# ---------------------------------------------------------------------------------------------
# the gathering protocol
# ---------------------------------------------------------------------------------------------

_MAGIC = 0x64697374_6C6F67  # "distlog"
_VERSION = 1
_HEADER_FIELDS = 16
_DESC_BYTES = 48
_HEADER_LEN = _HEADER_FIELDS + _DESC_BYTES
_KIND_CODES = {"images": 1, "videos": 2, "plot": 3, "histogram": 4, "table": 5}
_KIND_NAMES = {v: k for k, v in _KIND_CODES.items()}
STATUS_IDLE, STATUS_OK, STATUS_ERROR = 0, 1, 2

# header fields
H_MAGIC, H_VERSION, H_KIND, H_FP, H_COUNTER, H_STATUS, H_ITEMS, H_BYTES, H_AUX = range(9)
H_LO, H_HI, H_FINITE, H_NONFINITE, H_DTYPE = 9, 10, 11, 12, 13
H_AUX2 = 14  # histograms: H_AUX / H_AUX2 carry the smallest / largest bins= seen

# gathering calls made so far per process group (weak: a group that is destroyed and another
# created at the same address must not inherit the count on some ranks only)
_CALL_COUNTERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def stable_hash(text: str) -> int:
    # surrogatepass: the text may hold the bad key a rank is about to raise about
    raw = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") >> 2


def float_bits(v: float) -> int:
    return int(torch.tensor([v], dtype=torch.float64).view(torch.int64).item())


def bits_float(b: int) -> float:
    return float(torch.tensor([b], dtype=torch.int64).view(torch.float64).item())


def make_header(kind: str, desc: Any, fingerprint: int, counter: int) -> torch.Tensor:
    h = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    h[H_MAGIC], h[H_VERSION], h[H_KIND] = _MAGIC, _VERSION, _KIND_CODES[kind]
    h[H_FP], h[H_COUNTER] = fingerprint, counter
    # desc may be the invalid key a rank is about to raise about: never fail on it here
    text = desc if isinstance(desc, str) else repr(desc)
    raw = text.encode(errors="replace")[:_DESC_BYTES]
    h[_HEADER_FIELDS : _HEADER_FIELDS + len(raw)] = torch.tensor(list(raw), dtype=torch.int64)
    return h


def _header_desc(h: torch.Tensor) -> str:
    raw = bytes(int(b) for b in h[_HEADER_FIELDS:].tolist() if 0 < int(b) < 256)
    return raw.decode(errors="replace")


def wait_for(
    launch: Callable[[], Any], timeout: float | None, desc: str, what: str, where: str = ""
) -> None:
    """Start one collective and wait for it; any failure becomes a named distlog error.

    A timeout, a dead peer or a size mismatch (another rank in another collective) all end as
    [RankDivergenceError][distlog.RankDivergenceError] naming the media key, the step of the
    protocol (``what``) and ``where`` (the call number and the group's ranks), never as a raw
    ``RuntimeError`` from the backend.
    """
    try:
        work = launch()
        if work is None:
            return
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout=timedelta(seconds=timeout))
    except RuntimeError as exc:  # gloo/NCCL/store errors (DistError derives from RuntimeError)
        text = str(exc).lower()
        at = f" ({where})" if where else ""
        if "timed out" in text or "timeout" in text:
            raise RankDivergenceError(
                f"{label(desc)}: {what}{at} did not complete within {timeout:g}s. A gathering "
                "media call (ranks other than 0) must be made by every rank of the logger's "
                "group, in the same order; some rank did not make it"
            ) from exc
        raise RankDivergenceError(
            f"{label(desc)}: {what}{at} failed: a rank crashed, left, or is in another "
            f"collective. Cause: {type(exc).__name__}: {exc}"
        ) from exc


def call_site(counter: int, ranks: Sequence[int]) -> str:
    """How an error names a gathering call: its number on this group, and the group's ranks."""
    return f"media call #{counter} over global ranks {list(ranks)}"


def next_counter(group: Any) -> int:
    """This process's count of gathering calls on ``group`` (None: the default group)."""
    key = group if group is not None else dist.group.WORLD
    n = _CALL_COUNTERS.get(key, 0) + 1
    _CALL_COUNTERS[key] = n
    return n


def exchange_headers(
    header: torch.Tensor,
    *,
    group: Any,
    group_size: int,
    comm_device: torch.device,
    desc: str,
    timeout: float | None,
    where: str = "",
) -> list[torch.Tensor]:
    """all_gather the fixed-size headers and check that every rank is in the same call."""
    if group_size == 1:
        return [header]
    local = header.to(comm_device)
    out = [torch.empty_like(local) for _ in range(group_size)]
    wait_for(
        lambda: dist.all_gather(out, local, group=group, async_op=True),
        timeout,
        desc,
        "the media header exchange",
        where,
    )
    headers = [h.cpu() for h in out]
    mine = header

    def differs(h: torch.Tensor) -> bool:
        if int(h[H_MAGIC]) != _MAGIC or int(h[H_COUNTER]) != int(mine[H_COUNTER]):
            return True
        # a rank whose arguments were rejected (bad desc, ranks=, bins=, caps) could not
        # compute the call's fingerprint; being at the same call number is what keeps the
        # group in step, and that rank raises its own error
        if STATUS_ERROR in (int(h[H_STATUS]), int(mine[H_STATUS])):
            return False
        return int(h[H_FP]) != int(mine[H_FP])

    bad = [i for i, h in enumerate(headers) if differs(h)]
    if bad:
        seen = []
        for i, h in enumerate(headers):
            if int(h[H_MAGIC]) != _MAGIC:
                seen.append(f"group rank {i}: not a distlog media call")
            else:
                kind = _KIND_NAMES.get(int(h[H_KIND]), "?")
                seen.append(
                    f"group rank {i}: {kind} {_header_desc(h)!r} (media call #{int(h[H_COUNTER])})"
                )
        raise RankDivergenceError(
            f"{label(desc)}: ranks are in different media calls; every rank of the group must "
            "make the same gathering call (same kind, desc and ranks=) in the same order. "
            + "; ".join(seen)
        )
    return headers


def _fair_share(sizes: Sequence[int], cap: int) -> list[int]:
    """Split ``cap`` among ranks wanting ``sizes``: small requests in full, the rest evenly."""
    alloc = [0] * len(sizes)
    remaining = cap
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        share = remaining // (len(sizes) - k)
        alloc[i] = min(sizes[i], share)
        remaining -= alloc[i]
    return alloc


@dataclass
class _Unit:
    """One item that travels whole: an image, a video, a table row. JSON meta + arrays."""

    meta: dict[str, Any]
    arrays: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        """What the unit counts against ``max_bytes``; raises if its metadata is not JSON."""
        return sum(a.nbytes for a in self.arrays) + len(json.dumps(self.meta, allow_nan=True))


@dataclass
class _Parcel:
    """What one rank contributes: its units plus call-level metadata (table columns)."""

    units: list[_Unit]
    extra: dict[str, Any] = field(default_factory=dict)
    aux: int = 0  # a hash every contributing rank must agree on (table columns)


def _pack(parcel: _Parcel, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes [meta_len, data_len], payload uint8) for the first ``kept`` units."""
    units = parcel.units[:kept]
    meta = {
        "extra": parcel.extra,
        "units": [{"meta": u.meta, "arrays": [list(a.shape) for a in u.arrays]} for u in units],
    }
    meta_bytes = json.dumps(meta).encode()
    chunks = [np.frombuffer(meta_bytes, dtype=np.uint8)]
    for u in units:
        for a in u.arrays:
            chunks.append(np.ascontiguousarray(a, dtype=np.uint8).reshape(-1))
    payload = np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
    sizes = np.array([len(meta_bytes), payload.size - len(meta_bytes)], dtype=np.int64)
    return sizes, payload


def _unpack(payload: np.ndarray, meta_len: int, src: int, desc: str) -> _Parcel:
    """Decode a received payload: JSON metadata and raw uint8 arrays, every size checked."""

    def fail(why: str) -> RankDivergenceError:
        return RankDivergenceError(f"{label(desc)}: malformed media payload from rank {src}: {why}")

    try:
        meta = json.loads(payload[:meta_len].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("units"), list):
        raise fail("metadata has no unit list")
    offset = meta_len
    units = []
    for u in meta["units"]:
        if not isinstance(u, dict) or not isinstance(u.get("arrays"), list):
            raise fail("a unit has no array list")
        arrays = []
        for shape in u["arrays"]:
            if (
                not isinstance(shape, list)
                or not 3 <= len(shape) <= 4
                or not all(isinstance(s, int) and s > 0 for s in shape)
                or shape[-1] not in (1, 3, 4)
            ):
                raise fail(f"bad array shape {shape!r}")
            n = int(np.prod(shape))
            if offset + n > payload.size:
                raise fail("payload shorter than its metadata says")
            arrays.append(payload[offset : offset + n].reshape(shape).copy())
            offset += n
        units.append(_Unit(meta=u.get("meta") or {}, arrays=arrays))
    if offset != payload.size:
        raise fail("payload longer than its metadata says")
    extra = meta.get("extra")
    return _Parcel(units=units, extra=extra if isinstance(extra, dict) else {})


@dataclass
class _Gathered:
    """On rank 0: each contributing rank's parcel, in rank order, with what was kept."""

    parcels: list[tuple[int, _Parcel]]
    dropped: dict[int, tuple[int, int]]  # rank -> (kept, total)


def comm(world: World, group: Any) -> tuple[Any, torch.device]:
    """The group to gather over and where its tensors live."""
    if group is None:
        return world.group, world.comm_device
    return group, group_device(group)


def is_gathering(ranks: Any) -> bool:
    """False only for the default ``ranks=0`` (no communication). Any other value, a wrong
    one included, makes a gathering call: a rank with a bad ``ranks=`` still takes part in
    the header exchange and raises afterwards, like a rank with bad input."""
    return not (
        isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool) and int(ranks) == 0
    )


def normalize_ranks(world: World, ranks: Any, desc: str) -> tuple[int, ...] | None:
    """None for the default (rank 0, no communication); else the chosen global ranks."""
    if not is_gathering(ranks):
        return None
    if isinstance(ranks, str):
        if ranks != "all":
            raise LogValueError(
                f"{label(desc)}: ranks must be 0, 'all' or a list of ranks, got {ranks!r}"
            )
        return tuple(world.group_ranks)
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        chosen: list[int] = [int(ranks)]
    elif isinstance(ranks, Sequence) and all(
        isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in ranks
    ):
        chosen = sorted({int(r) for r in ranks})
    else:
        raise LogTypeError(
            f"{label(desc)}: ranks must be 0, 'all' or a list of ranks, got {ranks!r}"
        )
    if not chosen:
        raise LogValueError(f"{label(desc)}: ranks is an empty list")
    outside = [r for r in chosen if r not in world.group_ranks]
    if outside:
        raise LogValueError(
            f"{label(desc)}: ranks {outside} are not in the logger's group (global ranks "
            f"{list(world.group_ranks)})"
        )
    return tuple(chosen)


@dataclass
class _Args:
    """A gathering call's own arguments, checked (or the error they gave) on this rank."""

    desc: Any
    chosen: tuple[int, ...] = ()
    max_bytes: int = 0
    max_items: int | None = None
    error: BaseException | None = None


def _check_args(
    world: World,
    desc: Any,
    ranks: Any,
    caps: Sequence[tuple[str, Any]] = (),
    more: Callable[[str], None] | None = None,
) -> _Args:
    """Check ``desc``, ``ranks=`` and the caps without raising: an error is kept for after the
    header exchange, so a rank that passed a bad argument never leaves the others waiting."""
    args = _Args(desc=desc)
    try:
        args.desc = check_desc(desc)
        args.chosen = normalize_ranks(world, ranks, args.desc) or ()
        checked = [check_cap(value, name, args.desc) for name, value in caps]
        if checked:
            args.max_bytes = checked[0]
            args.max_items = checked[1] if len(checked) > 1 else None
        if more is not None:
            more(args.desc)
    except Exception as exc:
        args.error = exc
    return args


def _raise_after_exchange(error: BaseException, exchange: Callable[[], Any]) -> None:
    """Take part in the header exchange with an error status, then raise ``error``."""
    try:
        exchange()
    except RankDivergenceError as div:  # the others were elsewhere: still name the mistake
        raise error from div
    raise error


def _gather_parcels(
    world: World,
    kind: str,
    args: _Args,
    prepare: Callable[[], _Parcel],
    *,
    timeout: float | None,
    group: Any = None,
) -> _Gathered | None:
    """The gathering call: header exchange, then chosen ranks send their parcels to rank 0.

    ``args`` were checked by `_check_args`; if they were rejected this rank still takes part
    in the header exchange (status error, so every rank stays at the same call number), then
    raises their error.
    """
    desc, chosen, max_bytes, max_items = args.desc, args.chosen, args.max_bytes, args.max_items
    if not world.writer_in_group:
        if args.error is not None:
            raise args.error  # nobody in this group exchanges anything
        return None  # nobody in this group writes; every member returns here alike
    distributed = world.group_size > 1 and world.backend is not None
    pg, dev = comm(world, group)
    fingerprint = stable_hash(f"{kind}\0{desc}\0{','.join(map(str, chosen))}")
    counter = next_counter(pg) if distributed else 0
    header = make_header(kind, desc, fingerprint, counter)
    where = call_site(counter, world.group_ranks)

    parcel: _Parcel | None = None
    sizes: list[int] = []
    error = args.error
    if error is None and world.rank in chosen:
        try:
            parcel = prepare()
            sizes = [u.nbytes for u in parcel.units]  # JSON-encodes each unit's metadata
        except Exception as exc:  # take part in the header exchange, then raise it
            error = exc
    if error is not None:
        header[H_STATUS] = STATUS_ERROR
        parcel = None
    elif parcel is not None:
        header[H_STATUS] = STATUS_OK
        header[H_ITEMS] = len(parcel.units)
        header[H_BYTES] = sum(sizes)
        header[H_AUX] = parcel.aux

    def exchange() -> list[torch.Tensor]:
        return exchange_headers(
            header,
            group=pg,
            group_size=world.group_size if distributed else 1,
            comm_device=dev,
            desc=desc,
            timeout=timeout,
            where=where,
        )

    if error is not None:
        _raise_after_exchange(error, exchange)
    headers = exchange()
    ranks_of = list(world.group_ranks) if distributed else [world.rank]
    status = {ranks_of[i]: int(h[H_STATUS]) for i, h in enumerate(headers)}
    failed = sorted(r for r, s in status.items() if s == STATUS_ERROR)
    if failed:
        if world.is_global_zero:
            warnings.warn(
                f"{label(desc)}: the input on rank(s) {failed} was rejected (the error is raised "
                "there); nothing is written for this call",
                MediaWarning,
                stacklevel=4,
            )
        return None
    ok = [(ranks_of[i], h) for i, h in enumerate(headers) if int(h[H_STATUS]) == STATUS_OK]
    if len({int(h[H_AUX]) for _, h in ok}) > 1:
        raise LogValueError(
            f"{label(desc)}: ranks {[r for r, _ in ok]} disagree on the table columns; every "
            "contributing rank must log the same columns"
        )

    # every rank computes the same allocation from the headers
    items = [int(h[H_ITEMS]) for _, h in ok]
    item_alloc = _fair_share(items, max_items) if max_items is not None else items
    byte_alloc = _fair_share([int(h[H_BYTES]) for _, h in ok], max_bytes)
    alloc = {r: (item_alloc[k], byte_alloc[k]) for k, (r, _) in enumerate(ok)}

    def kept_count(rank: int) -> int:
        n_max, b_max = alloc[rank]
        used = kept = 0
        for size in sizes[:n_max]:
            if used + size > b_max:
                break
            used += size
            kept += 1
        return kept

    # every contributing rank sends, one with no items too: a table's columns travel with it
    senders = [r for r, _ in ok if r != 0]
    if world.rank != 0:
        if parcel is not None and world.rank in senders:
            lengths, payload = _pack(parcel, kept_count(world.rank))
            wait_for(
                lambda: dist.isend(torch.from_numpy(lengths).to(dev), dst=0, group=pg),
                timeout,
                desc,
                "sending media sizes to rank 0",
                where,
            )
            wait_for(
                lambda: dist.isend(torch.from_numpy(payload).to(dev), dst=0, group=pg),
                timeout,
                desc,
                "sending media to rank 0",
                where,
            )
        return None

    parcels: list[tuple[int, _Parcel]] = []
    dropped: dict[int, tuple[int, int]] = {}
    for r, h in ok:
        total = int(h[H_ITEMS])
        if r == 0:
            assert parcel is not None
            kept = kept_count(0)
            parcels.append((0, _Parcel(units=parcel.units[:kept], extra=parcel.extra)))
        else:
            sizes_t = torch.empty(2, dtype=torch.int64, device=dev)
            wait_for(
                partial(dist.irecv, sizes_t, src=r, group=pg),
                timeout,
                desc,
                f"receiving media sizes from rank {r}",
                where,
            )
            meta_len, data_len = (int(v) for v in sizes_t.cpu().tolist())
            if meta_len < 0 or data_len < 0 or data_len > int(h[H_BYTES]):
                raise RankDivergenceError(
                    f"{label(desc)}: rank {r} announced an impossible payload ({meta_len}, {data_len})"
                )
            buf = torch.empty(meta_len + data_len, dtype=torch.uint8, device=dev)
            wait_for(
                partial(dist.irecv, buf, src=r, group=pg),
                timeout,
                desc,
                f"receiving media from rank {r}",
                where,
            )
            got = _unpack(buf.cpu().numpy(), meta_len, r, desc)
            kept = len(got.units)
            parcels.append((r, got))
        if kept < total:
            dropped[r] = (kept, total)
    return _Gathered(parcels=parcels, dropped=dropped)


def _warn_dropped(
    desc: str,
    noun: str,
    dropped: dict[int, tuple[int, int]],
    max_bytes: int,
    max_items: int | None = None,
) -> None:
    if not dropped:
        return
    detail = ", ".join(f"{k} of {n} from rank {r}" for r, (k, n) in sorted(dropped.items()))
    caps = f"{max_bytes} bytes" + (f" / {max_items} {noun}" if max_items is not None else "")
    warnings.warn(
        f"{label(desc)}: the per-call cap ({caps}) was reached; kept {detail}. Raise "
        "max_bytes=/max_rows= or log fewer/smaller items",
        MediaWarning,
        stacklevel=4,
    )


def _tag(rank: int, caption: str | None) -> str:
    return f"rank {rank}" if caption is None else f"rank {rank}: {caption}"


# ---------------------------------------------------------------------------------------------
# the entries the Logger calls: each returns the item on rank 0 and None elsewhere
# ---------------------------------------------------------------------------------------------


def _images_parcel(item: Images) -> _Parcel:
    caps: list[str | None] = [None] * len(item.images)
    if item.captions is not None:
        caps = list(item.captions)
    return _Parcel(
        units=[_Unit({"caption": c}, [a]) for a, c in zip(item.images, caps, strict=True)]
    )


def _images_from(gathered: _Gathered) -> Images:
    images, captions = [], []
    for r, p in gathered.parcels:
        for u in p.units:
            images.append(u.arrays[0])
            cap = u.meta.get("caption")
            captions.append(_tag(r, cap if isinstance(cap, str) else None))
    return Images(images=images, captions=captions)


def _collect_image_like(
    world: World,
    kind: str,
    desc: Any,
    ranks: Any,
    convert: Callable[[str], Images],
    max_bytes: Any,
    timeout: float | None,
    group: Any,
) -> Images | None:
    if not is_gathering(ranks):
        desc = check_desc(desc)
        check_cap(max_bytes, "max_bytes", desc)
        return convert(desc) if world.is_global_zero else None
    args = _check_args(world, desc, ranks, [("max_bytes", max_bytes)])
    gathered = _gather_parcels(
        world, kind, args, lambda: _images_parcel(convert(args.desc)), timeout=timeout, group=group
    )
    if gathered is None:
        return None
    desc = args.desc
    _warn_dropped(desc, "images", gathered.dropped, args.max_bytes)
    result = _images_from(gathered)
    if not result.images:
        return None
    return result


def collect_images(
    world: World,
    images: Any,
    caption: str | Sequence[str] | None = None,
    *,
    desc: str,
    ranks: RanksArg = 0,
    value_range: tuple[float, float] | None = None,
    captions: str | Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Images | None:
    """Images for the writer: rank 0's (default) or gathered from ``ranks`` (see module doc).

    Returns the item on global rank 0 and None elsewhere. In a gathering call every rank of the
    group must call; ``timeout`` (seconds) turns a missing rank into an error instead of a hang.
    ``group`` may name another process group with the same members as ``world.group`` to
    gather over (the Logger passes its gloo control group, so pixels stay on the host).
    """
    return _collect_image_like(
        world,
        "images",
        desc,
        ranks,
        lambda d: to_images(images, caption, desc=d, value_range=value_range, captions=captions),
        max_bytes,
        timeout,
        group,
    )


def collect_plot(
    world: World,
    figure: Any,
    *,
    desc: str,
    caption: str | None = None,
    ranks: RanksArg = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Images | None:
    """A matplotlib figure rendered on the ranks that contribute; closed on every rank."""
    try:
        return _collect_image_like(
            world,
            "plot",
            desc,
            ranks,
            lambda d: figure_to_images(figure, desc=d, caption=caption),
            max_bytes,
            timeout,
            group,
        )
    finally:
        close_figure(figure)


def collect_videos(
    world: World,
    videos: Any,
    caption: str | Sequence[str] | None = None,
    *,
    desc: str,
    fps: float = 4,
    format: Literal["gif", "mp4"] = "gif",
    ranks: RanksArg = 0,
    value_range: tuple[float, float] | None = None,
    captions: str | Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Videos | None:
    """Videos for the writer: rank 0's (default) or gathered from ``ranks``."""

    def convert(d: str) -> Videos:
        return to_videos(
            videos,
            caption,
            desc=d,
            fps=fps,
            format=format,
            value_range=value_range,
            captions=captions,
        )

    if not is_gathering(ranks):
        desc = check_desc(desc)
        check_cap(max_bytes, "max_bytes", desc)
        return convert(desc) if world.is_global_zero else None
    args = _check_args(world, desc, ranks, [("max_bytes", max_bytes)])

    def prepare() -> _Parcel:
        return _Parcel(
            units=[
                _Unit({"caption": v.caption, "fps": v.fps, "format": v.format}, [v.frames])
                for v in convert(args.desc).videos
            ]
        )

    gathered = _gather_parcels(world, "videos", args, prepare, timeout=timeout, group=group)
    if gathered is None:
        return None
    desc = args.desc
    _warn_dropped(desc, "videos", gathered.dropped, args.max_bytes)
    out = []
    for r, p in gathered.parcels:
        for u in p.units:
            cap = u.meta.get("caption")
            fps_v = u.meta.get("fps")
            fmt = u.meta.get("format")
            if u.arrays[0].ndim != 4:
                raise RankDivergenceError(f"{label(desc)}: rank {r} sent a video that is not THWC")
            out.append(
                Video(
                    frames=u.arrays[0],
                    fps=float(fps_v)
                    if isinstance(fps_v, (int, float)) and fps_v > 0
                    else float(fps),
                    format=fmt if fmt in ("gif", "mp4") else format,
                    caption=_tag(r, cap if isinstance(cap, str) else None),
                )
            )
    return Videos(videos=out) if out else None


def _json_cell(cell: TableCell, images: list[np.ndarray]) -> Any:
    if isinstance(cell, np.ndarray):
        images.append(cell)
        return {"__image__": len(images) - 1}
    return cell


def _cell_from_json(cell: Any, arrays: list[np.ndarray], r: int, desc: str) -> TableCell:
    if isinstance(cell, dict):
        k = cell.get("__image__")
        if not isinstance(k, int) or not 0 <= k < len(arrays):
            raise RankDivergenceError(f"{label(desc)}: rank {r} sent a bad image cell")
        return arrays[k]
    if cell is None or isinstance(cell, (bool, int, float, str)):
        return cell
    raise RankDivergenceError(f"{label(desc)}: rank {r} sent a cell of type {type(cell).__name__}")


def collect_table(
    world: World,
    columns: Sequence[str],
    data: Sequence[Sequence[Any]],
    *,
    desc: str,
    ranks: RanksArg = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Table | None:
    """A table for the writer: rank 0's rows (default) or the chosen ranks' rows in rank order.

    A gathered table gets a leading ``rank`` column (``_`` prefixed until it is not a column
    name already: ``_rank``, ``__rank``, ...). At most ``max_rows`` rows are kept per call
    (split fairly among ranks), with a warning. A call whose chosen ranks have no rows gives
    an empty table with the columns, as with ``ranks=0``.
    """
    if not is_gathering(ranks):
        desc = check_desc(desc)
        max_rows = check_cap(max_rows, "max_rows", desc)
        max_bytes = check_cap(max_bytes, "max_bytes", desc)
        if not world.is_global_zero:
            return None
        table = to_table(columns, data, desc=desc)
        if len(table.rows) > max_rows:
            _warn_dropped(desc, "rows", {0: (max_rows, len(table.rows))}, max_bytes, max_rows)
            table = Table(columns=table.columns, rows=table.rows[:max_rows])
        return table

    args = _check_args(world, desc, ranks, [("max_bytes", max_bytes), ("max_rows", max_rows)])

    def prepare() -> _Parcel:
        table = to_table(columns, data, desc=args.desc)
        units = []
        for row in table.rows:
            imgs: list[np.ndarray] = []
            cells = [_json_cell(c, imgs) for c in row]
            units.append(_Unit({"cells": cells}, imgs))
        return _Parcel(
            units=units,
            extra={"columns": table.columns},
            aux=stable_hash("\0".join(table.columns)),
        )

    gathered = _gather_parcels(world, "table", args, prepare, timeout=timeout, group=group)
    if gathered is None:
        return None
    desc = args.desc
    _warn_dropped(desc, "rows", gathered.dropped, args.max_bytes, args.max_items)
    cols: list[str] | None = None
    rows: list[list[TableCell]] = []
    for r, p in gathered.parcels:
        got = p.extra.get("columns")
        if isinstance(got, list) and cols is None:
            cols = [str(c) for c in got]
        for u in p.units:
            cells = u.meta.get("cells")
            if not isinstance(cells, list) or (cols is not None and len(cells) != len(cols)):
                raise RankDivergenceError(f"{label(desc)}: rank {r} sent a malformed row")
            rows.append([r, *(_cell_from_json(c, u.arrays, r, desc) for c in cells)])
    if cols is None:
        return None  # no columns arrived (every contributing rank sends them, rows or not)
    rank_col = "rank"
    while rank_col in cols:
        rank_col = "_" + rank_col
    return Table(columns=[rank_col, *cols], rows=rows)
