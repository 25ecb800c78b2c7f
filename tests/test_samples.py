"""The data contract as the models see it: frames, clips, audio windows, labels, ids."""

import numpy as np
import pytest
import torch

from common.data.audio import MEL_WINDOW, N_MELS, mel_window
from common.data.datasets import VideoRecord, index_dataset
from common.data.samples import FaceSamples, clip_centre
from common.faces.cache import FaceCache, file_stamp
from common.faces import codec
from common.faces.detectors import make_detector
from common.faces.extraction import build_face_cache, video_crops
from common.preprocess import ClipTransform


@pytest.fixture(scope="module")
def dfdc_cache(sample_root, tmp_path_factory):
    records = [r for r in index_dataset("dfdc", sample_root / "dfdc") if r.chunk == 0][:3]
    cache = FaceCache(tmp_path_factory.mktemp("cache"), "dfdc", crop_size=32, frames_per_video=3,
                      clip_len=4, detector="none")
    build_face_cache(records, cache, progress=False)
    return records, cache


def test_av_sample_carries_the_audio_window_of_its_clip(dfdc_cache):
    records, cache = dfdc_cache
    ds = FaceSamples(records, cache, clip_len=4, transform=ClipTransform(32), with_audio=True)
    assert len(ds) == 3 * len(records)
    item = ds[4]  # video 1, sample point 1
    rec = records[1]
    crops, meta = cache.entry(rec.rel)
    assert meta["audio"]["present"]
    run = meta["frame_indices"][1]
    assert run == list(range(run[0], run[0] + 4))
    # the clip shows frames run[0]..run[0]+3: its centre is 1.5 frames past its first, not run[2]
    centre_s = (run[0] + 1.5) / meta["fps"]
    expected = mel_window(cache.mel(rec.rel), centre_s, MEL_WINDOW)
    assert item["mel"].shape == (1, N_MELS, MEL_WINDOW)
    assert np.allclose(item["mel"][0].numpy(), expected)
    # half a frame at 29.97 fps is 1.7 mel hops: centring on run[2] would give another window
    assert not np.allclose(expected, mel_window(cache.mel(rec.rel), run[2] / meta["fps"], MEL_WINDOW))
    assert item["audio_missing"].item() == 0.0
    assert item["video"] == rec.rel and item["label"].item() == rec.label
    assert item["frames"].shape == (4, 3, 32, 32)


def test_missing_audio_is_zeros_and_a_flag(sample_root, tmp_path):
    rec = [r for r in index_dataset("faceforensics", sample_root / "faceforensics")][0]
    cache = FaceCache(tmp_path, "faceforensics", crop_size=32, frames_per_video=2, clip_len=3, detector="none")
    build_face_cache([rec], cache, progress=False)
    item = FaceSamples([rec], cache, clip_len=3, transform=ClipTransform(32), with_audio=True)[0]
    assert item["audio_missing"].item() == 1.0
    assert torch.count_nonzero(item["mel"]) == 0


def test_clip_is_consecutive_frames_and_single_frame_is_the_centre(dfdc_cache):
    records, cache = dfdc_cache
    crops, meta = cache.entry(records[0].rel)
    runs = meta["frame_indices"]
    assert all(np.diff(run).tolist() == [1] * (len(run) - 1) for run in runs if run[0] != run[-1])
    t = ClipTransform(32)
    clip = FaceSamples(records, cache, clip_len=4, transform=t)[0]["frames"]
    assert torch.allclose(clip, t(np.array(crops[0])))
    frame = FaceSamples(records, cache, clip_len=1, transform=t)[0]["frames"]
    assert frame.shape[0] == 1 and torch.allclose(frame[0], clip[2])


