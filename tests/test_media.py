"""Media conversion, validation and files, in one process (the distributed parts: tests/distributed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import distlog
from distlog import LogTypeError, LogValueError, World
from distlog.media import (
    Histogram,
    Images,
    Table,
    Video,
    Videos,
    collect_histogram,
    collect_images,
    collect_plot,
    collect_table,
    collect_videos,
    figure_to_images,
    histogram,
    to_images,
    to_table,
    to_videos,
)
from distlog.media.files import safe_relative_key, save_media
from distlog.runlog import iter_rows
from distlog.sinks import JsonlSink

WORLD = World()  # a world of one: rank 0, no process group


def ref_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The documented rule, written independently: map [lo, hi] to [0, 255], round, clip."""
    x = x.astype(np.float64)
    return np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


# --- scaling rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_float_in_unit_interval_scales_by_255(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 5, generator=g).to(dtype)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    out = to_images(x, desc="val/img")
    want = ref_uint8(x.float().permute(0, 2, 3, 1).numpy(), 0.0, 1.0)
    got = np.stack(out.images)
    # bf16/f16 are widened to float32 first; the rule itself is exact
    assert got.dtype == np.uint8 and got.shape == (3, 8, 5, 3)
    assert np.array_equal(got, want)
    assert got.max() == 255 and got.min() == 0


def test_float_in_symmetric_interval_uses_x_plus_1_times_127_5() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    x[0, 0, 0, 0] = -1.0
    out = to_images(x, desc="gen/samples")
    want = np.clip(np.rint((x.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(np.stack(out.images), want)
    assert np.stack(out.images).min() == 0


def test_value_range_maps_lo_hi_and_clips() -> None:
    x = torch.tensor([[[-10.0, 0.0, 5.0, 10.0, 99.0]]])  # (1, 1, 5) CHW
    out = to_images(x, desc="depth", value_range=(0.0, 10.0))
    assert out.images[0][0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds to even 128


def test_out_of_range_floats_need_value_range() -> None:
    with pytest.raises(LogValueError, match="'depth'.*value_range"):
        to_images(torch.full((1, 4, 4), 3.0), desc="depth")


def test_uint8_passes_unchanged_and_is_copied() -> None:
    x = torch.randint(0, 256, (2, 4, 5, 6), dtype=torch.uint8)
    out = to_images(x, desc="u8")
    assert np.array_equal(np.stack(out.images), x.permute(0, 2, 3, 1).numpy())
    single_channel = torch.randint(0, 256, (1, 1, 3, 3), dtype=torch.uint8)
    img = to_images(single_channel, desc="u8").images[0]
    single_channel.fill_(7)  # the caller reuses its buffer: the logged item must not change
    assert not (img == 7).all()


def test_bool_and_small_ints() -> None:
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    assert to_images(mask, desc="mask").images[0][1, 1, 0] == 255
    ints = torch.tensor([[[0, 17, 255]]], dtype=torch.int64)
    assert to_images(ints, desc="ints").images[0][0, :, 0].tolist() == [0, 17, 255]
    with pytest.raises(LogValueError, match="'ints'.*\\[0, 255\\]"):
        to_images(ints * 2, desc="ints")


def test_layouts_numpy_channel_last_lists_and_captions() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)
    out = to_images(arr, captions=["a", "b"], desc="np")
    assert out.captions == ["a", "b"]
    assert np.array_equal(out.images[1], arr[1])
    tensors = [torch.rand(3, 4, 4), torch.rand(3, 6, 2)]  # different sizes in a list
    out = to_images(tensors, caption="same", desc="list")
    assert [i.shape for i in out.images] == [(4, 4, 3), (6, 2, 3)]
    assert out.captions == ["same", "same"]
    assert np.array_equal(out.images[1], ref_uint8(tensors[1].permute(1, 2, 0).numpy(), 0, 1))
    assert to_images(torch.rand(5, 6), desc="gray").images[0].shape == (5, 6, 1)


def test_pil_and_wandb_images_are_read_without_a_run(tmp_path: Path) -> None:
    from PIL import Image

    arr = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(to_images(Image.fromarray(arr), desc="pil").images[0], arr)
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb = pytest.importorskip("wandb")
    table = to_table(["img", "label"], [[wandb.Image(arr), "cat"]], desc="t")
    assert np.array_equal(table.rows[0][0], arr)


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.rand(2, 3, 4, 4, 4), {}, "shape"),  # 5 dims
        (torch.rand(4), {}, "shape"),  # 1 dim
        (torch.rand(2, 5, 4, 4), {}, "5 channels"),
        (torch.rand(3, 4, 4).to(torch.complex64), {}, "complex"),
        (np.array([["a"]], dtype=object), {}, "dtype"),
        (torch.rand(2, 3, 4, 4), {"caption": ["only one"]}, "1 captions for 2"),
        (torch.rand(0, 3, 4, 4), {}, "empty"),
        ([], {}, "empty"),
        (torch.full((3, 2, 2), float("nan")), {}, "NaN"),
        (torch.full((3, 2, 2), float("inf")), {}, "infinite"),
        ("not an image", {}, "str"),
        (torch.rand(3, 2, 2), {"caption": "a", "captions": "b"}, "not both"),
        (torch.rand(3, 2, 2), {"value_range": (1, 1)}, "lo < hi"),
    ],
)
def test_bad_images_name_desc(images: object, kwargs: dict, match: str) -> None:
    with pytest.raises((LogValueError, LogTypeError), match=match) as info:
        collect_images(WORLD, images, desc="val/bad", **kwargs)
    assert "'val/bad'" in str(info.value)


