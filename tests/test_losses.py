"""Losses: values on hand-made batches, batch-hard picks, the center update rule, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from kws.losses import (
    METRIC_LOSSES,
    BatchHardTripletLoss,
    CenterLoss,
    CircleLoss,
    ClassifierHead,
    ContrastiveLoss,
    CoupledClustersLoss,
    JointLoss,
    MultiSimilarityLoss,
    NPairLoss,
    OIMLoss,
    ProxyAnchorLoss,
    batch_hard_pairs,
    build_metric_loss,
    multi_similarity_mine,
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


# ---------------------------------------------------------------------------- the metric-loss family


def random_batch(p: int = 4, k: int = 4, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(p * k, dim, generator=gen), dim=1)
    return x, torch.arange(p).repeat_interleave(k)


def cos(x: np.ndarray, i: int, j: int) -> float:
    return float(x[i] @ x[j])


def dist(x: np.ndarray, i: int, j: int) -> float:
    return float(np.linalg.norm(x[i] - x[j]))


def others(n: int, i: int, y: np.ndarray, same: bool) -> list[int]:
    return [j for j in range(n) if j != i and (y[j] == y[i]) == same]


def test_contrastive_on_hand_made_pairs() -> None:
    # 0° and 60° (class 0), 90° (class 1): d(0°,60°) = 1, d(0°,90°) = √2, d(60°,90°) = 2 sin 15°.
    x, y = unit(0, 60, 90), torch.tensor([0, 0, 1])
    loss = ContrastiveLoss(pos_margin=0.2, neg_margin=1.0)(x, y)
    # Positive pairs cost 1 − 0.2; of the negatives only 60°/90° is inside the margin.
    expected = 0.8 + (1.0 - 2 * math.sin(math.radians(15)))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_matches_brute_force() -> None:
    x, y = random_batch()
    xn, yn = x.numpy(), y.numpy()
    pos = [max(0.0, dist(xn, i, j) - 0.3) for i in range(16) for j in others(16, i, yn, True)]
    neg = [max(0.0, 1.2 - dist(xn, i, j)) for i in range(16) for j in others(16, i, yn, False)]
    expected = np.mean([v for v in pos if v > 0]) + np.mean([v for v in neg if v > 0])
    assert ContrastiveLoss(0.3, 1.2)(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_npair_matches_sohn_formula_on_n_by_2_batch() -> None:
    x, y = random_batch(p=5, k=2, seed=1)
    xn = x.numpy()
    scale = 4.0
    per = []
    for i in range(5):
        a, p = xn[2 * i], xn[2 * i + 1]
        per.append(math.log1p(sum(math.exp(scale * (a @ xn[2 * j + 1] - a @ p)) for j in range(5) if j != i)))
    assert NPairLoss(scale=scale)(x, y).item() == pytest.approx(float(np.mean(per)), abs=1e-5)


def test_npair_takes_p_by_k_as_rounds_of_pairs() -> None:
    # Shuffled batch order: the pairs follow each class's clips in batch order.
    x, y = random_batch(p=3, k=4, seed=2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    expected = []
    for r in range(3):  # pairs (1st, 2nd), (2nd, 3rd), (3rd, 4th) clip of each class
        pairs = [torch.nonzero(y == c).squeeze(1)[r : r + 2] for c in range(3)]
        a = torch.stack([x[i[0]] for i in pairs])
        p = torch.stack([x[i[1]] for i in pairs])
        expected.append(F.cross_entropy(2.0 * a @ p.T, torch.arange(3), reduction="none"))
    assert NPairLoss(scale=2.0)(x, y).item() == pytest.approx(torch.cat(expected).mean().item(), abs=1e-5)


def test_coupled_clusters_matches_brute_force() -> None:
    x, y = random_batch(p=3, k=3, seed=3)
    xn, yn = x.numpy().astype(np.float64), y.numpy()
    margin = 0.7
    per = []
    for i in range(9):
        center = xn[yn == yn[i]].mean(axis=0)
        nearest = min(float(np.sum((xn[j] - center) ** 2)) for j in range(9) if yn[j] != yn[i])
        per.append(0.5 * max(0.0, float(np.sum((xn[i] - center) ** 2)) + margin - nearest))
    assert CoupledClustersLoss(margin)(x, y).item() == pytest.approx(float(np.mean(per)), abs=1e-5)


def test_coupled_clusters_is_zero_for_tight_far_clusters() -> None:
    x, y = unit(0, 2, 180, 182), torch.tensor([0, 0, 1, 1])
    assert CoupledClustersLoss(0.5)(x, y).item() == 0.0


def test_circle_matches_brute_force() -> None:
    x, y = random_batch(seed=4)
    xn, yn = x.numpy().astype(np.float64), y.numpy()
    m, gamma = 0.3, 16.0
    per = []
    for i in range(16):
        lp = [-gamma * max(0.0, 1 + m - cos(xn, i, j)) * (cos(xn, i, j) - 1 + m) for j in others(16, i, yn, True)]
        ln = [gamma * max(0.0, cos(xn, i, j) + m) * (cos(xn, i, j) - m) for j in others(16, i, yn, False)]
        z = math.log(sum(map(math.exp, lp))) + math.log(sum(map(math.exp, ln)))
        per.append(math.log1p(math.exp(z)))
    assert CircleLoss(m, gamma)(x, y).item() == pytest.approx(float(np.mean(per)), rel=1e-4)


def test_multi_similarity_miner_and_loss_match_brute_force() -> None:
    x, y = random_batch(seed=5)
    xn, yn = x.numpy().astype(np.float64), y.numpy()
    alpha, beta, base, eps = 2.0, 10.0, 0.4, 0.1
    pos_mask, neg_mask = multi_similarity_mine(x @ x.T, y, eps)
    per = []
    for i in range(16):
        pos, neg = others(16, i, yn, True), others(16, i, yn, False)
        kept_p = [j for j in pos if cos(xn, i, j) - eps < max(cos(xn, i, n) for n in neg)]
        kept_n = [j for j in neg if cos(xn, i, j) + eps > min(cos(xn, i, q) for q in pos)]
        assert sorted(torch.nonzero(pos_mask[i]).squeeze(1).tolist()) == kept_p
        assert sorted(torch.nonzero(neg_mask[i]).squeeze(1).tolist()) == kept_n
        lp = math.log1p(sum(math.exp(-alpha * (cos(xn, i, j) - base)) for j in kept_p)) / alpha
        ln = math.log1p(sum(math.exp(beta * (cos(xn, i, j) - base)) for j in kept_n)) / beta
        per.append(lp + ln)
    assert pos_mask.sum() < 16 * 3  # the miner drops some easy pairs on this batch
    loss = MultiSimilarityLoss(alpha, beta, base, epsilon=eps)(x, y)
    assert loss.item() == pytest.approx(float(np.mean(per)), abs=1e-5)


def test_oim_value_table_update_and_queue() -> None:
    oim = OIMLoss(num_classes=3, dim=2, queue_size=2, momentum=0.5, scale=2.0)
    oim.lut.copy_(unit(0, 90, 180))
    x = unit(10, 100, 45, 200, 300)
    y = torch.tensor([0, 1, -1, -1, -1])
    loss = oim(x, y)
    # Empty queue: softmax over the 3 table rows only; unlabelled clips cost nothing.
    table = unit(0, 90, 180)
    expected = F.cross_entropy(2.0 * x[:2] @ table.T, y[:2])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # Rows 0 and 1 moved halfway to their clip (5° and 95°), row 2 untouched; the 2-slot queue keeps the last two.
    torch.testing.assert_close(oim.lut, unit(5, 95, 180), atol=1e-5, rtol=0)
    torch.testing.assert_close(oim.queue, unit(200, 300), atol=1e-6, rtol=0)
    assert int(oim.queue_filled) == 2
    # Next call: the queue's entries are negatives too; the oldest slot is overwritten first.
    x2, y2 = unit(0, 30), torch.tensor([2, -1])
    table = torch.cat([oim.lut, oim.queue])
    expected = F.cross_entropy(2.0 * x2[:1] @ table.T, y2[:1])
    assert oim(x2, y2).item() == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(oim.queue, unit(30, 300), atol=1e-6, rtol=0)
    oim.eval()
    before = oim.lut.clone()
    oim(x, y)
    assert torch.equal(oim.lut, before)


def test_proxy_anchor_matches_brute_force_with_several_proxies() -> None:
    torch.manual_seed(0)
    x, y = random_batch(p=2, k=3, dim=4, seed=6)  # 2 of the 3 classes present
    loss_fn = ProxyAnchorLoss(num_classes=3, dim=4, proxies_per_class=2, alpha=8.0, delta=0.1, temperature=0.5)
    xn, yn = x.numpy().astype(np.float64), y.numpy()
    prox = F.normalize(loss_fn.proxies.detach(), dim=2).numpy().astype(np.float64)

    def sim(i: int, c: int) -> float:
        s = prox[c] @ xn[i]
        w = np.exp(s / 0.5) / np.sum(np.exp(s / 0.5))
        return float(w @ s)

    pos = [math.log1p(sum(math.exp(-8.0 * (sim(i, c) - 0.1)) for i in range(6) if yn[i] == c)) for c in (0, 1)]
    neg = [math.log1p(sum(math.exp(8.0 * (sim(i, c) + 0.1)) for i in range(6) if yn[i] != c)) for c in range(3)]
    expected = np.mean(pos) + np.mean(neg)
    assert loss_fn(x, y).item() == pytest.approx(expected, abs=1e-5)


def nearest_center_accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
    """Leave-one-out: each clip against the mean of every class's other clips."""
    correct = 0
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        centers = torch.stack([x[keep & (y == c)].mean(0) for c in y.unique()])
        correct += int(torch.argmax(F.normalize(centers, dim=1) @ x[i]) == y[i])
    return correct / len(x)


