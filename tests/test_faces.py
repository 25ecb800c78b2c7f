"""common.faces / common.face_cache: boxes, crops, and the resumable, sharded face cache."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from common.datasets import VideoRecord
from common.errors import UserError
from common.face_cache import FaceCache, build_face_cache, shard_of, video_key
from common.faces import (HaarDetector, NoDetector, crop_box, fill_missing, largest_face, main,
                          make_detector, square_box)
from common.sample_data import face_video, make_celebdf, mouth_envelope, speech_audio, write_mp4
from common.video import count_frames
from tests.test_video import write_mp4 as write_mp4_faststart

N, T, S = 4, 3, 64
N_FRAMES = 40


def rec(root, name, label=0, source=None, audio=False):
    return VideoRecord(str(root / f"{name}.mp4"), f"vids/{name}.mp4", label, name, "train",
                       audio, source, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    frames = {
        "real_a": face_video(N_FRAMES, (160, 120), identity=0, seed=1),
        "fake_a": face_video(N_FRAMES, (160, 120), identity=0, seed=1, swap=1),
        "real_b": face_video(N_FRAMES, (160, 120), identity=2, seed=2),
        "noface": np.random.default_rng(0).integers(60, 90, (N_FRAMES, 120, 160, 3), dtype=np.uint8),
    }
    for name, f in frames.items():
        audio = speech_audio(mouth_envelope(N_FRAMES), 25.0) if name == "real_b" else None
        write_mp4(root / f"{name}.mp4", f, audio=audio)
    (root / "empty.mp4").write_bytes(b"")
    records = [rec(root, "fake_a", 1, "vids/real_a.mp4"), rec(root, "real_a"),
               rec(root, "real_b", audio=True), rec(root, "noface"), rec(root, "empty")]
    return {"root": root, "frames": frames, "records": records}


def new_cache(tmp_path, detector="haar"):
    return FaceCache(tmp_path / "cache", "tiny", S, N, T, detector)


def test_cache_builds_complete_entries(data, tmp_path):
    cache = new_cache(tmp_path)
    assert cache.dir.name == "tiny_s64_n4_t3_haar"
    s = build_face_cache(data["records"], cache, workers=0, progress=False)
    assert (s["total"], s["done"], s["cached"], s["reused_boxes"]) == (5, 3, 0, 1)
    assert s["skipped"] == {"no_face": 1, "bad_video": 1} and s["failed"] == []

    crops, meta = cache.entry("vids/real_a.mp4")
    assert isinstance(crops, np.memmap) and crops.dtype == np.uint8 and crops.shape == (N, T, S, S, 3)
    assert (cache.dir / "vids__real_a.npy").is_file() and (cache.dir / "vids__real_a.json").is_file()
    runs = meta["frame_indices"]
    assert runs[0][0] == 0 and runs[-1][-1] == N_FRAMES - 1  # spread over the whole video
    assert all(r == list(range(r[0], r[0] + T)) for r in runs)
    assert (meta["n_frames"], meta["width"], meta["height"]) == (N_FRAMES, 160, 120)
    assert meta["fps"] == pytest.approx(25.0) and meta["boxes_from"] is None
    assert all(meta["detected"]) and meta["audio"]["present"] is False

    original = data["frames"]["real_a"]
    haar = HaarDetector(min_size=40)
    for i, (run, box) in enumerate(zip(runs, meta["boxes"])):
        x0, y0, x1, y1 = box
        assert x1 - x0 == y1 - y0 and 55 <= x1 - x0 <= 110  # square, ~1.3x a 50-80 px face
        for j, idx in enumerate(run):  # the crop of frame idx (not a neighbour), from the box
            expected = crop_box(original[idx], box, S).astype(float)
            assert np.abs(crops[i, j] - expected).mean() < 6, (i, j)
        # the stored crop shows a face, filling it and centred
        face = largest_face(haar.detect(cv2.resize(np.asarray(crops[i, T // 2]), (128, 128))))
        assert face is not None
        assert abs((face[0] + face[2]) / 2 - 64) < 12 and abs((face[1] + face[3]) / 2 - 64) < 12

    # audio: stored for the video that has it, whole track, 100 mel frames per second
    _, meta_b = cache.entry("vids/real_b.mp4")
    mel = cache.mel("vids/real_b.mp4")
    assert meta_b["audio"]["present"] and mel.dtype == np.float32
    assert mel.shape == (64, meta_b["audio"]["n_frames"]) and abs(mel.shape[1] - 161) <= 5
    assert cache.mel("vids/real_a.mp4") is None

    for name in ("noface", "empty"):
        assert cache.entry(f"vids/{name}.mp4") is None
        assert json.loads((cache.dir / f"vids__{name}.skip.json").read_text())["reason"] in (
            "no_face", "bad_video")


def test_fake_reuses_boxes_of_its_source(data, tmp_path):
    cache = new_cache(tmp_path)
    build_face_cache(data["records"][:2], cache, workers=0, progress=False)  # fake listed first
    _, real = cache.entry("vids/real_a.mp4")
    crops, fake = cache.entry("vids/fake_a.mp4")
    assert fake["boxes_from"] == "vids/real_a.mp4"
    assert fake["boxes"] == real["boxes"] and fake["frame_indices"] == real["frame_indices"]
    assert not any(fake["detected"])
    expected = crop_box(data["frames"]["fake_a"][fake["frame_indices"][1][0]], fake["boxes"][1], S)
    assert np.abs(crops[1, 0] - expected.astype(float)).mean() < 6


def test_second_run_does_no_work_and_remembers_skips(data, tmp_path):
    cache = new_cache(tmp_path)
    build_face_cache(data["records"], cache, workers=0, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in cache.dir.iterdir()}
    s = build_face_cache(data["records"], cache, workers=0, progress=False)
    assert (s["done"], s["cached"], s["skipped"]) == (0, 3, {"no_face": 1, "bad_video": 1})
    assert {p: p.stat().st_mtime_ns for p in cache.dir.iterdir()} == stamp  # nothing rewritten
    s = build_face_cache(data["records"], cache, workers=0, progress=False, retry_skipped=True)
    assert (s["done"], s["cached"], s["skipped"]) == (0, 3, {"no_face": 1, "bad_video": 1})


def test_interrupted_run_is_resumed(data, tmp_path):
    cache = new_cache(tmp_path)
    build_face_cache(data["records"], cache, workers=0, progress=False)
    before = np.array(cache.entry("vids/real_b.mp4")[0])
    # a run killed while writing real_b: crops there, json not yet, temp files about
    (cache.dir / "vids__real_b.json").unlink()
    (cache.dir / ".vids__real_b.json.tmp-999-dead").write_text('{"frame_indices"')
    (cache.dir / ".vids__real_b.npy.tmp-999-dead").write_bytes(b"\x93NUMPY half")
    assert cache.entry("vids/real_b.mp4") is None and not cache.is_complete("vids/real_b.mp4")
    s = build_face_cache(data["records"], cache, workers=0, progress=False)
    assert (s["done"], s["cached"]) == (1, 2)
    np.testing.assert_array_equal(cache.entry("vids/real_b.mp4")[0], before)
    assert not [p for p in os.listdir(cache.dir) if ".tmp-" in p]


def test_shards_partition_records_and_keep_fakes_with_their_source(data, tmp_path):
    fake = [VideoRecord(f"/x/f{i}.mp4", f"f/{i}.mp4", 1, "g", "train", False, f"r/{i % 7}.mp4")
            for i in range(40)]
    real = [VideoRecord(f"/x/r{i}.mp4", f"r/{i}.mp4", 0, "g", "train", False) for i in range(7)]
    for n in (1, 3):
        shards = [{r.rel for r in real + fake if shard_of(r, n) == i} for i in range(n)]
        assert sum(map(len, shards)) == 47 and set().union(*shards) == {r.rel for r in real + fake}
        assert all(shard_of(f, n) == shard_of(real[int(f.source[2:-4])], n) for f in fake)

    cache = new_cache(tmp_path)
    a = build_face_cache(data["records"], cache, workers=0, shard=(0, 2), progress=False)
    b = build_face_cache(data["records"], cache, workers=0, shard=(1, 2), progress=False)
    assert a["total"] + b["total"] == 5 and a["done"] + b["done"] == 3
    assert a["reused_boxes"] + b["reused_boxes"] == 1
    with pytest.raises(UserError):
        build_face_cache(data["records"], cache, shard=(2, 2), progress=False)


def test_worker_processes_give_the_same_cache(data, tmp_path):
    solo, pool = new_cache(tmp_path / "a"), new_cache(tmp_path / "b")
    records = data["records"][:4]
    build_face_cache(records, solo, workers=0, decode_audio=False, progress=False)
    # a pool that answers too late (as when a worker dies) is reported, not waited on forever
    s = build_face_cache(records, pool, workers=2, decode_audio=False, progress=False,
                         stall_timeout_s=0.001)
    assert s["failed"] and all("worker crashed or hung" in why for _, why in s["failed"])
    # the run after it (killed pool, maybe half-written files) completes the cache
    s = build_face_cache(records, pool, workers=2, decode_audio=False, progress=False)
    assert s["done"] + s["cached"] == 3 and s["failed"] == []
    assert s["skipped"] == {"no_face": 1}
    for r in records[1:3]:  # the reals; the fake's boxes depend on whether its real came first
        np.testing.assert_array_equal(solo.entry(r.rel)[0], pool.entry(r.rel)[0])
    assert pool.is_complete(records[0].rel)


def test_container_that_lies_about_its_length_is_resampled(data, tmp_path):
    path = write_mp4_faststart(tmp_path / "cut.mp4", data["frames"]["real_a"], faststart=True)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) * 6 // 10])
    real = count_frames(path)
    assert 0 < real < N_FRAMES
    cache = new_cache(tmp_path)
    s = build_face_cache([rec(tmp_path, "cut")], cache, workers=0, progress=False)
    assert s["done"] == 1
    meta = cache.entry("vids/cut.mp4")[1]
    assert meta["n_frames"] == real and meta["frame_indices"][-1][-1] == real - 1


def test_no_detector_uses_the_whole_frame(data, tmp_path):
    cache = new_cache(tmp_path, "none")
    s = build_face_cache(data["records"][1:2], cache, workers=0, progress=False)
    assert s["done"] == 1
    crops, meta = cache.entry("vids/real_a.mp4")
    assert meta["boxes"] == [[0, -20, 160, 140]] * N  # square around the frame, padded
    assert np.all(crops[:, :, :7] == 0) and crops[:, :, 10:54].mean() > 20


def test_box_helpers():
    assert largest_face([(0, 0, 10, 10, 1.0), (5, 5, 45, 35, 0.1)]) == (5, 5, 45, 35)
    assert largest_face([]) is None
    assert square_box((10, 20, 50, 60), 1.5) == (0, 10, 60, 70)
    assert square_box((0, 0, 40, 20), 1.0) == (0, -10, 40, 30)  # longer side wins
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_box(frame, (-50, 0, 50, 100), 10)  # left half outside: black, not shifted
    assert crop.shape == (10, 10, 3) and np.all(crop[:, :5] == 0) and np.all(crop[:, 5:] == 200)
    a, b = (0, 0, 2, 2), (9, 9, 11, 11)
    assert fill_missing([None, a, None, None, b, None]) == [a, a, a, b, b, b]
    assert fill_missing([None, None]) is None
    assert NoDetector().detect(frame) == [(0.0, 0.0, 100.0, 100.0, 1.0)]
    assert video_key("Celeb-real/id0_0000.mp4") == "Celeb-real__id0_0000"
    with pytest.raises(UserError, match="not found"):
        make_detector("yunet", "/nonexistent/yunet.onnx")
    with pytest.raises(UserError, match="unknown face detector"):
        make_detector("mtcnn")


def test_cli_extracts_a_dataset_and_rejects_bad_flags(tmp_path, capsys):
    root = tmp_path / "celebdf"
    make_celebdf(root, n_ids=2, n_frames=12)
    out = tmp_path / "cache"
    args = ["--dataset", "celebdf", "--data", str(root), "--cache-dir", str(out),
            "--image-size", "32", "--frames-per-video", "2", "--clip-len", "2",
            "--workers", "0", "--no-progress", "--no-audio"]
    assert main(args) == 0
    key_dir = out / "celebdf_s32_n2_t2_haar_clahe"  # Celeb-DF trains on CLAHE crops
    assert len(list(key_dir.glob("*.json"))) >= 6 and "extracted" in capsys.readouterr().out
    assert main(args) == 0 and " 0 extracted" in capsys.readouterr().out
    for bad in (["--shard", "2/2"], ["--shard", "x"], ["--face-detector", "yunet"]):
        assert main(args + bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert main(["--dataset", "celebdf", "--data", str(tmp_path / "nope"), "--workers", "0"]) == 2
