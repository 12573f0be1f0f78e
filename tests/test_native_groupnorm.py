"""aigc.models.native's fused GroupNorm + scale-shift + SiLU against float64 ATen, where it is
taken and where not."""

import pytest
import torch
import torch.nn.functional as F
from native_fixtures import rel_error

from aigc.models import native
from aigc.models.unet import _norm_silu

CL = torch.channels_last


def _case(B, C, H, W, G, gen, offset=0.0, scale_shift=True):
    norm = torch.nn.GroupNorm(G, C)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(C, generator=gen))
        norm.bias.copy_(0.3 * torch.randn(C, generator=gen))
    x = (torch.randn(B, C, H, W, generator=gen) * 2 + offset).contiguous(memory_format=CL)
    ss = None
    if scale_shift:
        ss = (0.2 * torch.randn(B, C, 1, 1, generator=gen), 0.2 * torch.randn(B, C, 1, 1, generator=gen))
    return norm, x, ss


def _reference(norm, x, ss, gy):
    """The output and the gradients of x, weight, bias (and scale, shift) in float64."""
    leaves = [x.double(), norm.weight.double(), norm.bias.double()]
    if ss:
        leaves += [t.double() for t in ss]
    leaves = [t.detach().requires_grad_() for t in leaves]
    h = F.group_norm(leaves[0], norm.num_groups, leaves[1], leaves[2], norm.eps)
    if ss:
        h = h * (1 + leaves[3]) + leaves[4]
    y = F.silu(h)
    return (y, *torch.autograd.grad(y, leaves, gy.double()))




@pytest.mark.parametrize("B,C,H,W,G,offset,scale_shift", [
    (2, 32, 5, 3, 8, 0.0, True), (1, 16, 1, 1, 1, 0.0, True), (3, 48, 4, 7, 3, 0.0, False),
    (4, 64, 14, 14, 8, 0.0, True), (2, 96, 28, 28, 8, 0.0, False), (1, 1024, 2, 3, 32, 0.0, True),
    (2, 64, 7, 7, 8, 1000.0, True),  # far from zero: the variance is taken around the mean
])
def test_forward_and_gradients_match_float64(built, B, C, H, W, G, offset, scale_shift):
    gen = torch.Generator().manual_seed(C + H)
    norm, x, ss = _case(B, C, H, W, G, gen, offset, scale_shift)
    assert native.group_norm_silu_fits(x, norm)
    x = x.requires_grad_()
    if ss:
        ss = tuple(t.requires_grad_() for t in ss)
    y = native.group_norm_silu(x, norm, *(ss or (None, None)))
    assert y.grad_fn.name() == "_EagerGroupNormSiLUBackward"
    assert y.is_contiguous(memory_format=CL)
    gy = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=CL)
    leaves = [x, norm.weight, norm.bias, *(ss or ())]
    grads = torch.autograd.grad(y, leaves, gy)
    ref = _reference(norm, x.detach(), ss and tuple(t.detach() for t in ss), gy)
    # at offset 1000 float32 x itself carries only ~6e-5 of its deviation from the mean
    tol = 2e-3 if offset else 1e-5
    for name, ours, theirs in zip(("y", "dx", "dweight", "dbias", "dscale", "dshift"),
                                  (y, *grads), ref, strict=False):
        assert ours.shape == theirs.shape
        assert rel_error(ours, theirs) < tol, (name, rel_error(ours, theirs))


def test_the_model_helper_takes_the_kernel_only_where_it_fits(built):
    gen = torch.Generator().manual_seed(1)
    norm, x, (scale, shift) = _case(2, 32, 6, 6, 8, gen)
    native.set_route("groupnorm", "native")
    nchw = x.contiguous()
    small_norm, small_x, _ = _case(2, 8, 6, 6, 4, gen)  # 8 channels: not a multiple of 16
    for xx, nn_ in ((nchw, norm), (small_x, small_norm)):
        assert not native.group_norm_silu_fits(xx, nn_)
        with torch.no_grad():
            expected = F.silu(nn_(xx) * (1 + scale[:, :nn_.num_channels]) + shift[:, :nn_.num_channels])
            got = _norm_silu(nn_, xx, scale[:, :nn_.num_channels], shift[:, :nn_.num_channels])
        assert torch.equal(got, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.group_norm_silu_fits(x, norm)
    assert not native.group_norm_silu_fits(x, torch.nn.GroupNorm(8, 32, affine=False))
    with torch.no_grad():  # where it fits: the kernel, within float32 rounding of ATen's
        torch.testing.assert_close(_norm_silu(norm, x, scale, shift),
                                   F.silu(norm(x) * (1 + scale) + shift), rtol=1e-5, atol=1e-5)
        native.set_route("groupnorm", "torch")
        assert torch.equal(_norm_silu(norm, x, scale, shift), F.silu(norm(x) * (1 + scale) + shift))


def test_same_bits_at_any_thread_count_and_batch(built):
    gen = torch.Generator().manual_seed(2)
    norm, x, (scale, shift) = _case(5, 32, 28, 28, 8, gen)  # large enough for threads
    gy = torch.randn(x.shape, generator=gen).contiguous(memory_format=CL)
    threads = torch.get_num_threads()
    outs = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            xs = x.clone().requires_grad_()
            y = native.group_norm_silu(xs, norm, scale, shift)
            outs[n] = (y, *torch.autograd.grad(y, (xs, norm.weight), gy))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(outs[1], outs[2], strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        whole = native.group_norm_silu(x, norm, scale, shift)
        one = native.group_norm_silu(x[2:3], norm, scale[2:3], shift[2:3])
    assert torch.equal(one, whole[2:3])


def test_second_derivatives_come_out_right(built):
    gen = torch.Generator().manual_seed(3)
    norm, x0, (scale, shift) = _case(2, 16, 4, 4, 4, gen)
    out = {}
    for name in ("native", "aten"):
        x = x0.clone().requires_grad_()
        y = (native.group_norm_silu(x, norm, scale, shift) if name == "native"
             else F.silu(norm(x) * (1 + scale) + shift))
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        out[name] = torch.autograd.grad(gx.square().sum(), (x, norm.weight))
    for a, b in zip(out["native"], out["aten"], strict=True):
        assert a.abs().sum() > 0 and rel_error(a, b.double()) < 1e-4


def test_unet_step_on_both_native_routes_agrees_with_aten(built):
    """A diffusion UNet's loss and gradients with the native convolutions and GroupNorm + SiLU
    (tests/test_native_conv.py tests the convolutions alone) against ATen's, channels-last, as
    it trains."""
    from aigc.models.diffusion import Diffusion, DiffusionConfig

    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(channels=(16, 32), num_res_blocks=1, attention_levels=(1,),
                                      num_classes=10)).to(memory_format=CL)
    for p in model.parameters():
        if p.dim() == 4:
            torch.nn.init.normal_(p, std=0.05)
    batch = {"image": torch.rand(4, 1, 16, 16).contiguous(memory_format=CL),
             "label": torch.tensor([0, 1, 2, 10])}
    results = {}
    for route in ("torch", "native"):
        native.set_route("conv", route)
        native.set_route("groupnorm", route)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = model.loss(batch)
        loss.backward()
        results[route] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["native"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for name, g in results["torch"][1].items():
        assert rel_error(results["native"][1][name], g.double()) < 1e-4, name
