"""Views (common/faces/views.py): what each specialist is served, and that its evidence survives.

native: the frame's own pixels on its 8-px grid (CM); context: a wider box for BG; face: the
rest. One decode and one set of boxes make all three; the cache keeps them side by side.
"""
from __future__ import annotations

from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from common.data.datasets import VideoRecord
from common.data.synthetic import face_video, write_mp4
from common.faces.cache import FaceCache
from common.faces.detectors import make_detector
from common.faces.extraction import extract_video, recorded_face_settings, video_crops, video_views
from common.faces.views import (GRID, MODEL_VIEWS, STORED_VIEWS, blockiness_phase, context_box, native_box,
                                recorded_view, view_of)
from common.recipes import AUGMENTATION_LEVELS
from common.training import stage_data as sd
from common.training.augment import ClipAugmenter, augmenter_for, view_level

S = 48  # crop side: a multiple of 16, so the native view may be flipped


# ----------------------------------------------------------------------------- geometry

def test_each_model_declares_its_view_once():
    assert MODEL_VIEWS == {"bg": "context", "av": "face", "cm": "native", "rr": "face", "tm": "face"}
    assert STORED_VIEWS == ("face", "context", "native")
    assert view_of("cm") == "native" and view_of("bg") == "context" and view_of("ll") == "face"


def test_native_patch_is_on_the_grid_centred_and_inside_the_frame():
    # a small face (60 px box) lies whole inside a 96-px patch, centred to within the grid step
    x0, y0, x1, y1 = native_box((503, 301, 563, 361), 96, 1920, 1080)
    assert (x1 - x0, y1 - y0) == (96, 96) and x0 % GRID == 0 and y0 % GRID == 0
    assert x0 <= 503 and x1 >= 563 and y0 <= 301 and y1 >= 361
    assert abs((x0 + x1) / 2 - 533) <= GRID / 2 and abs((y0 + y1) / 2 - 331) <= GRID / 2
    # a big face (400 px) gives its central patch
    x0, y0, x1, y1 = native_box((700, 300, 1100, 700), 224, 1920, 1080)
    assert x0 % GRID == 0 and abs((x0 + x1) / 2 - 900) <= GRID / 2 and abs((y0 + y1) / 2 - 500) <= GRID / 2
    # at the frame's edge: moved inside, still on the grid
    assert native_box((-30, -30, 40, 40), 64, 300, 200)[:2] == (0, 0)
    x0, y0, x1, y1 = native_box((260, 170, 330, 240), 64, 300, 200)
    assert x1 <= 300 and y1 <= 200 and x0 % GRID == 0 and y0 % GRID == 0
    # a frame narrower than the patch: origin 0 (the rest is black at crop time)
    assert native_box((10, 10, 40, 40), 64, 50, 200)[0] == 0


def test_context_box_is_wider_square_and_inside_the_frame():
    face = (900, 400, 1030, 530)  # 130 px: a 100-px face at the 1.3x face box
    x0, y0, x1, y1 = context_box(face, 1.3, 1920, 1080)
    assert x1 - x0 == y1 - y0 == 250  # 2.5x the face
    assert (x0 + x1) / 2 == pytest.approx(965, abs=1) and (y0 + y1) / 2 == pytest.approx(465, abs=1)
    # near a corner: shifted, not padded
    assert context_box((0, 0, 130, 130), 1.3, 1920, 1080)[:2] == (0, 0)
    # a face filling the frame: shrunk to the frame's short side
    x0, y0, x1, y1 = context_box((-100, -100, 400, 400), 1.3, 320, 240)
    assert (x1 - x0, y1 - y0) == (240, 240) and 0 <= x0 and x1 <= 320 and y0 == 0
    # detector "none" (the face box is the frame): the frame's largest centred square
    assert context_box((0, 0, 320, 240), 1.0, 320, 240) == (40, 0, 280, 240)


# ----------------------------------------------------------------------------- extraction

@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("views") / "v.mp4"
    write_mp4(path, face_video(16, size=(320, 240), seed=3))
    return path


def _decoded(path, index: int) -> np.ndarray:
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise IndexError(index)


