"""Views: the kinds of crop extraction cuts from each sampled frame, and which model sees which.

  face     the 1.3x face box (faces.square_box) resized to the crop size: AV, RR, TM
  context  a CONTEXT_SCALE x box around the same face, kept inside the frame, resized to the
           crop size: BG (background, lighting, shadows and colour temperature need the scene)
  native   a crop-size patch at the frame's own resolution (no resampling), centred on the
           face, its origin on the frame's 8-px grid: CM (the codec's 8x8 DCT blocks survive)

All views come from the same decode and the same face boxes (common/faces/extraction.py), and are
cached side by side in one entry (common/faces/cache.py), shared by the five models.
MODEL_VIEWS is the one place a model's view is declared.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from common.recipes import CLIP_MODELS

VIEWS = ("face", "context", "native")
MODEL_VIEWS: dict[str, str] = {"bg": "context", "av": "face", "cm": "native", "rr": "face", "tm": "face"}
STORED_VIEWS = tuple(v for v in VIEWS if v in MODEL_VIEWS.values())  # what extraction writes
# Views some clip model reads keep whole runs of clip_len frames; the others only the run's
# centre frame, the one a single-frame model reads (a quarter of the disk of a full run at T 8).
CLIP_VIEWS = tuple(v for v in VIEWS if any(MODEL_VIEWS[m] == v for m in CLIP_MODELS))
CONTEXT_SCALE = 2.5   # context box side / the detected face's longer side (the face box is 1.3x)
GRID = 8              # the codec's block size: a native patch starts on this grid of the frame

Box = tuple[int, int, int, int]


def run_length(view: str, clip_len: int) -> int:
    """Frames per sample point a view stores: clip_len for a clip model's view, else 1."""
    return clip_len if check_view(view) in CLIP_VIEWS else 1


def view_of(model: str | None) -> str:
    """The view a model of this suite is trained and scored on; "face" for anything else
    (external students, whose contract is face crops)."""
    return MODEL_VIEWS.get(str(model), "face")


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} (choose from {', '.join(VIEWS)})")
    return view


def context_box(face_box: Sequence[int], box_scale: float, width: int, height: int) -> Box:
    """Square box CONTEXT_SCALE / box_scale times the face box, same centre, moved (and if it
    must, shrunk) to lie inside the frame: a background model gets scene, not black padding.
    With box_scale 1 (detector "none": the face box is the whole frame) it is the frame's
    largest centred square."""
    x0, y0, x1, y1 = (int(v) for v in face_box[:4])
    grow = CONTEXT_SCALE / box_scale if box_scale > 1.0 else 1.0
    side = int(round((x1 - x0) * grow))
    side = max(2, min(side, width, height))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(cx - side / 2.0))
    top = int(round(cy - side / 2.0))
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return (left, top, left + side, top + side)


def native_box(face_box: Sequence[int], size: int, width: int, height: int) -> Box:
    """size x size patch centred on the face box, its origin snapped to the frame's GRID and
    kept inside the frame where the frame allows (a frame narrower than `size` starts at 0,
    the rest is black). A face smaller than the patch is inside it whole; a larger one gives
    its central patch."""
    x0, y0, x1, y1 = (int(v) for v in face_box[:4])

    def origin(centre: float, extent: int) -> int:
        start = int(round((centre - size / 2.0) / GRID)) * GRID
        last = max(0, (extent - size) // GRID * GRID)  # the last grid origin inside the frame
        return min(max(start, 0), last)

    left = origin((x0 + x1) / 2.0, width)
    top = origin((y0 + y1) / 2.0, height)
    return (left, top, left + size, top + size)


def block_energy(frames: np.ndarray, offset: int, grid: int = GRID) -> float:
    """Mean squared luma step across the columns and rows x with x % grid == offset (the step
    between x - 1 and x), for uint8 or float frames [..., H, W, 3]. A block-coded clip has far
    more of it at the grid's own phase (offset 0 for a patch on the frame's grid) than halfway
    between (offset 4): its blockiness phase."""
    f = np.asarray(frames, dtype=np.float64)
    grey = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    start = (offset - 1) % grid  # the step into column x is diff index x - 1
    dx = np.diff(grey, axis=-1)[..., start::grid]
    dy = np.diff(grey, axis=-2)[..., start::grid, :]
    return float((np.mean(dx ** 2) + np.mean(dy ** 2)) / 2.0)


def blockiness_phase(frames: np.ndarray) -> float:
    """block_energy at offset 0 over that at offset 4: > 1 when the 8x8 grid sits at the
    patch's origin, < 1 when it sits halfway."""
    return block_energy(frames, 0) / max(block_energy(frames, GRID // 2), 1e-12)


def recorded_view(checkpoint: dict) -> str:
    """The view a trained student was validated on: its checkpoint's "faces" record. A
    checkpoint from before views (or an external student) saw face crops."""
    view = (checkpoint.get("faces") or {}).get("view") or "face"
    return check_view(view)
