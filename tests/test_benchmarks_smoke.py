"""The benchmarks (tests/benchmarks/bench_*.py) still run, at their tiniest sizes, and the
fast paths they measure give the pixels of the slow ones."""
import math

import av
import numpy as np
import pytest

from tests.benchmarks import bench_cache, bench_engine, bench_extraction, bench_loader, bench_memory


def _numbers(value, where: str):
    """Every number under `value` (nested dicts and lists), with its path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, value


def check(result: dict, name: str, figures: tuple[str, ...]) -> None:
    """The named figures exist and every figure is a finite number. Whether the targets were
    met is the benchmark's verdict at full size, not a smoke test's: only its form is checked."""
    assert result["benchmark"] == name
    assert result["conditions"]["cpu_count"] >= 1
    missing = [k for k in figures if k not in result["figures"]]
    assert not missing, f"{name}: figures missing: {missing}"
    found = list(_numbers(result["figures"], "figures"))
    assert found and len(found) >= len(figures)
    for where, value in found:
        assert math.isfinite(value), where
    assert result["pass"] and all(isinstance(v, bool) for v in result["pass"].values())


def test_extraction_benchmark_runs(tmp_path, yunet_model):
    res = bench_extraction.main([
        "--video-dir", str(tmp_path), "--width", "160", "--height", "120", "--face-px", "72",
        "--seconds", "1", "--fps", "10", "--rounds", "1", "--naive-frames", "1",
        "--frames-per-video", "2", "--clip-len", "2", "--image-size", "32"])
    check(res, "extraction", ("yunet_vs_decode_cpu", "haar_vs_decode_cpu", "naive_vs_yunet",
                              "videos_per_hour_per_core_yunet", "core_hours_for_120k_dfdc_videos_yunet"))
    assert res["videos"][0]["n_frames"] == 10 and set(res["videos"][0]["breakdown_s"]) == {"yunet", "haar"}


def test_cache_benchmark_runs(tmp_path, yunet_model):  # extraction at the defaults: YuNet
    res = bench_cache.main([
        "--video-dir", str(tmp_path), "--work-dir", str(tmp_path), "--no-real", "--width", "160",
        "--height", "120", "--face-px", "72", "--seconds", "1", "--fps", "10", "--rounds", "1",
        "--samples", "2", "--frames-per-video", "2", "--clip-len", "2", "--image-size", "32"])
    check(res, "cache", ("synthetic", "wall_vs_cpu", "vs_decode_cpu", "decode_ms_per_sample"))
    video = res["videos"][0]
    assert video["bytes"] == sum(video["bytes_by_file"].values()) > 0
    assert set(video["bytes_by_file"]) == {"face.frames", "context.frames", "native.frames", "json"}
    assert video["native_bit_exact"] and video["psnr_db"]["native"] == 99.0
    assert set(res["figures"]["decode_ms_per_sample"]) == {"frame/face", "frame/context", "frame/native",
                                                            "clip/face"}


def test_loader_benchmark_runs(tmp_path):
    res = bench_loader.main([
        "--cache-dir", str(tmp_path), "--stages", "stage4_dfdc", "--videos", "2", "--points", "2",
        "--clip-len", "2", "--image-size", "32", "--batch-size", "2", "--batches", "1",
        "--rounds", "1", "--backbone", "mobilenet_v3_small", "--model-batch", "2",
        "--model-clip-batch", "2"])
    check(res, "loader", ("per_config", "model_train_samples_per_s_here"))
    for config in res["figures"]["per_config"].values():
        assert config["workers_for_8_gpus"] >= 1
    assert set(res["figures"]["per_config"]) == {"stage4_dfdc/frame", "stage4_dfdc/clip"}
    assert all(c["augment_fraction_of_step"] > 0 for c in res["figures"]["per_config"].values())


def test_engine_benchmark_runs():
    res = bench_engine.main(["--image-size", "32", "--batch-size", "2", "--steps", "1",
                             "--rounds", "1"])
    check(res, "engine", ("engine_vs_hand", "overhead", "step_s_engine", "step_s_hand"))
    assert res["figures"]["step_s_engine"] > 0


def test_memory_benchmark_runs(tmp_path):
    res = bench_memory.main(["--cache-dir", str(tmp_path), "--train-sizes", "2", "4",
                             "--skip-extract", "--points", "2", "--image-size", "32",
                             "--batch-size", "4"])
    check(res, "memory", ("train_peak_ratio", "train_peak_growth_mb", "train_index_mb_per_1000_videos"))
    assert [r["videos"] for r in res["runs"]["train"]] == [2, 4]


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """One decoded 4:2:0 frame of a small H.264 face video (sample_data)."""
    from common.data.synthetic import face_video, write_mp4

    path = tmp_path_factory.mktemp("bench") / "face.mp4"
    write_mp4(path, face_video(2, size=(128, 96), face_px=80), fps=10)
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


def test_region_conversion_is_the_full_frame_conversion(frame):
    from common.faces.video import RegionConverter, luma

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
    from common.faces.crops import Cropper as _Cropper
    from common.faces.detectors import crop_box, make_detector

    got = _Cropper(make_detector("none"), 32).crop(frame, box)
    want = crop_box(frame.to_ndarray(format="rgb24"), box, 32)
    assert got.shape == want.shape == (32, 32, 3)
    assert np.abs(got.astype(int) - want).mean() <= tolerance