def test_views_come_from_one_decode_and_the_native_view_is_the_frames_own_pixels(clip):
    det = make_detector("haar")
    crops, meta = video_views(str(clip), 4, 3, S, det)
    assert set(crops) == set(STORED_VIEWS) and meta["views"] == list(STORED_VIEWS)
    for view, c in crops.items():  # single-frame views keep each run's centre frame only
        t = 3 if view == "face" else 1
        assert c.shape == (len(meta["kept"]), t, S, S, 3) and c.dtype == np.uint8, view
    face_only, face_meta = video_crops(str(clip), 4, 3, S, det)
    assert np.array_equal(face_only, crops["face"]) and face_meta["boxes"] == meta["boxes"]
    k, j = len(meta["kept"]) - 1, 1
    frame = _decoded(clip, meta["frame_indices"][k][j])
    x0, y0, x1, y1 = meta["view_boxes"]["native"][k]
    assert x0 % GRID == 0 and y0 % GRID == 0 and (x1 - x0, y1 - y0) == (S, S)
    assert np.array_equal(crops["native"][k, 0], frame[y0:y1, x0:x1])  # not resampled, not moved
    cx0, cy0, cx1, cy1 = meta["view_boxes"]["context"][k]
    fx0, fy0, fx1, fy1 = meta["view_boxes"]["face"][k]
    assert cx1 - cx0 > fx1 - fx0 and 0 <= cx0 and cx1 <= 320 and 0 <= cy0 and cy1 <= 240
    import cv2

    expected = cv2.resize(frame[cy0:cy1, cx0:cx1], (S, S), interpolation=cv2.INTER_AREA)
    assert np.abs(crops["context"][k, 0].astype(int) - expected).mean() < 3.0
    # the one frame a single-frame model reads is the same in every view: the run's centre
    assert face_meta["frame_indices"][k][j] == meta["frame_indices"][k][1]


def test_the_cache_keeps_the_views_side_by_side_and_redoes_an_entry_missing_one(clip, tmp_path):
    cache = FaceCache(tmp_path, "toy", crop_size=S, frames_per_video=4, clip_len=3, detector="haar")
    rec = VideoRecord(path=str(clip), rel="a/v.mp4", label=1, group="v", split="val", has_audio=False)
    meta = extract_video(rec, cache, make_detector("haar"), decode_audio=False)
    assert cache.is_complete(rec.rel) and meta["views"] == list(STORED_VIEWS)
    assert cache.view_path(rec.rel, "face").name == "a__v.face.frames"
    assert cache.view_path(rec.rel, "native").name == "a__v.native.frames"
    native, _ = cache.entry(rec.rel, "native")
    face, _ = cache.entry(rec.rel, "face")
    # CM's native view is stored losslessly: bit for bit the crops extraction cut
    raw, _ = video_views(str(clip), 4, 3, S, make_detector("haar"), views=("native",))
    np.testing.assert_array_equal(native, raw["native"])
    assert native.shape == (face.shape[0], 1, S, S, 3) and face.shape[1] == 3
    assert not np.array_equal(np.array(native[:, 0]), np.array(face[:, 1]))
    cache.view_path(rec.rel, "context").unlink()
    assert not cache.is_complete(rec.rel)  # build_face_cache will redo it
    assert cache.entry(rec.rel, "context") is None

    # each model is served its own view by the samples every stage, evaluate and predict read
    cfg = SimpleNamespace(clip_len=3, image_size=S, model="cm")
    extract_video(rec, cache, make_detector("haar"), decode_audio=False)
    for model, view in (("cm", "native"), ("bg", "context"), ("rr", "face")):
        cfg.model = model
        ds = sd.samples_for([rec], cache, cfg, SimpleNamespace(), train=False)
        crops, _ = cache.entry(rec.rel, view)
        assert ds.view == view and len(ds) == crops.shape[0]
        centre = crops[0, 1:2] if view == "face" else crops[0, 0:1]
        assert torch.equal(ds[0]["frames"], torch.from_numpy(np.array(centre)).permute(0, 3, 1, 2))


def test_checkpoints_record_the_view_and_predict_reads_it():
    rec = recorded_face_settings("yunet", None, view="native")
    assert rec["view"] == "native" and rec["context_scale"] == 2.5 and rec["native_grid"] == GRID
    assert recorded_view({"faces": rec}) == "native"
    assert recorded_view({"faces": {"detector": "yunet"}}) == "face"  # before views: face crops
    assert recorded_view({"kind": "torchscript"}) == "face"
    with pytest.raises(ValueError):
        recorded_face_settings("yunet", view="whole")


# ----------------------------------------------------------------------------- augmentation