# --- videos, plots, tables, histograms -----------------------------------------------------------


def test_videos_bcthw_scaled_and_laid_out_thwc() -> None:
    x = torch.rand(2, 3, 5, 6, 4) * 2 - 1  # (B, C, T, H, W) in [-1, 1]
    x[0, 0, 0, 0, 0] = -1
    out = to_videos(x, ["v0", "v1"], desc="gen/video", fps=12, format="mp4")
    want = np.clip(np.rint((x.permute(0, 2, 3, 4, 1).numpy() + 1) * 127.5), 0, 255)
    assert [v.frames.shape for v in out.videos] == [(5, 6, 4, 3)] * 2
    assert np.array_equal(np.stack([v.frames for v in out.videos]), want.astype(np.uint8))
    assert [(v.fps, v.format, v.caption) for v in out.videos] == [
        (12.0, "mp4", "v0"),
        (12.0, "mp4", "v1"),
    ]


@pytest.mark.parametrize(
    ("videos", "kwargs", "match"),
    [
        (torch.rand(3, 4, 4), {}, "shape"),
        (torch.rand(1, 2, 3, 4, 4), {}, "2 channels"),
        (torch.rand(1, 3, 2, 4, 4), {"fps": 0}, "fps"),
        (torch.rand(1, 3, 2, 4, 4), {"format": "avi"}, "format"),
        (torch.rand(2, 3, 2, 4, 4), {"caption": ["x", "y", "z"]}, "3 captions for 2"),
    ],
)
def test_bad_videos_name_desc(videos: object, kwargs: dict, match: str) -> None:
    with pytest.raises((LogValueError, LogTypeError), match=match) as info:
        collect_videos(WORLD, videos, desc="val/vid", **kwargs)
    assert "'val/vid'" in str(info.value)


def test_plot_renders_with_agg_and_closes_the_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.imshow(np.zeros((2, 2)), cmap="gray")
    fig.patch.set_facecolor("red")
    out = collect_plot(WORLD, fig, desc="val/plot")
    assert isinstance(out, Images) and out.images[0].shape == (75, 100, 3)
    assert tuple(out.images[0][0, 0]) == (255, 0, 0)  # the red background corner
    assert set(plt.get_fignums()) == before
    with pytest.raises(LogTypeError, match="'val/plot'.*Figure"):
        figure_to_images("nope", desc="val/plot")


def test_table_cells_and_errors() -> None:
    img = torch.rand(3, 4, 5)
    t = collect_table(
        WORLD,
        ["img", "pred", "conf", "note"],
        [[img, "cat", np.float32(0.5), None], [np.zeros((2, 2, 1), np.uint8), "dog", 1, "x"]],
        desc="val/table",
    )
    assert isinstance(t, Table) and t.columns == ["img", "pred", "conf", "note"]
    assert np.array_equal(t.rows[0][0], ref_uint8(img.permute(1, 2, 0).numpy(), 0, 1))
    assert t.rows[0][1:] == ["cat", 0.5, None] and type(t.rows[0][2]) is float
    with pytest.raises(LogValueError, match="'val/table': row 1 has 1 cells for 2 columns"):
        to_table(["a", "b"], [[1, 2], [3]], desc="val/table")
    with pytest.raises(LogTypeError, match="'val/table': row 0, column 'b'.*dict"):
        to_table(["a", "b"], [[1, {"x": 1}]], desc="val/table")
    with pytest.raises(LogValueError, match="'val/table'.*NaN.*row 0, column 'a'"):
        to_table(["a"], [[torch.full((3, 2, 2), float("nan"))]], desc="val/table")


