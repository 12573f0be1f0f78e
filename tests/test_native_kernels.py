"""aigc.models.native: the GELU kernel aigc compiles itself, against ATen's, and how it is chosen."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from aigc.models import native

# the autograd node a native kernel leaves: its eager Function, or its custom op under compile
_NODES = {"gelu": ("_EagerGeluBackward", "gelu_tanh"),
          "attention": ("_AttentionFunctionBackward", "causal_attention")}


def _made_natively(y, kind):
    eager, op = _NODES[kind]
    name = y.grad_fn.name()
    return name == eager or op in name.lower()


def _values():
    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.linspace(-30, 30, 6001), torch.randn(4099, generator=gen) * 2,
                      torch.tensor([0.0, -0.0, 1e-30, -1e-30])])


def test_native_gelu_matches_aten_forward_and_backward(built):
    x = _values().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    native.set_gelu_route("native")
    y = native.gelu_tanh(x)
    assert _made_natively(y, "gelu")  # the native kernels, not ATen's GeluBackward
    y_ref = F.gelu(x_ref, approximate="tanh")
    torch.testing.assert_close(y, y_ref, rtol=2e-6, atol=2e-6)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_native_gelu_keeps_nan_and_odd_lengths(built):
    native.set_gelu_route("native")
    for n in (4096, 4097, 4111, 5003):  # lengths that are not a multiple of the vector width
        x = torch.randn(n)
        x[n // 2] = float("nan")
        y = native.gelu_tanh(x)
        assert y[n // 2].isnan() and not y[: n // 2].isnan().any() and not y[n // 2 + 1:].isnan().any()
        torch.testing.assert_close(y, F.gelu(x, approximate="tanh"), rtol=2e-6, atol=2e-6,
                                   equal_nan=True)


def test_native_gelu_gives_each_value_the_same_bits_wherever_it_sits(built):
    """The last partial vector of an array takes the same vector code as the rest (through a
    padded copy), so a value's result does not depend on the array's length or its offset."""
    lib = native._loaded()
    gen = torch.Generator().manual_seed(3)
    x, gy = torch.randn(80, generator=gen) * 4, torch.randn(80, generator=gen)
    y, gx = native._fwd(lib, x), native._bwd(lib, gy, x)
    for start, n in ((0, 1), (0, 15), (0, 17), (3, 13), (5, 40), (64, 16), (70, 10)):
        part = slice(start, start + n)
        assert torch.equal(native._fwd(lib, x[part].clone()), y[part]), (start, n)
        assert torch.equal(native._bwd(lib, gy[part].clone(), x[part].clone()), gx[part]), (start, n)


def test_native_gelu_is_used_only_where_it_applies(built):
    native.set_gelu_route("native")

    def uses_native(x):
        return _made_natively(native.gelu_tanh(x.requires_grad_()), "gelu")

    assert uses_native(torch.randn(64, 128))
    assert uses_native(torch.randn(8, 8))  # any size: a result must not depend on the batch
    assert not uses_native(torch.randn(128, 64).t())  # not contiguous
    assert not uses_native(torch.randn(64, 128, dtype=torch.float64))
    assert not uses_native(torch.randn(64, 128, dtype=torch.bfloat16))
    native.set_gelu_route("torch")
    assert not uses_native(torch.randn(64, 128))


@pytest.mark.parametrize("kind", ["gelu", "attention"])
def test_gpt_trains_the_same_with_either_route(built, kind):
    from aigc.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=32, layers=2, heads=2, width=64))
    tokens = torch.randint(0, 40, (4, 33), generator=torch.Generator().manual_seed(2))
    grads = {}
    for route in ("torch", "native"):
        native.set_route(kind, route)
        model.zero_grad()
        loss = model.loss({"tokens": tokens})
        loss.backward()
        grads[route] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["native"][0], grads["torch"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(grads["native"][1], grads["torch"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if kind == "attention":  # generation (a key/value cache) keeps ATen's: the same tokens
        outs = []
        for route in ("native", "torch"):
            native.set_route("attention", route)
            outs.append(model.generate(tokens[:1, :5], 8,
                                       generator=torch.Generator().manual_seed(4)))
        assert torch.equal(outs[0], outs[1])


def test_eager_autograd_and_the_custom_ops_give_the_same_bits(built):
    """Eager autograd calls the kernels through an autograd.Function (no custom-op dispatch);
    the custom ops (which torch.compile calls for the GELU) run the same kernels, so the same
    numbers either way, and a second derivative is refused rather than silently wrong."""
    native.set_gelu_route("native")
    native.set_route("attention", "native")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 16, 3 * 64, generator=gen)
    gy = torch.randn(4, 16, 64, generator=gen)
    for kind, eager, op in (
            ("gelu", native.gelu_tanh, lambda t: torch.ops.aigc.gelu_tanh(t)),
            ("attention", lambda t: native.causal_attention(t, 4),
             lambda t: torch.ops.aigc.causal_attention(t, 4)[0])):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = eager(a), op(b)
        assert _made_natively(ya, kind) and ya.grad_fn.name() == _NODES[kind][0]
        g = gy if kind == "attention" else torch.randn(ya.shape, generator=gen)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad), kind
        c = x.clone().requires_grad_()
        (first,) = torch.autograd.grad((eager(c) * g).sum(), c, create_graph=True)
        with pytest.raises(RuntimeError, match="no autograd formula"):
            torch.autograd.grad(first.sum(), c)


def test_native_gelu_compiles_without_graph_breaks(built):
    native.set_gelu_route("native")
    torch._dynamo.reset()
    fn = torch.compile(lambda x: native.gelu_tanh(x * 2) + 1, fullgraph=True)  # raises on a break
    x = torch.randn(64, 128, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (F.gelu(x_ref * 2, approximate="tanh") + 1).sum().backward()
    torch.testing.assert_close(y, F.gelu(x.detach() * 2, approximate="tanh") + 1, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_routes_are_marked_constant_as_torch_marks_them_without_importing_dynamo():
    def ours():
        return "x"

    def torchs():
        return "x"

    native._constant_when_compiled(ours)
    torch.compiler.assume_constant_result(torchs)
    assert vars(ours) == vars(torchs) != {}
    for fn in (native.gelu_route, native.attention_route, native.mlp_route):
        assert vars(fn) == vars(torchs)
    # the command line builds its parser (importing every family's model) without torch._dynamo
    code = ("import sys; from aigc.cli import build_parser; build_parser(); "
            "print('torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_measured_route_is_kept_per_machine(built, monkeypatch):
    calls = []
    real = native.measure_gelu_routes

    def counted(*args, **kwargs):
        calls.append(1)
        return real(rounds=2)

    monkeypatch.setattr(native, "measure_gelu_routes", counted)
    route = native.gelu_route()
    assert route in ("native", "torch") and calls == [1]
    cache = json.loads((native._cache_root() / "kernels.json").read_text())
    (entry,) = (v for k, v in cache.items() if k.startswith("gelu_tanh|"))
    assert entry["route"] == route and entry["aten_s"] > 0 and entry["native_s"] > 0
    native._measured.clear()  # a new process on the same machine: read, not measured
    assert native.gelu_route() == route and calls == [1]


def test_no_compiler_means_aten_and_a_clear_error_when_forced(fresh, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.gelu_route() == "torch"
    x = torch.randn(64, 128)
    torch.testing.assert_close(native.gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=0, atol=0)
    monkeypatch.setenv(native.ROUTE_ENV, "native")
    with pytest.raises(native.NativeKernelError, match="AIGC_GELU_ROUTE=native, but no C compiler"):
        native.gelu_route()
    monkeypatch.setenv(native.ROUTE_ENV, "fast")
    with pytest.raises(ValueError, match="AIGC_GELU_ROUTE must be"):
        native.gelu_route()


def test_a_source_that_does_not_compile_leaves_no_library(fresh, monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    broken = tmp_path / "kernels.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "_SOURCE", broken)
    assert native._build() is None
    assert "failed on kernels.c" in native._build_error
    assert native.gelu_route() == "torch"
    assert not list((fresh / "native").rglob("*.so")) and not list((fresh / "native").rglob(".*tmp*"))


def test_records_carry_the_native_routes():
    from aigc.records import runtime

    assert runtime()["gelu_route"] in ("native", "torch")
    assert runtime()["decode_route"] in ("native", "torch")
    assert runtime()["attention_route"] in ("native", "torch")


def test_decoding_kernels_match_their_aten_twins(built):
    gen = torch.Generator().manual_seed(3)
    for rows in (1, 5):
        h = torch.randn(rows, 576, generator=gen) * 3
        w = torch.randn(576, generator=gen)
        torch.testing.assert_close(native.rms_norm(h, w, 1e-5), native.rms_norm_aten(h, w, 1e-5),
                                   rtol=2e-6, atol=2e-6)
        gu = torch.randn(rows, 2 * 1536, generator=gen) * 5
        torch.testing.assert_close(native.silu_mul(gu), native.silu_mul_aten(gu), rtol=2e-6,
                                   atol=2e-6)
        H, KV, d, cap, pos = 9, 3, 64, 16, 4
        qkv = torch.randn(rows, (H + 2 * KV) * d, generator=gen)
        angle = torch.arange(pos, pos + rows, dtype=torch.float32)[:, None] * \
            torch.rand(d // 2, generator=gen)[None, :]
        cos, sin = torch.cat([angle, angle], -1).cos(), torch.cat([angle, angle], -1).sin()
        ours = native.rope_cache(qkv, cos, sin, torch.zeros(KV, cap, d), torch.zeros(KV, cap, d),
                                 H, KV, d, pos)
        ref = native.rope_cache_aten(qkv, cos, sin, torch.zeros(KV, cap, d),
                                     torch.zeros(KV, cap, d), H, KV, d, pos)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert ours[1][:, :pos].abs().sum() == 0 and ours[1][:, pos + rows:].abs().sum() == 0


def test_decode_route_is_measured_and_forced_like_gelu(built, monkeypatch):
    assert native.decode_route() in ("native", "torch")
    monkeypatch.setenv(native.ROUTE_ENVS["decode"], "torch")
    native._measured.clear()
    assert native.decode_route() == "torch"
    old = native.set_route("decode", "native")
    assert native.decode_route() == "native"
    native.set_route("decode", old)
    with pytest.raises(ValueError, match="kernel kind"):
        native.set_route("matmul", "native")


def test_kernels_command_shows_and_remeasures_the_routes(built, capsys, monkeypatch):
    from aigc.cli import main
    from aigc.models import layers

    monkeypatch.setattr(layers, "measure_linear_routes",
                        lambda: {"route": "torch", "torch_over_onednn": 0.9, "margin": 1.1})
    monkeypatch.setattr(native, "measure_gelu_routes", lambda: native._compare(
        lambda: None, lambda: None, rounds=1, shape="stub") | {"aten_over_native": 2.5,
                                                               "route": "native"})
    threads = torch.get_num_threads()
    try:
        assert main(["kernels", "--measure", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    cache = json.loads((native._cache_root() / "kernels.json").read_text())
    assert len(cache) == 1 + len(native.ROUTE_ENVS)  # linear and every native family, this machine
    assert "native:  built:" in out
    assert "gelu      native  ATen time / native time 2.50" in out
    assert "linear    torch   F.linear time / oneDNN time 0.90" in out
    assert "attention " in out and "conv      " in out and "groupnorm " in out
    assert main(["kernels", "--threads", "0"]) == 2


def test_decoding_kernels_on_odd_sizes_and_a_full_cache(built):
    gen = torch.Generator().manual_seed(5)
    h, w = torch.randn(3, 37, generator=gen), torch.randn(37, generator=gen)
    torch.testing.assert_close(native.rms_norm(h, w, 1e-6), native.rms_norm_aten(h, w, 1e-6),
                               rtol=2e-6, atol=2e-6)
    gu = torch.randn(2, 26, generator=gen)
    torch.testing.assert_close(native.silu_mul(gu), native.silu_mul_aten(gu), rtol=2e-6, atol=2e-6)
    H, KV, d, cap, T = 3, 1, 6, 7, 2
    qkv = torch.randn(T, (H + 2 * KV) * d, generator=gen)
    cos, sin = torch.rand(T, d, generator=gen), torch.rand(T, d, generator=gen)
    ours = native.rope_cache(qkv, cos, sin, torch.zeros(KV, cap, d), torch.zeros(KV, cap, d),
                             H, KV, d, cap - T)  # the last two positions: pos + T == cap
    ref = native.rope_cache_aten(qkv, cos, sin, torch.zeros(KV, cap, d), torch.zeros(KV, cap, d),
                                 H, KV, d, cap - T)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_decoding_kernels_refuse_what_would_write_out_of_bounds(built):
    H, KV, d, cap = 2, 1, 4, 3
    qkv, cos, sin = torch.randn(2, (H + 2 * KV) * d), torch.rand(2, d), torch.rand(2, d)
    kc, vc = torch.zeros(KV, cap, d), torch.zeros(KV, cap, d)
    with pytest.raises(ValueError, match="positions 2..3"):
        native.rope_cache(qkv, cos, sin, kc, vc, H, KV, d, 2)  # one past the cache
    with pytest.raises(ValueError, match="contiguous float32"):
        native.rope_cache(qkv, cos, sin, torch.zeros(KV, d, cap).transpose(1, 2), vc, H, KV, d, 0)
    with pytest.raises(ValueError, match="contiguous float32"):
        native.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.randn(8), 1e-5)
    with pytest.raises(ValueError, match=r"w \(D,\)"):
        native.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5)
    with pytest.raises(ValueError, match=r"gu \(T, 2N\)"):
        native.silu_mul(torch.randn(2, 7))
    # the op itself makes a strided input contiguous instead of reading the wrong elements
    x = torch.randn(64, 256)[:, ::2]
    torch.testing.assert_close(torch.ops.aigc.gelu_tanh(x), F.gelu(x, approximate="tanh"),
                               rtol=2e-6, atol=2e-6)


def test_threads_building_at_once_all_get_the_library(fresh):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    import threading

    got = []
    threads = [threading.Thread(target=lambda: got.append(native._build())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(lib is not None for lib in got), native._build_error
    assert not list((fresh / "native").rglob("*.tmp"))


def test_a_failed_build_is_not_kept_as_the_machines_choice(fresh, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.gelu_route() == "torch"
    assert not (fresh / "kernels.json").exists()  # nothing measured, nothing kept
    assert native.current_route("gelu") == "torch"  # decided in this process
    native._measured.clear()
    assert native.current_route("gelu") == "undecided"


# ------------------------------------------------------------------- causal self-attention


def _attention_pair(qkv, heads):
    """(output, d output / d qkv) of the native kernels and of ATen's route, for one gradient."""
    gy = torch.randn(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3,
                     generator=torch.Generator().manual_seed(7))
    out = {}
    for route in ("native", "torch"):
        native.set_route("attention", route)
        x = qkv.detach().clone().requires_grad_()
        y = native.causal_attention(x, heads)
        assert _made_natively(y, "attention") == (route == "native")
        y.backward(gy)
        out[route] = (y.detach(), x.grad)
    return out


