"""Noise schedules and samplers against diffusers' schedulers (the reference implementation)."""

import pytest
import torch

from aigc.errors import ConfigError
from aigc.models.diffusion import noise_schedule
from aigc.models.samplers import make_sampler
from aigc.models.samplers._common import spaced_timesteps, trailing_timesteps

diffusers = pytest.importorskip("diffusers")
T = 1000


def test_linear_and_cosine_schedules_match_diffusers():
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    assert torch.allclose(noise_schedule("linear", T).float(), ref.alphas_cumprod, atol=1e-6)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(noise_schedule("cosine", T).float(), ref.alphas_cumprod, atol=1e-6)


@pytest.mark.parametrize("n", [1, 10, 20, 50, 1000])
def test_trailing_timesteps(n):
    ts = trailing_timesteps(T, n)
    assert len(ts) == n and ts[0] == T - 1 and ts == sorted(ts, reverse=True)
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ref.set_timesteps(n)
    assert ts == ref.timesteps.tolist()


@pytest.mark.parametrize("bad", [0, T + 1])
def test_steps_out_of_range_are_refused(bad):
    with pytest.raises(ConfigError, match="between 1 and 1000"):
        trailing_timesteps(T, bad)


SPACING_CLASSES = [("DDIMScheduler", False), ("DDPMScheduler", False),
                   ("DPMSolverMultistepScheduler", True)]


@pytest.mark.parametrize("cls, extra_point", SPACING_CLASSES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_spaced_timesteps_are_diffusers_timesteps(cls, extra_point, spacing, offset):
    """Step counts 1..200, 999, 1000 place the timesteps diffusers' class places, or are refused
    where diffusers' list is invalid (a timestep above T - 1, or repeated). Where numpy.arange
    gives diffusers n + 1 trailing points (the last t = -1: n = 61, 103, 121, 122...), ours are
    its first n."""
    checked = 0
    for n in [*range(1, 201), T - 1, T]:
        ref = getattr(diffusers, cls)(num_train_timesteps=T, timestep_spacing=spacing,
                                      steps_offset=offset)
        ref.set_timesteps(n)
        want = ref.timesteps.tolist()
        try:
            got = spaced_timesteps(T, n, spacing, offset, extra_point=extra_point,
                                   diffusers_rules=True)
        except ConfigError:
            got = None
        if len(want) != n:
            assert spacing == "trailing" and want[-1] == -1 and got == want[:n], n
        elif want[0] <= T - 1 and all(a > b for a, b in zip(want, want[1:])):
            assert got == want, (n, got and got[:5], want[:5])
            checked += 1
        else:
            assert got is None, n
    assert checked >= 195


def test_trailing_without_diffusers_rules_is_unchanged():
    """Our families' trailing timesteps (the plain formula) are what they were; diffusers'
    numpy.arange rounding differs from it at 48 steps."""
    for n in (1, 4, 10, 20, 48, 50):
        assert spaced_timesteps(T, n) == trailing_timesteps(T, n)
    assert spaced_timesteps(T, 48, diffusers_rules=True) != trailing_timesteps(T, 48)


def test_bad_spacing_is_refused():
    with pytest.raises(ConfigError, match="spacing must be one of trailing, leading, linspace, "
                                          "got 'karras'"):
        make_sampler("ddim", noise_schedule("linear", T), "epsilon", spacing="karras")
    with pytest.raises(ConfigError, match="steps_offset must be an integer >= 0, got -1"):
        spaced_timesteps(T, 10, "leading", -1)
    with pytest.raises(ConfigError, match="outside 0..999 or repeated ones for 1000 steps"):
        spaced_timesteps(T, T, "leading", 1)
    with pytest.raises(ConfigError, match="alpha_to_one do not apply to the 'ddpm' sampler"):
        make_sampler("ddpm", noise_schedule("linear", T), "epsilon", alpha_to_one=False)
    # a sampler built with leading + offset 1 can still be made (it cannot place all T steps)
    assert make_sampler("ddpm", noise_schedule("linear", T), "epsilon", spacing="leading",
                        steps_offset=1).timesteps[0] == 999


def _fake_network(x, t):
    """A smooth deterministic stand-in for a trained network's output."""
    return torch.tanh(x * 0.7 + 0.001 * t) * 0.9


def _overshooting_network(x, t):
    """Like _fake_network but large enough that x_0 leaves [-1, 1] for epsilon and v alike."""
    return torch.tanh(x * 0.7 + 0.001 * t) * 1.5


def _run(ours, ref, n, prediction, seed=0, ref_kwargs=None, network=_fake_network):
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    assert ours.timesteps == ref.timesteps.tolist()
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    x_ours, x_ref = x0.clone(), x0.clone()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ours.timesteps:
        x_ours = ours.step(network(x_ours, t), t, x_ours, generator=g1)
        x_ref = ref.step(network(x_ref, t), t, x_ref, generator=g2,
                         **(ref_kwargs or {})).prev_sample
    return x_ours, x_ref


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(prediction, n, eta):
    ab = noise_schedule("cosine", T)
    pred = "v" if prediction == "v_prediction" else "epsilon"
    ours = make_sampler("ddim", ab, pred, eta=eta)
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                  timestep_spacing="trailing", prediction_type=prediction,
                                  clip_sample=True, set_alpha_to_one=True)
    a, b = _run(ours, ref, n, pred, ref_kwargs={"eta": eta, "use_clipped_model_output": True})
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def _dpm_solver_pair(schedule, prediction, clip):
    """Ours and diffusers' DPMSolverMultistepScheduler set up as the same algorithm.

    Clipping: diffusers' ``thresholding=True`` is dynamic thresholding (Saharia et al., 2022):
    s = quantile(|x_0|, ratio) clamped to [1, sample_max_value], then x_0 = clamp(x_0, -s, s) / s.
    With ``sample_max_value=1.0`` s is always 1, so it is exactly our ``x_0.clamp(-1, 1)``.
    """
    ab = noise_schedule(schedule, T)
    pred = "v" if prediction == "v_prediction" else "epsilon"
    ours = make_sampler("dpm-solver++", ab, pred, clip_x0=clip)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule={"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule],
        algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
        prediction_type=prediction, final_sigmas_type="zero", lower_order_final=True,
        thresholding=clip, sample_max_value=1.0)
    return ours, ref, pred


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [10, 20])
def test_dpm_solver_pp_2m_matches_diffusers_without_clipping(prediction, n):
    ours, ref, pred = _dpm_solver_pair("linear", prediction, clip=False)
    a, b = _run(ours, ref, n, pred)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n", [1, 2, 10, 20, 50])
