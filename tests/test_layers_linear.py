"""The oneDNN route of aigc.models.layers.linear against F.linear (values and gradients)."""

import json

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


@pytest.fixture
def onednn_forced():
    if not layers._HAS_ONEDNN_LINEAR:
        pytest.skip("this PyTorch has no oneDNN linear")
    old = layers.set_onednn_linear(True)
    yield
    layers.set_onednn_linear(old)


def test_linear_takes_the_onednn_route_only_where_it_applies(onednn_forced):
    w = torch.randn(4, 8, requires_grad=True)
    x = torch.randn(32, 8)
    assert "OneDNNLinear" in type(layers.linear(x, w).grad_fn).__name__
    assert "OneDNNLinear" not in type(layers.linear(x[:4], w).grad_fn).__name__  # too few rows
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps PyTorch's own bf16 path
        y = layers.linear(x, w)
    assert y.dtype == torch.bfloat16
    assert "OneDNNLinear" not in type(layers.linear(x.double(), w.double()).grad_fn).__name__
    layers.set_onednn_linear(False)
    assert "OneDNNLinear" not in type(layers.linear(x, w).grad_fn).__name__


@pytest.fixture
def fresh_route(tmp_path, monkeypatch):
    """The measured route, undecided, with its cache in a temporary folder."""
    if not layers._HAS_ONEDNN_LINEAR:
        pytest.skip("this PyTorch has no oneDNN linear")
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(layers.ROUTE_ENV, raising=False)
    monkeypatch.setattr(layers, "_measured", None)
    old = layers.set_onednn_linear(None)
    yield tmp_path
    layers.set_onednn_linear(old)


@pytest.mark.parametrize("t_torch, t_onednn, route", [
    (2.0, 1.0, "onednn"),   # oneDNN twice as fast (the AMD EPYC case)
    (1.0, 1.25, "torch"),   # oneDNN slower (the Intel Xeon AMX case of issue #17)
    (1.05, 1.0, "torch"),   # a near tie stays on F.linear: the margin is 10%
])
def test_the_route_is_the_one_measured_faster_and_kept_for_the_machine(fresh_route, monkeypatch,
                                                                       t_torch, t_onednn, route):
    calls = []

    def fake_time(fn, *args, **kwargs):
        calls.append(fn)
        return t_torch if fn.__name__ == "by_torch" else t_onednn

    monkeypatch.setattr(layers, "_time_products", fake_time)
    assert layers.linear_route() == route
    n_calls = len(calls)
    assert n_calls >= 2
    cache = json.loads((fresh_route / "kernels.json").read_text())
    (entry,) = cache.values()
    assert entry["route"] == route and entry["torch_over_onednn"] == round(t_torch / t_onednn, 3)
    # another process on the same machine reads the choice instead of measuring again
    monkeypatch.setattr(layers, "_measured", None)
    assert layers.linear_route() == route
    assert len(calls) == n_calls
    x, w = torch.randn(64, 8), torch.randn(4, 8, requires_grad=True)
    taken = "onednn" if "OneDNNLinear" in type(layers.linear(x, w).grad_fn).__name__ else "torch"
    assert taken == route


def test_the_route_can_be_forced_by_environment_and_a_bad_value_is_named(fresh_route,
                                                                         monkeypatch):
    monkeypatch.setattr(layers, "_time_products", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setenv(layers.ROUTE_ENV, "onednn")
    assert layers.linear_route() == "onednn"
    monkeypatch.setenv(layers.ROUTE_ENV, "torch")
    assert layers.linear_route() == "torch"
    monkeypatch.setenv(layers.ROUTE_ENV, "mkl")
    with pytest.raises(ValueError, match="AIGC_LINEAR_ROUTE.*'mkl'"):
        layers.linear_route()


def test_the_real_measurement_times_both_routes(fresh_route):
    result = layers.measure_linear_routes()
    assert result["torch_s"] > 0 and result["onednn_s"] > 0
    assert result["route"] == ("onednn" if result["torch_over_onednn"] >= 1.10 else "torch")


def test_compiled_code_sees_the_plain_matmul(onednn_forced):
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    w = torch.randn(4, 8)
    torch.compile(lambda x: layers.linear(x, w), backend=backend)(torch.randn(64, 8))
    assert any("linear" in t for t in seen) and not any("mkldnn" in t for t in seen)
