"""Sampled softmax with logQ correction, accidental-hit removal, random negatives; BCE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from strata.training.losses import bce_loss, sampled_softmax_loss


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_matches_manual_softmax_with_logq() -> None:
    q, i = _unit(4, 8, 0), _unit(4, 8, 1)
    ids = torch.tensor([1, 2, 3, 4])
    log_q = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    t = 0.1
    got = sampled_softmax_loss(q, i, ids, log_q, t)
    logits = q @ i.T / t - (log_q + math.log(4)).unsqueeze(0)
    want = F.cross_entropy(logits, torch.arange(4))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # The correction matters: without it the loss differs.
    plain = F.cross_entropy(q @ i.T / t, torch.arange(4))
    assert abs(plain.item() - got.item()) > 1e-3


def test_per_row_logq_weight() -> None:
    q, i = _unit(4, 8, 7), _unit(4, 8, 8)
    ids = torch.tensor([1, 2, 3, 4])
    log_q = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    w = torch.tensor([1.0, 0.0, 0.5, 2.0])
    got = sampled_softmax_loss(q, i, ids, log_q, 0.1, logq_weight=w)
    logits = q @ i.T / 0.1 - w.unsqueeze(1) * (log_q + math.log(4)).unsqueeze(0)
    want = F.cross_entropy(logits, torch.arange(4))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # A constant per-row tensor equals the scalar weight.
    same = sampled_softmax_loss(q, i, ids, log_q, 0.1, logq_weight=torch.full((4,), 0.5))
    scalar = sampled_softmax_loss(q, i, ids, log_q, 0.1, logq_weight=0.5)
    assert same.item() == pytest.approx(scalar.item(), rel=1e-6)
    assert abs(got.item() - scalar.item()) > 1e-4


def test_accidental_hits_are_removed() -> None:
    q, i = _unit(3, 8, 2), _unit(3, 8, 3)
    i[2] = i[0]  # the same item twice in the batch
    ids = torch.tensor([7, 8, 7])
    log_q = torch.zeros(3)
    got = sampled_softmax_loss(q, i, ids, log_q, 1.0)
    logits = q @ i.T - math.log(3)
    # Row 0 must not see column 2 (its own item) as a negative, and row 2 not column 0.
    l0 = -torch.log_softmax(logits[0, [0, 1]], 0)[0]
    l1 = -torch.log_softmax(logits[1], 0)[1]
    l2 = -torch.log_softmax(logits[2, [1, 2]], 0)[1]
    assert got.item() == pytest.approx(((l0 + l1 + l2) / 3).item(), rel=1e-5)


def test_random_negatives_extend_softmax_and_mask_hits() -> None:
    q, i, neg = _unit(2, 8, 4), _unit(2, 8, 5), _unit(3, 8, 6)
    ids, neg_ids = torch.tensor([1, 2]), torch.tensor([2, 5, 6])
    log_q = torch.zeros(2)
    got = sampled_softmax_loss(q, i, ids, log_q, 1.0, neg=neg, neg_ids=neg_ids, n_items=10)
    inb = q @ i.T - math.log(2)
    rn = q @ neg.T - math.log(3 / 10)
    rn[1, 0] = float("-inf")  # row 1's positive (id 2) drawn as a random negative
    logits = torch.cat([inb, rn], 1)
    want = F.cross_entropy(logits, torch.arange(2))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError):
        sampled_softmax_loss(q, i, ids, log_q, 1.0, neg=neg)


def test_weights_and_bce() -> None:
    q, i = _unit(2, 4, 7), _unit(2, 4, 8)
    ids, log_q = torch.tensor([1, 2]), torch.zeros(2)
    per_row = F.cross_entropy(q @ i.T - math.log(2), torch.arange(2), reduction="none")
    w = torch.tensor([1.0, 0.0])
    assert sampled_softmax_loss(q, i, ids, log_q, 1.0, weight=w).item() == pytest.approx(
        per_row[0].item(), rel=1e-6
    )
    logits, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    manual = -(torch.log(torch.sigmoid(logits[0])) + torch.log(1 - torch.sigmoid(logits[1]))) / 2
    assert bce_loss(logits, y).item() == pytest.approx(manual.item(), rel=1e-6)


def test_grouped_negatives_score_each_row_against_its_own_time_group() -> None:
    # The same 3 negatives embedded as of two times (G=2); rows 0 and 2 use group 1, row 1 group 0.
    q, i = _unit(3, 8, 9), _unit(3, 8, 10)
    neg = torch.stack([_unit(3, 8, 11), _unit(3, 8, 12)])  # (G, M, D)
    ids, neg_ids = torch.tensor([1, 2, 3]), torch.tensor([3, 5, 6])
    group = torch.tensor([1, 0, 1])
    log_q = torch.zeros(3)
    got = sampled_softmax_loss(
        q, i, ids, log_q, 1.0, neg=neg, neg_ids=neg_ids, n_items=10, neg_group=group
    )
    inb = q @ i.T - math.log(3)
    rn = torch.stack([q[r] @ neg[int(group[r])].T for r in range(3)]) - math.log(3 / 10)
    rn[2, 0] = float("-inf")  # row 2's positive (id 3) is negative 0
    want = F.cross_entropy(torch.cat([inb, rn], 1), torch.arange(3))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # Which group a row reads matters: all rows on group 0 give another loss.
    other = sampled_softmax_loss(
        q, i, ids, log_q, 1.0, neg=neg, neg_ids=neg_ids, n_items=10,
        neg_group=torch.zeros(3, dtype=torch.long),
    )  # fmt: skip
    assert abs(other.item() - got.item()) > 1e-4
    with pytest.raises(ValueError, match="neg_group"):
        sampled_softmax_loss(q, i, ids, log_q, 1.0, neg=neg, neg_ids=neg_ids, n_items=10)
