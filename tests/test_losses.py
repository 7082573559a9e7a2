"""Losses: values on hand-made batches, batch-hard picks, the center update rule, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from kws.losses import (
    BatchHardTripletLoss,
    CenterLoss,
    ClassifierHead,
    JointLoss,
    batch_hard_pairs,
    pairwise_distance,
)


def unit(*angles_deg: float) -> torch.Tensor:
    """Unit vectors in the plane at the given angles, ``(n, 2)``."""
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1).float()


# Two classes on the unit circle; angles chosen so each anchor's hardest pair is unambiguous.
ANGLES = (0.0, 20.0, 50.0, 90.0, 100.0, 170.0)
LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def brute_force_triplets(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int, float, float]]:
    """(positive, negative, d_ap, d_an) for each anchor, by looping over every pair."""
    out = []
    for a in range(len(x)):
        best_p, best_n = (-1, -1.0), (-1, np.inf)
        for j in range(len(x)):
            d = float(np.linalg.norm(x[a] - x[j]))
            if j != a and y[j] == y[a] and d > best_p[1]:
                best_p = (j, d)
            if y[j] != y[a] and d < best_n[1]:
                best_n = (j, d)
        out.append((best_p[0], best_n[0], best_p[1], best_n[1]))
    return out


def test_pairwise_distance_matches_numpy() -> None:
    x = unit(*ANGLES)
    expected = np.linalg.norm(x.numpy()[:, None] - x.numpy()[None], axis=-1)
    np.testing.assert_allclose(pairwise_distance(x).numpy(), expected, atol=1e-5)


def test_batch_hard_picks_hardest_pairs() -> None:
    x = unit(*ANGLES)
    pos, neg, valid = batch_hard_pairs(pairwise_distance(x), LABELS)
    expected = brute_force_triplets(x.numpy(), LABELS.numpy())
    assert pos.tolist() == [e[0] for e in expected]
    assert neg.tolist() == [e[1] for e in expected]
    # Spelled out for the first anchors: 0° is farthest from 50° (own class), nearest to 90°.
    assert (pos[0].item(), neg[0].item()) == (2, 3)
    assert (pos[2].item(), neg[2].item()) == (0, 3)
    assert (pos[3].item(), neg[3].item()) == (5, 2)
    assert valid.all()


def test_batch_hard_marks_anchors_without_positive_invalid() -> None:
    x = unit(0, 10, 90)
    _, _, valid = batch_hard_pairs(pairwise_distance(x), torch.tensor([0, 0, 1]))
    assert valid.tolist() == [True, True, False]


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_value_matches_brute_force(soft: bool) -> None:
    x = unit(*ANGLES)
    margin = 0.3
    per = []
    for _, _, d_ap, d_an in brute_force_triplets(x.numpy(), LABELS.numpy()):
        per.append(math.log1p(math.exp(d_ap - d_an)) if soft else max(0.0, d_ap - d_an + margin))
    loss = BatchHardTripletLoss(margin=margin, soft=soft)(x, LABELS)
    assert loss.item() == pytest.approx(float(np.mean(per)), abs=1e-5)


def test_soft_and_hinge_differ_on_easy_triplets() -> None:
    # Well separated classes: the hinge is exactly zero, the soft margin stays positive.
    x = unit(0, 5, 180, 185)
    y = torch.tensor([0, 0, 1, 1])
    assert BatchHardTripletLoss(margin=0.2)(x, y).item() == 0.0
    assert BatchHardTripletLoss(soft=True)(x, y).item() > 0.0


def test_triplet_without_valid_anchor_is_zero_with_gradient() -> None:
    x = unit(0, 10).requires_grad_()
    loss = BatchHardTripletLoss()(x, torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_identical_embeddings_give_finite_gradients() -> None:
    x = unit(0, 0, 90, 90).requires_grad_()
    BatchHardTripletLoss()(x, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(x.grad).all()


def test_center_loss_value_and_update_rule() -> None:
    loss_fn = CenterLoss(num_classes=3, dim=2, alpha=0.5)
    loss_fn.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1])
    loss = loss_fn(x, y)
    # ½ · mean(|(0,0)-(1,0)|², |(1,1)-(1,0)|², |(0,3)-(0,1)|²) = ½ · (1 + 1 + 4) / 3
    assert loss.item() == pytest.approx(1.0)
    # Δc0 = ((1,0)-(0,0) + (1,0)-(1,1)) / (1+2) = (1,-1)/3 ; Δc1 = ((0,1)-(0,3)) / (1+1) = (0,-1)
    expected = torch.tensor([[1.0 - 0.5 / 3, 0.5 / 3], [0.0, 1.5], [5.0, 5.0]])
    torch.testing.assert_close(loss_fn.centers, expected)


def test_center_loss_does_not_update_in_eval_mode() -> None:
    loss_fn = CenterLoss(2, 2).eval()
    loss_fn(torch.ones(2, 2), torch.tensor([0, 1]))
    assert torch.count_nonzero(loss_fn.centers) == 0
    assert not list(loss_fn.parameters())


def test_center_converges_to_class_mean() -> None:
    loss_fn = CenterLoss(1, 2, alpha=0.5)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for _ in range(60):
        loss_fn(x, torch.tensor([0, 0]))
    torch.testing.assert_close(loss_fn.centers[0], x.mean(0), atol=1e-4, rtol=0)


def test_softmax_head_is_cross_entropy_of_linear_layer() -> None:
    torch.manual_seed(0)
    head = ClassifierHead(4, 3, kind="softmax")
    x, y = F.normalize(torch.randn(5, 4), dim=1), torch.tensor([0, 1, 2, 1, 0])
    expected = F.cross_entropy(x @ head.weight.T + head.bias, y)
    assert head(x, y).item() == pytest.approx(expected.item(), abs=1e-6)


def test_cosine_head_applies_margin_to_target_only() -> None:
    head = ClassifierHead(2, 2, kind="cosine", scale=10.0, margin=0.25)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # normalised inside
    x = unit(0.0, 60.0)
    y = torch.tensor([0, 1])
    cos = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    torch.testing.assert_close(head.logits(x), 10.0 * cos, atol=1e-5, rtol=0)
    expected = F.cross_entropy(10.0 * (cos - 0.25 * torch.eye(2)), y)
    assert head(x, y).item() == pytest.approx(expected.item(), abs=1e-5)


def test_head_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="softmax"):
        ClassifierHead(2, 2, kind="arcface")


def test_joint_loss_is_weighted_sum() -> None:
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(8, 4), dim=1), torch.arange(4).repeat(2)
    triplet, head = BatchHardTripletLoss(), ClassifierHead(4, 4, kind="cosine")
    joint = JointLoss({"triplet": triplet, "classifier": head}, {"triplet": 1.0, "classifier": 0.5})
    total, terms = joint(x, y)
    assert set(terms) == {"triplet", "classifier"}
    assert total.item() == pytest.approx(triplet(x, y).item() + 0.5 * head(x, y).item(), abs=1e-6)
    with pytest.raises(ValueError):
        JointLoss({"triplet": triplet}, {"center": 1.0})


@pytest.mark.parametrize("name", ["triplet", "soft_triplet", "center", "softmax", "cosine"])
def test_sgd_steps_reduce_each_loss(name: str) -> None:
    torch.manual_seed(0)
    p, k, dim = 4, 4, 8
    labels = torch.arange(p).repeat_interleave(k)
    # A toy "encoder": free embeddings, renormalised, as the real encoder's output is.
    raw = torch.nn.Parameter(torch.randn(p * k, dim))
    loss_fn = {
        "triplet": BatchHardTripletLoss(margin=0.5),
        "soft_triplet": BatchHardTripletLoss(soft=True),
        "center": CenterLoss(p, dim, alpha=0.5),
        "softmax": ClassifierHead(dim, p, kind="softmax"),
        "cosine": ClassifierHead(dim, p, kind="cosine"),
    }[name]
    opt = torch.optim.SGD([raw, *loss_fn.parameters()], lr=2.0)
    values = []
    for _ in range(30):
        loss = loss_fn(F.normalize(raw, dim=1), labels)
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < 0.7 * values[0], values