def test_table_row_cap_warns() -> None:
    with pytest.warns(UserWarning, match="'t'.*cap.*kept 3 of 5"):
        t = collect_table(WORLD, ["i"], [[i] for i in range(5)], desc="t", max_rows=3)
    assert t is not None and [r[0] for r in t.rows] == [0, 1, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
def test_local_histogram_equals_numpy(dtype: type) -> None:
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(5000) * 4).astype(dtype)
    values[:50] = np.round(values[:50])  # values on bin edges
    h = histogram(torch.from_numpy(values), desc="w", bins=17)
    as_np = values.astype(np.float32) if dtype == np.float16 else values
    counts, edges = np.histogram(as_np, bins=17)
    assert np.array_equal(h.edges, edges) and h.edges.dtype == edges.dtype
    assert np.array_equal(h.counts, counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_binning_matches_numpy(dtype: torch.dtype) -> None:
    """The binary-search path used for GPU tensors, run on the host against numpy."""
    from distlog.media.histograms import bin_counts, bin_edges

    g = torch.Generator().manual_seed(5)
    for values in (
        torch.randn(20000, generator=g, dtype=dtype) * 3,
        torch.round(torch.randn(5000, generator=g, dtype=dtype) * 4),
        torch.full((7,), 1.25, dtype=dtype),
    ):
        lo, hi = float(values.min()), float(values.max())
        edges = bin_edges(lo, hi, 23, 32 if dtype == torch.float32 else 64)
        counts, want_edges = np.histogram(values.numpy(), bins=23)
        assert np.array_equal(edges, want_edges)
        assert np.array_equal(bin_counts(values, edges, on_device=True).numpy(), counts)
        assert np.array_equal(bin_counts(values, edges, on_device=False).numpy(), counts)


def test_histogram_of_a_constant_leaves_nonfinite_out() -> None:
    values = np.array([2.0, 2.0, np.nan, np.inf, 2.0])
    h = collect_histogram(WORLD, values, desc="g", bins=4)
    counts, edges = np.histogram(values[np.isfinite(values)], bins=4)
    assert np.array_equal(h.counts, counts) and np.array_equal(h.edges, edges)
    assert h.nonfinite == 2
    with pytest.raises(LogValueError, match="'g'.*bins"):
        collect_histogram(WORLD, values, desc="g", bins=0)


# --- files -------------------------------------------------------------------------------------


def test_save_media_png_gif_mp4_read_back(tmp_path: Path) -> None:
    import imageio.v2 as iio2
    import imageio.v3 as iio
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = Images(
        images=[rng.integers(0, 256, (5, 7, c), dtype=np.uint8) for c in (1, 3, 4)],
        captions=["g", "rgb", "rgba"],
    )
    rec = save_media(imgs, tmp_path / "media", "val/images", 12)
    assert rec["type"] == "images" and [i["caption"] for i in rec["items"]] == ["g", "rgb", "rgba"]
    for item, arr in zip(rec["items"], imgs.images, strict=True):
        back = np.asarray(Image.open(tmp_path / item["path"]))
        assert np.array_equal(back.reshape(arr.shape), arr)  # PNG is lossless

    frames = np.zeros((6, 10, 12, 3), np.uint8)
    for t in range(6):
        frames[t, :, : 2 * (t + 1)] = 255  # a bar that grows each frame
    vids = Videos(
        videos=[
            Video(frames, fps=5, format="gif", caption="bar"),
            Video(frames[:, :9, :11], fps=5, format="mp4"),
        ]
    )
    rec = save_media(vids, tmp_path / "media", "val/videos", 12)
    gif_path = tmp_path / rec["items"][0]["path"]
    assert gif_path.suffix == ".gif"
    gif = iio.imread(gif_path, index=None)
    assert gif.shape[:3] == (6, 10, 12)
    assert np.array_equal(gif[..., 0] > 127, frames[..., 0] > 127)
    assert iio.immeta(gif_path)["duration"] == 200
    mp4_path = tmp_path / rec["items"][1]["path"]
    assert mp4_path.suffix == ".mp4"
    reader = iio2.get_reader(mp4_path, format="FFMPEG")
    decoded = np.stack(list(reader.iter_data()))
    assert reader.get_meta_data()["fps"] == 5.0
    reader.close()
    assert decoded.shape == (6, 10, 12, 3)  # odd 9x11 padded to even
    # lossy, but the bar is where it was
    assert np.abs(decoded[:, :9, :11].astype(int) - frames[:, :9, :11]).mean() < 20


def test_save_media_histogram_and_table(tmp_path: Path) -> None:
    counts, edges = np.histogram(np.arange(10.0), bins=3)
    rec = save_media(Histogram(counts, edges, nonfinite=1), tmp_path / "media", "h", 0)
    assert rec == {
        "type": "histogram",
        "counts": counts.tolist(),
        "edges": edges.tolist(),
        "nonfinite": 1,
    }
    img = np.full((2, 3, 3), 9, np.uint8)
    rec = save_media(
        Table(["img", "x"], [[img, float("nan")], [None, "s"]]), tmp_path / "media", "val/t", 4
    )
    doc = json.loads((tmp_path / rec["path"]).read_text())
    assert doc["columns"] == ["img", "x"] and doc["data"][0][1] == "NaN"
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / doc["data"][0][0]["path"])), img)
    assert doc["data"][1] == [None, "s"]


