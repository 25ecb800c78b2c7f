"""Detection at key points, boxes interpolated in between (common/faces/crops.py).

A stub detector finds the one bright square of a generated video and counts its calls, so
each test knows where the face is and how often the detector ran.
"""
from __future__ import annotations

import numpy as np
from common.data.synthetic import write_mp4
from common.faces.crops import _between, detect_and_crop, key_points
from common.faces.detectors import box_iou, crop_box
from common.faces.extraction import AGREE_IOU, DETECT_STRIDE, MAX_GAP_S, face_settings, video_views
from common.faces.video import read_frames, sample_points

FPS, H, W, SQ = 25.0, 96, 128, 32


class SquareFinder:
    """Finds the bright square; 'no face' when there is none."""

    name, box_scale = "stub", 1.0

    def __init__(self):
        self.calls = 0

    def detect(self, frame):
        self.calls += 1
        ys, xs = np.nonzero(frame.mean(axis=2) > 190)
        if len(xs) < 50:
            return []
        return [(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), 1.0)]


def video(path, positions, n=None):
    """Textured frames with a bright checkered square (a textured "face": a flat crop is no
    face) at positions[i] (x, y), or none."""
    rng = np.random.default_rng(0)
    frames = rng.integers(20, 150, (len(positions), H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SQ, :SQ]
    face = np.where(((yy // 4 + xx // 4) % 2)[..., None] == 0, 215, 255).astype(np.uint8)
    for f, pos in zip(frames, positions):
        if pos is not None:
            x, y = pos
            f[y:y + SQ, x:x + SQ] = face
    write_mp4(path, frames, fps=FPS)
    return str(path)


def run(path, n_points, det, stride=DETECT_STRIDE, t=1):
    runs = sample_points(len(read_frames(path, range(10_000))), n_points, t)
    return runs, detect_and_crop(path, runs, FPS, 32, det, ("face",), MAX_GAP_S, stride, AGREE_IOU)


def test_key_points_keep_every_point_within_the_gap_of_a_detected_one():
    assert key_points([i * 0.3 for i in range(10)], 0.5, 3) == [0, 3, 6, 9]
    assert key_points([i * 0.3 for i in range(11)], 0.5, 3) == [0, 3, 6, 9, 10]  # the last too
    assert key_points([i * 0.2 for i in range(9)], 0.5, 3) == [0, 3, 6, 8]
    assert key_points([i * 0.6 for i in range(5)], 0.5, 3) == [0, 1, 2, 3, 4]  # too far apart
    assert key_points([i * 0.3 for i in range(10)], 0.5, 1) == list(range(10))  # stride 1: all
    assert key_points([0.0], 0.5, 3) == [0]
    for n, spacing in ((32, 0.31), (32, 0.39), (7, 0.5), (12, 0.26)):
        times = [i * spacing for i in range(n)]
        keys = key_points(times, 0.5, 3)
        assert all(min(abs(times[i] - times[k]) for k in keys) <= 0.5 + 1e-9 for i in range(n))


def test_interpolated_boxes_are_squares_between_their_neighbours():
    a, b = (10, 20, 50, 60), (30, 20, 90, 80)
    assert _between(a, b, 0.0) == a and _between(a, b, 1.0) == b
    mid = _between(a, b, 0.5)
    assert mid[2] - mid[0] == mid[3] - mid[1] == 50 and mid[:2] == (20, 20)  # centre (45, 45)


def test_a_still_face_is_detected_at_key_points_only_and_cropped_everywhere(tmp_path):
    path = video(tmp_path / "still.mp4", [(40, 30)] * 100)  # 4 s; 12 points 0.35 s apart
    det = SquareFinder()
    runs, (crops, boxes, _, source, missing) = run(path, 12, det)
    assert not missing and det.calls == 5  # keys 0, 3, 6, 9, 11
    assert source == ["detected" if i in (0, 3, 6, 9, 11) else "interpolated" for i in range(12)]
    frames = read_frames(path, [r[0] for r in runs])
    for i, r in enumerate(runs):
        assert box_iou(boxes[i], (40, 30, 72, 62)) > 0.8
        want = crop_box(frames[r[0]], boxes[i], 32).astype(int)
        assert np.abs(crops["face"][i, 0].astype(int) - want).mean() < 3  # the square, cropped
        assert crops["face"][i, 0].mean() > 200


def test_points_between_disagreeing_key_points_are_detected_on_their_own_frames(tmp_path):
    # the square jumps across the frame between key points 3 (frame 27) and 6 (frame 54)
    path = video(tmp_path / "jump.mp4", [(10, 10)] * 40 + [(80, 50)] * 60)
    det = SquareFinder()
    runs, (crops, boxes, _, source, _) = run(path, 12, det)
    assert [source[i] for i in (4, 5)] == ["detected", "detected"]
    assert det.calls == 7
    for i, r in enumerate(runs):  # every box is where the square is on that point's frame
        truth = (10, 10, 42, 42) if r[0] < 40 else (80, 50, 112, 82)
        assert box_iou(boxes[i], truth) > 0.8, (i, boxes[i], truth)
        assert crops["face"][i, 0].mean() > 200


def test_points_far_apart_are_all_detected_and_face_less_ones_dropped(tmp_path):
    """A point between agreeing key points <= MAX_GAP_S away is taken as showing the face:
    the tolerance a failed detection already has (it borrows a box that near). Farther
    apart, every point is detected and a face-less one is dropped."""
    positions = [(40, 30)] * 150
    positions[60:90] = [None] * 30  # no face for 1.2 s
    path = video(tmp_path / "away.mp4", positions)
    det = SquareFinder()
    runs, (_, boxes, _, source, _) = run(path, 6, det)  # points 1.2 s apart: all detected
    assert det.calls == 6 and "interpolated" not in source
    dropped = [i for i, r in enumerate(runs) if 60 <= r[0] < 90]
    assert dropped and all(boxes[i] is None for i in dropped)


def test_stride_one_detects_every_point(tmp_path):
    path = video(tmp_path / "still.mp4", [(40, 30)] * 100)
    det = SquareFinder()
    _, (_, _, _, source, _) = run(path, 12, det, stride=1)
    assert det.calls == 12 and source == ["detected"] * 12


def test_clips_of_interpolated_points_are_whole_and_settings_are_recorded(tmp_path):
    path = video(tmp_path / "still.mp4", [(40, 30)] * 100)
    det = SquareFinder()
    crops, meta = video_views(path, 12, 4, 32, det, views=("face",))  # 0.35 s apart
    assert "interpolated" in meta["box_source"] and len(meta["box_source"]) == 12
    assert meta["detected"] == [s == "detected" for s in meta["box_source"]]
    assert crops["face"].shape == (12, 4, 32, 32, 3) and crops["face"].min(axis=(2, 3, 4)).max() > 150
    rec = face_settings(det)
    assert (rec["detect_stride"], rec["agree_iou"]) == (DETECT_STRIDE, AGREE_IOU)
    assert DETECT_STRIDE > 1 and 0.5 <= AGREE_IOU < 1


def test_a_key_point_without_a_face_makes_its_neighbours_detect(tmp_path):
    positions = [(40, 30)] * 100
    positions[22:33] = [None] * 11  # key point 3 (frame 27) sees no face
    path = video(tmp_path / "gap.mp4", positions)
    det = SquareFinder()
    runs, (_, boxes, _, source, _) = run(path, 12, det)
    assert [r[0] for r in runs[2:5]] == [18, 27, 36]
    assert source[2] == source[4] == "detected" and source[1] == source[5] == "detected"
    assert source[3] == "borrowed" and det.calls == 9  # 0.36 s from a face: borrowed, as before


def test_overlapping_runs_are_all_cropped(tmp_path):
    """More points than frames allow: runs overlap and share frames and centres."""
    path = video(tmp_path / "short.mp4", [(40, 30)] * 30)
    det = SquareFinder()
    runs, (crops, boxes, _, source, missing) = run(path, 40, det, t=4)
    assert not missing and all(b is not None for b in boxes) and None not in source
    assert crops["face"].shape == (40, 4, 32, 32, 3) and crops["face"].mean(axis=(2, 3, 4)).min() > 200
    assert "interpolated" in source
