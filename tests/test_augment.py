"""Stage augmentation on the training device: the recipe's ranges, one draw per clip, and
pixels that match OpenCV's reference operations."""
import cv2
import numpy as np
import pytest
import torch

from common.preprocess import normalisation_constants, normalize_pixels
from common.recipes import AUGMENTATION_LEVELS, RECIPES
from common.training.augment import ClipAugmenter, ClipDraw, augmenter_for

LEVELS = ("minimal", "moderate", "maximum")
N = 4000  # draws per level: frequencies within a few points of their probability


def plain(frames: torch.Tensor) -> torch.Tensor:
    return normalize_pixels(frames, *normalisation_constants())


def pixels(normalised: torch.Tensor) -> torch.Tensor:
    """Back from ImageNet-normalised to 0..255."""
    scale, shift = normalisation_constants()
    return (normalised - shift) / scale


def still(b: int, **changes) -> ClipDraw:
    """A draw that changes nothing, with `changes` applied (tensors of b rows)."""
    d = ClipDraw(flip=torch.zeros(b, dtype=torch.bool), angle=torch.zeros(b, dtype=torch.float64),
                 factors=torch.ones(b, 3, dtype=torch.float64), order=torch.arange(3).repeat(b, 1),
                 corners=torch.zeros(b, 4, 2, dtype=torch.float64), sigma=torch.zeros(b, dtype=torch.float64))
    for k, v in changes.items():
        setattr(d, k, v)
    return d


def test_levels_are_the_recipe_table():
    assert [RECIPES[s].augmentation for s in RECIPES] == list(LEVELS)
    got = {name: (lv.rotation_deg, lv.jitter, lv.p_flip, lv.perspective > 0, lv.p_blur > 0)
           for name, lv in AUGMENTATION_LEVELS.items() if name != "none"}
    assert got == {"minimal": (5.0, 0.1, 0.5, False, False), "moderate": (10.0, 0.2, 0.5, False, False),
                   "maximum": (20.0, 0.2, 0.5, True, True)}
    assert RECIPES["stage4_dfdc"].augment_level is AUGMENTATION_LEVELS["maximum"]
    assert augmenter_for("none") is None


@pytest.mark.parametrize("level", LEVELS)
def test_draws_fall_in_the_recipe_ranges(level):
    lv = AUGMENTATION_LEVELS[level]
    d = ClipAugmenter(level).draw(torch.arange(N) * 7919 + 13)
    assert len(d) == N and d.angle.shape == (N,) and d.factors.shape == (N, 3)  # one row per clip
    assert d.angle.abs().max() <= lv.rotation_deg and d.angle.abs().max() > 0.95 * lv.rotation_deg
    assert (d.angle > 0).float().mean() == pytest.approx(0.5, abs=0.04)
    assert d.factors.min() >= 1 - lv.jitter and d.factors.max() <= 1 + lv.jitter
    assert d.factors.min() < 1 - 0.9 * lv.jitter and d.factors.max() > 1 + 0.9 * lv.jitter
    assert (torch.sort(d.order, dim=1).values == torch.arange(3)).all()  # each a permutation
    assert len({tuple(r) for r in d.order.tolist()}) == 6
    assert d.flip.float().mean() == pytest.approx(lv.p_flip, abs=0.04)
    moved = (d.corners != 0).any(dim=2).any(dim=1)
    assert moved.float().mean() == pytest.approx(lv.p_perspective, abs=0.04)
    assert d.corners.min() >= 0 and d.corners.max() <= lv.perspective
    blurred = d.sigma > 0
    assert blurred.float().mean() == pytest.approx(lv.p_blur, abs=0.04)
    if lv.p_blur:
        lo, hi = lv.blur_sigma
        assert d.sigma[blurred].min() >= lo and d.sigma[blurred].max() <= hi