@pytest.mark.parametrize(
    "key", ["../../etc/x", "/etc/passwd", "..", "a/../../b", "C:\\x\\..\\..", ""]
)
def test_keys_never_write_outside_the_run_dir(tmp_path: Path, key: str) -> None:
    run_dir = tmp_path / "run"
    rec = save_media(Images([np.zeros((1, 1, 3), np.uint8)]), run_dir / "media", key, 1)
    written = (run_dir / rec["items"][0]["path"]).resolve()
    assert written.is_file()
    assert written.is_relative_to((run_dir / "media").resolve())
    assert ".." not in safe_relative_key(key).parts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_same_key_twice_at_one_step_keeps_both(tmp_path: Path) -> None:
    one = Images([np.zeros((1, 1, 3), np.uint8)])
    a = save_media(one, tmp_path / "media", "k", 1)["items"][0]["path"]
    b = save_media(one, tmp_path / "media", "k", 1)["items"][0]["path"]
    assert a != b and (tmp_path / a).is_file() and (tmp_path / b).is_file()


def test_jsonl_sink_writes_a_media_row(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path)
    item = to_images(torch.rand(1, 3, 4, 4), "c", desc="val/img")
    sink.log_media(7, "val/img", item)
    sink.close()
    rows = list(iter_rows(tmp_path))
    assert rows[0]["step"] == 7
    record = rows[0]["media"]["val/img"]
    assert (tmp_path / record["items"][0]["path"]).is_file()


def test_closing_never_touches_other_figures() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = plt.figure()
    try:
        for not_a_figure in (None, "x"):
            with pytest.raises(LogTypeError, match="'p'"):
                collect_plot(WORLD, not_a_figure, desc="p")
        assert plt.fignum_exists(mine.number)  # plt.close(None) would have closed it
        fig, ax = plt.subplots()
        collect_plot(WORLD, ax, desc="p")  # an Axes: its figure is rendered and closed
        assert not plt.fignum_exists(fig.number) and plt.fignum_exists(mine.number)
    finally:
        plt.close(mine)


def test_logger_encodes_media_on_its_writer_thread(tmp_path: Path) -> None:
    import threading

    import distlog

    class RecordingJsonl(JsonlSink):
        threads: list[str] = []

        def log_media(self, step: int, key: str, item: object) -> None:
            self.threads.append(threading.current_thread().name)
            super().log_media(step, key, item)  # type: ignore[arg-type]

    with distlog.Logger(sinks=[RecordingJsonl(tmp_path)]) as logger:
        logger.log_images(torch.rand(2, 3, 4, 4), ["a", "b"], desc="val/img", ranks="all")
        logger.log_videos(torch.rand(1, 3, 2, 4, 4), desc="val/vid")
        logger.log_histogram(torch.arange(10.0), desc="val/hist", bins=5)
        logger.log_table(["x"], [[1], [2]], desc="val/table")
        logger.flush(step=1)
    assert RecordingJsonl.threads and threading.main_thread().name not in RecordingJsonl.threads
    media = {k: v for row in iter_rows(tmp_path) if "media" in row for k, v in row["media"].items()}
    assert [i["caption"] for i in media["val/img"]["items"]] == ["rank 0: a", "rank 0: b"]
    assert media["val/hist"]["counts"] == np.histogram(np.arange(10.0), bins=5)[0].tolist()
    assert sorted(media) == ["val/hist", "val/img", "val/table", "val/vid"]
    with distlog.Logger(sinks=[]) as logger2:
        with pytest.raises(LogValueError, match="'val/img'.*NaN"):
            logger2.log_images(torch.full((3, 2, 2), float("nan")), desc="val/img")


