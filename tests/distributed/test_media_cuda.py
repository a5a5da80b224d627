"""Media with CUDA tensors (skipped without a GPU): scaling and binning stay on the device and
give the host's results; a gathering call with CUDA inputs over gloo."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from dist_harness import run_ranks

from distlog.media import histogram, to_images, to_videos

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_images_videos_and_histograms_match_the_host() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    on_gpu = to_images(x.cuda(), desc="img")
    on_host = to_images(x, desc="img")
    assert all(np.array_equal(a, b) for a, b in zip(on_gpu.images, on_host.images, strict=True))
    v = torch.rand(2, 3, 4, 8, 8, generator=g)
    assert all(
        np.array_equal(a.frames, b.frames)
        for a, b in zip(
            to_videos(v.cuda(), desc="v").videos, to_videos(v, desc="v").videos, strict=True
        )
    )
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        values = (torch.randn(200_000, generator=g) * 3).round(decimals=1).to(dtype)
        h = histogram(values.cuda(), desc="w", bins=64)  # binary search on the device
        ref = values.float() if dtype == torch.bfloat16 else values
        counts, edges = np.histogram(ref.numpy(), bins=64)
        assert np.array_equal(h.edges, edges) and np.array_equal(h.counts, counts)


def _cuda_gather(rank: int) -> Any:
    from distlog import World
    from distlog.media import collect_histogram, collect_images

    world = World.current(device="cuda:0")
    g = torch.Generator().manual_seed(rank)
    imgs = collect_images(world, torch.rand(2, 3, 8, 8, generator=g).cuda(), desc="i", ranks="all")
    hist = collect_histogram(world, torch.randn(1000, generator=g).cuda(), desc="h", ranks="all")
    return imgs, hist


def test_gathering_cuda_inputs_over_gloo() -> None:
    out = run_ranks(_cuda_gather, 2)
    imgs, hist = out[0]
    assert out[1] == (None, None)
    want = []
    values = []
    for r in (0, 1):
        g = torch.Generator().manual_seed(r)
        want += to_images(torch.rand(2, 3, 8, 8, generator=g), desc="i").images
        values.append(torch.randn(1000, generator=g).numpy())
    assert all(np.array_equal(a, b) for a, b in zip(imgs.images, want, strict=True))
    counts, edges = np.histogram(np.concatenate(values), bins=64)
    assert np.array_equal(hist.counts, counts) and np.array_equal(hist.edges, edges)