def test_a_draw_is_a_function_of_its_seed_alone():
    aug = ClipAugmenter("maximum")
    batch = aug.draw(torch.tensor([5, 6, 7]))
    alone = aug.draw(torch.tensor([6]))
    for field in ("flip", "angle", "factors", "order", "corners", "sigma"):
        assert torch.equal(getattr(batch, field)[1:2], getattr(alone, field)), field
    again = aug.draw(torch.tensor([5, 6, 7]))
    assert torch.equal(batch.angle, again.angle)
    assert len(set(aug.draw(torch.arange(50)).angle.tolist())) == 50


@pytest.mark.parametrize("level", LEVELS)
def test_all_frames_of_a_clip_share_one_draw(level):
    rng = np.random.default_rng(0)
    clips = torch.from_numpy(rng.integers(0, 256, (6, 4, 3, 24, 28), dtype=np.uint8))
    clips[:, :, :, 4:12, 3:10] = 250  # an off-centre patch makes flips and warps visible
    seeds = torch.arange(6) + 100
    aug = ClipAugmenter(level)
    out = aug(clips, seeds)
    assert out.shape == clips.shape and out.dtype == torch.float32
    # Each frame augmented on its own, as a one-frame clip with its clip's seed: the same pixels.
    for t in range(4):
        assert torch.allclose(out[:, t:t + 1], aug(clips[:, t:t + 1], seeds), atol=1e-4)
    same = clips[:, :1].expand(-1, 4, -1, -1, -1).contiguous()
    got = aug(same, seeds)
    assert torch.allclose(got, got[:, :1].expand_as(got), atol=1e-5)
    changed = [not torch.allclose(got[i], plain(same[i]), atol=1e-3) for i in range(6)]
    assert sum(changed) >= 5


def test_still_draw_and_flip_are_exact():
    rng = np.random.default_rng(1)
    clips = torch.from_numpy(rng.integers(0, 256, (3, 2, 3, 16, 20), dtype=np.uint8))
    aug = ClipAugmenter("maximum")
    assert torch.allclose(aug.apply(clips, still(3)), plain(clips), atol=1e-4)
    flipped = aug.apply(clips, still(3, flip=torch.tensor([True, False, True])))
    assert torch.allclose(flipped[0], plain(clips[0]).flip(-1), atol=1e-4)
    assert torch.allclose(flipped[1], plain(clips[1]), atol=1e-4)


def test_jitter_ops_are_brightness_contrast_saturation():
    rng = np.random.default_rng(2)
    clip = torch.from_numpy(rng.integers(0, 256, (1, 1, 3, 8, 8), dtype=np.uint8))
    x = clip.double()
    aug = ClipAugmenter("moderate")
    grey = (x * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)

    def only(op: int, f: float) -> torch.Tensor:
        factors = torch.ones(1, 3, dtype=torch.float64)
        factors[0, op] = f
        return pixels(aug.apply(clip, still(1, factors=factors))).double()

    assert torch.allclose(only(0, 0.8), x * 0.8, atol=1e-3)                       # towards black
    assert torch.allclose(only(0, 1.2), (x * 1.2).clamp(0, 255), atol=1e-3)      # saturates at white
    assert torch.allclose(only(1, 0.0), grey.mean().expand_as(x), atol=1e-3)      # flat mean grey
    assert torch.allclose(only(2, 0.0), grey.expand_as(x), atol=1e-3)             # greyscale
    # Order matters (clamping), and each clip's order is the one used.
    a = pixels(aug.apply(clip, still(1, factors=torch.tensor([[1.2, 0.8, 1.0]], dtype=torch.float64),
                                     order=torch.tensor([[0, 1, 2]]))))
    b = pixels(aug.apply(clip, still(1, factors=torch.tensor([[1.2, 0.8, 1.0]], dtype=torch.float64),
                                     order=torch.tensor([[1, 0, 2]]))))
    assert not torch.allclose(a, b, atol=1e-2)