@pytest.mark.parametrize("on_device", [False, True])
def test_sharded_counts_over_shared_edges_equal_numpy_property(on_device: bool) -> None:
    """What every rank computes (local min/max, counts over the shared edges), summed over
    arbitrary shards, equals numpy.histogram of the concatenation, for many random inputs."""
    from hypothesis import example, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    from distlog.media.histograms import bin_counts, bin_edges, local_stats

    finite32 = st.floats(-1e6, 1e6, width=32, allow_nan=False)

    @settings(max_examples=150, deadline=None)
    @given(
        values=arrays(np.float32, st.integers(1, 60), elements=finite32),
        cuts=st.lists(st.integers(0, 60), max_size=3),
        bins=st.integers(1, 40),
    )
    @example(values=np.array([0.0, 2.5e-44], dtype=np.float32), cuts=[], bins=10)  # subnormals
    def check(values: np.ndarray, cuts: list[int], bins: int) -> None:
        shards = np.split(values, sorted(c % (len(values) + 1) for c in cuts))
        stats = [local_stats(torch.from_numpy(s)) for s in shards]
        lo = min(s.lo for s in stats)
        hi = max(s.hi for s in stats)
        edges = bin_edges(lo, hi, bins, 32)
        counts = sum(bin_counts(s.finite, edges, on_device=on_device).numpy() for s in stats)
        try:
            want_counts, want_edges = np.histogram(values, bins=bins)
        except ValueError:  # numpy cannot bin a large float32 constant (or a range of a few
            # subnormals) finely; distlog can, in float64, and every value lands in a bin
            assert edges.dtype == np.float64 and counts.sum() == len(values)
            assert edges[0] <= lo <= hi <= edges[-1]
            return
        assert np.array_equal(edges, want_edges)
        assert np.array_equal(counts, want_counts)

    check()


@pytest.mark.slow  # starts a process
def test_sinks_import_the_item_types_only() -> None:
    """A sink's import of the media items pulls in no conversion or gathering code."""
    import subprocess
    import sys

    code = (
        "import sys, distlog, distlog.sinks.jsonl, distlog.sinks.wandb\n"
        "from distlog.media import Images\n"
        "print(sorted(m for m in sys.modules if m.startswith('distlog.media')))\n"
        "from distlog import media\n"
        "import distlog.media.histograms\n"
        "assert callable(media.histogram) and media.collect_images.__module__.endswith('gather')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "['distlog.media', 'distlog.media.items']"


# --- regressions: input accepted at the call that failed later, or was silently wrong ---------


@pytest.mark.parametrize(
    ("cell", "what"),
    [
        (np.datetime64("2020-01-01"), "datetime64"),
        (np.datetime64("2020-01-01T00:00:00.000000001"), "datetime64"),  # .item() is an int
        (np.timedelta64(5, "s"), "timedelta64"),
        (np.bytes_(b"ab"), "bytes"),
        (np.complex64(1 + 2j), "complex"),
        (torch.tensor([1 + 2j]), "complex"),  # a one-element complex tensor
        (np.array(1 + 1j), "complex"),
        (np.array(object()), "object"),  # a 0-d object array
        (np.array(np.datetime64("2021-05-06")), "datetime64"),
    ],
)
def test_table_cells_json_cannot_hold_are_refused_at_the_call(cell: object, what: str) -> None:
    with pytest.raises(LogTypeError, match=f"'val/t': row 1, column 'b'.*{what}"):
        to_table(["a", "b"], [[1, 2], [3, cell]], desc="val/t")


def test_a_refused_cell_leaves_earlier_tables_in_the_run_log(tmp_path: Path) -> None:
    import distlog

    with distlog.Logger(run_dir=tmp_path, sinks=[]) as logger:
        logger.log_table(["a", "b"], [[1, "ok"]], desc="good")
        with pytest.raises(LogTypeError, match="'val/table': row 0, column 'a'"):
            logger.log_table(["a", "b"], [[np.datetime64("2020-01-01"), "x"]], desc="val/table")
        logger.flush(step=1)
    media = {k: v for row in iter_rows(tmp_path) if "media" in row for k, v in row["media"].items()}
    assert sorted(media) == ["good"]
    doc = json.loads((tmp_path / media["good"]["path"]).read_text())
    assert doc == {"columns": ["a", "b"], "data": [[1, "ok"]]}


def test_numpy_scalar_and_one_element_cells_become_python_values() -> None:
    t = to_table(
        ["a", "b", "c", "d", "e"],
        [[np.str_("s"), np.bool_(True), np.int16(-3), torch.tensor([2.5]), np.array(7)]],
        desc="t",
    )
    assert t.rows == [["s", True, -3, 2.5, 7]]
    assert [type(c) for c in t.rows[0]] == [str, bool, int, float, int]


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_wide_unsigned_images_follow_the_integer_rule(dtype: str, as_torch: bool) -> None:
    if as_torch and not hasattr(torch, dtype):
        pytest.skip(f"torch has no {dtype}")
    hwc = np.linspace(0, 200, 4 * 5 * 3).astype(dtype).reshape(4, 5, 3)
    x = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))) if as_torch else hwc
    assert np.array_equal(to_images(x, desc="val/depth").images[0], hwc.astype(np.uint8))
    big = hwc.copy()
    big[0, 0, 0] = np.iinfo(dtype).max  # beyond int64 for uint64: the span must stay exact
    bx = torch.from_numpy(np.ascontiguousarray(big.transpose(2, 0, 1))) if as_torch else big
    with pytest.raises(LogValueError, match=f"'val/depth'.*\\[3, {np.iinfo(dtype).max}\\]"):
        to_images(bx, desc="val/depth")
    scaled = to_images(bx, desc="val/depth", value_range=(0, float(np.iinfo(dtype).max)))
    assert np.array_equal(scaled.images[0], ref_uint8(big, 0.0, float(np.iinfo(dtype).max)))


