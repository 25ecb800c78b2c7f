"""CLAHE, bilateral filter, resizing and normalisation (the augmentation: test_augment.py)."""
import numpy as np
import pytest
import torch

from common.errors import UserError
from common.preprocess import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, apply_preprocessing, bilateral, clahe


def low_contrast(h=64, w=64):
    """A dull grey texture: all values within a few levels of 128."""
    rng = np.random.default_rng(0)
    gray = 128 + rng.normal(0, 4, (h, w))
    return np.repeat(np.clip(gray, 0, 255)[:, :, None], 3, axis=2).astype(np.uint8)


def test_clahe_raises_contrast_and_keeps_format():
    img = low_contrast()
    out = clahe(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out.astype(float).std() > 2 * img.astype(float).std()
    assert np.abs(out[..., 0].astype(int) - out[..., 2]).max() <= 2  # grey stays grey: only L changes
    with pytest.raises(ValueError):
        clahe(img.astype(np.float32))


def test_bilateral_smooths_noise_but_keeps_edges():
    rng = np.random.default_rng(0)
    flat = np.clip(128 + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
    out = bilateral(flat)
    assert out.dtype == np.uint8 and out.shape == flat.shape
    assert out.astype(float).std() < 0.7 * flat.astype(float).std()

    step = np.zeros((64, 64, 3), np.float32)
    step[:, 32:] = 200
    step = np.clip(step + 20 + rng.normal(0, 4, step.shape), 0, 255).astype(np.uint8)
    sharp = bilateral(step).astype(float)
    # Right at the edge the two sides keep (almost) their full 200-level difference.
    assert (sharp[:, 32] - sharp[:, 31]).mean() > 180


def test_apply_preprocessing_modes():
    rng = np.random.default_rng(0)
    frames = rng.integers(90, 160, (3, 32, 32, 3), dtype=np.uint8)
    assert apply_preprocessing(frames, "none") is frames
    for mode in ("clahe", "clahe_bilateral"):
        out = apply_preprocessing(frames, mode)
        assert out.shape == frames.shape and out.dtype == np.uint8
        assert np.array_equal(out[1], clahe(frames[1]) if mode == "clahe" else bilateral(clahe(frames[1])))
    with pytest.raises(UserError, match="sharpen"):
        apply_preprocessing(frames, "sharpen")


def test_transform_resizes_normalises_and_is_deterministic():
    frames = np.full((4, 80, 80, 3), 128, np.uint8)
    tf = ClipTransform(image_size=64, preprocessing="none")
    out = tf(frames)
    assert out.shape == (4, 3, 64, 64) and out.dtype == torch.float32
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.tensor(expected), atol=1e-4)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    tf = ClipTransform(image_size=64, preprocessing="clahe_bilateral")
    assert torch.equal(tf(noisy), tf(noisy))


def test_uint8_output_is_the_crops_channel_first():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = ClipTransform(image_size=16, normalize=False)(frames)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 16, 16)
    assert torch.equal(out, torch.from_numpy(frames).permute(0, 3, 1, 2))
    smaller = ClipTransform(image_size=8, normalize=False)(frames)
    assert smaller.dtype == torch.uint8 and smaller.shape == (2, 3, 8, 8)


def test_transform_rejects_unknown_settings():
    with pytest.raises(UserError, match="gamma"):
        ClipTransform(64, "gamma")
    with pytest.raises(UserError, match="too small"):
        ClipTransform(4)
