"""aigc.models.native's 3x3 convolution (Winograd F(4x4, 3x3), and F(2x2, 3x3)) against float64
ATen, where it is taken and where not, and the UNets that use it."""

import json

import pytest
import torch
import torch.nn.functional as F
from native_fixtures import rel_error

from aigc.models import native
from aigc.models.layers import Conv2d

CL = torch.channels_last


def _nhwc(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).contiguous(memory_format=CL)


def _reference(x, w, b, gy):
    """Output and the three gradients in float64."""
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    y = F.conv2d(xd, wd, bd, padding=1)
    return (y, *torch.autograd.grad(y, (xd, wd, bd), gy.double()))




# odd and even sizes, a single pixel, one row, channels 16 .. 256 and not powers of two
SHAPES = [(2, 16, 5, 7, 32), (1, 32, 1, 1, 16), (3, 48, 6, 3, 80), (4, 64, 14, 14, 64),
          (2, 96, 28, 28, 32), (1, 256, 4, 9, 16), (2, 16, 1, 13, 256), (5, 128, 7, 7, 64)]


@pytest.mark.parametrize("B,ci,H,W,co", SHAPES)
def test_forward_and_gradients_match_float64(built, B, ci, H, W, co):
    """What the route runs (F(4x4, 3x3)), through autograd."""
    gen = torch.Generator().manual_seed(B * 1000 + ci + H)
    x = _nhwc(B, ci, H, W, gen=gen).requires_grad_()
    w = (torch.randn(co, ci, 3, 3, generator=gen) * (ci * 9) ** -0.5).requires_grad_()
    b = torch.randn(co, generator=gen).requires_grad_()
    gy = _nhwc(B, co, H, W, gen=gen)
    assert native.conv3x3_fits(x, w, 1, 1, 1, 1)
    y = native.native_conv3x3(x, w, b)
    assert y.grad_fn.name() == "_EagerConv3x3Backward"
    assert y.is_contiguous(memory_format=CL) and y.shape == (B, co, H, W)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    ref = _reference(x.detach(), w.detach(), b.detach(), gy)
    # oneDNN's float32 direct convolution is within about 1e-6 of float64 on these; F(4x4)'s
    # larger transforms round about 10x coarser
    for name, ours, theirs in zip(("y", "dx", "dw", "db"), (y, gx, gw, gb), ref, strict=True):
        assert ours.shape == theirs.shape and ours.dtype == torch.float32
        assert rel_error(ours, theirs) < 3e-5, (name, rel_error(ours, theirs))


@pytest.mark.parametrize("B,ci,H,W,co", SHAPES[:4])
def test_both_tile_sizes_match_float64(built, B, ci, H, W, co):
    """kernels.c's F(2x2, 3x3) (oneDNN's rounding) and F(4x4, 3x3), called directly."""
    gen = torch.Generator().manual_seed(B + ci + H + W)
    x = _nhwc(B, ci, H, W, gen=gen)
    w = torch.randn(co, ci, 3, 3, generator=gen) * (ci * 9) ** -0.5
    b = torch.randn(co, generator=gen)
    gy = _nhwc(B, co, H, W, gen=gen)
    ref = _reference(x, w, b, gy)
    for m, tol in ((2, 3e-6), (4, 3e-5)):
        y = native._conv_fwd(built, x, native.winograd_weights(built, w, m=m), b, m)
        gx = native._conv_fwd(built, gy, native.winograd_weights(built, w, True, m), None, m)
        gw, gb = native._conv_wgrad(built, x, gy, m=m)
        for name, ours, theirs in zip(("y", "dx", "dw", "db"), (y, gx, gw, gb), ref, strict=True):
            assert rel_error(ours, theirs) < tol, (m, name, rel_error(ours, theirs))


def test_results_do_not_depend_on_the_batch_or_the_thread_count(built):
    gen = torch.Generator().manual_seed(1)
    x = _nhwc(7, 64, 25, 23, gen=gen)  # large enough to be split across threads
    w = torch.randn(48, 64, 3, 3, generator=gen) * 0.1
    b = torch.randn(48, generator=gen)
    gy = _nhwc(7, 48, 25, 23, gen=gen)
    threads = torch.get_num_threads()
    try:
        outs = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = native.native_conv3x3(xg, wg, b)
            outs[n] = (y, *torch.autograd.grad(y, (xg, wg), gy))
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(outs[1], outs[2], strict=True):
        assert torch.equal(a, c)
    # each image's output is the same bits alone as in the batch (tiles are computed alone)
    with torch.no_grad():
        whole = native.native_conv3x3(x, w, b)
        for i in (0, 3, 6):
            assert torch.equal(native.native_conv3x3(x[i:i + 1], w, b), whole[i:i + 1])