def test_wide_unsigned_video_frames_and_table_cells() -> None:
    frames = np.arange(2 * 3 * 4 * 1, dtype=np.uint16).reshape(2, 3, 4, 1)
    out = to_videos(frames, desc="v")
    assert np.array_equal(out.videos[0].frames, frames.astype(np.uint8))
    t = to_table(["img"], [[np.full((2, 2, 1), 9, np.uint32)]], desc="t")
    assert np.array_equal(t.rows[0][0], np.full((2, 2, 1), 9, np.uint8))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_wide_pil_modes_follow_the_pixel_rule_like_arrays(mode: str) -> None:
    from PIL import Image

    if mode == "F":
        small = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
        img = Image.fromarray(small)
        want_small = ref_uint8(small[..., None], 0.0, 1.0)
        wide = np.linspace(0, 40.0, 12, dtype=np.float32).reshape(3, 4)
    else:
        dt = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
        small = np.arange(0, 240, 20).astype(dt).reshape(3, 4)
        img = Image.fromarray(small) if mode != "I;16B" else Image.new(mode, (4, 3))
        if mode == "I;16B":
            img.frombytes(small.tobytes())
        want_small = small.astype(np.uint8)[..., None]
        wide = np.linspace(0, 65535, 12).astype(np.int64).reshape(3, 4)
    assert img.mode == mode
    got = to_images(img, desc="val/depth").images[0]
    assert got.shape == (3, 4, 1) and np.array_equal(got, want_small)
    # in a list and in a table cell: the same rule
    assert np.array_equal(to_images([img, img], desc="k").images[1], want_small)
    assert np.array_equal(to_table(["i"], [[img]], desc="t").rows[0][0], want_small)
    wide_img = Image.fromarray(wide.astype(np.float32 if mode == "F" else np.int32))
    if mode.startswith("I;16"):
        wide_img = Image.fromarray(wide.astype(np.uint16))
    with pytest.raises(LogValueError, match="'val/depth'.*outside"):
        to_images(wide_img, desc="val/depth")  # not clipped to 0 / 255 by PIL
    hi = float(wide.max())
    scaled = to_images(wide_img, desc="val/depth", value_range=(0.0, hi)).images[0]
    assert np.array_equal(scaled[..., 0], ref_uint8(wide, 0.0, hi))


def test_value_range_applies_to_uint8_and_bool_too() -> None:
    u8 = torch.tensor([[[0, 5, 10, 20]]], dtype=torch.uint8)
    out = to_images(u8, desc="lbl", value_range=(0, 10)).images[0][0, :, 0]
    assert out.tolist() == ref_uint8(np.array([0, 5, 10, 20]), 0, 10).tolist() == [0, 128, 255, 255]
    assert to_images(u8, desc="lbl").images[0][0, :, 0].tolist() == [0, 5, 10, 20]
    mask = torch.tensor([[[False, True]]])
    assert to_images(mask, desc="m").images[0][0, :, 0].tolist() == [0, 255]
    assert to_images(mask, desc="m", value_range=(0, 2)).images[0][0, :, 0].tolist() == [0, 128]


