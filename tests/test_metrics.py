import math

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.training.metrics import (binary_metrics, collapse_check, equal_error_rate, evaluate, fit_temperature,
                                     require_two_classes, video_nll, video_probabilities, video_scores)


def _logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def test_binary_metrics_perfect_and_inverted():
    y = [0, 0, 1, 1]
    good = binary_metrics(y, [0.1, 0.2, 0.8, 0.9])
    assert good["auc"] == 1.0 and good["acc"] == 1.0 and good["balanced_acc"] == 1.0
    assert good["eer"] == 0.0
    assert math.isclose(good["log_loss"], -np.mean(np.log([0.9, 0.8, 0.8, 0.9])), rel_tol=1e-6)
    bad = binary_metrics(y, [0.9, 0.8, 0.2, 0.1])
    assert bad["auc"] == 0.0 and bad["acc"] == 0.0


def test_balanced_accuracy_sees_the_minority_class():
    # 1 real, 9 fakes, everything called FAKE: accuracy 0.9 but balanced accuracy 0.5.
    m = binary_metrics([0] + [1] * 9, [0.9] * 10)
    assert math.isclose(m["acc"], 0.9) and math.isclose(m["balanced_acc"], 0.5)


def test_auc_undefined_with_one_class():
    m = binary_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["eer"])


def test_eer_midpoint():
    assert math.isclose(equal_error_rate(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])), 0.5)


def test_eer_is_interpolated_between_roc_points():
    # ROC points (fpr, miss): (0, 1), (1/3, 1), (1/3, 0), ... The two rates are equal where the
    # vertical segment at fpr = 1/3 crosses the diagonal: EER 1/3. The nearest ROC point,
    # (1/3, 0), would have given (1/3 + 0) / 2 = 1/6.
    assert math.isclose(equal_error_rate(np.array([0, 0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4])), 1 / 3)
    # On a sloped segment: 2 real, 1 fake, fake in the middle. Points (0,1), (1/2,1), (1/2,0), (1,0)
    # -> 1/2; and with the fake on top, a perfect ranking -> 0.
    assert math.isclose(equal_error_rate(np.array([0, 1, 0]), np.array([0.1, 0.5, 0.9])), 0.5)
    assert equal_error_rate(np.array([0, 0, 1]), np.array([0.1, 0.5, 0.9])) == 0.0


def test_ranking_reads_unclipped_scores():
    # Probabilities this close to 1 used to be clipped to 1 - 1e-7 and tie; margins never do.
    y = [0, 1, 0, 1]
    margins = np.array([20.0, 21.0, 22.0, 23.0])
    probs = 1 / (1 + np.exp(-margins))
    m = binary_metrics(y, probs, scores=margins)
    assert m["auc"] == 0.75 and binary_metrics(y, probs)["auc"] == 0.75


def test_video_scores_average_frames_per_full_relative_path():
    ids = ["Deepfakes/000_003.mp4", "Deepfakes/000_003.mp4", "FaceSwap/000_003.mp4"]
    vids, labels, probs = video_scores(ids, [1, 1, 0], [0.2, 0.6, 0.3])
    assert vids == ["Deepfakes/000_003.mp4", "FaceSwap/000_003.mp4"]
    assert labels.tolist() == [1, 0] and np.allclose(probs, [0.4, 0.3])


