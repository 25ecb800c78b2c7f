"""Cropping decoded frames: the face box of a frame and every view's crop of it, in one pass.

One streaming pass over the sampled frames (detect_and_crop) gives every view of every run
from the same decoded frame and the same face box (common/views.py); the sampling rules
around it (which runs keep a face, how long a gap may be bridged) are common/extraction.py's.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from common.faces import crop_box, detect_size, fill_near, is_flat, largest_face, square_box
from common.video import RegionConverter, iter_decoded, luma
from common.views import context_box, native_box, run_length


class Cropper:
    """Face boxes and crops straight from decoded frames. Only what is kept is converted to
    RGB: the crop's rectangle, not the whole frame. YuNet gets a BGR frame the decoder has
    already shrunk (one swscale pass), Haar the luma plane as it is."""

    def __init__(self, detector, size: int):
        self.detector, self.size = detector, size
        self.gray = getattr(detector, "takes_gray", False)
        self.small = getattr(detector, "takes_bgr_small", False)
        self.regions = RegionConverter()
        if self.small:
            from av.video.reformatter import VideoReformatter

            self._shrink = VideoReformatter()

    def box(self, frame):
        if self.small:
            w, h, scale = detect_size(frame.width, frame.height, self.detector.max_side)
            bgr = self._shrink.reformat(frame, width=w, height=h, format="bgr24",
                                        interpolation="AREA").to_ndarray()
            face = largest_face(self.detector.detect_small(bgr, scale))
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


def detect_and_crop(path: str, runs: list[list[int]], fps: float, size: int, detector,
                    views: Sequence[str] = ("face",), max_gap_s: float = 0.5):
    """One streaming pass: the box of run i is detected on its centre frame; frames are cropped
    (every view, from the same decoded frame; a single-frame view only at the run's centre,
    views.run_length) as soon as their box is known. Runs without a
    face of their own are re-read at the end with a box from max_gap_s or nearer, else
    dropped. -> ({view: crops [N,...]}, face boxes, {view: boxes}, detected, frame indices
    that did not decode)."""
    n, t = len(runs), len(runs[0])
    whole = {v: run_length(v, t) == t for v in views}  # else the centre frame alone
    crops = {v: np.zeros((n, t if whole[v] else 1, size, size, 3), dtype=np.uint8) for v in views}
    boxes: list = [None] * n
    cut: list = [None] * n  # run i's box per view
    tried = [False] * n
    cropper = Cropper(detector, size)
    where: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, run in enumerate(runs):
        for j, idx in enumerate(run):
            where[idx].append((i, j))

    def put(i: int, j: int, frame) -> None:
        wanted = {v: b for v, b in cut[i].items() if whole[v] or j == t // 2}
        for view, crop in cropper.crop_views(frame, wanted).items():
            crops[view][i, j if whole[view] else 0] = crop

    waiting: dict[int, dict[int, Any]] = defaultdict(dict)  # frames before the centre
    seen: set[int] = set()
    for idx, frame in iter_decoded(path, where.keys()):
        seen.add(idx)
        for i, j in where[idx]:
            if not tried[i] and idx == runs[i][t // 2]:
                tried[i] = True
                box = cropper.box(frame)
                if box is not None:
                    centre = cropper.crop(frame, box)
                    box = None if is_flat(centre) else box  # a uniform patch is not a face
                boxes[i] = box
                if box is not None:
                    cut[i] = cropper.view_boxes(frame, box, views)
                for jj, f in waiting.pop(i, {}).items():
                    if box is not None:
                        put(i, jj, f)
            if boxes[i] is not None:
                put(i, j, frame)
            elif not tried[i]:
                waiting[i][j] = frame
    missing = set(where) - seen
    detected = [b is not None for b in boxes]
    if missing:
        return crops, boxes, cut, detected, missing
    filled = fill_near(boxes, [run[t // 2] / max(fps, 1e-6) for run in runs], max_gap_s)
    redo = [i for i in range(n) if boxes[i] is None and filled[i] is not None]
    if redo:
        todo = {idx for i in redo for idx in runs[i]}
        for idx, frame in iter_decoded(path, todo):
            for i, j in where[idx]:
                if i in redo:
                    if cut[i] is None:
                        cut[i] = cropper.view_boxes(frame, filled[i], views)
                    put(i, j, frame)
    return crops, filled, cut, detected, set()