def test_warp_matches_opencv():
    """Rotation + flip + perspective as one homography: OpenCV's warpPerspective with the
    forward map gives the same image (float32, so both interpolate in floating point)."""
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (40, 48, 3)).astype(np.float32), (7, 7), 2.0)
    clip = torch.from_numpy(np.rint(img).astype(np.uint8)).permute(2, 0, 1)[None, None]
    corners = torch.tensor([[[0.1, 0.05], [0.2, 0.0], [0.0, 0.15], [0.12, 0.12]]], dtype=torch.float64)
    d = still(1, flip=torch.tensor([True]), angle=torch.tensor([17.0], dtype=torch.float64), corners=corners)
    ours = pixels(ClipAugmenter("maximum").apply(clip, d))[0, 0].permute(1, 2, 0).numpy()

    from common.training.augment import _homographies
    forward = torch.linalg.inv(_homographies(d, 40, 48))[0].numpy()
    theirs = cv2.warpPerspective(clip[0, 0].permute(1, 2, 0).numpy().astype(np.float32), forward, (48, 40),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inner = (slice(6, -6), slice(6, -6))  # the border pixels differ in how each blends with black
    assert np.abs(ours[inner] - theirs[inner]).mean() < 0.5
    assert np.abs(ours[inner] - clip[0, 0].permute(1, 2, 0).numpy()[inner]).mean() > 5  # it did move
    # Rotation alone, against cv2.getRotationMatrix2D: the same direction and centre.
    rot = still(1, angle=torch.tensor([12.0], dtype=torch.float64))
    ours = pixels(ClipAugmenter("moderate").apply(clip, rot))[0, 0].permute(1, 2, 0).numpy()
    m = cv2.getRotationMatrix2D((23.5, 19.5), 12.0, 1.0)
    theirs = cv2.warpAffine(clip[0, 0].permute(1, 2, 0).numpy().astype(np.float32), m, (48, 40),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.abs(ours[inner] - theirs[inner]).mean() < 0.5


def test_blur_matches_opencv_and_only_where_drawn():
    rng = np.random.default_rng(4)
    clips = torch.from_numpy(rng.integers(0, 256, (2, 2, 3, 20, 20), dtype=np.uint8))
    d = still(2, sigma=torch.tensor([1.3, 0.0], dtype=torch.float64))
    out = pixels(ClipAugmenter("maximum").apply(clips, d))
    for t in range(2):
        ref = cv2.GaussianBlur(clips[0, t].permute(1, 2, 0).numpy().astype(np.float32), (5, 5), 1.3,
                               borderType=cv2.BORDER_REFLECT_101)
        assert np.allclose(out[0, t].permute(1, 2, 0).numpy(), ref, atol=1e-2)
    assert torch.allclose(out[1], clips[1].float(), atol=1e-3)


def test_bad_input_is_refused():
    aug = ClipAugmenter("minimal")
    with pytest.raises(ValueError, match="B, T, 3"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.arange(2))
    with pytest.raises(ValueError, match="draws"):
        aug.apply(torch.zeros(2, 1, 3, 8, 8, dtype=torch.uint8), still(3))


def test_training_loop_augments_each_batch_with_its_seeds():
    """train_one_epoch hands the batch's frames and host-side seeds to the augmenter before
    the forward pass; the model sees what the augmenter returns."""
    from common.training.engine import make_optimizer, make_precision, train_one_epoch

    seen = {"aug": [], "model": []}

    def augment(frames, seeds):
        seen["aug"].append((frames.dtype, seeds.device.type, seeds.tolist()))
        return torch.full(frames.shape, 0.5)

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, frames, mel=None, audio_missing=None):
            seen["model"].append(frames.unique().tolist())
            return self.w.expand(frames.shape[0], 2) + frames.mean()

    batches = [{"frames": torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8), "label": torch.tensor([0, 1]),
                "seed": torch.tensor([11, 12])},
               {"frames": torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8), "label": torch.tensor([1, 0]),
                "seed": torch.tensor([13, 14])}]
    model = Probe()
    opt, sched = make_optimizer(model, 1e-3, 0.0, 2, 0.1, 0.01)
    stats = train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), opt, sched,
                            make_precision(torch.device("cpu"), amp=False), augment=augment)
    assert stats["steps"] == 2
    assert seen["aug"] == [(torch.uint8, "cpu", [11, 12]), (torch.uint8, "cpu", [13, 14])]
    assert seen["model"] == [[0.5], [0.5]]
