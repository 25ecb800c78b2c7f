"""The benchmarks (tests/benchmarks/bench_*.py) still run, at their tiniest sizes, and the
fast paths they measure give the pixels of the slow ones."""
import math

import av
import numpy as np
import pytest

from tests.benchmarks import bench_engine, bench_extraction, bench_loader, bench_memory


def check(result: dict, name: str) -> None:
    assert result["benchmark"] == name
    assert result["conditions"]["cpu_count"] >= 1
    assert result["pass"] and all(isinstance(v, bool) for v in result["pass"].values())
    for key, value in result["figures"].items():
        if isinstance(value, float):
            assert math.isfinite(value), key


def test_extraction_benchmark_runs(tmp_path):
    res = bench_extraction.main([
        "--video-dir", str(tmp_path), "--width", "160", "--height", "120", "--face-px", "72",
        "--seconds", "1", "--fps", "10", "--rounds", "1", "--naive-frames", "1",
        "--frames-per-video", "2", "--clip-len", "2", "--image-size", "32"])
    check(res, "extraction")
    assert res["figures"]["extract_vs_decode"] > 0 and res["videos"][0]["n_frames"] == 10


def test_loader_benchmark_runs(tmp_path):
    res = bench_loader.main([
        "--cache-dir", str(tmp_path), "--stages", "stage4_dfdc", "--videos", "2", "--points", "2",
        "--clip-len", "2", "--image-size", "32", "--batch-size", "2", "--batches", "1",
        "--rounds", "1", "--backbone", "mobilenet_v3_small", "--model-batch", "2",
        "--model-clip-batch", "2"])
    check(res, "loader")
    assert set(res["figures"]["per_config"]) == {"stage4_dfdc/frame", "stage4_dfdc/clip"}
    assert all(c["augment_fraction_of_step"] > 0 for c in res["figures"]["per_config"].values())


def test_engine_benchmark_runs():
    res = bench_engine.main(["--image-size", "32", "--batch-size", "2", "--steps", "1",
                             "--rounds", "1"])
    check(res, "engine")
    assert res["figures"]["step_s_engine"] > 0


def test_memory_benchmark_runs(tmp_path):
    res = bench_memory.main(["--cache-dir", str(tmp_path), "--train-sizes", "2", "4",
                             "--skip-extract", "--points", "2", "--image-size", "32",
                             "--batch-size", "4"])
    check(res, "memory")
    assert [r["videos"] for r in res["runs"]["train"]] == [2, 4]


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """One decoded 4:2:0 frame of a small H.264 face video (sample_data)."""
    from common.sample_data import face_video, write_mp4

    path = tmp_path_factory.mktemp("bench") / "face.mp4"
    write_mp4(path, face_video(2, size=(128, 96), face_px=80), fps=10)
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


def test_region_conversion_is_the_full_frame_conversion(frame):
    from common.video import RegionConverter, luma

    full = frame.to_ndarray(format="rgb24")
    conv = RegionConverter()
    rng = np.random.default_rng(1)
    for _ in range(30):  # odd and even edges, down to single pixels
        x0, y0 = int(rng.integers(0, 127)), int(rng.integers(0, 95))
        x1, y1 = int(rng.integers(x0 + 1, 129)), int(rng.integers(y0 + 1, 97))
        assert np.array_equal(conv.rgb(frame, x0, y0, x1, y1), full[y0:y1, x0:x1])
    assert luma(frame).shape == (96, 128)
    with pytest.raises(ValueError):
        conv.rgb(frame, 0, 0, 129, 10)


@pytest.mark.parametrize("box, tolerance", [
    ((20, 10, 100, 90), 3), ((30, 20, 78, 68), 3),  # inside: one swscale pass, area filter
    ((21, 11, 69, 59), 8),                            # odd edges move out to whole 2x2 blocks
    ((-10, -6, 40, 44), 0), ((100, 60, 150, 110), 0), ((200, 200, 240, 240), 0),  # crop_box
])
def test_face_crops_from_decoded_frames_match_crop_box(frame, box, tolerance):
    from common.face_cache import _Cropper
    from common.faces import crop_box, make_detector

    got = _Cropper(make_detector("none"), 32).crop(frame, box)
    want = crop_box(frame.to_ndarray(format="rgb24"), box, 32)
    assert got.shape == want.shape == (32, 32, 3)
    assert np.abs(got.astype(int) - want).mean() <= tolerance