@pytest.mark.parametrize(
    "call",
    [
        lambda: to_images(torch.rand(1, 3, 2, 2), caption="bad\ud800", desc="val/img"),
        lambda: to_images(torch.rand(2, 3, 2, 2), captions=["ok", "x\udfff"], desc="val/img"),
        lambda: to_videos(torch.rand(1, 3, 2, 4, 4), caption="v\ud800", desc="val/img"),
        lambda: to_table(["s"], [["x\udcff"]], desc="val/img"),
        lambda: to_table(["s\ud800"], [["x"]], desc="val/img"),
        lambda: to_table(["s"], [[np.str_("x\udcff")]], desc="val/img"),
    ],
)
def test_lone_surrogates_in_text_are_refused_at_the_call(call: object) -> None:
    with pytest.raises(LogValueError, match="'val/img'.*surrogate"):
        call()  # type: ignore[operator]


def test_lone_surrogates_never_reach_the_tensorboard_writer(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    import warnings

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import distlog
    from distlog.sinks.tensorboard import TensorBoardSink

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with distlog.Logger(
            run_dir=tmp_path / "run", sinks=[TensorBoardSink(tmp_path / "tb")]
        ) as lg:
            lg.log_images(torch.rand(1, 3, 4, 4), caption="fine", desc="img")
            with pytest.raises(LogValueError, match="'img2'.*surrogate"):
                lg.log_images(torch.rand(1, 3, 4, 4), caption="bad\ud800", desc="img2")
            with pytest.raises(LogValueError, match="'tab'.*row 0, column 's'.*surrogate"):
                lg.log_table(["s"], [["x\udcff"]], desc="tab")
            with pytest.raises(LogValueError, match="'vid'.*surrogate"):
                lg.log_videos(torch.rand(1, 3, 2, 4, 4), caption="v\ud800", desc="vid")
            lg.flush(step=1)
    assert not [w for w in caught if "failed" in str(w.message)]  # no sink failed later
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["img"]
    (text,) = acc.Tensors("img/captions/text_summary")
    assert "fine" in text.tensor_proto.string_val[0].decode("utf-8")


def test_bytes_captions_are_refused_not_split() -> None:
    with pytest.raises(LogTypeError, match="'k'.*caption.*bytes"):
        to_images(torch.rand(2, 3, 2, 2), captions=b"ab", desc="k")
    with pytest.raises(LogTypeError, match="'k'.*caption"):
        to_images(torch.rand(1, 3, 2, 2), captions=[b"a"], desc="k")


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.zeros(1, 3, 4, 4, device="meta"),
        lambda: torch.rand(3, 4, 4).to_sparse(),
        lambda: torch.rand(4, 4).to_sparse_csr(),
    ],
)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
def test_meta_and_sparse_tensors_are_a_type_error_naming_the_key(make: object) -> None:
    x = make()  # type: ignore[operator]
    for call in (
        lambda: to_images(x, desc="val/x"),
        lambda: histogram(x, desc="val/x"),
        lambda: to_table(["c"], [[x]], desc="val/x"),
        lambda: to_videos(x, desc="val/x"),
    ):
        with pytest.raises(LogTypeError, match="'val/x'.*(meta|layout)"):
            call()


@pytest.mark.parametrize(
    ("values", "bins", "why"),
    [
        (np.full(5, 1e20), 4, "all values equal"),
        (np.array([0.0, 5e-324, 1e-323]), 64, "too narrow"),
        (np.array([-1.7e308, 1.7e308]), 4, "overflows"),
    ],
)
def test_unbinnable_histograms_say_what_is_wrong(values: np.ndarray, bins: int, why: str) -> None:
    with pytest.raises(ValueError, match="Too many bins"):  # numpy refuses them too
        np.histogram(values, bins=bins)
    with pytest.raises(LogValueError, match=f"'h': cannot make {bins} bins: .*{why}"):
        histogram(values, desc="h", bins=bins)


def test_gathered_table_rank_column_never_duplicates_one() -> None:
    t = collect_table(WORLD, ["rank", "_rank", "x"], [[10, 100, 1.5]], desc="t", ranks="all")
    assert t is not None and t.columns == ["__rank", "rank", "_rank", "x"]
    assert t.rows == [[0, 10, 100, 1.5]]