@pytest.mark.parametrize("B,T,H,d", [(2, 64, 4, 32), (3, 17, 2, 16), (1, 1, 1, 16),
                                     (2, 128, 2, 64), (1, 100, 1, 128), (2, 33, 3, 48),
                                     (1, 256, 2, 32), (2, 201, 1, 128)])
def test_native_attention_matches_aten_forward_and_backward(built, B, T, H, d):
    """Both float32 routes against ATen in float64: the native kernels' error is no more than
    twice ATen's own (plus a float32 rounding's worth)."""
    qkv = torch.randn(B, T, 3 * H * d, generator=torch.Generator().manual_seed(T)) * 2
    got = _attention_pair(qkv, H)
    x64 = qkv.double().requires_grad_()
    y64 = native.causal_attention_aten(x64, H)
    gy = torch.randn(B, T, H * d, generator=torch.Generator().manual_seed(7))
    (g64,) = torch.autograd.grad(y64, x64, gy.double())
    for i, ref in enumerate((y64.detach(), g64)):
        err = {r: (got[r][i].double() - ref).abs().max().item() for r in ("native", "torch")}
        assert err["native"] <= 2 * err["torch"] + 1e-6 * (1 + ref.abs().max().item()), err


def test_native_attention_takes_only_what_fits(built):
    native.set_route("attention", "native")
    fits = native.attention_fits
    assert fits(torch.randn(2, 64, 3 * 128), 4)
    assert fits(torch.randn(2, 256, 3 * 128), 4)
    assert not fits(torch.randn(2, 257, 3 * 128), 4)  # the kept probabilities grow as T^2
    assert not fits(torch.randn(2, 8, 3 * 96), 4)  # head width 24: not a multiple of 16
    assert not fits(torch.randn(2, 8, 3 * 256), 1)  # head width 256: past 128
    assert not fits(torch.randn(2, 8, 3 * 64, dtype=torch.float64), 2)
    assert not fits(torch.randn(2, 8, 3 * 64, dtype=torch.bfloat16), 2)
    assert not fits(torch.randn(2, 3 * 64, 8).transpose(1, 2), 2)  # not contiguous
    assert not fits(torch.randn(8, 3 * 64), 2)  # no batch dimension
    # what does not fit still gets the right answer, by ATen's route
    qkv = torch.randn(2, 8, 3 * 96)
    torch.testing.assert_close(native.causal_attention(qkv, 4),
                               native.causal_attention_aten(qkv, 4), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of 16"):
        native._attn_fwd(native._loaded(), qkv, 4)


def test_native_attention_keeps_nan_where_aten_does(built):
    qkv = torch.randn(2, 20, 3 * 32, generator=torch.Generator().manual_seed(3))
    qkv[1, 5, 40] = float("nan")  # a key of head 1 at position 5: rows 5.. of that head
    got = _attention_pair(qkv, 2)
    assert torch.equal(got["native"][0].isnan(), got["torch"][0].isnan())
    assert got["native"][0].isnan().any() and not got["native"][0][0].isnan().any()


def test_native_attention_compiles_without_graph_breaks(built):
    native.set_route("attention", "native")
    torch._dynamo.reset()
    fn = torch.compile(lambda x: native.causal_attention(x * 1.5, 2) + 1, fullgraph=True)
    x = torch.randn(3, 24, 3 * 64, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = native.causal_attention_aten(x_ref * 1.5, 2) + 1
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


def test_native_attention_adds_the_projection_bias_itself(built):
    """qkv computed without its bias plus the bias: exactly the kernels' numbers on qkv + bias,
    and the bias's gradient is qkv's summed over batch and positions, on every call path
    (eager Function, custom op, compiled, no_grad)."""
    native.set_route("attention", "native")
    gen = torch.Generator().manual_seed(4)
    qkv0, bias = torch.randn(3, 37, 3 * 64, generator=gen), torch.randn(3 * 64, generator=gen)
    gy = torch.randn(3, 37, 64, generator=gen)
    ref_x = (qkv0 + bias).requires_grad_()
    ref = native.causal_attention(ref_x, 2)
    (ref_g,) = torch.autograd.grad(ref, ref_x, gy)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, b: native.causal_attention(x, 2, b), fullgraph=True)
    paths = {"function": lambda x, b: native.causal_attention(x, 2, b),
             "op": lambda x, b: torch.ops.aigc.causal_attention(x, 2, b)[0],
             "compiled": compiled}
    for name, fn in paths.items():
        x, b = qkv0.clone().requires_grad_(), bias.clone().requires_grad_()
        y = fn(x, b)
        gx, gb = torch.autograd.grad(y, (x, b), gy)
        assert torch.equal(y, ref) and torch.equal(gx, ref_g), name
        torch.testing.assert_close(gb, ref_g.sum((0, 1)), rtol=1e-5, atol=1e-5, msg=name)
    with torch.no_grad():
        assert torch.equal(native.causal_attention(qkv0, 2, bias), ref.detach())
    # against float64 ATen on qkv + bias
    x64, b64 = qkv0.double().requires_grad_(), bias.double().requires_grad_()
    y64 = native.causal_attention_aten(x64 + b64, 2)
    g64 = torch.autograd.grad(y64, (x64, b64), gy.double())
    x, b = qkv0.clone().requires_grad_(), bias.clone().requires_grad_()
    y = native.causal_attention(x, 2, b)
    for got, want in zip((y, *torch.autograd.grad(y, (x, b), gy)), (y64, *g64)):
        assert (got.double() - want).abs().max().item() <= 1e-5 * (1 + want.abs().max().item())
    # a bias that does not fit is refused by the kernels and added the usual way elsewhere
    with pytest.raises(ValueError, match="bias of shape"):
        native._attn_fwd(native._loaded(), qkv0, 2, bias[:-1])
    torch.testing.assert_close(native.causal_attention(qkv0, 2, bias.double()),
                               native.causal_attention_aten(qkv0 + bias.double(), 2))


def test_gpt_attention_folds_its_bias_into_the_kernels(built, monkeypatch):
    """A GPT block on the native route computes its qkv without the bias and hands the bias to
    the kernels: the same loss as the ATen route and the same gradients, bias's included."""
    from aigc.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=32, layers=2, heads=2, width=64))
    tokens = torch.randint(0, 40, (4, 33), generator=torch.Generator().manual_seed(2))
    out, calls = {}, []
    real = native.native_causal_attention
    monkeypatch.setattr(native, "native_causal_attention",
                        lambda q, h, b=None: calls.append(b) or real(q, h, b))
    for route in ("native", "torch"):
        native.set_route("attention", route)
        model.zero_grad(set_to_none=True)
        calls.clear()
        loss = model.loss({"tokens": tokens})
        loss.backward()
        out[route] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        if route == "native":  # both layers, each with its own qkv bias
            assert len(calls) == 2 and all(b is blk.attn.qkv.bias
                                           for b, blk in zip(calls, model.blocks))
        else:
            assert calls == []
    torch.testing.assert_close(out["native"][0], out["torch"][0], rtol=1e-5, atol=1e-6)
    for name, g in out["native"][1].items():
        torch.testing.assert_close(g, out["torch"][1][name], rtol=1e-4, atol=1e-5, msg=name)
    # past the kernels' 256 positions the product adds its bias as before: same loss
    long = GPT(GPTConfig(vocab_size=40, context_length=300, layers=1, heads=2, width=32))
    tokens = torch.randint(0, 40, (1, 301), generator=torch.Generator().manual_seed(5))
    losses = []
    for route in ("native", "torch"):
        native.set_route("attention", route)
        calls.clear()
        losses.append(long.loss({"tokens": tokens}).detach())
        assert calls == []
    assert torch.equal(losses[0], losses[1])