@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_optimisation_reduces_every_metric_loss_and_separates_classes(name: str) -> None:
    torch.manual_seed(0)
    p, k, dim = 4, 4, 8
    labels = torch.arange(p).repeat_interleave(k)
    raw = torch.nn.Parameter(torch.randn(p * k, dim))
    loss_fn = build_metric_loss(name, {}, dim, p)
    opt = torch.optim.Adam([raw, *loss_fn.parameters()], lr=0.05)
    acc_before = nearest_center_accuracy(F.normalize(raw.detach(), dim=1), labels)
    values = []
    for _ in range(40):
        loss = loss_fn(F.normalize(raw, dim=1), labels)
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc_after = nearest_center_accuracy(F.normalize(raw.detach(), dim=1), labels)
    assert values[-1] < 0.7 * values[0], values
    assert acc_after > acc_before and acc_after >= 0.9, (acc_before, acc_after)


def test_build_metric_loss_refuses_unknown_names_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="circle"):
        build_metric_loss("arcface", {}, 4, 2)
    with pytest.raises(ValueError, match="margin"):
        build_metric_loss("contrastive", {"pos_margin": 1.0, "neg_margin": 0.5}, 4, 2)
    assert isinstance(build_metric_loss("oim", {"queue_size": 8}, 4, 2), OIMLoss)


