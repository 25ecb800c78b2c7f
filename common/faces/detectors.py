"""Face detectors, face boxes and crops.

Detectors return boxes (x0, y0, x1, y1, score) in full-frame pixel coordinates:
  yunet cv2.FaceDetectorYN (OpenCV's CNN detector, the default); its ONNX model comes from
        --face-model, else the per-user model cache, else a one-time verified download
  haar  OpenCV's bundled frontal Haar cascade (an explicit choice only: it misses profile
        faces and small or textured scenes that YuNet finds)
  none  the whole frame is the face (datasets that are already face crops)

Extraction (sampling, the CLI) lives in common/faces/extraction.py (its worker pool in
common/faces/pool.py) and the cache format in common/faces/cache.py; both are re-exported here,
since the contract names this module.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from common.errors import UserError
from common.recipes import DEFAULTS

DETECTORS = ("yunet", "haar", "none")
BOX_SCALE = 1.3  # the crop is this much larger than the detected face, around its centre
YUNET_SCORE = 0.6  # YuNet's confidence threshold
# YuNet looks at COARSE_SIDE first (a quarter of the pixels of max_side 640) and stops there
# when the largest face's shorter side is at least MIN_COARSE_FACE px at that scale: on the
# FF++ reals such boxes overlap the 640 ones at IoU 0.92 on average (min 0.82), as much as
# the detector's own boxes on consecutive sample points do. Smaller faces: max_side. Once a
# video has shown a face, its next first pass is at the side where that face would be
# FIRST_MARGIN x MIN_COARSE_FACE (YuNetDetector.first_side): one pass, not two, for mid-sized
# faces (the margin, and the 32-px steps of side, absorb the box's jitter between points).
COARSE_SIDE = 320
MIN_COARSE_FACE = 32
FIRST_MARGIN = 1.1
Box = tuple[int, int, int, int]

# The official YuNet release (OpenCV Zoo, MIT licence), fetched once into the model cache.
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             "face_detection_yunet_2023mar.onnx")
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
MODEL_DIR_ENV = "DEEPFAKE_MODEL_DIR"  # overrides the per-user model cache folder

log = logging.getLogger(__name__)


def model_cache_dir() -> Path:
    """Per-user folder of downloaded models: $DEEPFAKE_MODEL_DIR, else
    $XDG_CACHE_HOME/deepfake-suite/models (~/.cache/deepfake-suite/models)."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepfake-suite" / "models"


def _download_yunet(target: Path) -> None:
    """Fetch the official file, check its sha256, rename it into place (atomic: a killed or
    concurrent download never leaves a half file under the final name)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
    try:
        with urllib.request.urlopen(YUNET_URL, timeout=60) as resp, open(tmp, "wb") as f:
            data = resp.read()
            f.write(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != YUNET_SHA256:
            raise UserError(f"{YUNET_URL}: downloaded file has sha256 {digest}, expected "
                            f"{YUNET_SHA256}; not used")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_yunet_model(face_model: str | os.PathLike | None = None,
                        download: bool = True) -> Path:
    """The YuNet model file: --face-model, else the per-user cache, else a one-time download.
    UserError (exit 2) with what to do when none of them gives a file."""
    if face_model not in (None, "", "None"):
        path = Path(face_model).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: YuNet face model file not found (--face-model)")
        return path
    cached = model_cache_dir() / YUNET_FILE
    if cached.is_file():
        return cached
    if download:
        try:
            log.info("downloading the YuNet face model once into %s", cached)
            _download_yunet(cached)
            return cached
        except UserError:
            raise
        except Exception as exc:  # offline, proxy, DNS, read-only cache: one line below
            log.debug("YuNet download failed: %s", exc)
    raise UserError(f"YuNet face model {YUNET_FILE} not found and could not be downloaded; put it "
                    f"at {cached} (from {YUNET_URL}, or set {MODEL_DIR_ENV} to its folder), or pass "
                    f"--face-model PATH, or use --face-detector haar")


def _downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Frame shrunk so its long side is <= max_side, and the factor used (<= 1)."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / float(max(h, w))) if max_side else 1.0
    if scale < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    return frame, scale


def detect_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    """(w, h, scale) of a frame shrunk so its long side is <= max_side."""
    scale = min(1.0, max_side / float(max(width, height))) if max_side else 1.0
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


class HaarDetector:
    """OpenCV's frontal-face Haar cascade; no model file to download."""

    name = "haar"
    box_scale = BOX_SCALE
    takes_gray = True  # detect() also accepts an HxW grayscale frame (a video's luma plane)

    def __init__(self, max_side: int = 640, min_neighbors: int = 5, min_size: int = 20):
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise UserError(f"{path}: OpenCV's Haar cascade could not be loaded "
                            "(install opencv-python-headless < 5)")
        self.max_side, self.min_neighbors, self.min_size = max_side, min_neighbors, min_size

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        small, scale = _downscale(frame, self.max_side)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        gray = cv2.equalizeHist(small)
        rects = self._cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size))
        return [(x / scale, y / scale, (x + w) / scale, (y + h) / scale, float(w * h))
                for (x, y, w, h) in np.asarray(rects).reshape(-1, 4).tolist()]


