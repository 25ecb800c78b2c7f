"""CLAHE, bilateral filter and clip-consistent stage augmentation."""
import numpy as np
import pytest
import torch

from common.errors import UserError
from common.preprocess import (IMAGENET_MEAN, IMAGENET_STD, ClipTransform, apply_preprocessing, bilateral,
                               clahe)


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


def test_eval_transform_resizes_normalises_and_is_deterministic():
    frames = np.full((4, 80, 80, 3), 128, np.uint8)
    tf = ClipTransform("maximum", image_size=64, train=False, preprocessing="none")
    out = tf(frames)
    assert out.shape == (4, 3, 64, 64) and out.dtype == torch.float32
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.tensor(expected), atol=1e-4)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    tf = ClipTransform("maximum", image_size=64, train=False, preprocessing="clahe_bilateral")
    assert torch.equal(tf(noisy), tf(noisy))


@pytest.mark.parametrize("level", ["minimal", "moderate", "maximum"])
def test_train_augmentation_is_one_draw_per_clip(level):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 48, 48, 3), dtype=np.uint8)
    frame[:, 10:30, 5:20] = 250  # an off-centre bright patch makes flips and rotations visible
    clip = np.repeat(frame, 4, axis=0)
    train = ClipTransform(level, image_size=48, train=True)
    plain = ClipTransform("none", image_size=48, train=False)(clip)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out = train(clip)
        assert out.shape == (4, 3, 48, 48)
        assert torch.equal(out, out[:1].expand_as(out)), "frames of one clip were augmented differently"
        changed += not torch.allclose(out, plain, atol=1e-3)
    assert changed >= 4


def test_frames_share_the_draw_whatever_their_content():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 1, 48, 48, 3), dtype=np.uint8)
    tf = ClipTransform("maximum", image_size=48, train=True)
    for seed in range(3):
        torch.manual_seed(seed)
        first = tf(np.concatenate([a, b]))
        torch.manual_seed(seed)
        second = tf(np.concatenate([a, a]))
        assert torch.equal(first[0], second[0])
        assert torch.equal(second[0], second[1])


def test_transform_rejects_unknown_settings():
    with pytest.raises(UserError, match="extreme"):
        ClipTransform("extreme", 64, True, "none")
    with pytest.raises(UserError, match="gamma"):
        ClipTransform("none", 64, True, "gamma")
