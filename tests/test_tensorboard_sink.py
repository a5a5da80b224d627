"""TensorBoardSink, read back with TensorBoard's own event reader."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from dist_harness import subprocess_env  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from distlog.media import Histogram, Images, Table, Video, Videos  # noqa: E402
from distlog.sinks.base import Sink  # noqa: E402
from distlog.sinks.tensorboard import TensorBoardSink  # noqa: E402


def read_back(log_dir) -> EventAccumulator:
    acc = EventAccumulator(
        str(log_dir),
        size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0},
    )
    acc.Reload()
    return acc


def decode_png(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)))


def text_of(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [
        (event.step, event.tensor_proto.string_val[0].decode("utf-8"))
        for event in acc.Tensors(f"{tag}/text_summary")
    ]


def test_is_a_sink(tmp_path):
    sink = TensorBoardSink(tmp_path)
    assert isinstance(sink, Sink)
    sink.close()


def test_scalars_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    written: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/acc": [], "lr": []}
    sink = TensorBoardSink(tmp_path)
    for step in range(0, 50, 5):
        row = {key: float(rng.normal()) for key in written if not (key == "val/acc" and step % 10)}
        sink.log_scalars(step, row)
        for key, value in row.items():
            written[key].append((step, value))
    sink.log_scalars(50, {"lr": math.nan, "train/loss": math.inf})
    written["lr"].append((50, math.nan))
    written["train/loss"].append((50, math.inf))
    sink.close()

    acc = read_back(tmp_path)
    assert set(acc.Tags()["scalars"]) == set(written)
    for key, expected in written.items():
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in expected], key
        for (_, value), (_, want) in zip(got, expected, strict=True):
            if math.isnan(want):
                assert math.isnan(value)
            else:
                assert value == pytest.approx(want, rel=1e-6)  # stored as float32


def test_rows_are_on_disk_before_close(tmp_path):
    """Each row is flushed, so a writer killed after a flush loses nothing written."""
    sink = TensorBoardSink(tmp_path)
    sink.log_scalars(3, {"a": 1.5})
    acc = read_back(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(3, 1.5)]
    sink.close()


def test_images_single_and_batch_with_captions(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    sink = TensorBoardSink(tmp_path)
    sink.log_media(7, "val/sample", Images([rgb]))
    sink.log_media(9, "val/batch", Images([gray, rgba], captions=["gray one", "with alpha"]))
    sink.close()

    acc = read_back(tmp_path)
    assert set(acc.Tags()["images"]) == {"val/sample", "val/batch/0", "val/batch/1"}
    (event,) = acc.Images("val/sample")
    assert event.step == 7 and (event.height, event.width) == (8, 6)
    np.testing.assert_array_equal(decode_png(event.encoded_image_string), rgb)
    (event,) = acc.Images("val/batch/0")
    decoded = decode_png(event.encoded_image_string)
    # TensorBoard stores one-channel images as RGB with equal channels
    np.testing.assert_array_equal(decoded[..., 0], gray[..., 0])
    np.testing.assert_array_equal(decoded[..., 2], gray[..., 0])
    (event,) = acc.Images("val/batch/1")
    np.testing.assert_array_equal(decode_png(event.encoded_image_string), rgba)
    ((step, text),) = text_of(acc, "val/batch/captions")
    assert step == 9 and "gray one" in text and "with alpha" in text and "val/batch/1" in text


def test_videos_are_animated_gifs(tmp_path):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, size=(5, 12, 10, 3), dtype=np.uint8)
    # a second video with flat colours survives the GIF palette exactly
    flat = np.zeros((3, 6, 6, 3), dtype=np.uint8)
    flat[0, ..., 0] = 255
    flat[1, ..., 1] = 255
    flat[2, ..., 2] = 255
    sink = TensorBoardSink(tmp_path)
    sink.log_media(
        4, "gen/video", Videos([Video(frames, fps=10, caption="noise"), Video(flat, fps=2)])
    )
    sink.close()

    acc = read_back(tmp_path)
    assert set(acc.Tags()["images"]) == {"gen/video/0", "gen/video/1"}
    (event,) = acc.Images("gen/video/0")
    assert event.step == 4 and (event.height, event.width) == (12, 10)
    gif = Image.open(io.BytesIO(event.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 5
    assert gif.info["duration"] == 100  # 10 fps
    (event,) = acc.Images("gen/video/1")
    gif = Image.open(io.BytesIO(event.encoded_image_string))
    assert gif.n_frames == 3
    for index in range(3):
        gif.seek(index)
        np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), flat[index])
    ((_, text),) = text_of(acc, "gen/video/captions")
    assert "noise" in text


def gif_frames(encoded: bytes) -> list[np.ndarray]:
    gif = Image.open(io.BytesIO(encoded))
    frames = []
    for index in range(gif.n_frames):
        gif.seek(index)
        frames.append(np.asarray(gif.convert("RGB")).astype(int))
    return frames


def test_video_colours_survive_the_gif_palette(tmp_path):
    """Up to 256 colours come back exactly (grey, RGB, RGBA minus alpha); more, approximately."""
    x = np.linspace(0, 1, 24)
    wave = np.stack([np.outer(np.sin(6 * x + t), np.cos(4 * x)) for t in range(6)])
    gray = (wave * 127 + 128).astype(np.uint8)[..., None]  # (T, H, W, 1)
    rgb = np.concatenate([gray, 255 - gray, gray // 2], axis=-1)
    rgba = np.concatenate([rgb, np.full_like(gray, 90)], axis=-1)
    noise = np.random.default_rng(4).integers(0, 256, size=(4, 24, 24, 3), dtype=np.uint8)
    sink = TensorBoardSink(tmp_path)
    for key, frames in [("gray", gray), ("rgb", rgb), ("rgba", rgba), ("noise", noise)]:
        sink.log_media(1, key, Videos([Video(frames, fps=5)]))
    sink.close()

    acc = read_back(tmp_path)
    for key, want in [("gray", np.repeat(gray, 3, -1)), ("rgb", rgb), ("rgba", rgba[..., :3])]:
        (event,) = acc.Images(key)
        got = gif_frames(event.encoded_image_string)
        np.testing.assert_array_equal(np.stack(got), want, err_msg=key)
    (event,) = acc.Images("noise")
    got = np.stack(gif_frames(event.encoded_image_string))
    assert got.shape == noise.shape
    assert np.abs(got - noise).mean() < 20  # 16.7M colours into 256: close, not exact


def test_histogram_counts_and_limits(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(size=1000)
    counts, edges = np.histogram(values, bins=16)
    sink = TensorBoardSink(tmp_path)
    sink.log_media(11, "weights/w", Histogram(counts=counts, edges=edges))
    sink.close()

    acc = read_back(tmp_path)
    (event,) = acc.Histograms("weights/w")
    hist = event.histogram_value
    assert event.step == 11
    assert list(hist.bucket) == counts.tolist()
    np.testing.assert_allclose(hist.bucket_limit, edges[1:])
    assert hist.num == 1000
    assert hist.min == pytest.approx(edges[0]) and hist.max == pytest.approx(edges[-1])
    # the sum is estimated from bin centres: within half a bin width of each value
    assert abs(hist.sum - values.sum()) <= 1000 * (edges[1] - edges[0]) / 2


def test_table_as_markdown_with_image_cells(tmp_path):
    thumb = np.full((4, 4, 3), 200, dtype=np.uint8)
    table = Table(columns=["id", "label", "image"], rows=[[1, "cat|dog", thumb], [2, None, thumb]])
    sink = TensorBoardSink(tmp_path)
    sink.log_media(2, "val/table", table)
    sink.close()

    acc = read_back(tmp_path)
    ((step, text),) = text_of(acc, "val/table")
    lines = text.splitlines()
    assert step == 2 and lines[0] == "| id | label | image |" and len(lines) == 4
    assert "cat\\|dog" in lines[2] and "[image 4x4]" in lines[2]
    assert set(acc.Tags()["images"]) == {"val/table/image/0", "val/table/image/1"}
    (event,) = acc.Images("val/table/image/1")
    np.testing.assert_array_equal(decode_png(event.encoded_image_string), thumb)


def test_config_as_text(tmp_path):
    config = {"model": {"layers": 4, "width": 256}, "lr": 3e-4, "name": "exp"}
    sink = TensorBoardSink(tmp_path)
    sink.log_config(config)
    sink.close()
    sink.close()  # idempotent

    acc = read_back(tmp_path)
    ((step, text),) = text_of(acc, "config")
    assert step == 0
    body = text.split("```json\n", 1)[1].rsplit("\n```", 1)[0]
    assert json.loads(body) == config


def test_use_after_close_is_a_clear_error(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.log_scalars(0, {"a": 1.0})


@pytest.mark.slow  # starts a process
def test_missing_tensorboard_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "from distlog.sinks.tensorboard import TensorBoardSink\n"
        "try:\n"
        f"    TensorBoardSink({str(tmp_path)!r})\n"
        "except ImportError as exc:\n"
        "    print('IMPORT-ERROR:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "IMPORT-ERROR:" in out.stdout and "distlog[tensorboard]" in out.stdout


def test_a_histogram_of_huge_values_is_written_without_a_warning(tmp_path):
    """Values past 1e154: their sum of squares is past float64 (inf, which TensorBoard keeps);
    numpy's overflow warning would fail the sink call under -W error."""
    counts, edges = np.array([1, 1]), np.array([-1e300, 0.0, 1e300])
    sink = TensorBoardSink(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sink.log_media(1, "huge", Histogram(counts, edges))
    sink.close()
    (event,) = read_back(tmp_path).Histograms("huge")
    assert event.histogram_value.sum_squares == math.inf
    assert event.histogram_value.num == 2