@pytest.mark.parametrize("name", [n for n in METRIC_LOSSES if n != "oim"])
def test_batches_without_pairs_give_zero_or_finite_loss_with_gradient(name: str) -> None:
    x = unit(0, 90).requires_grad_()
    loss = build_metric_loss(name, {}, 2, 2)(x, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_agrees_with_pytorch_metric_learning() -> None:
    from pytorch_metric_learning import losses as pml
    from pytorch_metric_learning import miners

    x, y = random_batch(seed=7)
    assert ContrastiveLoss(0.1, 0.9)(x, y).item() == pytest.approx(pml.ContrastiveLoss(0.1, 0.9)(x, y).item(), abs=1e-5)
    ours = MultiSimilarityLoss(2.0, 40.0, 0.5, epsilon=0.1)(x, y)
    theirs = pml.MultiSimilarityLoss(2.0, 40.0, 0.5)(x, y, miners.MultiSimilarityMiner(0.1)(x, y))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert CircleLoss(0.4, 80.0)(x, y).item() == pytest.approx(pml.CircleLoss(0.4, 80.0)(x, y).item(), rel=1e-5)
    ours_pa = ProxyAnchorLoss(4, 6, alpha=32.0, delta=0.1)
    theirs_pa = pml.ProxyAnchorLoss(4, 6, margin=0.1, alpha=32.0)
    with torch.no_grad():
        theirs_pa.proxies.copy_(ours_pa.proxies[:, 0])
    assert ours_pa(x, y).item() == pytest.approx(theirs_pa(x, y).item(), rel=1e-5)


def _oim_rank(rank: int, world: int, init: str, out: str) -> None:
    """One gloo rank: update an OIM table from this rank's half of a batch, save the tables."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x, y = _oim_batch()
    half = len(x) // world
    oim = OIMLoss(num_classes=3, dim=2, queue_size=3)
    oim(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])
    torch.save({"lut": oim.lut, "queue": oim.queue, "filled": oim.queue_filled}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _oim_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return unit(0, 10, 100, 200, 250, 80, 300, 20), torch.tensor([0, -1, 1, -1, 2, 1, -1, 0])


def test_oim_tables_stay_identical_across_ranks(tmp_path) -> None:
    world = 2
    torch.multiprocessing.spawn(
        _oim_rank, args=(world, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=world, join=True
    )
    single = OIMLoss(num_classes=3, dim=2, queue_size=3)
    single(*_oim_batch())  # the whole batch in one process: what every rank must hold
    for rank in range(world):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(state["lut"], single.lut)
        torch.testing.assert_close(state["queue"], single.queue)
        assert int(state["filled"]) == 3
