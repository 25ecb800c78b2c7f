"""Cropping decoded frames: the face box of a frame and every view's crop of it, in one pass.

One streaming pass over the sampled frames (detect_and_crop) gives every view of every run
from the same decoded frame and the same face box (common/faces/views.py). The detector runs at
key points (key_points); the runs between two key points whose boxes agree take a box
interpolated in time, the others are detected too. The sampling rules around it (which runs
keep a face, how long a gap may be bridged, the stride) are common/faces/extraction.py's.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from common.faces.detectors import (Box, box_iou, crop_box, detect_size, fill_near, is_flat, largest_face,
                          square_box)
from common.faces.video import RegionConverter, iter_decoded, luma
from common.faces.views import context_box, native_box, run_length


class Cropper:
    """Face boxes and crops straight from decoded frames. Only what is kept is converted to
    RGB: the crop's rectangle, not the whole frame. YuNet gets BGR frames the decoder has
    already shrunk (one swscale pass each, coarse then fine: YuNetDetector.find), Haar the
    luma plane as it is."""

    def __init__(self, detector, size: int):
        self.detector, self.size = detector, size
        self.gray = getattr(detector, "takes_gray", False)
        self.small = getattr(detector, "takes_bgr_small", False)
        self.regions = RegionConverter()
        self.face_px: float | None = None  # the last face found (shorter side, frame px)
        if self.small:
            from av.video.reformatter import VideoReformatter

            self._shrink = VideoReformatter()

    def box(self, frame):
        if self.small:
            def shrink(side: int) -> tuple[np.ndarray, float]:
                w, h, scale = detect_size(frame.width, frame.height, side)
                return self._shrink.reformat(frame, width=w, height=h, format="bgr24",
                                             interpolation="AREA").to_ndarray(), scale

            first = self.detector.first_side(max(frame.width, frame.height), self.face_px)
            face = largest_face(self.detector.find(shrink, first))
            if face is not None:  # the next detection in this video starts at its scale
                self.face_px = min(face[2] - face[0], face[3] - face[1])
        else:
            image = luma(frame) if self.gray else None
            face = largest_face(self.detector.detect(
                frame.to_ndarray(format="rgb24") if image is None else image))
        return None if face is None else square_box(face, self.detector.box_scale)

    def view_boxes(self, frame, box, views: Sequence[str]) -> dict[str, tuple]:
        """The box each view cuts from this frame, given the face box (views.py)."""
        out: dict[str, tuple] = {}
        for view in views:
            if view == "face":
                out[view] = tuple(box[:4])
            elif view == "context":
                out[view] = context_box(box, self.detector.box_scale, frame.width, frame.height)
            else:
                out[view] = native_box(box, self.size, frame.width, frame.height)
        return out

    def crop_views(self, frame, boxes: dict[str, tuple]) -> dict[str, np.ndarray]:
        return {view: self.native(frame, b) if view == "native" else self.crop(frame, b)
                for view, b in boxes.items()}

    def native(self, frame, box) -> np.ndarray:
        """The frame's own pixels (no resampling); black where the patch passes the frame."""
        x0, y0, x1, y1 = box
        sx1, sy1 = min(x1, frame.width), min(y1, frame.height)
        part = self.regions.rgb(frame, x0, y0, sx1, sy1)
        if part.shape[:2] == (self.size, self.size):
            return part
        out = np.zeros((self.size, self.size, 3), np.uint8)
        out[:part.shape[0], :part.shape[1]] = part
        return out

    def crop(self, frame, box) -> np.ndarray:
        x0, y0, x1, y1 = (int(v) for v in box[:4])
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x1, frame.width), min(y1, frame.height)
        if (sx0, sy0, sx1, sy1) == (x0, y0, x1, y1):  # inside the frame: one swscale pass
            out = self.regions.resized(frame, x0, y0, x1, y1, self.size, self.size)
            if out is not None:
                return out
        if sx1 <= sx0 or sy1 <= sy0:  # box wholly outside the frame: black, like crop_box
            return np.zeros((self.size, self.size, 3), np.uint8)
        part = self.regions.rgb(frame, sx0, sy0, sx1, sy1)
        return crop_box(part, (x0 - sx0, y0 - sy0, x1 - sx0, y1 - sy0), self.size)