def test_compiled_gpt_calls_the_plain_operators(built):
    """Under torch.compile a GPT block's attention and MLP run as plain operators traced
    through autograd.Functions (no custom op's Python autograd kernel on every call), with the
    qkv bias inside the attention kernels; loss and gradients as in eager mode."""
    from torch.profiler import profile

    from aigc.models.gpt import GPT, GPTConfig

    native.set_route("attention", "native")
    native.set_route("mlp", "native")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, context_length=32, layers=2, heads=2, width=64))
    batch = {"tokens": torch.randint(0, 40, (4, 33), generator=torch.Generator().manual_seed(3))}
    eager_loss = model.loss(batch)
    eager = torch.autograd.grad(eager_loss, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model.loss)
    compiled(batch)  # compile outside the profile
    with profile() as prof:
        loss = compiled(batch)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    names = {e.name for e in prof.events()}
    assert {"aigc::attention_fwd", "aigc::attention_bwd", "aigc::mlp_fwd", "aigc::mlp_du"} <= names
    assert not names & {"aigc::causal_attention", "aigc::gpt_mlp", "aigc::gpt_mlp_backward"}
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_attention_route_is_measured_kept_and_forced(built, monkeypatch):
    calls = []
    real = native.measure_attention_routes
    monkeypatch.setattr(native, "measure_attention_routes",
                        lambda: calls.append(1) or real(rounds=2))
    route = native.attention_route()
    assert route in ("native", "torch") and calls == [1]
    cache = json.loads((native._cache_root() / "kernels.json").read_text())
    (entry,) = (v for k, v in cache.items() if k.startswith("causal_attention|"))
    assert entry["route"] == route and entry["aten_s"] > 0 and entry["native_s"] > 0
    native._measured.clear()
    assert native.attention_route() == route and calls == [1]
    monkeypatch.setenv(native.ROUTE_ENVS["attention"], "torch")
    native._measured.clear()
    assert native.attention_route() == "torch"


