"""common.faces.detectors / common.faces.cache / common.faces.extraction: boxes, crops, the face cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.data.datasets import VideoRecord
from common.data.synthetic import face_video, make_celebdf, mouth_envelope, speech_audio, write_mp4
from common.errors import UserError
from common.extract import main
from common.faces import codec
from common.faces.cache import FaceCache, file_stamp, shard_of, video_key
from common.faces.detectors import (NoDetector, YuNetDetector, crop_box, fill_near, is_flat, largest_face,
                                    make_detector, square_box)
from common.faces.extraction import WorkerDiedError, build_face_cache, video_crops
from common.faces.video import count_frames
from tests.test_video import write_mp4 as write_mp4_faststart

N, T, S = 4, 3, 64
N_FRAMES = 40


def rec(root, name, label=0, source=None, audio=False):
    return VideoRecord(str(root / f"{name}.mp4"), f"vids/{name}.mp4", label, name, "train",
                       audio, source, None)


def noise(n, seed=0):
    return np.random.default_rng(seed).integers(60, 90, (n, 120, 160, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    frames = {
        "real_a": face_video(N_FRAMES, (160, 120), identity=0, seed=1),
        "fake_a": face_video(N_FRAMES, (160, 120), identity=0, seed=1, swap=1),
        "real_b": face_video(N_FRAMES, (160, 120), identity=2, seed=2),
        "noface": noise(N_FRAMES),
    }
    for name, f in frames.items():
        audio = speech_audio(mouth_envelope(N_FRAMES), 25.0) if name == "real_b" else None
        write_mp4(root / f"{name}.mp4", f, audio=audio)
    (root / "empty.mp4").write_bytes(b"")
    records = [rec(root, "fake_a", 1, "vids/real_a.mp4"), rec(root, "real_a"),
               rec(root, "real_b", audio=True), rec(root, "noface"), rec(root, "empty")]
    return {"root": root, "frames": frames, "records": records}


def new_cache(tmp_path, detector="yunet"):
    return FaceCache(tmp_path / "cache", "tiny", S, N, T, detector)


def test_cache_builds_complete_entries(data, tmp_path, yunet_model):
    cache = new_cache(tmp_path)
    assert cache.dir.name == "tiny_s64_n4_t3_yunet"
    s = build_face_cache(data["records"], cache, workers=0, progress=False)
    assert (s["total"], s["done"], s["cached"]) == (5, 3, 0)
    assert s["skipped"] == {"no_face": 1, "bad_video": 1} and s["failed"] == []

    crops, meta = cache.entry("vids/real_a.mp4")
    assert crops.dtype == np.uint8 and crops.shape == (N, T, S, S, 3)
    assert (cache.dir / "vids__real_a.face.frames").is_file() and (cache.dir / "vids__real_a.json").is_file()
    runs = meta["frame_indices"]
    assert runs[0][0] == 0 and runs[-1][-1] == N_FRAMES - 1  # spread over the whole video
    assert all(r == list(range(r[0], r[0] + T)) for r in runs)
    assert (meta["n_frames"], meta["width"], meta["height"]) == (N_FRAMES, 160, 120)
    assert meta["fps"] == pytest.approx(25.0) and meta["boxes_from"] is None
    assert set(meta["box_source"]) <= {"detected", "interpolated"} and meta["detected"][0]
    assert meta["kept"] == list(range(N)) and meta["points"] == N
    assert meta["faces"]["detector"] == "yunet" and meta["faces"]["max_gap_s"] == 0.5
    assert meta["audio"]["present"] is False

    original = data["frames"]["real_a"]
    yunet = make_detector("yunet")
    for i, (run, box) in enumerate(zip(runs, meta["boxes"])):
        x0, y0, x1, y1 = box
        assert x1 - x0 == y1 - y0 and 40 <= x1 - x0 <= 120  # square, ~1.3x the face
        for j, idx in enumerate(run):  # the crop of frame idx (not a neighbour), from the box
            expected = crop_box(original[idx], box, S).astype(float)
            assert np.abs(crops[i, j] - expected).mean() < 8, (i, j)  # lossy mp4
        # the stored crop shows a face, filling it and centred
        face = largest_face(yunet.detect(cv2.resize(np.asarray(crops[i, T // 2]), (128, 128))))
        assert face is not None
        assert abs((face[0] + face[2]) / 2 - 64) < 16 and abs((face[1] + face[3]) / 2 - 64) < 16

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
    # the contact sheet: one labelled row per video with crops (2 reals, 1 fake here)
    sheet = cv2.imread(str(cache.dir / "preview.png"))
    assert sheet is not None and sheet.shape[0] == 3 * 64 and sheet.shape[1] == 150 + 8 * 64


def test_fake_is_detected_on_its_own_frames_and_a_grey_fake_is_no_face(data, tmp_path, yunet_model):
    grey = np.full((N_FRAMES, 120, 160, 3), 128, np.uint8)  # same size as its real
    write_mp4(tmp_path / "grey.mp4", grey)
    grey_rec = VideoRecord(str(tmp_path / "grey.mp4"), "vids/grey.mp4", 1, "grey", "train",
                           False, "vids/real_a.mp4", None)
    cache = new_cache(tmp_path)
    s = build_face_cache(data["records"][:2] + [grey_rec], cache, workers=0, progress=False)
    assert s["done"] == 2 and s["skipped"] == {"no_face": 1}
    crops, fake = cache.entry("vids/fake_a.mp4")
    assert fake["boxes_from"] is None and "borrowed" not in fake["box_source"] and fake["detected"][0]
    # the fake's crops equal video_crops of the fake file alone (through the cache's codec):
    # what predict computes
    alone, meta = video_crops(data["records"][0].path, N, T, S, make_detector("yunet"))
    np.testing.assert_array_equal(np.asarray(crops), codec.round_trip(alone, "face"))
    assert meta["boxes"] == fake["boxes"]


def test_points_without_a_face_nearby_are_dropped_and_few_faces_skip(tmp_path, yunet_model):
    face = face_video(100, (160, 120), identity=0, seed=3)
    half = np.concatenate([face[:60], noise(40, 1)])   # face until 2.4 s of 4 s
    little = np.concatenate([face[:30], noise(70, 2)])  # face until 1.2 s
    write_mp4(tmp_path / "half.mp4", half)
    write_mp4(tmp_path / "little.mp4", little)
    yunet = make_detector("yunet")
    crops, meta = video_crops(str(tmp_path / "half.mp4"), 8, 1, 32, yunet)
    centres = [run[0] for run in meta["frame_indices"]]
    assert all(c < 60 + 0.5 * 25 for c in centres)  # no crop from the noise part
    assert meta["points"] == 8 and 4 <= len(meta["kept"]) <= 6 and crops.shape[0] == len(meta["kept"])
    assert meta["kept"] == list(range(len(meta["kept"])))
    cache = new_cache(tmp_path)
    s = build_face_cache([rec(tmp_path, "little")], cache, workers=0, progress=False)
    assert s["skipped"] == {"few_faces": 1}
    marker = json.loads((cache.dir / "vids__little.skip.json").read_text())
    assert marker["reason"] == "few_faces" and "of 4 sample points" in marker["detail"]


def test_second_run_does_no_work_and_remembers_skips(data, tmp_path, yunet_model):
    cache = new_cache(tmp_path)
    build_face_cache(data["records"], cache, workers=0, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in cache.dir.iterdir()}
    s = build_face_cache(data["records"], cache, workers=0, progress=False)
    assert (s["done"], s["cached"], s["skipped"]) == (0, 3, {"no_face": 1, "bad_video": 1})
    assert {p: p.stat().st_mtime_ns for p in cache.dir.iterdir()} == stamp  # nothing rewritten
    s = build_face_cache(data["records"], cache, workers=0, progress=False, retry_skipped=True)
    assert (s["done"], s["cached"], s["skipped"]) == (0, 3, {"no_face": 1, "bad_video": 1})


def test_interrupted_run_is_resumed_and_its_leftovers_tidied(data, tmp_path, yunet_model):
    cache = new_cache(tmp_path)
    build_face_cache(data["records"], cache, workers=0, progress=False)
    before = np.array(cache.entry("vids/real_b.mp4")[0])
    # a run killed while writing real_b: crops there, json not yet, temp files about
    (cache.dir / "vids__real_b.json").unlink()
    dead = [cache.dir / ".vids__real_b.json.tmp-999-dead", cache.dir / ".vids__real_b.face.frames.x.tmp",
            cache.dir / ".vids__real_b.npy.x.tmp"]  # the last: a killed writer of the old format
    live = cache.dir / ".vids__real_a.face.frames.y.tmp"  # another video's: not this lock's to judge
    for p in dead + [live]:
        p.write_bytes(b"half")
    assert cache.entry("vids/real_b.mp4") is None and not cache.is_complete("vids/real_b.mp4")
    s = build_face_cache(data["records"], cache, workers=0, progress=False)
    assert (s["done"], s["cached"]) == (1, 2)
    np.testing.assert_array_equal(cache.entry("vids/real_b.mp4")[0], before)
    assert not any(p.exists() for p in dead) and live.is_file()


def test_shards_partition_records_and_keep_fakes_with_their_source(data, tmp_path, yunet_model):
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
    with pytest.raises(UserError):
        build_face_cache(data["records"], cache, shard=(2, 2), progress=False)


@dataclass
class Deadly:
    """A record whose unpickling kills the worker process that receives it."""
    path: str
    rel: str = "vids/deadly.mp4"
    label: int = 0
    source: str | None = None

    def __reduce__(self):
        return (os._exit, (9,))


def test_worker_processes_give_the_same_cache_and_a_dead_worker_is_named(data, tmp_path, yunet_model):
    solo, pool = new_cache(tmp_path / "a"), new_cache(tmp_path / "b")
    records = data["records"][:4]
    build_face_cache(records, solo, workers=0, decode_audio=False, progress=False)
    s = build_face_cache(records, pool, workers=2, decode_audio=False, progress=False)
    assert s["done"] == 3 and s["failed"] == [] and s["skipped"] == {"no_face": 1}
    for r in records[:3]:
        np.testing.assert_array_equal(solo.entry(r.rel)[0], pool.entry(r.rel)[0])
    # a worker that dies is noticed at once, retried once, then named (exit 3 in scripts)
    t0 = time.monotonic()
    deadly = tmp_path / "deadly.mp4"
    deadly.write_bytes(Path(records[1].path).read_bytes())  # a fine file; the job kills
    with pytest.raises(WorkerDiedError, match="deadly.mp4"):
        build_face_cache([Deadly(str(deadly))], new_cache(tmp_path / "c"), workers=2,
                         decode_audio=False, progress=False)
    assert time.monotonic() - t0 < 60


def test_container_that_lies_about_its_length_is_resampled(data, tmp_path, yunet_model):
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
    # the padding is black (up to the JPEG's ringing at the frame's edge)
    assert crops[:, :, :6].mean() < 2 and crops[:, :, 10:54].mean() > 20


def test_box_helpers():
    assert largest_face([(0, 0, 10, 10, 1.0), (5, 5, 45, 35, 0.1)]) == (5, 5, 45, 35)
    assert largest_face([]) is None
    assert square_box((10, 20, 50, 60), 1.5) == (0, 10, 60, 70)
    assert square_box((0, 0, 40, 20), 1.0) == (0, -10, 40, 30)  # longer side wins
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_box(frame, (-50, 0, 50, 100), 10)  # left half outside: black, not shifted
    assert crop.shape == (10, 10, 3) and np.all(crop[:, :5] == 0) and np.all(crop[:, 5:] == 200)
    a, b = (0, 0, 2, 2), (9, 9, 11, 11)
    times = [0.0, 0.3, 0.6, 0.9, 1.2, 2.0]
    assert fill_near([None, a, None, None, b, None], times) == [a, a, a, b, b, None]
    assert fill_near([None, None], [0.0, 0.1]) == [None, None]
    assert is_flat(frame) and not is_flat(np.random.default_rng(0).integers(0, 255, (8, 8, 3)))
    assert NoDetector().detect(frame) == [(0.0, 0.0, 100.0, 100.0, 1.0)]
    assert video_key("Celeb-real/id0_0000.mp4") == "Celeb-real__id0_0000"
    with pytest.raises(UserError, match="not found"):
        make_detector("yunet", "/nonexistent/yunet.onnx")
    with pytest.raises(UserError, match="unknown face detector"):
        make_detector("mtcnn")


def test_cli_extracts_a_dataset_and_rejects_bad_flags(tmp_path, capsys, yunet_model):
    root = tmp_path / "celebdf"
    make_celebdf(root, n_ids=2, n_frames=12)
    out = tmp_path / "cache"
    args = ["--dataset", "celebdf", "--data", str(root), "--cache-dir", str(out),
            "--image-size", "32", "--frames-per-video", "2", "--clip-len", "2",
            "--workers", "0", "--no-progress", "--no-audio"]
    assert main(args) == 0
    key_dir = out / "celebdf_s32_n2_t2_yunet_clahe"  # Celeb-DF trains on CLAHE crops
    assert len(list(key_dir.glob("*.json"))) >= 6 and "extracted" in capsys.readouterr().out
    assert main(args) == 0 and " 0 extracted" in capsys.readouterr().out
    # A video the cache once marked skipped stays skipped, until --retry-skipped.
    meta = sorted(key_dir.glob("Celeb-real__*.json"))[0]
    video = root / json.loads(meta.read_text())["rel"]
    meta.unlink()
    meta.with_suffix(".skip.json").write_text(json.dumps(
        {"reason": "no_face", "detail": "by hand", "stamp": file_stamp(str(video))}))
    assert main(args) == 0 and "skipped: no_face 1" in capsys.readouterr().out and not meta.exists()
    assert main(args + ["--retry-skipped"]) == 0 and " 1 extracted" in capsys.readouterr().out
    assert meta.exists() and not meta.with_suffix(".skip.json").exists()
    for bad in (["--shard", "2/2"], ["--shard", "x"], ["--face-model", "/nope/yunet.onnx"]):
        assert main(args + bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert main(["--dataset", "celebdf", "--data", str(tmp_path / "nope"), "--workers", "0"]) == 2


def test_two_processes_share_one_empty_cache(tmp_path, yunet_model):
    root = tmp_path / "celebdf"
    make_celebdf(root, n_ids=2, n_frames=12)
    cmd = [sys.executable, "-m", "common.extract", "--dataset", "celebdf", "--data", str(root),
           "--cache-dir", str(tmp_path / "cache"), "--image-size", "32", "--frames-per-video", "2",
           "--clip-len", "2", "--workers", "0", "--no-progress", "--no-audio"]
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cache = FaceCache(tmp_path / "cache", "celebdf", 32, 2, 2, "yunet", "clahe")
    from common.data.datasets import index_dataset

    records = index_dataset("celebdf", root)
    assert records and all(cache.entry(r.rel) is not None for r in records)
    # each video extracted once: the two runs' "extracted" counts add up to the videos
    done = [int(o.split(": ", 1)[1].split(" extracted")[0]) for o, _ in outs]
    assert sum(done) == len(records)
    assert not [p for p in cache.dir.iterdir() if p.name.endswith(".tmp")]


def test_offline_without_a_model_is_one_clear_line(tmp_path, monkeypatch):
    import common.faces.detectors as faces

    monkeypatch.setenv(faces.MODEL_DIR_ENV, str(tmp_path / "models"))
    with pytest.raises(UserError) as err:  # the network is blocked in tests
        make_detector("yunet")
    msg = str(err.value)
    assert faces.YUNET_FILE in msg and str(tmp_path / "models") in msg
    assert "--face-model" in msg and "--face-detector haar" in msg and "\n" not in msg


def test_download_is_verified_and_renamed_into_place(tmp_path, monkeypatch, yunet_model):
    import hashlib
    import io

    import common.faces.detectors as faces

    blob = yunet_model.read_bytes()
    monkeypatch.setenv(faces.MODEL_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setattr(faces.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(blob))
    with pytest.raises(UserError, match="sha256"):  # not the official file: refused
        faces.resolve_yunet_model()
    assert not list((tmp_path / "models").iterdir())
    monkeypatch.setattr(faces, "YUNET_SHA256", hashlib.sha256(blob).hexdigest())
    path = faces.resolve_yunet_model()
    assert path == tmp_path / "models" / faces.YUNET_FILE and path.read_bytes() == blob
    assert [p.name for p in (tmp_path / "models").iterdir()] == [faces.YUNET_FILE]
    assert isinstance(make_detector("yunet"), YuNetDetector)


def test_a_video_locked_by_another_writer_is_not_extracted_twice(data, tmp_path, yunet_model):
    cache = new_cache(tmp_path)
    r = data["records"][1]
    with cache.locked(r.rel) as got:  # another open file description: as another process
        assert got
        t0 = time.monotonic()
        s = build_face_cache([r], cache, progress=False,
                             should_stop=lambda: time.monotonic() - t0 > 0.5)
        assert s["stopped"] and s["done"] == 0 and not cache.is_complete(r.rel)
        assert time.monotonic() - t0 < 5  # the wait for the lock listens to SIGTERM
    s = build_face_cache([r], cache, progress=False)
    assert s["done"] == 1 and cache.lock_path(r.rel).is_file()