def key_points(times_s: Sequence[float], max_gap_s: float, max_stride: int) -> list[int]:
    """The sample points a detector runs on: every s-th point and the last, s the largest
    stride <= max_stride that leaves every point in between within max_gap_s of a key point
    (s // 2 spacings away at most). Points are evenly spaced in time (sample_points)."""
    n = len(times_s)
    gaps = [b - a for a, b in zip(times_s, times_s[1:])]
    spacing = max(gaps) if gaps else 0.0
    stride = max(1, max_stride)
    while stride > 1 and (stride // 2) * spacing > max_gap_s + 1e-9:
        stride -= 1
    return sorted(set(range(0, n, stride)) | {n - 1})


def _between(a: Box, b: Box, w: float) -> Box:
    """The square box a fraction w of the way from a to b (centre and side interpolated)."""
    side = (1 - w) * (a[2] - a[0]) + w * (b[2] - b[0])
    cx = (1 - w) * (a[0] + a[2]) / 2.0 + w * (b[0] + b[2]) / 2.0
    cy = (1 - w) * (a[1] + a[3]) / 2.0 + w * (b[1] + b[3]) / 2.0
    side_i = max(2, int(round(side)))
    left, top = int(round(cx - side_i / 2.0)), int(round(cy - side_i / 2.0))
    return (left, top, left + side_i, top + side_i)


def detect_and_crop(path: str, runs: list[list[int]], fps: float, size: int, detector,
                    views: Sequence[str] = ("face",), max_gap_s: float = 0.5,
                    max_stride: int = 1, agree_iou: float = 1.0):
    """One streaming pass. Run i's box comes from its centre frame: detected there at the key
    points (key_points), and at a point between two key points interpolated in time from
    theirs when both found a face and their boxes agree (IoU >= agree_iou), else detected on
    its own centre frame too. A box whose centre crop is flat is no face. Frames are cropped
    (every view from the same decoded frame; a single-frame view only at the run's centre,
    views.run_length) as soon as their run's box is known; until then they are held.
    Runs without a face of their own are re-read at the end with a box from max_gap_s or
    nearer, else dropped. -> ({view: crops [N,...]}, face boxes, {view: boxes} per run,
    box source per run ("detected" | "interpolated" | "borrowed" | None), frame indices
    that did not decode)."""
    n, t = len(runs), len(runs[0])
    c = t // 2
    times = [run[c] / max(fps, 1e-6) for run in runs]
    keys = key_points(times, max_gap_s, max_stride)
    previous_key = dict(zip(keys[1:], keys))
    whole = {v: run_length(v, t) == t for v in views}  # else the centre frame alone
    crops = {v: np.zeros((n, t if whole[v] else 1, size, size, 3), dtype=np.uint8) for v in views}
    boxes: list = [None] * n
    cut: list = [None] * n  # run i's box per view
    source: list = [None] * n
    settled = [False] * n
    cropper = Cropper(detector, size)
    where: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, run in enumerate(runs):
        for j, idx in enumerate(run):
            where[idx].append((i, j))
    held: dict[int, dict[int, Any]] = defaultdict(dict)  # frames of runs not settled yet
    centre_crop: dict[int, np.ndarray] = {}  # the face crop the flat check made: stored as is

    def put(i: int, j: int, frame) -> None:
        wanted = {v: b for v, b in cut[i].items() if whole[v] or j == c}
        made = centre_crop.pop(i, None) if j == c else None
        if made is not None and "face" in wanted:
            crops["face"][i, c] = made
            del wanted["face"]
        for view, crop in cropper.crop_views(frame, wanted).items():
            crops[view][i, j if whole[view] else 0] = crop

    def face_in(i: int, frame, box):
        """box, unless its crop of the frame is flat (a uniform patch is not a face)."""
        if box is None:
            return None
        crop = cropper.crop(frame, box)
        if is_flat(crop):
            return None
        centre_crop[i] = crop
        return box

    def settle(i: int, box, how: str) -> None:
        settled[i] = True
        frames = held.pop(i, {})
        if box is None:
            return
        boxes[i], source[i] = box, how
        cut[i] = cropper.view_boxes(frames[c], box, views)
        for j, f in frames.items():
            put(i, j, f)

    def settle_between(a: int, b: int) -> None:
        """The points between key points a and b: interpolated, or detected on their own."""
        for i in range(a + 1, b):
            frame = held[i][c]
            near = min(times[i] - times[a], times[b] - times[i]) <= max_gap_s + 1e-9
            box = None
            if near and boxes[a] is not None and boxes[b] is not None \
                    and box_iou(boxes[a], boxes[b]) >= agree_iou:
                w = (times[i] - times[a]) / max(times[b] - times[a], 1e-9)
                box = face_in(i, frame, _between(boxes[a], boxes[b], w))
            if box is not None:
                settle(i, box, "interpolated")
            else:
                settle(i, face_in(i, frame, cropper.box(frame)), "detected")

    key_set = set(keys)
    seen: set[int] = set()
    for idx, frame in iter_decoded(path, where.keys()):
        seen.add(idx)
        for i, j in where[idx]:
            if not settled[i]:
                held[i][j] = frame
            elif boxes[i] is not None:
                put(i, j, frame)
        for i, j in where[idx]:  # every run's frame is registered before any run settles
            if j == c and i in key_set and not settled[i]:
                settle(i, face_in(i, frame, cropper.box(frame)), "detected")
                if i in previous_key:
                    settle_between(previous_key[i], i)
    missing = set(where) - seen
    if missing:
        return crops, boxes, cut, list(source), missing
    filled = fill_near(boxes, times, max_gap_s)
    redo = [i for i in range(n) if boxes[i] is None and filled[i] is not None]
    if redo:
        todo = {idx for i in redo for idx in runs[i]}
        for idx, frame in iter_decoded(path, todo):
            for i, j in where[idx]:
                if i in redo:
                    if cut[i] is None:
                        cut[i] = cropper.view_boxes(frame, filled[i], views)
                        source[i] = "borrowed"
                    put(i, j, frame)
    return crops, filled, cut, source, set()