def test_kernels_build_and_measure_inside_no_grad_and_inference_mode(fresh):
    """The first GPT call of a process may be scoring under no_grad or inference_mode: the
    build's self-check and the attention measurement still run (they need autograd)."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    with torch.inference_mode():
        assert native._build() is not None, native._build_error
        assert native.attention_route() in ("native", "torch")


def test_no_grad_calls_the_kernels_directly_with_the_same_result(built):
    """Scoring and generation (no gradient) skip the custom ops' dispatch; same numbers."""
    from aigc.models.gpt import GPT, GPTConfig

    native.set_gelu_route("native")
    native.set_route("attention", "native")
    x = torch.randn(3, 16, 64)
    with torch.no_grad():
        y = native.gelu_tanh(x)
        a = native.causal_attention(torch.cat([x, x, x], -1), 4)
    assert y.grad_fn is None and torch.equal(y, torch.ops.aigc.gelu_tanh(x))
    assert torch.equal(a, torch.ops.aigc.causal_attention(torch.cat([x, x, x], -1), 4)[0])
    # so a GPT scores a sequence the same alone or in a batch of any size
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, context_length=16, layers=2, heads=2, width=32)).eval()
    tokens = torch.randint(0, 30, (5, 17), generator=torch.Generator().manual_seed(1))
    together = model.log_likelihood({"tokens": tokens})[0]
    alone = torch.cat([model.log_likelihood({"tokens": t[None]})[0] for t in tokens])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=0)