class YuNetDetector:
    """cv2.FaceDetectorYN (YuNet) on a frame downscaled to coarse_side, then, unless the face
    is large enough there, to max_side (find)."""

    name = "yunet"
    box_scale = BOX_SCALE
    takes_bgr_small = True  # find() takes BGR frames already downscaled by the decoder

    def __init__(self, model_path: str | os.PathLike | None = None, max_side: int = 640,
                 score_threshold: float = YUNET_SCORE, coarse_side: int = COARSE_SIDE):
        path = resolve_yunet_model(model_path)
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320),
                                                  score_threshold, 0.3, 5000)
        except cv2.error as exc:
            msg = " ".join(str(exc).split())[-200:]
            raise UserError(f"{path}: not a usable YuNet model ({msg})") from None
        self.model_path, self.max_side, self.score_threshold = str(path), max_side, score_threshold
        self.coarse_side = coarse_side if coarse_side and (not max_side or coarse_side < max_side) else None
        self._size = (0, 0)

    def first_side(self, long_side: int, face_px: float | None) -> int | None:
        """The coarse pass's long side: coarse_side, or, once a face of face_px (its shorter
        side, frame px) is known in this video, the side at which that face would be
        FIRST_MARGIN x MIN_COARSE_FACE (a multiple of 32, at most max_side: one pass)."""
        if not self.coarse_side or not face_px:
            return self.coarse_side
        side = -(-int(FIRST_MARGIN * MIN_COARSE_FACE * long_side / face_px) // 32) * 32
        side = max(side, self.coarse_side)
        return min(side, self.max_side) if self.max_side else side

    def find(self, shrink: Callable[[int], tuple[np.ndarray, float]],
             first: int | None = None) -> list[tuple[float, ...]]:
        """Faces, coarse to fine. shrink(side) gives the frame in BGR with its long side <=
        side (0: full size) and the scale used; `first` (default coarse_side) is tried
        first, and kept when its largest face is MIN_COARSE_FACE px or more there (or the
        frame is no larger); else max_side."""
        first = first or self.coarse_side
        dets: list = []
        for side in ((first, self.max_side) if first and first != self.max_side else (self.max_side,)):
            bgr, scale = shrink(side)
            dets = self.detect_small(bgr, scale)
            face = largest_face(dets)
            if scale >= 1.0 or (face is not None and
                                min(face[2] - face[0], face[3] - face[1]) * scale >= MIN_COARSE_FACE):
                break
        return dets

    def detect_small(self, bgr: np.ndarray, scale: float) -> list[tuple[float, float, float, float, float]]:
        """Faces in a BGR frame that was shrunk by `scale`, in full-frame coordinates."""
        h, w = bgr.shape[:2]
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, faces = self._net.detect(bgr)
        if faces is None:
            return []
        return [(f[0] / scale, f[1] / scale, (f[0] + f[2]) / scale, (f[1] + f[3]) / scale,
                 float(f[-1])) for f in np.asarray(faces).tolist()]

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        """Faces in an RGB frame (any size), coarse to fine (find)."""
        def shrink(side: int) -> tuple[np.ndarray, float]:
            small, scale = _downscale(frame, side)
            return cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR), scale

        return self.find(shrink)


