"""YuNet on real footage: FF++ c23 videos under $DEEPFAKE_REALDATA_DIR/ffpp (six of them in CI;
never copied into the project).

Every crop the extraction keeps must show a face that the detector finds again, and points
where the footage cuts away from the face (a map graphic, as in FF++ video 519's news
programme) must be dropped, not filled with a box from seconds away.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.data.datasets import index_dataset
from common.data.synthetic import write_mp4
from common.faces.cache import FaceCache
from common.faces.detectors import largest_face, make_detector
from common.faces.extraction import build_face_cache, video_crops
from common.faces.video import iter_frames
from tests.conftest import realdata_dir

REAL, WHY = realdata_dir()
pytestmark = pytest.mark.skipif(REAL is None, reason=WHY)


@pytest.fixture(scope="module")
def yunet(yunet_model):
    return make_detector("yunet")


def test_yunet_crops_of_real_ffpp_videos_are_faces(tmp_path, yunet):
    records = index_dataset("faceforensics", REAL / "ffpp")
    assert len(records) == 6
    cache = FaceCache(tmp_path, "faceforensics", crop_size=112, frames_per_video=12, clip_len=1)
    s = build_face_cache(records, cache, workers=0, decode_audio=False, progress=False)
    assert s["done"] == 6 and s["skipped"] == {} and s["failed"] == []
    found = total = 0
    for r in records:
        crops, meta = cache.entry(r.rel)
        assert meta["faces"]["detector"] == "yunet"
        for crop in crops[:, 0]:
            found += largest_face(yunet.detect(np.asarray(crop))) is not None
            total += 1
    assert total >= 6 * 6 and found / total >= 0.95, (found, total)
    assert (tmp_path / cache.key / "preview.png").is_file()


def test_points_where_the_footage_cuts_to_a_graphic_are_dropped(tmp_path, yunet):
    """519 cut to its map backdrop for 4 s: the face-less points go, the rest are faces."""
    src = REAL / "ffpp/original_sequences/youtube/c23/videos/519.mp4"
    frames = np.stack([f for _, f in iter_frames(src, range(150))])
    backdrop = frames[0, 40:280, 0:320]  # map and caption left of the presenter: no face
    graphic = np.repeat(np.kron(backdrop, np.ones((2, 2, 1), np.uint8))[None], 100, axis=0)
    assert not yunet.detect(graphic[0])
    cut = np.concatenate([frames[:75], graphic, frames[75:]])  # the graphic is frames 75..174
    write_mp4(tmp_path / "519_cut.mp4", cut)
    crops, meta = video_crops(str(tmp_path / "519_cut.mp4"), 10, 1, 112, yunet)
    centres = [run[0] for run in meta["frame_indices"]]
    assert meta["points"] == 10 and len(centres) < 10
    # the points are 1.1 s apart: a graphic point has no face point within 0.5 s, so it goes
    on_graphic = [i for i in range(10) if 75 <= round(i * 249 / 9) < 175]
    assert on_graphic == [3, 4, 5, 6]
    assert meta["kept"] == [i for i in range(10) if i not in on_graphic]
    assert not [c for c in centres if 75 <= c < 175], centres
    assert all(largest_face(yunet.detect(np.asarray(c[0]))) is not None for c in crops)


def test_sigterm_ends_a_pooled_extraction_within_seconds(tmp_path, yunet_model):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "common.extract", "--dataset", "faceforensics",
           "--data", str(REAL / "ffpp"), "--cache-dir", str(tmp_path), "--image-size", "64",
           "--frames-per-video", "64", "--clip-len", "2", "--workers", "2", "--no-progress",
           "--no-audio"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.rglob("*.lock")):
        time.sleep(0.05)  # a worker holds a video: extraction is under way
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10, err
    assert proc.returncode == 3 and "stopped early" in out, (out, err)
    entries = list(tmp_path.rglob("*.json"))
    assert len([p for p in entries if not p.name.endswith(".skip.json")]) < 6


def test_yunet_stops_at_the_coarse_pass_only_for_faces_large_enough_there(yunet):
    """Coarse to fine: a presenter's face is found at 320 px in one pass, boxed as the 640 px
    pass boxes it; the same face shrunk into a wide frame needs, and gets, the 640 px pass."""
    from common.faces.extraction import face_settings, recorded_face_settings
    from common.faces.detectors import COARSE_SIDE, FIRST_MARGIN, MIN_COARSE_FACE, YuNetDetector, box_iou
    from common.faces.video import read_frames

    src = REAL / "ffpp/original_sequences/youtube/c23/videos/519.mp4"
    frame = read_frames(src, [40])[40]  # 640x480, the presenter
    fine_only = YuNetDetector(coarse_side=0)
    assert fine_only.coarse_side is None and yunet.coarse_side == COARSE_SIDE

    def passes(det, image):
        sizes = []
        real = det.detect_small
        det.detect_small = lambda bgr, scale: sizes.append(bgr.shape[:2]) or real(bgr, scale)
        try:
            return largest_face(det.detect(image)), sizes
        finally:
            del det.detect_small

    face, sizes = passes(yunet, frame)
    want, _ = passes(fine_only, frame)
    assert sizes == [(240, 320)] and box_iou(face, want) > 0.8
    assert min(face[2] - face[0], face[3] - face[1]) * 0.5 >= MIN_COARSE_FACE

    rng = np.random.default_rng(0)
    wide = rng.integers(40, 120, (720, 1280, 3), dtype=np.uint8)
    wide[300:460, 500:713] = cv2.resize(frame, (213, 160), interpolation=cv2.INTER_AREA)
    face, sizes = passes(yunet, wide)
    want, _ = passes(fine_only, wide)
    assert sizes == [(180, 320), (360, 640)] and face == want  # the 640 pass decides
    assert face is not None and 500 < (face[0] + face[2]) / 2 < 713

    # once a video has shown a face, the first pass is where that face is ~35 px: one pass
    assert (yunet.first_side(640, None), yunet.first_side(640, 200)) == (320, 320)
    assert yunet.first_side(1280, 110) == 416 and yunet.first_side(1280, 60) == 640
    import av

    from common.faces.crops import Cropper
    cropper = Cropper(yunet, 64)
    for image, first, then in ((wide, [320, 640], [640]), (frame, [320], [320])):
        cropper.face_px = None  # a new video
        decoded = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        for expected in (first, then):  # widths of the passes, the first time and the next
            sizes = []
            real = yunet.detect_small
            yunet.detect_small = lambda bgr, scale: sizes.append(bgr.shape[1]) or real(bgr, scale)
            try:
                assert cropper.box(decoded) is not None
            finally:
                del yunet.detect_small
            assert sizes == expected, (image.shape, sizes)
    assert cropper.face_px * 320 / 640 >= FIRST_MARGIN * MIN_COARSE_FACE  # the presenter: 320 px

    got, rec = face_settings(yunet), recorded_face_settings("yunet")
    assert (got["coarse_side"], got["min_coarse_face"]) == (COARSE_SIDE, MIN_COARSE_FACE)
    assert {k: rec[k] for k in got} == got  # what a checkpoint records is what extraction used