def test_bad_arguments_of_a_gathering_call_name_the_key_in_a_world_of_one() -> None:
    imgs = torch.rand(1, 3, 2, 2)
    for call, match in [
        (lambda: collect_histogram(WORLD, [1.0], desc="h", bins=0, ranks="all"), "bins"),
        (lambda: collect_images(WORLD, imgs, desc="i", ranks="all", max_bytes=-1), "max_bytes"),
        (lambda: collect_table(WORLD, ["a"], [[1]], desc="t", ranks="all", max_rows=-5), "rows"),
        (lambda: collect_images(WORLD, imgs, desc="i", ranks="every"), "ranks"),
        (lambda: collect_videos(WORLD, imgs, desc="v", ranks=[0, 3]), "\\[3\\]"),
    ]:
        with pytest.raises((LogValueError, LogTypeError), match=match):
            call()
    # and the next gathering call works
    assert collect_images(WORLD, imgs, desc="i", ranks="all") is not None


@pytest.mark.parametrize(
    ("item", "err", "match"),
    [
        ("not a media item", LogTypeError, "takes Images"),
        (Images(images=[np.random.rand(4, 4, 3)]), LogValueError, "image 0.*uint8"),
        (Images(images=[np.zeros((4, 4, 2), np.uint8)]), LogValueError, "image 0"),
        (Images(images=[]), LogValueError, "non-empty"),
        (Images(images=[np.zeros((2, 2, 3), np.uint8)], captions=["a", "b"]), LogValueError, "2"),
        (Images(images=[np.zeros((2, 2, 3), np.uint8)], captions=["\ud800"]), LogValueError, "sur"),
        (Videos(videos=[Video(frames=np.zeros((2, 2, 3), np.uint8))]), LogValueError, "video 0"),
        (Videos(videos=[Video(np.zeros((1, 2, 2, 3), np.uint8), fps=0)]), LogValueError, "fps"),
        (Histogram(counts=np.array([1, 2]), edges=np.array([0.0, 1.0])), LogValueError, "B \\+ 1"),
        (Histogram(np.array([1]), np.array([1.0, 0.0])), LogValueError, "decrease"),
        (Histogram(np.array([-1]), np.array([0.0, 1.0])), LogValueError, "non-negative"),
        (Histogram(np.array([1]), np.array([0.0, np.nan])), LogValueError, "finite"),
        (Table(columns=["a"], rows=[[np.datetime64("2020")]]), LogTypeError, "row 0, column 'a'"),
        (Table(columns=["a"], rows=[[np.int64(3)]]), LogTypeError, "int64"),
        (Table(columns=["a"], rows=[[1, 2]]), LogValueError, "row 0"),
        (Table(columns=["a", "a"], rows=[]), LogValueError, "duplicate"),
    ],
)
def test_log_media_checks_the_item_at_the_call(
    tmp_path: Path, item: object, err: type, match: str
) -> None:
    import distlog

    with distlog.Logger(run_dir=tmp_path, sinks=[]) as logger:
        logger.log_media("ok", Histogram(np.array([1, 2]), np.array([0.0, 1.0, 2.0])))
        with pytest.raises(err, match=f"'bad'.*{match}"):
            logger.log_media("bad", item)
        logger.flush(step=0)
    media = {k: v for row in iter_rows(tmp_path) if "media" in row for k, v in row["media"].items()}
    assert sorted(media) == ["ok"] and media["ok"]["counts"] == [1, 2]


def test_log_media_accepts_what_the_converters_make(tmp_path: Path) -> None:
    import distlog

    items = {
        "i": to_images(torch.rand(2, 3, 4, 4), captions=["a", "b"], desc="i"),
        "v": to_videos(torch.rand(1, 3, 2, 4, 4), desc="v"),
        "h": histogram(np.arange(10.0), desc="h", bins=3),
        "t": to_table(["img", "n"], [[torch.rand(3, 2, 2), 1.5], [None, float("nan")]], desc="t"),
    }
    with distlog.Logger(run_dir=tmp_path, sinks=[]) as logger:
        for key, item in items.items():
            logger.log_media(key, item)
        logger.flush(step=0)
    media = {k: v for row in iter_rows(tmp_path) if "media" in row for k, v in row["media"].items()}
    assert sorted(media) == ["h", "i", "t", "v"]


def test_a_media_call_with_its_arguments_swapped_names_the_mistake(tmp_path) -> None:
    """log_histogram("weights", values), the key first as in log_scalar, raised numpy's
    'truth value of an array is ambiguous' (found by a hostile-test pass)."""
    logger = distlog.Logger(run_dir=tmp_path, async_write=False, handle_signals=False)
    logger.log_scalar("kept", 1.0)
    for call in (
        lambda: logger.log_histogram("weights", np.arange(10.0)),
        lambda: logger.log_table(["a"], [[1]], desc=np.array([1, 2])),
    ):
        with pytest.raises(LogTypeError, match="ndarray.*values come first"):
            call()
    assert logger.flush(0, block=True) == {"kept": 1.0}
    logger.finish()
