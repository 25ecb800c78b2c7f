"""Per-stage image preprocessing (CLAHE, bilateral filter) and clip-consistent augmentation.

A clip is augmented with ONE random draw shared by all its frames: a rotation or a flip that
changed from frame to frame would itself look like a temporal artefact to the TM and AV models.
`torchvision.transforms.v2` gives this for free: applied to a [T, 3, H, W] tensor, each random
transform samples its parameters once and applies them across the leading (time) dimension.
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


def _augmentations(level: str) -> list:
    """The random transforms of one augmentation level (see the stage table in the README)."""
    if level == "none":
        return []
    if level == "minimal":  # stage 1: rotation 5 deg, colour jitter 0.1
        rotate, jitter = 5, 0.1
    elif level == "moderate":  # stage 2: rotation 10 deg, colour jitter 0.2
        rotate, jitter = 10, 0.2
    else:  # maximum, stage 4: rotation 20 deg, perspective, blur
        rotate, jitter = 20, 0.2
    # Hue is left alone: skin hue is evidence, and hue shifts are the slowest op on the CPU.
    ops = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(degrees=rotate),
        v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
    ]
    if level == "maximum":
        ops += [
            v2.RandomPerspective(distortion_scale=0.2, p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=0.3),
        ]
    return ops


class ClipTransform:
    """uint8 numpy [T, H, W, 3] RGB -> float32 Tensor [T, 3, S, S], ImageNet-normalised.

    Order: stage preprocessing (deterministic) -> resize to S if needed -> augmentation (train
    only, one draw per clip) -> scale to [0, 1] -> normalise.
    """

    def __init__(self, augmentation: str = "none", image_size: int = 224, train: bool = False,
                 preprocessing: str = "none") -> None:
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
        self.augment = v2.Compose(_augmentations(augmentation)) if train and augmentation != "none" else None
        self.finish = v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ])

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        frames = apply_preprocessing(frames, self.preprocessing)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = v2.functional.resize(x, [self.image_size, self.image_size], antialias=True)
        if self.augment is not None:
            x = self.augment(x)
        return self.finish(x).contiguous()

    def __repr__(self) -> str:
        return (f"ClipTransform(augmentation={self.augmentation!r}, image_size={self.image_size}, "
                f"train={self.train}, preprocessing={self.preprocessing!r})")
