"""Losses against values worked out by hand."""
import math

import pytest
import torch

from common.errors import UserError
from common.losses import FocalLoss, build_loss, class_weights_from_counts


def cross_entropy(logits, labels):
    return torch.nn.functional.cross_entropy(logits.float(), labels)

LOGITS = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
LABELS = torch.tensor([0, 1])
# p(true class): sample 0 is real with margin 2, sample 1 is fake with margin 1.
P0 = math.exp(2) / (math.exp(2) + math.exp(0))
P1 = math.exp(1.5) / (math.exp(0.5) + math.exp(1.5))


def test_cross_entropy_by_hand():
    expected = (-math.log(P0) - math.log(P1)) / 2
    assert build_loss("ce")(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_focal_without_focusing_or_alpha_is_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 2), torch.randint(0, 2, (16,))
    assert FocalLoss(alpha=None, gamma=0.0)(logits, labels).item() == pytest.approx(
        cross_entropy(logits, labels).item(), rel=1e-6)


def test_focal_by_hand():
    # alpha = 0.25 weights the fake class (label 1); the real class gets 0.75.
    real = 0.75 * (1 - P0) ** 2 * -math.log(P0)
    fake = 0.25 * (1 - P1) ** 2 * -math.log(P1)
    loss = build_loss("focal", alpha=0.25, gamma=2.0)
    assert isinstance(loss, FocalLoss)
    assert loss(LOGITS, LABELS).item() == pytest.approx((real + fake) / 2, rel=1e-6)


def test_focal_down_weights_easy_examples_and_has_gradients():
    logits = torch.tensor([[5.0, -5.0], [0.1, -0.1]], requires_grad=True)
    per = [FocalLoss(alpha=None, gamma=2.0)(logits[i:i + 1], torch.tensor([0])) for i in range(2)]
    ce = [cross_entropy(logits[i:i + 1], torch.tensor([0])) for i in range(2)]
    assert per[0] / ce[0] < per[1] / ce[1]  # the confident one is shrunk far more
    sum(per).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_rejects_bad_parameters():
    with pytest.raises(ValueError):
        FocalLoss(alpha=1.5, gamma=2.0)
    with pytest.raises(ValueError):
        FocalLoss(alpha=0.25, gamma=-1)


def test_class_weights_from_counts():
    w = class_weights_from_counts([10, 40])
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([2.5, 0.625])
    assert (10 * w[0] + 40 * w[1]).item() / 50 == pytest.approx(1.0)  # average 1 over samples
    # An absent class gets weight 0 (never inf); the present one is weighted as if alone.
    assert class_weights_from_counts(torch.tensor([0, 7])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        class_weights_from_counts([0, 0])
    with pytest.raises(ValueError):
        class_weights_from_counts([-1, 3])


def test_weighted_ce_by_hand():
    loss = build_loss("weighted_ce", class_counts=[10, 40])
    # PyTorch's weighted mean: sum_i w_yi * l_i / sum_i w_yi
    expected = (2.5 * -math.log(P0) + 0.625 * -math.log(P1)) / (2.5 + 0.625)
    assert loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    assert "weight" in dict(loss.named_buffers())  # moves with .to(device)


def test_build_loss_errors():
    with pytest.raises(UserError, match="focal"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("weighted_ce")