class NoDetector:
    """For face-cropped datasets: the whole frame is the face (box not enlarged)."""

    name = "none"
    box_scale = 1.0
    takes_gray = True

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        h, w = frame.shape[:2]
        return [(0.0, 0.0, float(w), float(h), 1.0)]


def make_detector(name: str = DEFAULTS.face_detector, model_path: str | os.PathLike | None = None,
                  max_side: int = 640):
    """Detector by name: "yunet" (model resolved by resolve_yunet_model), "haar" or "none"."""
    if name == "haar":
        return HaarDetector(max_side=max_side)
    if name == "yunet":
        return YuNetDetector(model_path, max_side=max_side)
    if name == "none":
        return NoDetector()
    raise UserError(f"unknown face detector {name!r} (choose from {', '.join(DETECTORS)})")


def largest_face(dets: Sequence[Sequence[float]]) -> tuple[float, float, float, float] | None:
    """The detection with the largest area (the subject, not a face in the background)."""
    if not len(dets):
        return None
    best = max(dets, key=lambda d: (d[2] - d[0]) * (d[3] - d[1]))
    return tuple(float(v) for v in best[:4])  # type: ignore[return-value]


def square_box(face: Sequence[float], scale: float = BOX_SCALE) -> Box:
    """Square box `scale` times the face's longer side, same centre; may leave the frame."""
    x0, y0, x1, y1 = face[:4]
    side = max(2, int(round(max(x1 - x0, y1 - y0) * scale)))
    left = int(round((x0 + x1) / 2.0 - side / 2.0))
    top = int(round((y0 + y1) / 2.0 - side / 2.0))
    return (left, top, left + side, top + side)


def face_box(frame: np.ndarray, detector) -> Box | None:
    """Crop box of the largest face in the frame, or None when no face is found."""
    face = largest_face(detector.detect(frame))
    return None if face is None else square_box(face, detector.box_scale)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fill_near(boxes: Sequence[Box | None], times_s: Sequence[float],
              max_gap_s: float = 0.5) -> list[Box | None]:
    """Each None replaced by the box found nearest in time, when it is at most max_gap_s
    away (the earlier one on a tie); farther than that it stays None: no face, no crop."""
    found = [i for i, b in enumerate(boxes) if b is not None]
    out: list[Box | None] = list(boxes)
    for i, b in enumerate(boxes):
        if b is None and found:
            j = min(found, key=lambda k: (abs(times_s[k] - times_s[i]), k))
            if abs(times_s[j] - times_s[i]) <= max_gap_s + 1e-9:
                out[i] = boxes[j]
    return out


def is_flat(crop: np.ndarray, min_std: float = 4.0) -> bool:
    """A crop with (almost) no texture: a uniform patch is not a face, whatever a detector says."""
    return float(np.asarray(crop, dtype=np.float32).std()) < min_std


def crop_box(frame: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """size x size crop of box. The parts of the box outside the frame are black (zero
    padding rather than shifting the box inside: the face stays centred and at the same
    scale in every crop, whatever its position in the frame)."""
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    h, w = frame.shape[:2]
    canvas = np.zeros((y1 - y0, x1 - x0, frame.shape[2]), dtype=frame.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    if canvas.shape[0] == size and canvas.shape[1] == size:
        return canvas
    # INTER_AREA averages when shrinking (no aliasing); it is bilinear-like when enlarging.
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
