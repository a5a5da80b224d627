"""Histograms: local ones, and those of values spread over ranks or sharded in a DTensor.

Ranks agree on shared bin edges from the global min and max (carried in the media header
exchange), then sum their counts: communication grows with the bins, never with the tensor.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from distlog.errors import LogTypeError, LogValueError, RankDivergenceError
from distlog.groups import group_device
from distlog.media.convert import as_tensor, check_desc, label
from distlog.media.gather import (
    H_AUX,
    H_AUX2,
    H_DTYPE,
    H_FINITE,
    H_HI,
    H_LO,
    H_NONFINITE,
    H_STATUS,
    STATUS_ERROR,
    STATUS_OK,
    bits_float,
    call_site,
    comm,
    exchange_headers,
    float_bits,
    is_gathering,
    make_header,
    next_counter,
    normalize_ranks,
    stable_hash,
    wait_for,
)
from distlog.media.items import MAX_BINS, Histogram, MediaWarning, RanksArg

if TYPE_CHECKING:
    from distlog.world import World


def histogram_values(values: Any, desc: str) -> torch.Tensor:
    """Values as a flat float32/float64 tensor on their device (half types widen to float32)."""
    if isinstance(values, (list, tuple)) or np.isscalar(values):
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise LogTypeError(f"{label(desc)}: histogram values must be numbers") from None
    x = as_tensor(values, desc, "histogram values")
    if x.is_complex():
        raise LogTypeError(f"{label(desc)}: histogram values are complex ({x.dtype})")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    elif not x.is_floating_point():
        x = x.to(torch.float64)
    return x.reshape(-1)


@dataclass
class LocalStats:
    finite: torch.Tensor
    n_finite: int
    n_nonfinite: int
    lo: float
    hi: float
    dtype_bits: int


def local_stats(x: torch.Tensor) -> LocalStats:
    mask = torch.isfinite(x)
    n_finite = int(mask.sum())
    finite = x if n_finite == x.numel() else x[mask]
    if n_finite:
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = math.inf, -math.inf
    bits = 32 if x.dtype == torch.float32 else 64
    return LocalStats(finite, n_finite, x.numel() - n_finite, lo, hi, bits)


def bin_edges(
    lo: float, hi: float, bins: int, dtype_bits: int, desc: str = "histogram"
) -> np.ndarray:
    """The bin edges numpy.histogram gives an array of this dtype with min lo and max hi."""
    dt = np.float32 if dtype_bits == 32 else np.float64
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0  # numpy's range for an empty array
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.histogram_bin_edges(np.empty(0, dtype=dt), bins=bins, range=(dt(lo), dt(hi)))
    except ValueError:
        pass
    # float32 cannot hold that many distinct edges in so narrow a range (a large constant):
    # numpy gives up; distlog bins in float64 instead
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.histogram_bin_edges(np.empty(0), bins=bins, range=(lo, hi))
    except ValueError:
        pass
    # numpy.histogram itself refuses these values ("Too many bins for data range")
    if not math.isfinite(hi - lo):
        why = (
            f"the width of the range [{lo:.6g}, {hi:.6g}] overflows float64; scale the values "
            "down first"
        )
    elif lo == hi:
        why = (
            f"all values equal {lo!r}, where float64 cannot tell the edges of numpy's range "
            f"[v - 0.5, v + 0.5] apart (spacing {np.spacing(abs(lo)):.3g}); subtract an offset "
            "or log the value as a scalar"
        )
    else:
        why = (
            f"the range [{lo!r}, {hi!r}] is too narrow for {bins} distinct float64 edges (the "
            "values are only a few float steps apart); use fewer bins or rescale the values"
        )
    raise LogValueError(f"{label(desc)}: cannot make {bins} bins: {why}")


def bin_counts(
    finite: torch.Tensor, edges: np.ndarray, *, on_device: bool | None = None
) -> torch.Tensor:
    """numpy.histogram's counts (last bin closed) for values known to lie within the edges.

    Host tensors go through numpy's equal-width fast path; device tensors (or ``on_device``)
    are binned by binary search against the same edges, so they never leave the device.
    """
    bins = len(edges) - 1
    if finite.numel() == 0:
        return torch.zeros(bins, dtype=torch.int64, device=finite.device)
    if on_device is None:
        on_device = finite.device.type != "cpu"
    if edges.dtype == np.float64 and finite.dtype != torch.float64:
        finite = finite.to(torch.float64)  # the float64 fallback of bin_edges
    if not on_device:
        arr = finite.numpy()
        counts, _ = np.histogram(
            arr, bins=bins, range=(edges.dtype.type(edges[0]), edges.dtype.type(edges[-1]))
        )
        return torch.from_numpy(counts.astype(np.int64))
    e = torch.from_numpy(edges).to(device=finite.device, dtype=finite.dtype)
    idx = torch.bucketize(finite, e, right=True) - 1
    idx.clamp_(0, bins - 1)
    return torch.bincount(idx, minlength=bins)


def _check_bins(bins: Any, desc: str) -> int:
    if (
        isinstance(bins, bool)
        or not isinstance(bins, (int, np.integer))
        or not 1 <= bins <= MAX_BINS
    ):
        raise LogValueError(
            f"{label(desc)}: bins must be an integer in [1, {MAX_BINS}], got {bins!r}"
        )
    return int(bins)


def _bad_dtensor_ranks(ranks: Any, desc: str) -> None:
    if not (
        ranks == "all" or (isinstance(ranks, int) and not isinstance(ranks, bool) and ranks == 0)
    ):
        raise LogValueError(
            f"{label(desc)}: a DTensor's histogram covers the whole tensor; ranks must be 0 or "
            f"'all', got {ranks!r}"
        )


def histogram(values: Any, *, desc: str, bins: int = 64) -> Histogram:
    """The local histogram of ``values`` (numpy.histogram's bins), non-finite values left out."""
    desc = check_desc(desc)
    bins = _check_bins(bins, desc)
    st = local_stats(histogram_values(values, desc))
    edges = bin_edges(st.lo, st.hi, bins, st.dtype_bits, desc)
    counts = bin_counts(st.finite, edges).cpu().numpy()
    return Histogram(counts=counts, edges=edges, nonfinite=st.n_nonfinite)


def is_dtensor(x: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (its histogram is a collective)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(x, DTensor)


def _histogram_from_stats(
    groups: list[tuple[Any, int, tuple[int, ...], torch.device]],
    st: LocalStats | None,
    error: BaseException | None,
    *,
    world: World,
    kind_fp: str,
    desc: str,
    bins: int,
    timeout: float | None,
) -> Histogram | None:
    """Shared edges from the headers' min/max, then counts summed: O(bins) communication.

    ``groups`` are (group, size, global ranks, comm device), reduced over one after the other
    (one per mesh dimension for a DTensor); ``st`` is None on a rank that contributes no values.
    ``error`` (bad values, or a bad ``bins=`` / ``ranks=`` / ``desc``) is raised after this
    rank took part in the header exchanges with an error status, so no rank waits for it and
    every rank stays at the same call number. ``bins`` travels in the header (0 on a rank with
    an error): ranks that disagree on it all raise LogValueError.
    """
    fingerprint = stable_hash(f"histogram\0{desc}\0{kind_fp}")
    lo, hi = (st.lo, st.hi) if st is not None else (math.inf, -math.inf)
    n_finite = st.n_finite if st is not None else 0
    n_nonfinite = st.n_nonfinite if st is not None else 0
    dtype_bits = st.dtype_bits if st is not None else 0
    any_error = error is not None
    bins_lo = bins_hi = 0 if error is not None else bins
    wheres = []
    for group, size, ranks, device in groups:
        counter = next_counter(group) if size > 1 else 0
        wheres.append(call_site(counter, ranks))
        h = make_header("histogram", desc, fingerprint, counter)
        h[H_STATUS] = STATUS_ERROR if any_error else STATUS_OK
        h[H_LO], h[H_HI] = float_bits(lo), float_bits(hi)
        h[H_FINITE], h[H_NONFINITE], h[H_DTYPE] = n_finite, n_nonfinite, dtype_bits
        h[H_AUX], h[H_AUX2] = bins_lo, bins_hi
        try:
            headers = exchange_headers(
                h,
                group=group,
                group_size=size,
                comm_device=device,
                desc=desc,
                timeout=timeout,
                where=wheres[-1],
            )
        except RankDivergenceError as div:
            if error is not None:
                raise error from div  # the others were elsewhere: still name the mistake
            raise
        any_error = any(int(x[H_STATUS]) == STATUS_ERROR for x in headers)
        lo = min(bits_float(int(x[H_LO])) for x in headers)
        hi = max(bits_float(int(x[H_HI])) for x in headers)
        n_finite = sum(int(x[H_FINITE]) for x in headers)
        n_nonfinite = sum(int(x[H_NONFINITE]) for x in headers)
        dtype_bits = max(int(x[H_DTYPE]) for x in headers)
        seen = [int(x[H_AUX]) for x in headers if int(x[H_AUX]) > 0]
        seen += [int(x[H_AUX2]) for x in headers if int(x[H_AUX2]) > 0]
        bins_lo, bins_hi = (min(seen), max(seen)) if seen else (0, 0)
    if error is not None:
        raise error
    if not any_error and bins_lo != bins_hi:
        raise LogValueError(
            f"{label(desc)}: ranks disagree on bins (from {bins_lo} to {bins_hi}); every rank of "
            "a gathering histogram call must pass the same bins="
        )
    if any_error:
        if world.is_global_zero:
            warnings.warn(
                f"{label(desc)}: the histogram input on another rank was rejected (the error is "
                "raised there); nothing is written for this call",
                MediaWarning,
                stacklevel=4,
            )
        return None
    edges = bin_edges(lo, hi, bins, dtype_bits or 64, desc)
    if st is not None:
        counts = bin_counts(st.finite, edges).to(torch.int64)
    else:
        counts = torch.zeros(bins, dtype=torch.int64)
    for (group, size, _, device), where in zip(groups, wheres, strict=True):
        if size > 1:
            counts = counts.to(device)
            wait_for(
                partial(dist.all_reduce, counts, op=dist.ReduceOp.SUM, group=group, async_op=True),
                timeout,
                desc,
                "the histogram count reduction",
                where,
            )
    if not world.is_global_zero:
        return None
    return Histogram(counts=counts.cpu().numpy(), edges=edges, nonfinite=n_nonfinite)


def _dtensor_histogram(
    world: World,
    values: Any,
    desc: Any,
    bins: Any,
    ranks: Any,
    timeout: float | None,
) -> Histogram | None:
    from torch.distributed.tensor import Replicate

    error: BaseException | None = None
    try:  # every rank of the mesh takes part, even one that passed a bad argument
        desc = check_desc(desc)
        bins = _check_bins(bins, desc)
        _bad_dtensor_ranks(ranks, desc)
    except Exception as exc:
        error = exc
    mesh = values.device_mesh
    placements = list(values.placements)
    if any(p.is_partial() for p in placements):  # pending sums: the values are not final yet
        values = values.redistribute(
            mesh, [Replicate() if p.is_partial() else p for p in placements]
        )
        placements = list(values.placements)
    if not any(p.is_shard() for p in placements):  # replicated: rank 0's copy is the tensor
        if error is not None:
            raise error  # no communication: each rank raises its own
        return histogram(values.to_local(), desc=desc, bins=bins) if world.is_global_zero else None
    coord = mesh.get_coordinate()
    if coord is None:
        if error is not None:
            raise error
        return None  # this rank holds no part of the tensor
    contributes = all(c == 0 for c, p in zip(coord, placements, strict=True) if p.is_replicate())
    st: LocalStats | None = None
    if error is None:
        try:
            x = histogram_values(values.to_local(), desc)
            st = local_stats(x) if contributes else None
        except Exception as exc:
            error = exc
    groups = []
    for d in range(mesh.ndim):
        g = mesh.get_group(d)
        groups.append(
            (g, dist.get_world_size(g), tuple(dist.get_process_group_ranks(g)), group_device(g))
        )
    layout = f"dtensor{tuple(mesh.shape)}{[str(p) for p in placements]}"
    return _histogram_from_stats(
        groups,
        st,
        error,
        world=world,
        kind_fp=layout,
        desc=desc,
        bins=bins if error is None else 0,
        timeout=timeout,
    )


def collect_histogram(
    world: World,
    values: Any,
    *,
    desc: str,
    bins: int = 64,
    ranks: RanksArg = 0,
    timeout: float | None = None,
    group: Any = None,
) -> Histogram | None:
    """The histogram the writer logs (numpy.histogram's edges and counts).

    ``ranks=0``: rank 0's values, no communication (DDP replicas are identical). ``ranks="all"``
    or a list: the chosen ranks' values together, from shared edges (global min and max carried
    in the header exchange) and summed counts. A sharded DTensor (an FSDP parameter) always
    gives the whole tensor's histogram, each element counted once: every rank of its mesh must
    call. Communication grows with ``bins`` and the group size, never with the tensor.
    Non-finite values are left out and counted in ``Histogram.nonfinite``.
    """
    if is_dtensor(values):
        return _dtensor_histogram(world, values, desc, bins, ranks, timeout)
    if not is_gathering(ranks):
        desc = check_desc(desc)
        bins = _check_bins(bins, desc)
        return histogram(values, desc=desc, bins=bins) if world.is_global_zero else None
    # a gathering call: a bad desc / bins= / ranks= is raised after the header exchange
    chosen: tuple[int, ...] = ()
    error: BaseException | None = None
    try:
        desc = check_desc(desc)
        bins = _check_bins(bins, desc)
        chosen = normalize_ranks(world, ranks, desc) or ()
    except Exception as exc:
        error = exc
    if not world.writer_in_group:
        if error is not None:
            raise error
        return None
    st: LocalStats | None = None
    if error is None and world.rank in chosen:
        try:
            st = local_stats(histogram_values(values, desc))
        except Exception as exc:
            error = exc
    distributed = world.group_size > 1 and world.backend is not None
    pg, dev = comm(world, group)
    groups = [(pg, world.group_size if distributed else 1, tuple(world.group_ranks), dev)]
    return _histogram_from_stats(
        groups,
        st,
        error,
        world=world,
        kind_fp=",".join(map(str, chosen)),
        desc=desc,
        bins=bins if error is None else 0,
        timeout=timeout,
    )
