"""MLP, cross networks and embedding helpers."""

from __future__ import annotations

import pytest
import torch

from strata.models.layers import MLP, CrossNet, CrossNetConfig, CrossNetV2, MLPConfig, masked_mean


def test_mlp_shapes_and_output_dim() -> None:
    m = MLP(10, MLPConfig(hidden=(16, 8), dropout=0.1, layer_norm=True), out_dim=3)
    assert m(torch.randn(4, 10)).shape == (4, 3)
    assert MLP(10, MLPConfig(hidden=(16, 8))).out_dim == 8


@pytest.mark.parametrize("kind", ["full", "low_rank", "mixture"])
def test_cross_v2_shapes_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    net = CrossNetV2(12, CrossNetConfig(num_layers=3, kind=kind, rank=4, num_experts=3))
    x = torch.randn(5, 12, requires_grad=True)
    y = net(x)
    assert y.shape == (5, 12)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cross_v2_full_is_feature_crossing() -> None:
    # With W = 0 and b = 1 one layer gives x0 * 1 + x0 = 2 x0: the residual + Hadamard form.
    net = CrossNetV2(4, CrossNetConfig(num_layers=1, kind="full"))
    with torch.no_grad():
        net.w[0].weight.zero_()
        net.w[0].bias.fill_(1.0)
    x = torch.randn(3, 4)
    assert torch.allclose(net(x), 2 * x)
    # With W = I and b = 0: x0 * x0 + x0, a true second-order term.
    with torch.no_grad():
        net.w[0].weight.copy_(torch.eye(4))
        net.w[0].bias.zero_()
    assert torch.allclose(net(x), x * x + x)


def test_cross_v1_formula() -> None:
    net = CrossNet(3, num_layers=1)
    with torch.no_grad():
        net.w[0].copy_(torch.tensor([1.0, 0.0, 0.0]))
        net.b[0].copy_(torch.tensor([0.5, 0.5, 0.5]))
    x = torch.tensor([[2.0, 3.0, 4.0]])
    # x0 * (x . w) + b + x = [2,3,4]*2 + 0.5 + [2,3,4]
    assert torch.allclose(net(x), torch.tensor([[6.5, 9.5, 12.5]]))


def test_masked_mean_ignores_padding_and_empty_rows() -> None:
    emb = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    ids = torch.tensor([[4, 2, 0], [0, 0, 0]])
    out = masked_mean(emb, ids)
    assert out[0, 0].item() == pytest.approx(2.0)
    assert out[1, 0].item() == 0.0
