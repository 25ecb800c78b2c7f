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

from common.faces.detectors import Box, box_iou, crop_box, detect_size, fill_near, is_flat, largest_face, square_box
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


class _RunCropper:
    """One detect_and_crop pass: each run's box, its source and its crops as the frames stream
    by. A run's frames are held until its box is known (settled), then cropped."""

    def __init__(self, runs: list[list[int]], times: list[float], cropper: Cropper,
                 views: Sequence[str], max_gap_s: float, agree_iou: float):
        n, t = len(runs), len(runs[0])
        self.runs, self.times, self.cropper, self.views = runs, times, cropper, views
        self.max_gap_s, self.agree_iou = max_gap_s, agree_iou
        self.c = t // 2  # the centre frame: a run's box comes from it
        self.whole = {v: run_length(v, t) == t for v in views}  # else the centre frame alone
        size = cropper.size
        self.crops = {v: np.zeros((n, t if self.whole[v] else 1, size, size, 3), dtype=np.uint8)
                      for v in views}
        self.boxes: list = [None] * n
        self.cut: list = [None] * n  # run i's box per view
        self.source: list = [None] * n
        self.settled = [False] * n
        self.where: dict[int, list[tuple[int, int]]] = defaultdict(list)  # frame -> (run, j)
        for i, run in enumerate(runs):
            for j, idx in enumerate(run):
                self.where[idx].append((i, j))
        self.held: dict[int, dict[int, Any]] = defaultdict(dict)  # frames of runs not settled yet
        self.centre_crop: dict[int, np.ndarray] = {}  # the face crop the flat check made: stored as is

    def first_pass(self, path: str, keys: list[int]) -> set[int]:
        """Every sampled frame decoded once; runs settle as their key points pass -> the frame
        indices that did not decode."""
        key_set, previous_key = set(keys), dict(zip(keys[1:], keys))
        seen: set[int] = set()
        for idx, frame in iter_decoded(path, self.where.keys()):
            seen.add(idx)
            self.take(idx, frame)
            for i, j in self.where[idx]:  # every run's frame is registered before any run settles
                if j == self.c and i in key_set and not self.settled[i]:
                    self.detect(i, frame)
                    if i in previous_key:
                        self.settle_between(previous_key[i], i)
        return set(self.where) - seen

    def take(self, idx: int, frame) -> None:
        """A decoded frame: cropped for the runs already settled with a face, held for the others."""
        for i, j in self.where[idx]:
            if not self.settled[i]:
                self.held[i][j] = frame
            elif self.boxes[i] is not None:
                self.put(i, j, frame)

    def put(self, i: int, j: int, frame) -> None:
        c = self.c
        wanted = {v: b for v, b in self.cut[i].items() if self.whole[v] or j == c}
        made = self.centre_crop.pop(i, None) if j == c else None
        if made is not None and "face" in wanted:
            self.crops["face"][i, c] = made
            del wanted["face"]
        for view, crop in self.cropper.crop_views(frame, wanted).items():
            self.crops[view][i, j if self.whole[view] else 0] = crop

    def face_in(self, i: int, frame, box):
        """box, unless its crop of the frame is flat (a uniform patch is not a face)."""
        if box is None:
            return None
        crop = self.cropper.crop(frame, box)
        if is_flat(crop):
            return None
        self.centre_crop[i] = crop
        return box

    def detect(self, i: int, frame) -> None:
        self.settle(i, self.face_in(i, frame, self.cropper.box(frame)), "detected")

    def settle(self, i: int, box, how: str) -> None:
        self.settled[i] = True
        frames = self.held.pop(i, {})
        if box is None:
            return
        self.boxes[i], self.source[i] = box, how
        self.cut[i] = self.cropper.view_boxes(frames[self.c], box, self.views)
        for j, f in frames.items():
            self.put(i, j, f)

    def settle_between(self, a: int, b: int) -> None:
        """The points between key points a and b: interpolated, or detected on their own."""
        times, boxes = self.times, self.boxes
        for i in range(a + 1, b):
            frame = self.held[i][self.c]
            near = min(times[i] - times[a], times[b] - times[i]) <= self.max_gap_s + 1e-9
            box = None
            if near and boxes[a] is not None and boxes[b] is not None \
                    and box_iou(boxes[a], boxes[b]) >= self.agree_iou:
                w = (times[i] - times[a]) / max(times[b] - times[a], 1e-9)
                box = self.face_in(i, frame, _between(boxes[a], boxes[b], w))
            if box is not None:
                self.settle(i, box, "interpolated")
            else:
                self.detect(i, frame)

    def borrow(self, path: str, filled: list) -> None:
        """Re-read the runs without a face of their own that fill_near gave a nearby box."""
        redo = [i for i in range(len(self.runs)) if self.boxes[i] is None and filled[i] is not None]
        if not redo:
            return
        todo = {idx for i in redo for idx in self.runs[i]}
        for idx, frame in iter_decoded(path, todo):
            for i, j in self.where[idx]:
                if i in redo:
                    if self.cut[i] is None:
                        self.cut[i] = self.cropper.view_boxes(frame, filled[i], self.views)
                        self.source[i] = "borrowed"
                    self.put(i, j, frame)


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
    c = len(runs[0]) // 2
    times = [run[c] / max(fps, 1e-6) for run in runs]
    state = _RunCropper(runs, times, Cropper(detector, size), views, max_gap_s, agree_iou)
    missing = state.first_pass(path, key_points(times, max_gap_s, max_stride))
    if missing:
        return state.crops, state.boxes, state.cut, list(state.source), missing
    filled = fill_near(state.boxes, times, max_gap_s)
    state.borrow(path, filled)
    return state.crops, filled, state.cut, state.source, set()