def test_collapse_is_about_ranking_and_spread_not_the_threshold():
    y = [0] * 25 + [1] * 25
    constant = collapse_check(_logit([0.1] * 50), y)
    assert constant["collapsed"] and "barely vary" in constant["reason"]
    # Ranks perfectly but every score is below 0.5: miscalibrated, not collapsed.
    one_side = collapse_check(_logit(np.linspace(0.01, 0.45, 50)), y)
    assert not one_side["collapsed"] and one_side["auc"] == 1.0 and one_side["fake_share"] == 0.0
    # Spreads widely but ranks at chance: collapsed.
    chance = collapse_check(_logit([0.2, 0.8, 0.2, 0.8]), [0, 0, 1, 1])
    assert chance["collapsed"] and "AUC 0.500" in chance["reason"]
    inverted = collapse_check(_logit([0.9, 0.8, 0.2, 0.1]), [0, 0, 1, 1])
    assert inverted["collapsed"] and inverted["auc"] == 0.0
    assert not collapse_check(_logit([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1])["collapsed"]


def _calibrated_at(t_true: float, n_videos: int, frames: int, seed: int):
    """Logits that are calibrated after dividing by t_true: labels ~ Bernoulli(sigmoid(z))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, n_videos)
    y = (rng.random(n_videos) < 1 / (1 + np.exp(-z))).astype(int)
    margin = np.repeat(z, frames) + rng.normal(0, 0.3, n_videos * frames)
    logits = torch.tensor(np.stack([np.zeros_like(margin), margin * t_true], 1), dtype=torch.float32)
    ids = [f"v{i}" for i in range(n_videos) for _ in range(frames)]
    return logits, np.repeat(y, frames), ids


@pytest.mark.parametrize("t_true", [0.26, 0.5, 3.0, 14.0])
@pytest.mark.parametrize("frames", [1, 4])
def test_temperature_recovers_the_best_t_below_and_above_one(t_true, frames):
    logits, labels, ids = _calibrated_at(t_true, 3000, frames, seed=1)
    t = fit_temperature(logits, torch.tensor(labels), ids)
    grid = t_true * np.exp(np.linspace(-1.2, 1.2, 801))  # 0.3% steps
    best = grid[np.argmin([video_nll(logits, labels, ids, g) for g in grid])]
    assert abs(t - best) / best < 0.05, (t, best)
    assert abs(t - t_true) / t_true < 0.15, (t, t_true)  # and the best is near the truth
    assert video_nll(logits, labels, ids, t) <= video_nll(logits, labels, ids, 1.0)


def test_temperature_is_fitted_on_video_scores_not_frames():
    # Two frames per video, one confidently right and one confidently wrong: frame NLL and
    # video NLL disagree, and the fit follows the video scores.
    logits, labels, ids = _calibrated_at(2.0, 2000, 3, seed=2)
    t_video = fit_temperature(logits, torch.tensor(labels), ids)
    t_frame = fit_temperature(logits, torch.tensor(labels))
    nll_v = lambda t: video_nll(logits, labels, ids, t)
    assert nll_v(t_video) <= nll_v(t_frame) + 1e-9


def test_temperature_undefined_for_one_class_is_one():
    assert fit_temperature(torch.randn(10, 2), torch.ones(10, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 1.0


def test_evaluate_reports_frame_video_and_collapse():
    logits = torch.tensor([[2.0, -2.0], [1.0, -1.0], [-2.0, 2.0], [-1.0, 1.0]])
    out = evaluate(["a", "a", "b", "b"], [0, 0, 1, 1], logits)
    assert out["frame"]["auc"] == 1.0 and out["video"]["n"] == 2 and out["video"]["auc"] == 1.0
    assert out["collapse"]["collapsed"] is False and out["collapse"]["auc"] == 1.0


def test_the_collapse_verdict_does_not_change_with_the_temperature():
    from common.training.metrics import COLLAPSE_SPREAD

    # Small but real margins, well ranked: a big fitted T would shrink calibrated probabilities'
    # spread below the floor, yet the model it describes is the same.
    ids = [f"v{i}" for i in range(8)]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    margin = torch.tensor([-4, -3, -2, -1, 1, 2, 3, 4], dtype=torch.float32) * 4e-3
    logits = torch.stack([torch.zeros(8), margin], dim=1)
    hot = evaluate(ids, labels, logits, temperature=100.0)
    assert hot["video"]["auc"] == 1.0
    assert hot["collapse"] == evaluate(ids, labels, logits)["collapse"]
    assert not hot["collapse"]["collapsed"] and hot["collapse"]["logit_std"] > COLLAPSE_SPREAD


def _mixed_videos():
    """Videos whose frames disagree: mean probability and mean margin rank them differently,
    and the mean probability's order changes with T (one confident frame vs. many mild ones)."""
    rng = np.random.default_rng(7)
    ids, labels, rows = [], [], []
    for v in range(60):
        y = v % 2
        base = rng.normal(0.4 if y else -0.4, 1.0)
        spikes = rng.normal(0, 4.0, 4) * (rng.random(4) < 0.5)
        for f in range(4):
            ids.append(f"v{v:02d}")
            labels.append(y)
            rows.append([0.0, base + spikes[f]])
    return ids, labels, torch.tensor(rows, dtype=torch.float32)


def test_video_ranking_is_the_same_at_every_temperature():
    ids, labels, logits = _mixed_videos()
    runs = [evaluate(ids, labels, logits, t) for t in (0.05, 0.7, 1.0, 3.0, 40.0)]
    for key in ("auc", "ap", "eer"):
        assert len({r["video"][key] for r in runs}) == 1, key
        assert len({r["frame"][key] for r in runs}) == 1, key
    assert len({r["video"]["log_loss"] for r in runs}) == 5  # calibration does change with T
    # ...where averaging probabilities, as before, reorders the videos with T:
    from common.training.metrics import softmax_fake
    old = [binary_metrics(*video_scores(ids, labels, softmax_fake(logits, t))[1:])["auc"] for t in (0.05, 40.0)]
    assert old[0] != old[1]
    # the calibrated video probability is sigmoid(mean margin / T)
    vids, vl, p = video_probabilities(ids, labels, logits, 2.0)
    m = np.array([np.mean([r[1] for i, r in zip(ids, logits.tolist()) if i == v]) for v in vids])
    assert np.allclose(p, 1 / (1 + np.exp(-m / 2.0)))


def test_single_class_split_is_an_error_that_names_it():
    with pytest.raises(UserError, match="the validation split of stage4_dfdc has only fake videos"):
        require_two_classes([1, 1, 1], "the validation split of stage4_dfdc")
    with pytest.raises(UserError, match="has no videos"):
        require_two_classes([], "the validation split of stage1_faceforensics")
    require_two_classes([0, 1], "fine")