def test_workers_only_read_and_the_seed_travels_with_the_sample(tmp_path):
    """A training item is the cached uint8 crops as they are (no augmentation in the worker)
    plus its sampler seed; a DataLoader batch carries the seeds for the on-device augmentation."""
    from torch.utils.data import DataLoader

    from common.training.engine import to_device
    from common.data.samples import EpochSampler, collate_samples

    cache = FaceCache(tmp_path, "toy", crop_size=16, frames_per_video=2, clip_len=4, detector="none",
                      views=("face",))
    raw = np.random.default_rng(0).integers(0, 255, (2, 4, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "v.mp4").write_bytes(b"a video")
    rec = VideoRecord(path=str(tmp_path / "v.mp4"), rel="v.mp4", label=1, group="v", split="train",
                      has_audio=False)
    cache.write_entry("v.mp4", {"face": raw}, None, {
        "frame_indices": [[0, 1, 2, 3], [8, 9, 10, 11]], "source": file_stamp(rec.path),
        "boxes": [[0, 0, 16, 16]] * 2, "fps": 25.0, "n_frames": 12, "width": 16, "height": 16,
        "audio": {"present": False}})
    crops, _ = cache.entry("v.mp4")  # what the cache's decoder gives (the face view is H.264)
    ds = FaceSamples([rec], cache, clip_len=4, transform=ClipTransform(16, normalize=False))
    item = ds[(1, 123)]
    assert item["frames"].dtype == torch.uint8
    assert torch.equal(item["frames"], torch.from_numpy(crops[1]).permute(0, 3, 1, 2))
    assert item["seed"].dtype == torch.int64 and item["seed"].item() == 123
    assert "seed" not in ds[1]  # evaluation items: no seed, no augmentation
    sampler = EpochSampler(ds.labels, seed=3)
    batch = next(iter(DataLoader(ds, batch_size=2, sampler=sampler, num_workers=1, collate_fn=collate_samples)))
    assert batch["frames"].shape == (2, 4, 3, 16, 16) and batch["frames"].dtype == torch.uint8
    assert batch["seed"].tolist() == [seed for _, seed in sampler]
    assert batch["label"].tolist() == [1, 1] and batch["video"] == ["v.mp4", "v.mp4"]
    order = [i for i, _ in sampler]
    expected = torch.from_numpy(crops[order]).permute(0, 1, 4, 2, 3)
    assert torch.equal(batch["frames"], expected)
    # The cache's memory order, stacked as is; the device side makes it contiguous.
    assert batch["frames"].stride()[2] == 1 and not batch["frames"].is_contiguous()
    # the batch read together is decoded into one buffer and handed on without a copy
    keys = list(sampler)
    together = collate_samples(ds.__getitems__(keys))
    assert torch.equal(together["frames"], expected) and together["frames"].stride() == batch["frames"].stride()
    items = ds.__getitems__(keys)
    assert collate_samples(items)["frames"].data_ptr() == items[0]["frames"].data_ptr()
    alone = collate_samples([ds[k] for k in keys])  # item by item: stacked, the same pixels
    assert torch.equal(alone["frames"], expected) and alone["seed"].tolist() == together["seed"].tolist()
    on_device = to_device(batch, torch.device("cpu"))
    assert on_device["frames"].is_contiguous() and torch.equal(on_device["frames"], expected)
    assert on_device["seed"] is batch["seed"]  # seeds stay on the host


def test_stage_preprocessing_is_stored_once_in_its_own_cache(sample_root, tmp_path):
    from common.preprocess import apply_preprocessing

    rec = [r for r in index_dataset("celebdf", sample_root / "celebdf") if r.split == "train"][0]
    plain = FaceCache(tmp_path, "celebdf", crop_size=32, frames_per_video=2, clip_len=3, detector="haar")
    clahe = FaceCache(tmp_path, "celebdf", crop_size=32, frames_per_video=2, clip_len=3, detector="haar",
                      preprocessing="clahe")
    assert plain.dir != clahe.dir and clahe.dir.name.endswith("_clahe")
    for cache in (plain, clahe):
        build_face_cache([rec], cache, progress=False)
    raw, _ = plain.entry(rec.rel)
    done, meta = clahe.entry(rec.rel)
    assert meta["preprocessing"] == "clahe"
    # CLAHE runs on the crops before they are encoded: the stored frames are exactly the
    # codec's round trip of CLAHE(crops), and differ from the plain cache's
    crops, _ = video_crops(rec.path, 2, 3, 32, make_detector("haar"))
    frames = apply_preprocessing(crops.reshape(-1, 32, 32, 3), "clahe").reshape(crops.shape)
    expected = codec.round_trip(frames, "face", "clahe")
    assert meta["codecs"]["face"] == ["h264", 9]  # CLAHE's crops need a lower CRF for 40 dB
    assert np.array_equal(done, expected.reshape(done.shape)) and not np.array_equal(done, raw)


def test_clip_centre_is_the_middle_of_the_frames_served():
    run = list(range(40, 48))  # a stored run of 8 frames
    assert clip_centre(run, 8, 8) == 43.5  # frames 40..47: the middle is 3.5 frames in, not frame 44
    assert clip_centre(run, 8, 3) == 44.0  # the middle 3 (43, 44, 45)
    assert clip_centre(run, 8, 4) == 43.5  # the middle 4 (42..45)
    assert clip_centre(run, 1, 1) == 44.0  # a one-frame view keeps the run's centre frame
    assert clip_centre([9, 10, 10, 10], 4, 4) == 9.5  # a short video's repeated last frame
