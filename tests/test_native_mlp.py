"""aigc.models.native's fused GPT MLP (the first product with its bias and the GELU, the second
product, and the backward's product with the GELU's derivative and the bias gradient) against
float64 ATen, where it is taken and where not, under eager autograd and torch.compile."""

import json

import pytest
import torch
import torch.nn.functional as F
from native_fixtures import rel_error

from aigc.models import native


def _mlp(K, N, K2, gen, proj_bias=True):
    fc, proj = torch.nn.Linear(K, N), torch.nn.Linear(N, K2, bias=proj_bias)
    with torch.no_grad():  # values of a trained layer's size, with a nonzero bias
        fc.weight.copy_(torch.randn(N, K, generator=gen) * K ** -0.5)
        fc.bias.copy_(torch.randn(N, generator=gen))
        proj.weight.copy_(torch.randn(K2, N, generator=gen) * N ** -0.5)
        if proj_bias:
            proj.bias.copy_(torch.randn(K2, generator=gen))
    return fc, proj


def _grads(y, x, fc, proj, gy):
    leaves = [x, fc.weight, fc.bias, proj.weight] + ([proj.bias] if proj.bias is not None else [])
    return torch.autograd.grad(y, leaves, gy)


@pytest.mark.parametrize("shape,rows,proj_bias", [
    ((128, 512, 128), (12, 64), True),   # gpt_speed's MLP: whole 12-row tiles
    ((64, 256, 64), (3, 37), True),      # rows that leave a partial tile
    ((20, 64, 20), (1, 1), True),        # one row; a width that is no multiple of 16
    ((48, 32, 8), (5, 7), False),        # one 32-column panel; an output width that is no
])                                       # multiple of 32 (ATen's second product) and no bias
def test_native_mlp_matches_float64_forward_and_backward(built, shape, rows, proj_bias):
    K, N, K2 = shape
    gen = torch.Generator().manual_seed(0)
    fc, proj = _mlp(K, N, K2, gen, proj_bias)
    x = torch.randn(*rows, K, generator=gen, requires_grad=True)
    gy = torch.randn(*rows, K2, generator=gen)
    native.set_route("mlp", "native")
    assert native.mlp_takes(x, fc, proj)
    y = native.gpt_mlp(x, fc, proj)
    assert y.shape == (*rows, K2)
    assert "_MLPFunctionBackward" in {n.name() for n in _graph_nodes(y.grad_fn)}
    got = (y, *_grads(y, x, fc, proj, gy))
    fc64, proj64 = fc.double(), proj.double()
    x64 = x.detach().double().requires_grad_()
    y64 = proj64(F.gelu(fc64(x64), approximate="tanh"))
    ref = (y64, *_grads(y64, x64, fc64, proj64, gy.double()))
    for name, a, b in zip(("y", "dx", "dW1", "db1", "dW2", "db2"), got, ref):
        assert rel_error(a, b) < 2e-6, name


def test_native_mlp_takes_only_what_fits(built):
    native.set_route("mlp", "native")
    gen = torch.Generator().manual_seed(1)
    fc, proj = _mlp(64, 256, 64, gen)
    x = torch.randn(4, 16, 64, generator=gen)
    assert native.mlp_takes(x, fc, proj)
    assert native.mlp_takes(x[0], fc, proj)  # 2-D rows
    assert not native.mlp_takes(x.transpose(0, 1), fc, proj)  # not contiguous
    assert not native.mlp_takes(x.double(), fc.double(), proj.double())
    odd_fc, odd_proj = _mlp(64, 240, 64, gen)  # hidden width not a multiple of 32
    assert not native.mlp_takes(x, odd_fc, odd_proj)
    no_bias = torch.nn.Linear(64, 256, bias=False)
    assert not native.mlp_takes(x, no_bias, proj)
    assert not native.mlp_takes(x[:, :0], fc, proj)  # no rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.mlp_takes(x, fc, proj)
    native.set_route("mlp", "torch")
    assert not native.mlp_takes(x, fc, proj)


