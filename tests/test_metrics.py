import math

import numpy as np
import torch

from common.metrics import (binary_metrics, collapse_check, equal_error_rate, evaluate,
                            fit_temperature, video_scores)


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


def test_video_scores_average_frames_per_full_relative_path():
    ids = ["Deepfakes/000_003.mp4", "Deepfakes/000_003.mp4", "FaceSwap/000_003.mp4"]
    vids, labels, probs = video_scores(ids, [1, 1, 0], [0.2, 0.6, 0.3])
    assert vids == ["Deepfakes/000_003.mp4", "FaceSwap/000_003.mp4"]
    assert labels.tolist() == [1, 0] and np.allclose(probs, [0.4, 0.3])


def test_collapse_guard_flags_constant_and_one_class_predictions():
    assert collapse_check([0.1] * 50)["collapsed"]                      # all REAL, no spread
    one_class = collapse_check(list(np.linspace(0.01, 0.45, 50)))       # varies, but all REAL
    assert one_class["collapsed"] and "REAL" in one_class["reason"]
    assert not collapse_check(list(np.linspace(0.05, 0.95, 50)))["collapsed"]


def test_temperature_fit_softens_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (400,))
    # Right 70% of the time but with huge margins: the fitted temperature must be > 1.
    correct = torch.rand(400) < 0.7
    pred = torch.where(correct, labels, 1 - labels)
    logits = torch.nn.functional.one_hot(pred, 2).float() * 10
    t = fit_temperature(logits, labels)
    assert t > 2.0
    nll = lambda temp: torch.nn.functional.cross_entropy(logits / temp, labels).item()
    assert nll(t) < nll(1.0)


def test_evaluate_reports_frame_video_and_collapse():
    logits = torch.tensor([[2.0, -2.0], [1.0, -1.0], [-2.0, 2.0], [-1.0, 1.0]])
    out = evaluate(["a", "a", "b", "b"], [0, 0, 1, 1], logits)
    assert out["frame"]["auc"] == 1.0 and out["video"]["n"] == 2 and out["video"]["auc"] == 1.0
    assert "collapsed" in out["collapse"]