def test_dpm_solver_pp_2m_matches_diffusers_on_the_shipped_path(schedule, prediction, n):
    """The path `aigc sample` runs: make_sampler's default clip_x0=True (x_0 clipped to [-1, 1]).

    Tolerance 1e-4 absolute: diffusers steps in float32 with float32 sigmas, we in float64
    scalars; the largest difference seen is 1.3e-6 (50 steps, linear, epsilon). The clipped run must differ from the unclipped one
    by far more than that, so the test cannot pass with clipping silently off on either side.
    """
    ours, ref, pred = _dpm_solver_pair(schedule, prediction, clip=True)
    assert ours.clip_x0 is make_sampler("dpm-solver++", noise_schedule(schedule, T), pred).clip_x0
    a, b = _run(ours, ref, n, pred, network=_overshooting_network)
    assert a.abs().max() <= 1.0 + 1e-6  # the last step returns the clipped x_0
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    unclipped, _, _ = _dpm_solver_pair(schedule, prediction, clip=False)
    c, _ = _run(unclipped, ref.__class__.from_config(ref.config), n, pred,
                network=_overshooting_network)
    assert (a - c).abs().max() > 1e-2  # clipping is active on this input


@pytest.mark.parametrize("n", [10, 1000])
def test_ddpm_ancestral_matches_diffusers(n):
    ab = noise_schedule("linear", T)
    ours = make_sampler("ddpm", ab, "epsilon")
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear",
                                  timestep_spacing="trailing", clip_sample=True,
                                  variance_type="fixed_small")
    a, b = _run(ours, ref, n, "epsilon")
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def test_unknown_sampler_and_bad_eta_are_refused():
    ab = noise_schedule("linear", T)
    with pytest.raises(ConfigError, match="known: ddpm, ddim, dpm-solver"):
        make_sampler("euler", ab, "epsilon")
    with pytest.raises(ConfigError, match="eta must be between 0 and 1"):
        make_sampler("ddim", ab, "epsilon", eta=2.0)
    with pytest.raises(ConfigError, match="ddim sampler only"):
        make_sampler("ddpm", ab, "epsilon", eta=0.5)
