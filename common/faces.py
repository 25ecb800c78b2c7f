"""Face detectors, face boxes and crops; `python -m common.faces` pre-extracts a face cache.

Detectors return boxes (x0, y0, x1, y1, score) in full-frame pixel coordinates:
  haar  OpenCV's bundled frontal Haar cascade, run on a downscaled grayscale frame
  yunet cv2.FaceDetectorYN with a user-supplied ONNX model (--face-model)
  none  the whole frame is the face (datasets that are already face crops)

The cache itself (FaceCache, build_face_cache) lives in common/face_cache.py and is
re-exported here, since the contract names this module.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import cv2
import numpy as np

from common.errors import UserError

DETECTORS = ("haar", "yunet", "none")
BOX_SCALE = 1.3  # the crop is this much larger than the detected face, around its centre
Box = tuple[int, int, int, int]

log = logging.getLogger(__name__)


def _downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Frame shrunk so its long side is <= max_side, and the factor used (<= 1)."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / float(max(h, w))) if max_side else 1.0
    if scale < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    return frame, scale


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
    """cv2.FaceDetectorYN (YuNet); needs the ONNX model file, e.g.
    face_detection_yunet_2023mar.onnx from the OpenCV model zoo."""

    name = "yunet"
    box_scale = BOX_SCALE

    def __init__(self, model_path: str | os.PathLike | None, max_side: int = 640,
                 score_threshold: float = 0.6):
        if not model_path or not os.path.isfile(model_path):
            raise UserError(f"{model_path}: YuNet face model file not found "
                            "(pass --face-model PATH to an ONNX YuNet model)")
        try:
            self._net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320),
                                                  score_threshold, 0.3, 5000)
        except cv2.error as exc:
            msg = " ".join(str(exc).split())[-200:]
            raise UserError(f"{model_path}: not a usable YuNet model ({msg})") from None
        self.max_side = max_side

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        small, scale = _downscale(frame, self.max_side)
        h, w = small.shape[:2]
        self._net.setInputSize((w, h))
        _, faces = self._net.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if faces is None:
            return []
        return [(f[0] / scale, f[1] / scale, (f[0] + f[2]) / scale, (f[1] + f[3]) / scale,
                 float(f[-1])) for f in np.asarray(faces).tolist()]


class NoDetector:
    """For face-cropped datasets: the whole frame is the face (box not enlarged)."""

    name = "none"
    box_scale = 1.0
    takes_gray = True

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        h, w = frame.shape[:2]
        return [(0.0, 0.0, float(w), float(h), 1.0)]


def make_detector(name: str, model_path: str | os.PathLike | None = None,
                  max_side: int = 640):
    """Detector by name: "haar", "yunet" (needs model_path) or "none"."""
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


def fill_missing(boxes: Sequence[Box | None]) -> list[Box] | None:
    """Replace each None by the nearest found box in time (the earlier one on a tie);
    None when no box was found at all."""
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return None
    return [boxes[i] if boxes[i] is not None else boxes[min(found, key=lambda j: abs(j - i))]
            for i in range(len(boxes))]


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


def __getattr__(name: str):
    # Lazy re-export: face_cache imports this module, so a top-level import would be circular.
    if name in ("FaceCache", "build_face_cache", "cache_key", "video_key", "shard_of"):
        from common import face_cache
        return getattr(face_cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_summary(summary: dict, cache) -> str:
    """The CLI's report of a build_face_cache summary."""
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"
    lines = [f"{cache.dir}: {summary['done']} extracted ({summary['reused_boxes']} with boxes "
             f"of their source), {summary['cached']} already cached, skipped: {skipped}, "
             f"failed: {len(summary['failed'])}, {summary['seconds']:.1f} s "
             f"(shard {summary['shard'][0]}/{summary['shard'][1]})"]
    lines += [f"  failed {rel}: {why}" for rel, why in summary["failed"]]
    return "\n".join(lines)


def _parse_shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    try:
        i, n = int(parts[0]), int(parts[1])
        if len(parts) != 2 or n < 1 or not 0 <= i < n:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None
    return i, n


def _preprocessing(choice: str, dataset: str) -> str:
    """The cache's preprocessing: the one the dataset's training stage reads, unless told."""
    if choice != "stage":
        return choice
    from common.recipes import RECIPES

    return next(r.preprocessing for r in RECIPES.values() if r.dataset == dataset)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.faces",
        description="Detect, crop and cache the faces (and log-mel audio) of a dataset.")
    parser.add_argument("--dataset", required=True, choices=("faceforensics", "celebdf", "dfdc"))
    parser.add_argument("--data", required=True, help="dataset root, official layout")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--face-detector", default="haar", choices=DETECTORS)
    parser.add_argument("--face-model", default=None, help="ONNX model for --face-detector yunet")
    parser.add_argument("--detect-max-side", type=int, default=640,
                        help="detect on frames downscaled to this long side")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (0 = in this process)")
    parser.add_argument("--shard", default="0/1",
                        help="I/N: this machine extracts shard I of N (videos split by source)")
    parser.add_argument("--preprocessing", choices=("stage", "none", "clahe", "clahe_bilateral"),
                        default="stage", help="stored with the crops; 'stage' = what the dataset's "
                        "training stage uses (FF++ none, Celeb-DF clahe, DFDC clahe_bilateral)")
    parser.add_argument("--no-audio", action="store_true", help="skip the log-mel extraction")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from common import face_cache
    from common.datasets import index_dataset

    try:
        shard = _parse_shard(args.shard)
        for flag, value in (("--image-size", args.image_size), ("--clip-len", args.clip_len),
                            ("--frames-per-video", args.frames_per_video)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if args.face_detector == "yunet":
            make_detector("yunet", args.face_model)  # fail on a bad model before indexing
        records = index_dataset(args.dataset, args.data)
        cache = face_cache.FaceCache(args.cache_dir, args.dataset, args.image_size,
                                     args.frames_per_video, args.clip_len, args.face_detector,
                                     _preprocessing(args.preprocessing, args.dataset))
        summary = face_cache.build_face_cache(
            records, cache, workers=args.workers, shard=shard, decode_audio=not args.no_audio,
            progress=not args.no_progress, face_model=args.face_model,
            detect_max_side=args.detect_max_side)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary, cache))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
