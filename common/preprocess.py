"""Per-stage image preprocessing (CLAHE, bilateral filter), resizing and ImageNet normalisation.

Everything here is deterministic. The random stage augmentation runs batched on the training
device, after the DataLoader: common.training.augment.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from common.errors import UserError
from common.recipes import DEFAULTS, PREPROCESSING

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PREPROCESSING_MODES = ("none", "clahe", "clahe_bilateral")


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {got}")


def clahe(img: np.ndarray, clip_limit: float = PREPROCESSING.clahe_clip_limit,
          tile: int = PREPROCESSING.clahe_tile) -> np.ndarray:
    """Contrast-limited histogram equalisation of the lightness (L of LAB) of an RGB image.

    Equalising only L raises local contrast without shifting the colours.
    """
    _check_image(img)
    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile, tile))  # not picklable: per call
    lab[:, :, 0] = op.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def bilateral(img: np.ndarray, d: int = PREPROCESSING.bilateral_diameter,
              sigma_color: float = PREPROCESSING.bilateral_sigma_color,
              sigma_space: float = PREPROCESSING.bilateral_sigma_space) -> np.ndarray:
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


def normalize_pixels(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 (uint8 or float) [..., 3, H, W] -> ImageNet-normalised float32,
    in one fused pass."""
    return torch.addcmul(shift, x.float(), scale)


def normalisation_constants(device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x * scale + shift == (x / 255 - mean) / std, shaped [3, 1, 1]."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=device).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=device).view(3, 1, 1)
    return scale, shift


class ClipTransform:
    """uint8 numpy [T, H, W, 3] RGB -> float32 Tensor [T, 3, S, S], ImageNet-normalised.

    Order: stage preprocessing (deterministic) -> resize to S if needed -> scale to [0, 1]
    -> normalise. With `normalize=False` the result stays uint8 [T, 3, S, S] (a channels-last
    view of the crops): a quarter of the bytes through the DataLoader, and the model (or
    common.training.augment, in training) normalises on its own device (StudentModel.forward accepts both).
    """

    def __init__(self, image_size: int = DEFAULTS.image_size, preprocessing: str = "none",
                 normalize: bool = True) -> None:
        if preprocessing not in PREPROCESSING_MODES:
            raise UserError(
                f"unknown preprocessing {preprocessing!r}; expected one of {', '.join(PREPROCESSING_MODES)}")
        if image_size < 8:
            raise UserError(f"image size {image_size} is too small (need at least 8 pixels)")
        self.image_size = int(image_size)
        self.preprocessing = preprocessing
        self.normalize = bool(normalize)
        # Scale to [0, 1] and normalise in one pass: x * 1/(255 std) - mean/std.
        self._scale, self._shift = normalisation_constants()

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.ascontiguousarray(apply_preprocessing(frames, self.preprocessing))
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if frames.shape[1:3] != (self.image_size, self.image_size):
            x = v2.functional.resize(x, [self.image_size, self.image_size], antialias=True)
        if not self.normalize:
            # A view in the cache's memory order: common.data.samples.collate_samples stacks it
            # with a plain copy and the training device transposes the channels.
            return x
        return normalize_pixels(x, self._scale, self._shift).contiguous()

    def __repr__(self) -> str:
        return (f"ClipTransform(image_size={self.image_size}, preprocessing={self.preprocessing!r}, "
                f"normalize={self.normalize})")
