"""The face cache at real scale: damaged entries are found and redone, the dataset's index
decides which entries count, and an extraction that cannot fit on the disk is refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from common.data.datasets import VideoRecord
from common.data.samples import FaceSamples
from common.data.synthetic import face_video, mouth_envelope, speech_audio, write_mp4
from common.extract import main as extract_main
from common.faces import codec, plan
from common.faces.cache import CACHE_VERSION, CacheDamagedError, FaceCache
from common.faces.extraction import build_face_cache
from common.faces.views import STORED_VIEWS
from common.preprocess import ClipTransform
from common.training.run_files import missing_rels

S, N, T = 32, 3, 3
FILES = ("face.frames", "context.frames", "native.frames", "mel.bin", "json")
READS = {"face.frames": ("face", 3, False), "context.frames": ("context", 1, False),
         "native.frames": ("native", 1, False), "mel.bin": ("face", 3, True)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """One small face video with an audio track (so its entry has every kind of file)."""
    root = tmp_path_factory.mktemp("integrity")
    write_mp4(root / "v.mp4", face_video(30, (96, 64), identity=0, seed=1),
              audio=speech_audio(mouth_envelope(30), 25.0))
    return root / "v.mp4"


def fresh(source, tmp_path) -> tuple[FaceCache, VideoRecord]:
    """A private copy of the video (same size and mtime), extracted into a new cache."""
    (tmp_path / "vids").mkdir()
    shutil.copy2(source, tmp_path / "vids" / "v.mp4")
    rec = VideoRecord(str(tmp_path / "vids" / "v.mp4"), "vids/v.mp4", 0, "v", "train", True, None, None)
    cache = FaceCache(tmp_path / "cache", "tiny", S, N, T, "none")
    s = build_face_cache([rec], cache, workers=0, progress=False, preview=False)
    assert s["done"] == 1 and cache.state(rec.rel, rec.path) == "ok"
    return cache, rec


def contents(cache: FaceCache, rel: str) -> list[np.ndarray]:
    return [cache.entry(rel, v)[0] for v in STORED_VIEWS] + [cache.mel(rel)]


def read_all(cache: FaceCache, rec: VideoRecord, view: str, clip: int, audio: bool) -> None:
    ds = FaceSamples([rec], cache, clip_len=clip, transform=ClipTransform(S, normalize=False),
                     with_audio=audio, view=view)
    assert len(ds) == N
    for i in range(len(ds)):
        ds[i]


def repaired_by_the_next_build(cache: FaceCache, rec: VideoRecord, before: list) -> None:
    s = build_face_cache([rec], cache, workers=0, progress=False, preview=False)
    assert s["repaired"] == [rec.rel] and s["done"] == 1 and s["cached"] == 0
    assert cache.state(rec.rel, rec.path) == "ok"
    for a, b in zip(contents(cache, rec.rel), before):
        np.testing.assert_array_equal(a, b)  # extraction is deterministic: the same entry again
    assert build_face_cache([rec], cache, workers=0, progress=False)["repaired"] == []


@pytest.mark.parametrize("name", FILES)
def test_a_truncated_file_is_found_and_the_entry_redone(source, tmp_path, name):
    cache, rec = fresh(source, tmp_path)
    before = contents(cache, rec.rel)
    path = cache.dir / f"vids__v.{name}"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    assert cache.state(rec.rel, rec.path) == "damaged" and cache.entry(rec.rel) is None
    ds = FaceSamples([rec], cache, clip_len=1, transform=ClipTransform(S, normalize=False))
    assert len(ds) == 0 and ds.missing == 1  # not read at all, rather than read short
    repaired_by_the_next_build(cache, rec, before)


@pytest.mark.parametrize("name", FILES)
def test_a_corrupt_file_is_found_when_read_and_the_entry_redone(source, tmp_path, name):
    cache, rec = fresh(source, tmp_path)
    before = contents(cache, rec.rel)
    path = cache.dir / f"vids__v.{name}"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A  # same size: only the checksums can tell
    path.write_bytes(bytes(data))
    if name == "json":  # the json checks itself
        assert cache.state(rec.rel, rec.path) == "damaged"
    else:
        assert cache.state(rec.rel, rec.path) == "ok"  # sizes as recorded
        with pytest.raises(CacheDamagedError, match="vids/v.mp4.*re-extracts it"):
            read_all(cache, rec, *READS[name])
        assert cache.state(rec.rel, rec.path) == "damaged"  # the reader marked it
    repaired_by_the_next_build(cache, rec, before)


def test_a_loader_worker_reports_a_corrupt_entry_in_one_line(source, tmp_path):
    from torch.utils.data import DataLoader

    from common.data.samples import collate_samples

    cache, rec = fresh(source, tmp_path)
    path = cache.dir / "vids__v.face.frames"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x5A  # the last frame: read by the last sample point's clip
    path.write_bytes(bytes(data))
    ds = FaceSamples([rec], cache, clip_len=3, transform=ClipTransform(S, normalize=False))
    with pytest.raises(CacheDamagedError) as err:
        list(DataLoader(ds, batch_size=N, num_workers=1, collate_fn=collate_samples))
    assert len(str(err.value).splitlines()) == 1 and str(err.value).startswith("face cache entry of vids/v.mp4")
    assert cache.state(rec.rel, rec.path) == "damaged"


def test_verify_reads_every_file_back(source, tmp_path):
    cache, rec = fresh(source, tmp_path)
    assert cache.verify(rec.rel)
    path = cache.dir / "vids__v.native.frames"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert not cache.verify(rec.rel) and cache.state(rec.rel) == "damaged"


def test_a_deleted_video_is_missing_even_with_a_warm_cache(source, tmp_path):
    cache, rec = fresh(source, tmp_path)
    os.remove(rec.path)
    assert cache.entry(rec.rel) is not None  # the cache still holds its crops
    s = build_face_cache([rec], cache, workers=0, progress=False)
    assert s["skipped"] == {"missing": 1} and s["cached"] == 0 and s["done"] == 0
    ds = FaceSamples([rec], cache, clip_len=1, transform=ClipTransform(S, normalize=False))
    assert len(ds) == 0 and ds.missing == 1
    assert missing_rels([rec], cache) == {rec.rel}


def test_a_changed_video_is_extracted_again(source, tmp_path):
    cache, rec = fresh(source, tmp_path)
    st = os.stat(rec.path)
    os.utime(rec.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.state(rec.rel, rec.path) == "stale"
    s = build_face_cache([rec], cache, workers=0, progress=False)
    assert (s["changed"], s["done"], s["repaired"]) == (1, 1, [])
    assert json.loads((cache.dir / "vids__v.json").read_text())["source"][1] == st.st_mtime_ns + 10**9


def test_an_older_format_is_redone_with_one_line(source, tmp_path, caplog):
    cache, rec = fresh(source, tmp_path)
    meta_path = cache.dir / "vids__v.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = CACHE_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    legacy = cache.dir / "vids__v.npy"
    np.save(legacy, np.zeros((N, T, S, S, 3), np.uint8))
    assert cache.state(rec.rel, rec.path) == "old"
    with caplog.at_level("WARNING"):
        s = build_face_cache([rec], cache, workers=0, progress=False)
    assert (s["outdated"], s["done"]) == (1, 1) and not legacy.exists()
    lines = [r.getMessage() for r in caplog.records if "older format" in r.getMessage()]
    assert len(lines) == 1 and "1 entries" in lines[0]


def test_the_estimate_is_the_measured_figure_per_video():
    one = codec.estimate_entry_bytes(224, 32, 8, STORED_VIEWS)
    # the per-video figure at the defaults, with its headroom: the real FF++ entries measured
    # 2.8-3.2 MB (README, "Format (version 5)")
    assert 3.2e6 < one < 3.8e6
    assert codec.estimate_entry_bytes(224, 32, 8, STORED_VIEWS, preprocessing="clahe") > 1.3 * one
    records = [VideoRecord(f"/x/{i}.mp4", f"{i}.mp4", 0, "g", "train", i < 2, None, None) for i in range(5)]
    cache = FaceCache("unused", "x", 224, 32, 8, "none")
    assert plan.estimate_bytes(cache, records) == 5 * one + 2 * int(codec.MEL_BYTES_PER_S * plan.AUDIO_S)


def test_extraction_that_will_not_fit_is_refused(sample_root, tmp_path, monkeypatch, capsys):
    data = sample_root / "faceforensics"
    args = ["--dataset", "faceforensics", "--data", str(data), "--cache-dir", str(tmp_path / "c"),
            "--face-detector", "none", "--workers", "0", "--no-progress"]
    monkeypatch.setattr(plan, "free_bytes", lambda path: 10**12)
    assert extract_main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "videos to extract, about" in out[0] and "per video" in out[0]
    assert not (tmp_path / "c").exists()  # a dry run writes nothing
    monkeypatch.setattr(plan, "free_bytes", lambda path: 10**6)
    assert extract_main(args + ["--dry-run"]) == 3
    assert "will not fit" in capsys.readouterr().out
    assert extract_main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: not enough disk for the face cache")
    assert not list((tmp_path / "c").rglob("*.json"))


def test_extraction_is_refused_on_a_small_filesystem(sample_root, tmp_path, capsys):
    """A real 1 MB tmpfs (root only): the defaults' estimate for the sample tree exceeds it."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code = extract_main(["--dataset", "faceforensics", "--data", str(sample_root / "faceforensics"),
                             "--cache-dir", str(small), "--face-detector", "none", "--workers", "0",
                             "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 3 and len(err) == 1 and "not enough disk" in err[0]
        assert not list(small.rglob("*.frames"))
    finally:
        subprocess.run(["umount", str(small)], check=False)
