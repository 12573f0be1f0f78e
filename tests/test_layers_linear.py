"""The oneDNN route of aigc.models.layers.linear against F.linear (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from aigc.models import layers


@pytest.mark.parametrize("shape, bias", [((40, 8), True), ((2, 20, 8), False), ((2, 20, 8), True),
                                         ((1, 8), True)])
def test_linear_matches_f_linear_forward_and_backward(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b_ref = b.detach().clone().requires_grad_() if bias else None
    y = layers.linear(x, w, b)
    y_ref = F.linear(x_ref, w_ref, b_ref)
    assert y.shape == y_ref.shape == (*shape[:-1], 6)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-5, atol=1e-5)


def test_linear_takes_the_onednn_route_only_where_it_applies():
    if not layers.onednn_linear_active():
        pytest.skip("this PyTorch has no oneDNN linear")
    w = torch.randn(4, 8, requires_grad=True)
    x = torch.randn(32, 8)
    assert "OneDNNLinear" in type(layers.linear(x, w).grad_fn).__name__
    assert "OneDNNLinear" not in type(layers.linear(x[:4], w).grad_fn).__name__  # too few rows
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps PyTorch's own bf16 path
        y = layers.linear(x, w)
    assert y.dtype == torch.bfloat16
    assert "OneDNNLinear" not in type(layers.linear(x.double(), w.double()).grad_fn).__name__
    old = layers.set_onednn_linear(False)
    try:
        assert "OneDNNLinear" not in type(layers.linear(x, w).grad_fn).__name__
    finally:
        layers.set_onednn_linear(old)
