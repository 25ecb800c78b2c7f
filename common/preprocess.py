"""Per-stage image preprocessing (CLAHE, bilateral filter) and clip-consistent augmentation.

A clip is augmented with ONE random draw shared by all its frames: a rotation or a flip that
changed from frame to frame would itself look like a temporal artefact to the TM and AV models.
ClipAugment draws the parameters once (from torch's generator) and applies them to every frame
with OpenCV on uint8: in the DataLoader workers this is the per-sample cost that decides how
many workers a GPU needs (see README, "Performance").
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from common.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PREPROCESSING_MODES = ("none", "clahe", "clahe_bilateral")
AUGMENTATIONS = ("none", "minimal", "moderate", "maximum")


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {got}")


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile: int = 8) -> np.ndarray:
    """Contrast-limited histogram equalisation of the lightness (L of LAB) of an RGB image.

    Equalising only L raises local contrast without shifting the colours.
    """
    _check_image(img)
    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile, tile))  # not picklable: per call
    lab[:, :, 0] = op.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def bilateral(img: np.ndarray, d: int = 5, sigma_color: float = 50.0, sigma_space: float = 50.0) -> np.ndarray:
    """Edge-preserving smoothing: removes sensor/compression noise but keeps face contours."""
    _check_image(img)
    return cv2.bilateralFilter(np.ascontiguousarray(img), d, sigma_color, sigma_space)


def apply_preprocessing(frames: np.ndarray, mode: str) -> np.ndarray:
    """Apply a stage's preprocessing to every frame of uint8 [T, H, W, 3]; same shape and dtype."""
    if mode not in PREPROCESSING_MODES:
        raise UserError(f"unknown preprocessing {mode!r}; expected one of {', '.join(PREPROCESSING_MODES)}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if mode == "none":
        return frames
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        f = clahe(frame)
        out[i] = bilateral(f) if mode == "clahe_bilateral" else f
    return out


# Per level: max rotation (deg), colour jitter, perspective distortion, P(perspective), P(blur).
# Hue is left alone: skin hue is evidence.
_LEVELS = {
    "minimal": (5.0, 0.1, 0.0, 0.0, 0.0),    # stage 1: rotation 5 deg, colour jitter 0.1
    "moderate": (10.0, 0.2, 0.0, 0.0, 0.0),  # stage 2: rotation 10 deg, colour jitter 0.2
    "maximum": (20.0, 0.2, 0.2, 0.5, 0.3),   # stage 4: rotation 20 deg, perspective, blur
}


class ClipAugment:
    """The random transforms of one augmentation level: ONE draw per clip, applied to every
    frame of uint8 [T, H, W, 3]. Each clip gets a horizontal flip (p 0.5), a rotation, colour
    jitter (brightness, contrast, saturation, in random order) and, at "maximum", a
    perspective distortion (p 0.5) and a Gaussian blur (p 0.3).

    Draws come from torch's generator, so torch.manual_seed fixes them (FaceSamples seeds
    each item). All of it runs in OpenCV on uint8: flip, rotation and perspective are one
    homography and one warp per frame (one interpolation, not three), the jitter is lookup
    tables and one blend; about 20x cheaper than torchvision's tensor ops on the CPU, which
    decides how many loader workers a GPU needs.
    """

    def __init__(self, level: str) -> None:
        self.level = level
        self.rotate, self.jitter, self.distortion, self.p_perspective, self.p_blur = _LEVELS[level]

    def draw(self, h: int, w: int) -> dict:
        u = torch.rand(19).tolist()  # one call: a sample's draw costs microseconds, not a millisecond
        flip = u[0] < 0.5
        angle = self.rotate * (2.0 * u[1] - 1.0)
        lo = max(0.0, 1.0 - self.jitter)
        factors = [lo + (1.0 + self.jitter - lo) * v for v in u[2:5]]
        order = sorted(range(3), key=lambda k: u[5 + k])  # brightness, contrast, saturation
        ends = None
        if self.distortion and u[8] < self.p_perspective:
            # Each corner moves inwards by up to `distortion` of the half side (torchvision's draw).
            bw, bh = int(self.distortion * (w // 2)) + 1, int(self.distortion * (h // 2)) + 1
            dx = [int(v * bw) for v in u[9:13]]
            dy = [int(v * bh) for v in u[13:17]]
            ends = [[dx[0], dy[0]], [w - 1 - dx[1], dy[1]], [w - 1 - dx[2], h - 1 - dy[2]],
                    [dx[3], h - 1 - dy[3]]]
        sigma = 0.1 + 1.9 * u[18] if self.p_blur and u[17] < self.p_blur else None
        # Source -> destination homography: flip, then rotate about the centre, then perspective.
        m = np.eye(3)
        if flip:
            m = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        rot = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0), [0, 0, 1]])
        m = rot @ m
        if ends is not None:
            starts = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
            m = cv2.getPerspectiveTransform(np.float32(starts), np.float32(ends)) @ m
        return {"homography": m, "factors": factors, "order": order, "sigma": sigma}

    @staticmethod
    def _jitter(img: np.ndarray, factors: list[float], order: list[int]) -> np.ndarray:
        ramp = np.arange(256, dtype=np.float32)
        for k in order:
            f = factors[k]
            if k == 0:  # brightness: scale towards black
                lut = ramp * f
            elif k == 1:  # contrast: blend with the mean grey level of the image
                mean = float(np.dot(cv2.mean(img)[:3], (0.299, 0.587, 0.114)))
                lut = ramp * f + (1.0 - f) * mean
            else:  # saturation: blend with the image's own greyscale
                grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                img = cv2.addWeighted(img, f, grey, 1.0 - f, 0.0)
                continue
            img = cv2.LUT(img, np.clip(np.rint(lut), 0, 255).astype(np.uint8))
        return img

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        t, h, w = frames.shape[:3]
        p = self.draw(h, w)
        out = np.empty_like(frames)
        for i in range(t):
            img = self._jitter(np.ascontiguousarray(frames[i]), p["factors"], p["order"])
            img = cv2.warpPerspective(img, p["homography"], (w, h), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
            if p["sigma"] is not None:
                img = cv2.GaussianBlur(img, (5, 5), p["sigma"])
            out[i] = img
        return out


def normalize_uint8(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> ImageNet-normalised float32, in one fused pass."""
    return torch.addcmul(shift, x.float(), scale)


def normalisation_constants(device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x * scale + shift == (x / 255 - mean) / std, shaped [3, 1, 1]."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=device).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=device).view(3, 1, 1)
    return scale, shift


class ClipTransform:
    """uint8 numpy [T, H, W, 3] RGB -> float32 Tensor [T, 3, S, S], ImageNet-normalised.

    Order: stage preprocessing (deterministic) -> resize to S if needed -> augmentation (train
    only, one draw per clip) -> scale to [0, 1] -> normalise. With `normalize=False` the
    result stays uint8 [T, 3, S, S]: a quarter of the bytes through the DataLoader, and the
    model normalises on its own device (StudentModel.forward accepts both).
    """

    def __init__(self, augmentation: str = "none", image_size: int = 224, train: bool = False,
                 preprocessing: str = "none", normalize: bool = True) -> None:
        if augmentation not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {augmentation!r}; expected one of {', '.join(AUGMENTATIONS)}")
        if preprocessing not in PREPROCESSING_MODES:
            raise UserError(
                f"unknown preprocessing {preprocessing!r}; expected one of {', '.join(PREPROCESSING_MODES)}")
        if image_size < 8:
            raise UserError(f"image size {image_size} is too small (need at least 8 pixels)")
        self.augmentation = augmentation
        self.image_size = int(image_size)
        self.train = bool(train)
        self.preprocessing = preprocessing
        self.normalize = bool(normalize)
        self.augment = ClipAugment(augmentation) if train and augmentation != "none" else None
        # Scale to [0, 1] and normalise in one pass: x * 1/(255 std) - mean/std.
        self._scale, self._shift = normalisation_constants()

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.ascontiguousarray(apply_preprocessing(frames, self.preprocessing))
        if frames.shape[1:3] != (self.image_size, self.image_size):
            x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
            x = v2.functional.resize(x, [self.image_size, self.image_size], antialias=True)
            frames = x.permute(0, 2, 3, 1).contiguous().numpy()
        if self.augment is not None:
            frames = self.augment(frames)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        if not self.normalize:
            return x
        return normalize_uint8(x, self._scale, self._shift)

    def __repr__(self) -> str:
        return (f"ClipTransform(augmentation={self.augmentation!r}, image_size={self.image_size}, "
                f"train={self.train}, preprocessing={self.preprocessing!r})")