def test_takes_only_what_fits_and_leaves_the_rest_to_aten(built):
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(32, 16, 3, 3, generator=gen)
    x = _nhwc(2, 16, 8, 8, gen=gen)
    assert native.conv3x3_fits(x, w, 1, 1, 1, 1) and native.conv3x3_fits(x, w, (1, 1), (1, 1))
    nchw = x.contiguous()
    refused = [
        (nchw, w, 1, 1, 1, 1),                                      # not channels-last
        (x, w, 2, 1, 1, 1),                                         # stride 2
        (x, w, 1, 0, 1, 1),                                         # no padding
        (x, w, 1, 1, 2, 1),                                         # dilation
        (x, torch.randn(32, 8, 3, 3), 1, 1, 1, 2),                  # groups
        (x.double(), w.double(), 1, 1, 1, 1),                       # float64
        (x, torch.randn(32, 16, 1, 1), 1, 1, 1, 1),                 # 1x1 kernel
        (_nhwc(2, 8, 8, 8, gen=gen), torch.randn(32, 8, 3, 3), 1, 1, 1, 1),    # 8 channels in
        (x, torch.randn(24, 16, 3, 3), 1, 1, 1, 1),                 # 24 channels out
        (_nhwc(1, 272, 4, 4, gen=gen), torch.randn(16, 272, 3, 3), 1, 1, 1, 1),  # past 256
        (_nhwc(1, 256, 4, 4, gen=gen), torch.randn(256, 256, 3, 3), 1, 1, 1, 1),  # 65,536 kernels
    ]
    for args in refused:
        assert not native.conv3x3_fits(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.conv3x3_fits(x, w, 1, 1, 1, 1)
    # what does not fit is F.conv2d's result, bit for bit, even with the route forced native
    native.set_route("conv", "native")
    for xx, ww, s, p, d, g in refused[:5]:
        assert torch.equal(native.conv2d(xx, ww, None, s, p, d, g), F.conv2d(xx, ww, None, s, p, d, g))


def test_module_route_forcing_and_state_dict(built, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    plain = torch.nn.Conv2d(32, 16, 3, padding=1)
    ours = Conv2d(32, 16, 3, padding=1)
    ours.load_state_dict(plain.state_dict())  # same keys: checkpoints load either way
    assert ours.state_dict().keys() == plain.state_dict().keys()
    x = _nhwc(3, 32, 9, 9, gen=gen)
    with torch.no_grad():
        expected = plain(x)
        monkeypatch.setenv(native.ROUTE_ENVS["conv"], "torch")
        assert torch.equal(ours(x), expected)
        monkeypatch.setenv(native.ROUTE_ENVS["conv"], "native")
        got = ours(x)
    assert not torch.equal(got, expected)  # another summation: the last bits move
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a padding mode other than zeros, or a string padding, is nn.Conv2d's own
    circular = Conv2d(32, 16, 3, padding=1, padding_mode="circular")
    assert circular(x).grad_fn.name() != "_EagerConv3x3Backward"


def test_second_derivatives_come_out_right(built):
    """A backward that builds a graph (gradient penalties) goes through ATen's differentiable
    operations: the second derivative is the same as on ATen's route."""
    gen = torch.Generator().manual_seed(4)
    x0 = _nhwc(2, 16, 5, 5, gen=gen)
    w0 = torch.randn(16, 16, 3, 3, generator=gen) * 0.2
    out = {}
    for name in ("native", "aten"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = native.native_conv3x3(x, w, None) if name == "native" else F.conv2d(x, w, padding=1)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        out[name] = torch.autograd.grad(gx.square().sum(), (x, w))
    for a, b in zip(out["native"], out["aten"], strict=True):
        assert a.abs().sum() > 0
        assert rel_error(a, b.double()) < 1e-5  # float32 either way: only the summation differs


def test_route_is_measured_kept_and_forced(built, monkeypatch):
    calls = []
    real = native.measure_conv_routes
    monkeypatch.setattr(native, "measure_conv_routes", lambda: calls.append(1) or real(rounds=2))
    route = native.route("conv")
    assert route in ("native", "torch") and calls == [1]
    cache = json.loads((native._cache_root() / "kernels.json").read_text())
    (entry,) = (v for k, v in cache.items() if k.startswith("conv3x3|"))
    assert entry["route"] == route and entry["aten_s"] > 0 and entry["native_s"] > 0
    native._measured.clear()
    assert native.route("conv") == route and calls == [1]
    monkeypatch.setenv(native.ROUTE_ENVS["conv"], "torch")
    assert native.current_route("conv") == "torch"


def test_records_carry_the_conv_route():
    from aigc.records import runtime

    assert runtime()["conv_route"] in ("native", "torch", "undecided")


def test_images_record_the_unet_routes_and_replay_on_them(built, tmp_path, monkeypatch):
    """An image drawn on the native convolutions and GroupNorm + SiLU replays on them in a
    process whose settings say ATen (and the other way round), to the same bytes; a record
    from before the fields replays on ATen's, as it was drawn."""
    from aigc.checkpoints import save_model_file
    from aigc.cli import main
    from aigc.config import config_to_dict
    from aigc.data.images import FASHION_CLASSES
    from aigc.media import read_record, save_grid
    from aigc.models.diffusion import Diffusion, DiffusionConfig

    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(image_size=8, channels=(16, 32), attention_levels=(1,),
                                      num_train_timesteps=20, num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = save_model_file(tmp_path / "d.safetensors", family="diffusion",
                           model_config=config_to_dict(model.cfg), weights=model.state_dict(),
                           meta={"data": "fashion-mnist", "class_names": FASHION_CLASSES})
    args = ["sample", str(ckpt), "--class", "3", "--n", "4", "--seed", "5", "--steps", "4"]
    drawn = {}
    kinds = ("conv", "groupnorm")

    def set_routes(route):
        for kind in kinds:
            monkeypatch.setenv(native.ROUTE_ENVS[kind], route)
            native.set_route(kind, None)

    for route in ("native", "torch"):
        set_routes(route)
        drawn[route] = tmp_path / f"{route}.png"
        assert main([*args, "--out", str(drawn[route])]) == 0
        assert all(read_record(drawn[route])[f"{kind}_route"] == route for kind in kinds)
    assert drawn["native"].read_bytes() != drawn["torch"].read_bytes()  # last bits differ
    for route, other in (("native", "torch"), ("torch", "native")):
        set_routes(other)
        again = tmp_path / f"again-{route}.png"
        assert main(["sample", "--replay", str(drawn[route]), "--out", str(again)]) == 0
        assert again.read_bytes() == drawn[route].read_bytes()
    rec = read_record(drawn["torch"])
    for kind in kinds:
        del rec[f"{kind}_route"]
    old = tmp_path / "old.png"
    save_grid(old, torch.zeros(1, 1, 8, 8), nrow=1, record=rec)
    set_routes("native")
    assert main(["sample", "--replay", str(old), "--out", str(tmp_path / "old-again.png")]) == 0
    assert (tmp_path / "old-again.png").read_bytes() == drawn["torch"].read_bytes()


def test_sampling_reuses_the_transformed_kernels_until_the_weights_change(built):
    """Without gradients the transformed kernels are kept on the weight; an optimizer step or a
    loaded state dict (in-place changes) makes the next call transform them again."""
    gen = torch.Generator().manual_seed(6)
    conv = Conv2d(32, 32, 3, padding=1)
    x = _nhwc(2, 32, 6, 6, gen=gen)
    native.set_route("conv", "native")
    with torch.no_grad():
        first = conv(x)
        kept = conv.weight._aigc_winograd[1]
        assert torch.equal(conv(x), first) and conv.weight._aigc_winograd[1] is kept
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    conv(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        after = conv(x)
        torch.testing.assert_close(after, F.conv2d(x, conv.weight, conv.bias, padding=1),
                                   rtol=1e-4, atol=1e-4)
        assert not torch.allclose(after, first)
        conv.load_state_dict(torch.nn.Conv2d(32, 32, 3, padding=1).state_dict())
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1),
                                   rtol=1e-4, atol=1e-4)