def _blocky(n: int, side: int, seed: int) -> np.ndarray:
    """uint8 [n, side, side, 3] JPEG-coded at a low quality: 8x8 blocks at the origin."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), (0, 0), 3)
        base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
        ok, buf = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 8])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return np.stack(out)


def _augmented(aug: ClipAugmenter, clips: np.ndarray, seeds) -> np.ndarray:
    x = torch.from_numpy(clips).permute(0, 1, 4, 2, 3)  # [B, T, 3, S, S]
    y = aug(x, torch.tensor(seeds))
    return y.permute(0, 1, 3, 4, 2).numpy()


def test_native_augmentation_keeps_the_blockiness_phase():
    side = 64
    clips = _blocky(8, side, 0).reshape(4, 2, side, side, 3)
    before = [blockiness_phase(c) for c in clips]
    assert min(before) > 1.5  # the clips do carry an 8x8 grid at the origin
    seeds = list(range(100, 104))
    native = augmenter_for("maximum", "native", side)
    assert native.level.rotation_deg == 0 and native.level.p_perspective == 0 and native.level.p_blur == 0
    assert native.level.p_flip == AUGMENTATION_LEVELS["maximum"].p_flip  # 64 is a multiple of 16
    assert bool(native.draw(torch.tensor(seeds)).flip.any())  # a flip is among the draws
    after = [blockiness_phase(c) for c in _augmented(native, clips, seeds)]
    for b, a in zip(before, after):
        assert a > 1.5 and a == pytest.approx(b, rel=0.35)
    # the check can fail: the face view's rotation and perspective move the grid
    face = augmenter_for("maximum", "face", side)
    rotated = [blockiness_phase(c) for c in _augmented(face, clips, seeds)]
    assert min(rotated) < 1.2


def test_view_levels():
    lv = AUGMENTATION_LEVELS["moderate"]
    assert view_level(lv, "native", 40).p_flip == 0.0  # 40 px: a flip would move the 16-px grid
    assert view_level(lv, "native", 48).p_flip == lv.p_flip
    ctx = view_level(AUGMENTATION_LEVELS["maximum"], "context", 224)
    assert ctx.p_blur == 0.0 and ctx.rotation_deg == 20.0 and ctx.jitter == 0.2
    assert view_level(lv, "face", 224) is lv
    assert sd.train_augmenter(SimpleNamespace(augmentation="minimal"), "cm", 224).level.rotation_deg == 0
    assert sd.train_augmenter(SimpleNamespace(augmentation="minimal"), "rr", 224).level.rotation_deg == 5.0


# ----------------------------------------------------------------------------- the CM benchmark

def test_cm_compression_benchmark_runs():
    """tests/benchmarks/bench_views.py at its tiniest: two CRFs, both views, one seed. Whether
    native is ahead is the full-size run's verdict (README), not a smoke test's."""
    from tests.benchmarks import bench_views
    from tests.test_benchmarks_smoke import check

    res = bench_views.main(["--sources", "3", "--test-sources", "1", "--frames", "4", "--points", "2",
                            "--steps", "1", "--batch-size", "4", "--seeds", "0", "--width", "160",
                            "--height", "120"])
    check(res, "views", ("native_video_auc", "face_video_auc", "native_frame_auc", "face_frame_auc",
                         "native_minus_face_frame_auc"))
    assert res["figures"]["held_out_videos"] == 2 and res["figures"]["train_videos"] == 4
    assert len(res["runs"]["native"]) == len(res["runs"]["face"]) == 1


def test_evaluate_serves_each_student_the_view_its_checkpoint_records(clip, tmp_path):
    from common.evaluate import student_samples

    rec = VideoRecord(path=str(clip), rel="v.mp4", label=0, group="v", split="test", has_audio=False)
    args = SimpleNamespace(cache_dir=tmp_path, workers=0, batch_size=4)
    settings = SimpleNamespace(image_size=S, frames_per_video=4, clip_len=3, detector="haar", face_model=None)
    for faces, view in (({"view": "native"}, "native"), ({"view": "context"}, "context"), ({}, "face")):
        st = SimpleNamespace(name="cm", external=False, model=SimpleNamespace(options={"name": "cm"}),
                             preprocessing="none", clip_len=1, checkpoint={"faces": faces})
        samples, _ = student_samples(st, [rec], args, settings, "toy")
        crops, _ = FaceCache(tmp_path, "toy", S, 4, 3, "haar").entry(rec.rel, view)
        assert samples.view == view and len(samples) == crops.shape[0]