def test_kernels_give_the_same_numbers_on_any_thread_count(built):
    """Threaded builds split work by whole heads and whole blocks: no result depends on how
    many threads ran it."""
    gen = torch.Generator().manual_seed(9)
    qkv, gy = torch.randn(12, 64, 384, generator=gen), torch.randn(12, 64, 128, generator=gen)
    bias = torch.randn(384, generator=gen)
    x = torch.randn(768, 512, generator=gen)
    threads = torch.get_num_threads()
    out = {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y, p = native._attn_fwd(built, qkv, 4)
            yb, pb = native._attn_fwd(built, qkv, 4, bias)
            out[n] = (y, *native._attn_bwd(built, gy, qkv, p, 4), yb,
                      *native._attn_bwd(built, gy, qkv, pb, 4, bias), native._fwd(built, x),
                      native._bwd(built, x, x))
    finally:
        torch.set_num_threads(threads)
    for n in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(out[1], out[n]))


def test_a_threaded_build_that_fails_its_check_falls_back_to_one_thread(fresh, monkeypatch):
    """Any failure of the OpenMP build (compile, load, self-check) tries the one-thread build."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    about = subprocess.run([native._compiler(), "--version"], capture_output=True, text=True).stdout
    if not native._is_gcc(about):
        pytest.skip("the OpenMP build is tried with GCC only (clang links another runtime)")
    real = native._self_check
    seen = []

    def first_fails(lib):
        seen.append(1)
        return "simulated failure" if len(seen) == 1 else real(lib)

    monkeypatch.setattr(native, "_shares_torchs_openmp", lambda version: True)
    monkeypatch.setattr(native, "_self_check", first_fails)
    assert native._build() is not None and native._build_error is None
    assert len(seen) == 2 and native._threaded is False


def test_openmp_is_shared_only_with_gcc(built):
    assert not native._shares_torchs_openmp("Ubuntu clang version 18.1.3")
    if not any(line.rstrip().endswith("/libgomp.so.1") for line in open("/proc/self/maps")):
        pytest.skip("torch here does not run GNU OpenMP under libgomp.so.1")
    assert native._shares_torchs_openmp("gcc (Debian 14.2.0-19) 14.2.0")
    # `cc --version` names GCC only on its copyright line
    assert native._shares_torchs_openmp("cc (Debian 14.2.0-19) 14.2.0\nCopyright (C) 2024 Free "
                                        "Software Foundation, Inc.")
    assert native._threaded == native._shares_torchs_openmp(subprocess.run(
        [native._compiler(), "--version"], capture_output=True, text=True).stdout)


def test_kernel_outputs_stay_on_the_cpu_under_another_default_device(built):
    qkv = torch.randn(2, 20, 3 * 32)
    ref = native._attn_fwd(built, qkv, 2)
    rope_in = (torch.randn(1, 4 * 8), torch.ones(1, 8), torch.zeros(1, 8), torch.zeros(1, 2, 8),
               torch.zeros(1, 2, 8))
    gu = torch.randn(1, 8)
    with torch.device("meta"):  # the inputs were made on the CPU before
        y, p = native._attn_fwd(built, qkv, 2)
        q = native.rope_cache(*rope_in, 2, 1, 8, 0)[0]
        s = native.silu_mul(gu)
    assert y.device.type == p.device.type == q.device.type == s.device.type == "cpu"
    assert torch.equal(y, ref[0]) and torch.equal(p, ref[1])


@pytest.mark.parametrize("B,H,d,cap,pos", [(1, 4, 32, 64, 0), (1, 4, 32, 64, 40), (3, 2, 16, 9, 8),
                                           (2, 1, 128, 300, 257), (1, 3, 48, 20, 7)])
def test_gpt_decoding_attention_matches_its_aten_twin(built, B, H, d, cap, pos):
    """One new token: its key and value written at ``pos`` (nothing else in the caches moved)
    and its attention over positions 0..pos, against the head split, cache writes and SDPA."""
    gen = torch.Generator().manual_seed(pos + d)
    caches = torch.randn(2, B, H, cap, d, generator=gen)
    qkv = torch.randn(B, 1, 3 * H * d, generator=gen) * 2
    ours, ref = caches.clone(), caches.clone()
    y = native.gpt_decode_attention(qkv, ours[0], ours[1], H, pos)
    y_ref = native.gpt_decode_attention_aten(qkv, ref[0], ref[1], H, pos)
    assert y.shape == (B, 1, H * d)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours, ref)  # the same values written, at the same place
    assert not torch.equal(ours[0, :, :, pos], caches[0, :, :, pos])


def test_gpt_decoding_attention_refuses_what_does_not_fit(built):
    qkv, kc = torch.randn(1, 1, 3 * 64), torch.zeros(1, 2, 8, 32)
    assert native.gpt_decode_fits(qkv, kc, 2, 7)
    assert not native.gpt_decode_fits(qkv, kc, 2, 8)  # one past the cache
    assert not native.gpt_decode_fits(torch.randn(1, 2, 3 * 64), kc, 2, 0)  # two tokens
    assert not native.gpt_decode_fits(qkv.double(), kc, 2, 0)
    assert not native.gpt_decode_fits(torch.randn(1, 1, 3 * 24), torch.zeros(1, 2, 8, 12), 2, 0)
    with pytest.raises(ValueError, match="do not fit 2 heads at position 8"):
        native.gpt_decode_attention(qkv, kc, torch.zeros(1, 2, 8, 32), 2, 8)
    nan = qkv.clone()
    nan[0, 0, 3] = float("nan")  # a query NaN makes that head's output NaN, as in SDPA
    y = native.gpt_decode_attention(nan, kc, torch.zeros(1, 2, 8, 32), 2, 3)
    assert y[0, 0, :32].isnan().all() and not y[0, 0, 32:].isnan().any()


def test_gpt_generation_takes_the_decoding_kernel_with_the_same_tokens(built, monkeypatch):
    from aigc.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=48, width=64, heads=2, layers=2)).eval()
    prompt = torch.randint(0, 50, (2, 9))
    calls = []
    real = native.gpt_decode_attention_fitted
    monkeypatch.setattr(native, "gpt_decode_attention_fitted",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with native.routes(decode="torch"):
        ref = model.generate(prompt, 30, temperature=0)
    assert not calls
    with native.routes(decode="native"):
        out = model.generate(prompt, 30, temperature=0)
    assert len(calls) == 30 * 2  # every cached step, both layers; the prompt's pass not
    assert torch.equal(out, ref)
    steps = {}
    for route in ("torch", "native"):  # the logits of a cached step, both ways
        with torch.no_grad(), native.routes(decode=route):
            cache = model.new_cache(2)
            model(prompt, cache)
            steps[route] = torch.stack([model(out[:, 9 + i:10 + i], cache)[:, -1]
                                        for i in range(20)])
    torch.testing.assert_close(steps["native"], steps["torch"], rtol=1e-5, atol=1e-5)