def test_gpt_trains_the_same_with_either_mlp_route(built):
    from aigc.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=32, layers=2, heads=2, width=64))
    tokens = torch.randint(0, 40, (4, 33), generator=torch.Generator().manual_seed(2))
    out = {}
    for route in ("torch", "native"):
        native.set_route("mlp", route)
        model.zero_grad()
        loss = model.loss({"tokens": tokens})
        names = {n.name() for n in _graph_nodes(loss.grad_fn)}
        assert ("_MLPFunctionBackward" in names) == (route == "native"), route
        loss.backward()
        out[route] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(out["native"][0], out["torch"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(out["native"][1], out["torch"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # decoding steps of one position keep ATen's linear layers and GELU: the same tokens
    gens = []
    for route in ("native", "torch"):
        native.set_route("mlp", route)
        gens.append(model.generate(tokens[:1, :5], 8, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(gens[0], gens[1])


def _graph_nodes(node, seen=None):
    seen = set() if seen is None else seen
    if node is None or node in seen:
        return seen
    seen.add(node)
    for nxt, _ in node.next_functions:
        _graph_nodes(nxt, seen)
    return seen


def test_eager_function_and_custom_op_give_the_same_bits(built):
    """Eager autograd takes the Function, torch.compile the custom op: the same kernels, so the
    same numbers; a second derivative through the fused backward is refused, not wrong."""
    native.set_route("mlp", "native")
    gen = torch.Generator().manual_seed(3)
    fc, proj = _mlp(64, 256, 64, gen)
    x = torch.randn(40, 64, generator=gen)
    gy = torch.randn(40, 64, generator=gen)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = native.gpt_mlp(a, fc, proj)
    yb = torch.ops.aigc.gpt_mlp(b, fc.weight, fc.bias, proj.weight, proj.bias)[0]
    ga, gb = _grads(ya, a, fc, proj, gy), _grads(yb, b, fc, proj, gy)
    assert torch.equal(ya, yb) and all(torch.equal(p, q) for p, q in zip(ga, gb))
    c = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="no autograd formula for a second derivative"):
        torch.autograd.grad((native.gpt_mlp(c, fc, proj) * gy).sum(), c, create_graph=True)


def test_native_mlp_compiles_without_graph_breaks(built):
    native.set_route("mlp", "native")
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    fc, proj = _mlp(64, 256, 64, gen)
    fn = torch.compile(lambda t: native.gpt_mlp(t * 1.5, fc, proj) + 1, fullgraph=True)
    x = torch.randn(3, 24, 64, generator=gen, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = proj(F.gelu(fc(x_ref * 1.5), approximate="tanh")) + 1
    grads_ref = torch.autograd.grad(y_ref.sum(), [x_ref, fc.weight, fc.bias])
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(x.grad, grads_ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fc.weight.grad, grads_ref[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fc.bias.grad, grads_ref[2], rtol=1e-4, atol=1e-5)


def test_native_mlp_gives_the_same_bits_on_any_thread_count_and_batch(built):
    """Row tiles go to threads and each row is its own dot products, so neither the thread
    count nor the rows around a row change its numbers (a score does not depend on the batch)."""
    gen = torch.Generator().manual_seed(5)
    fc, proj = _mlp(128, 512, 128, gen)
    x, gy = torch.randn(300, 128, generator=gen), torch.randn(300, 128, generator=gen)
    args = (fc.weight.detach(), fc.bias.detach(), proj.weight.detach(), proj.bias.detach())
    threads = torch.get_num_threads()
    out = {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y, u, h = native._mlp_fwd(built, x, *args)
            out[n] = (y, u, h, *native._mlp_du(built, gy, args[2], u))
    finally:
        torch.set_num_threads(threads)
    for n in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(out[1], out[n]))
    y_part = native._mlp_fwd(built, x[17:30].clone(), *args)[0]
    assert torch.equal(y_part, out[1][0][17:30])


def test_native_mlp_refuses_what_does_not_fit(built):
    gen = torch.Generator().manual_seed(6)
    w1, b1 = torch.randn(96, 16, generator=gen), torch.randn(96, generator=gen)
    w2 = torch.randn(16, 96, generator=gen)
    with pytest.raises(ValueError, match="multiple of 32"):
        native._mlp_fwd(built, torch.randn(4, 16), w1[:80], b1[:80], w2[:, :80], None)
    with pytest.raises(ValueError, match="got x"):
        native._mlp_fwd(built, torch.randn(4, 12), w1, b1, w2, None)
    with pytest.raises(ValueError, match="do not fit"):
        native._mlp_du(built, torch.randn(4, 16), w2, torch.randn(5, 96))


def test_mlp_route_is_measured_kept_forced_and_recorded(built, monkeypatch):
    from aigc.records import runtime

    calls = []
    real = native.measure_mlp_routes
    monkeypatch.setattr(native, "measure_mlp_routes", lambda: calls.append(1) or real(rounds=2))
    route = native.mlp_route()
    assert route in ("native", "torch") and calls == [1]
    cache = json.loads((native._cache_root() / "kernels.json").read_text())
    (entry,) = (v for k, v in cache.items() if k.startswith("gpt_mlp|"))
    assert entry["route"] == route and entry["aten_s"] > 0 and entry["native_s"] > 0
    assert runtime()["mlp_route"] == route
    native._measured.clear()  # a new process on the same machine: read, not measured
    assert native.mlp_route() == route and calls == [1]
    monkeypatch.setenv(native.ROUTE_ENVS["mlp"], "torch")
    native._measured.clear()
    assert native.mlp_route() == "torch"
