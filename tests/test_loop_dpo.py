"""DPO and Diffusion-DPO: the loss against a hand computation, and on toy problems the margin
moves the right way while the reference stays untouched; bad pairs are refused by name."""

import copy
import math

import pytest
import torch

from aigc.errors import AigcError
from aigc.loop.diffusion_dpo import (
    DEFAULT_BETA,
    diffusion_dpo_loss,
    improve_diffusion,
    q_sample,
)
from aigc.loop.dpo import (
    dpo_loss,
    improve_gpt,
    improve_lora,
    improve_unsupported,
    sequence_logps,
)
from aigc.loop.reward_weighted import improve_vae
from aigc.models.diffusion import Diffusion, DiffusionConfig
from aigc.models.gpt import GPT, GPTConfig
from aigc.models.vae import VAE, VAEConfig
from aigc.tokenizers import CharTokenizer

# ------------------------------------------------------------------------------ the loss


def test_dpo_loss_equals_a_hand_computation():
    pi_w, pi_l = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -3.0])
    ref_w, ref_l = torch.tensor([-1.2, -1.8, -0.7]), torch.tensor([-1.4, -1.1, -2.0])
    beta = 0.5
    # margins beta*((pi_w - ref_w) - (pi_l - ref_l)): 0.5*(0.2+0.1), 0.5*(-0.2-0.1), 0.5*(0.2+1)
    m = [0.15, -0.15, 0.6]
    expected = sum(math.log1p(math.exp(-x)) for x in m) / 3  # -log sigmoid(x) = log(1 + e^-x)
    loss, stats = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.609801, abs=1e-6)  # pinned
    assert stats["reward_margin"] == pytest.approx(sum(m) / 3, rel=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(2 / 3)
    assert stats["chosen_reward"] == pytest.approx(0.5 * (0.2 - 0.2 + 0.2) / 3, abs=1e-6)


def test_dpo_loss_is_log2_when_policy_is_the_reference():
    logps = torch.randn(4, generator=torch.Generator().manual_seed(0))
    other = logps - 1.0
    loss, stats = dpo_loss(logps, other, logps.clone(), other.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["reward_margin"] == 0.0 and stats["reward_accuracy"] == 0.0


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pi_w = torch.tensor([-2.0, -1.0], requires_grad=True)
    pi_l = torch.tensor([-1.0, -3.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.5])
    loss, _ = dpo_loss(pi_w, pi_l, ref, ref, beta=0.1)
    loss.backward()
    assert (pi_w.grad < 0).all()  # gradient descent moves pi_w up
    assert (pi_l.grad > 0).all()  # and pi_l down
    # eq. 8: the pair the policy ranks wrongly (first) weighs more
    assert pi_w.grad[0].abs() > pi_w.grad[1].abs()


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_dpo_loss_refuses_bad_beta(beta):
    z = torch.zeros(2)
    with pytest.raises(AigcError, match="beta"):
        dpo_loss(z, z, z, z, beta)


def test_sequence_logps_sums_only_the_masked_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[1, 2, 3, 4], [0, -100, 2, 1]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]])
    logp = logits.log_softmax(-1)
    expected = torch.stack([logp[0, 1, 2] + logp[0, 2, 3],
                            logp[1, 0, 0] + logp[1, 2, 2] + logp[1, 3, 1]])
    assert torch.allclose(sequence_logps(logits, labels, mask), expected, atol=1e-6)


# --------------------------------------------------------------------------- GPT, toy DPO

PAIRS = [
    {"prompt": "ab:", "chosen": "yes", "rejected": "no"},
    {"prompt": "ba:", "chosen": "yes!", "rejected": "nope"},
    {"prompt": "a:", "chosen": "sey", "rejected": "one"},
    {"prompt": "b:", "chosen": "yo", "rejected": "ne"},
]


def _tiny_gpt() -> tuple[GPT, CharTokenizer]:
    tok = CharTokenizer.train([p[k] for p in PAIRS for k in ("prompt", "chosen", "rejected")])
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=16, layers=2, heads=2, width=8)
    return GPT(cfg), tok


def _reply_logp(model: GPT, tok: CharTokenizer, prompt: str, reply: str) -> float:
    p, r = [0] + tok.encode(prompt), tok.encode(reply)
    ids = torch.tensor([p + r])
    mask = torch.zeros(1, ids.shape[1] - 1)
    mask[0, len(p) - 1 :] = 1
    with torch.no_grad():
        return float(sequence_logps(model(ids[:, :-1]), ids[:, 1:], mask)[0])


def test_gpt_dpo_raises_the_margin_and_leaves_the_reference_alone():
    model, tok = _tiny_gpt()
    ref = copy.deepcopy(model)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    seen = []
    model, record = improve_gpt(model, tok, PAIRS, steps=40, lr=1e-2, beta=0.5, batch_size=4,
                                seed=0, reference=ref, progress=seen.append)
    assert seen[-1] == 1.0 and len(seen) == 40
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    for pair in PAIRS:  # the policy prefers chosen over rejected more than the reference does
        pol = _reply_logp(model, tok, pair["prompt"], pair["chosen"]) \
            - _reply_logp(model, tok, pair["prompt"], pair["rejected"])
        old = _reply_logp(ref, tok, pair["prompt"], pair["chosen"]) \
            - _reply_logp(ref, tok, pair["prompt"], pair["rejected"])
        assert pol > old + 2.0
    assert record.mean_margin > 0.5 and record.accuracy == 1.0
    assert record.final_loss < math.log(2) - 0.2
    assert (record.method, record.family, record.steps, record.pairs) == ("dpo", "gpt", 40, 4)


def test_gpt_dpo_is_deterministic_for_a_seed_and_default_reference_is_a_copy():
    runs = []
    for _ in range(2):
        model, tok = _tiny_gpt()
        rng = torch.get_rng_state()
        model, record = improve_gpt(model, tok.encode, PAIRS, steps=3, lr=1e-2, seed=7)
        assert torch.equal(rng, torch.get_rng_state())  # no global state used
        runs.append((model.state_dict(), record))
    (sd_a, rec_a), (sd_b, rec_b) = runs
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert rec_a.final_loss == rec_b.final_loss and rec_a.mean_margin > 0
    fresh, _ = _tiny_gpt()  # the model moved away from its starting weights
    assert not torch.equal(fresh.state_dict()["wte.weight"], sd_a["wte.weight"])


# ------------------------------------------------------------------- Diffusion, toy DPO

TINY = dict(image_size=8, channels=(4, 8), attention_levels=(1,), num_train_timesteps=20,
            num_classes=2)


def _tiny_diffusion(**kw) -> Diffusion:
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(**{**TINY, **kw}))
    with torch.no_grad():  # output convs start at zero (ADM); perturb so gradient flows back
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _image_pairs(n=8):
    """Chosen: bright top half; rejected: bright bottom half (with a little texture)."""
    g = torch.Generator().manual_seed(1)
    top = torch.zeros(1, 8, 8)
    top[:, :4] = 1.0
    pairs = []
    for i in range(n):
        jitter = 0.1 * torch.rand(1, 8, 8, generator=g)
        pairs.append({"condition": {"label": i % 2},
                      "chosen": (top * 0.9 + jitter).clamp(0, 1),
                      "rejected": (top.flip(1) * 0.9 + jitter).clamp(0, 1)})
    return pairs


def _error_gain(model, ref, pairs, draws=16):
    """Mean over fresh (t, noise) draws of (policy error - reference error) on chosen and on
    rejected images, computed here from the UNet directly (not with the code under test)."""
    x_w = torch.stack([p["chosen"] for p in pairs]) * 2 - 1
    x_l = torch.stack([p["rejected"] for p in pairs]) * 2 - 1
    labels = torch.tensor([p["condition"]["label"] for p in pairs])
    g = torch.Generator().manual_seed(123)
    gain_w = gain_l = 0.0
    with torch.no_grad():
        for _ in range(draws):
            t = torch.randint(0, 20, (len(pairs),), generator=g)
            noise = torch.randn(x_w.shape, generator=g)
            a = model.alphas_cumprod[t].float()[:, None, None, None]
            for x0, sign in ((x_w, 1), (x_l, -1)):
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                target = noise if model.cfg.prediction == "epsilon" \
                    else a.sqrt() * noise - (1 - a).sqrt() * x0
                err = [((m.unet(x_t, t, m.unet.condition(labels)) - target) ** 2).mean()
                       for m in (model, ref)]
                if sign > 0:
                    gain_w += float(err[0] - err[1]) / draws
                else:
                    gain_l += float(err[0] - err[1]) / draws
    return gain_w, gain_l


def test_q_sample_is_the_models_forward_process():
    model = _tiny_diffusion()
    x0, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 10, 19])
    a = model.alphas_cumprod[t].float()
    x_t = q_sample(model.alphas_cumprod, x0, t, noise)
    for i in range(3):
        assert torch.allclose(x_t[i], a[i].sqrt() * x0[i] + (1 - a[i]).sqrt() * noise[i])


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_diffusion_dpo_moves_the_margin_and_leaves_the_reference_alone(prediction):
    model = _tiny_diffusion(prediction=prediction)
    ref = copy.deepcopy(model)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    pairs = _image_pairs()
    beta = 100.0
    # Policy = reference: the loss is exactly log 2 and the margin 0.
    x = torch.stack([p["chosen"] for p in pairs[:2]]) * 2 - 1
    loss0, stats0 = diffusion_dpo_loss(model, ref, x, x.flip(2), {"labels": torch.tensor([0, 1])},
                                       torch.tensor([3, 9]), torch.randn(2, 1, 8, 8), beta)
    assert loss0.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats0["reward_margin"] == 0.0
    model, record = improve_diffusion(model, pairs, steps=30, lr=3e-3, beta=beta, batch_size=8,
                                      seed=0, reference=ref)
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    # On fresh draws, the policy's error fell on chosen images relative to rejected ones.
    gain_w, gain_l = _error_gain(model, ref, pairs)
    assert gain_w - gain_l < -0.05
    assert record.mean_margin > 5.0 and record.accuracy > 0.9
    assert record.final_loss < math.log(2)
    assert (record.method, record.beta, record.steps) == ("diffusion-dpo", beta, 30)


def test_diffusion_dpo_is_deterministic_and_default_beta_is_stated():
    assert DEFAULT_BETA == 2500.0
    states = []
    for _ in range(2):
        model = _tiny_diffusion()
        rng = torch.get_rng_state()
        model, _ = improve_diffusion(model, _image_pairs(4), steps=2, lr=1e-3, batch_size=2,
                                     seed=3)
        assert torch.equal(rng, torch.get_rng_state())  # no global state used
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_diffusion_dpo_reads_prompts_the_way_the_model_does(monkeypatch):
    """A prompt pair is embedded through model.embed_prompts and conditions the text path."""
    import aigc.models.diffusion as diffusion

    seen = []

    def fake_embed(texts):  # MiniLM stands aside: a fixed unit vector per prompt
        seen.extend(texts)
        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 384, generator=g), dim=1)

    monkeypatch.setattr(diffusion, "embed_sentences", fake_embed)
    model = _tiny_diffusion(text_conditioning=True)
    pairs = _image_pairs(2)
    pairs[1] = {**pairs[1], "condition": {"prompt": "a bright top"}}
    before = model.unet.text_proj[0].weight.clone()
    improve_diffusion(model, pairs, steps=2, lr=1e-2, beta=100.0, batch_size=2, seed=0)
    assert seen == ["a bright top"]
    assert not torch.equal(before, model.unet.text_proj[0].weight)  # the text path was trained


# --------------------------------------------------------------- LoRA on a tiny Llama


def test_lora_dpo_moves_the_margin_and_only_lora_weights_change():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    base = LlamaForCausalLM(cfg)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                            target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def encode(text):  # a toy tokenizer: one id per character
        return [ord(c) % 64 for c in text]

    model, record = improve_lora(model, encode, PAIRS, steps=30, lr=1e-2, beta=0.5,
                                 batch_size=4, seed=0)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)
    assert record.family == "lora" and record.mean_margin > 0.5 and record.accuracy == 1.0

    def reply_logp(prompt, reply):  # summed log p(reply | prompt), computed here
        ids = torch.tensor([encode(prompt + reply)])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        picked = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        return float(picked[len(prompt) - 1 :].sum())

    for pair in PAIRS:  # adapter on (policy) against adapter off (reference)
        pol = reply_logp(pair["prompt"], pair["chosen"]) - reply_logp(pair["prompt"],
                                                                      pair["rejected"])
        with model.disable_adapter():
            old = reply_logp(pair["prompt"], pair["chosen"]) - reply_logp(pair["prompt"],
                                                                          pair["rejected"])
        assert pol > old + 1.0
    assert record.final_loss < math.log(2) - 0.2


# ------------------------------------------------------------------------ bad input


def test_empty_pairs_are_refused():
    model, tok = _tiny_gpt()
    with pytest.raises(AigcError, match="pairs is empty"):
        improve_gpt(model, tok, [], steps=1)
    with pytest.raises(AigcError, match="pairs is empty"):
        improve_diffusion(_tiny_diffusion(), [], steps=1)


def test_images_of_the_wrong_shape_or_range_are_refused():
    pairs = _image_pairs(2)
    bad = {**pairs[1], "rejected": torch.rand(3, 8, 8)}
    with pytest.raises(AigcError, match=r"pair 1: 'rejected' has shape \(3, 8, 8\).*\(1, 8, 8\)"):
        improve_diffusion(_tiny_diffusion(), [pairs[0], bad], steps=1)
    bad = {**pairs[0], "chosen": pairs[0]["chosen"] * 2 - 1}
    with pytest.raises(AigcError, match=r"pair 0: 'chosen' must hold values in \[0, 1\]"):
        improve_diffusion(_tiny_diffusion(), [bad], steps=1)
    with pytest.raises(AigcError, match="label must be an integer in 0..1, got 5"):
        improve_diffusion(_tiny_diffusion(), [{**pairs[0], "condition": {"label": 5}}], steps=1)
    with pytest.raises(AigcError, match="without text conditioning"):
        improve_diffusion(_tiny_diffusion(), [{**pairs[0], "condition": {"prompt": "x"}}],
                          steps=1)


def test_pairs_for_another_family_are_refused():
    model, tok = _tiny_gpt()
    with pytest.raises(AigcError, match="pair 0 is an image pair"):
        improve_gpt(model, tok, _image_pairs(1), steps=1)
    with pytest.raises(AigcError, match="pair 0 has no 'condition'.*text pair"):
        improve_diffusion(_tiny_diffusion(), PAIRS, steps=1)
    with pytest.raises(AigcError, match="improve_gpt needs an aigc GPT, got Diffusion"):
        improve_gpt(_tiny_diffusion(), tok, PAIRS, steps=1)
    with pytest.raises(AigcError, match="improve_diffusion needs an aigc Diffusion model"):
        improve_diffusion(model, _image_pairs(1), steps=1)
    with pytest.raises(AigcError, match="improve_lora needs a peft model"):
        improve_lora(model, tok, PAIRS, steps=1)


def test_bad_text_pairs_and_settings_are_refused_by_name():
    model, tok = _tiny_gpt()
    with pytest.raises(AigcError, match="pair 1: 'chosen' must be a string"):
        improve_gpt(model, tok, [PAIRS[0], {"prompt": "a", "chosen": 3, "rejected": "no"}])
    with pytest.raises(AigcError, match="pair 0: chosen and rejected are the same text"):
        improve_gpt(model, tok, [{"prompt": "a", "chosen": "yes", "rejected": "yes"}])
    with pytest.raises(AigcError, match="is 24 tokens, more than the 17 this model can score"):
        improve_gpt(model, tok, [{"prompt": "a" * 20, "chosen": "yes", "rejected": "no"}])
    with pytest.raises(AigcError, match="steps must be an integer >= 1, got 0"):
        improve_gpt(model, tok, PAIRS, steps=0)
    with pytest.raises(AigcError, match="lr must be a finite number > 0"):
        improve_gpt(model, tok, PAIRS, lr=-1.0)


def test_the_gan_is_refused_with_the_reason_and_the_vae_pointed_to_its_method():
    with pytest.raises(AigcError, match="improving a gan model from feedback is not "
                                        "supported: a GAN has no likelihood"):
        improve_unsupported("gan")
    with pytest.raises(AigcError, match="not improved by DPO.*improve_vae"):
        improve_unsupported("vae")


# ------------------------------------------------------- VAE: reward-weighted ELBO


def _tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(image_size=8, channels=(4,), hidden=16, latent_dim=4))


def _vae_pairs(n=8):
    return [{**p, "condition": {}} for p in _image_pairs(n)]


def test_vae_reward_weighted_elbo_favours_the_chosen_images():
    model = _tiny_vae()
    ref = copy.deepcopy(model)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    pairs = _vae_pairs()
    rng = torch.get_rng_state()
    model, record = improve_vae(model, pairs, steps=40, lr=1e-2, batch_size=8, seed=0,
                                reference=ref)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG was left alone
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())

    def nelbo(m, images):  # -ELBO over 32 latent draws, measured here
        g = torch.Generator().manual_seed(5)
        x = torch.bernoulli(torch.stack(images), generator=g)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            return float(sum(m.negative_elbo(x)[0].mean() for _ in range(32)) / 32)

    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    gain_w = nelbo(ref, chosen) - nelbo(model, chosen)  # nats gained on the chosen images
    gain_l = nelbo(ref, rejected) - nelbo(model, rejected)
    assert gain_w > 0 and gain_w - gain_l > 1.0
    assert record.method == "reward-weighted-elbo" and record.family == "vae"
    assert record.mean_margin > 1.0 and record.accuracy > 0.9


def test_vae_pairs_are_checked():
    pairs = _vae_pairs(2)
    with pytest.raises(AigcError, match="the VAE is unconditional"):
        improve_vae(_tiny_vae(), _image_pairs(1), steps=1)
    with pytest.raises(AigcError, match="pair 1: weight must be a finite number >= 0, got -1"):
        improve_vae(_tiny_vae(), [pairs[0], {**pairs[1], "weight": -1}], steps=1)
    with pytest.raises(AigcError, match="every pair has weight 0"):
        improve_vae(_tiny_vae(), [{**p, "weight": 0} for p in pairs], steps=1)
    with pytest.raises(AigcError, match=r"pair 0: 'chosen' has shape \(1, 4, 4\)"):
        improve_vae(_tiny_vae(), [{**pairs[0], "chosen": torch.rand(1, 4, 4)}], steps=1)
    with pytest.raises(AigcError, match="improve_vae needs an aigc VAE, got Diffusion"):
        improve_vae(_tiny_diffusion(), pairs, steps=1)
    with pytest.raises(AigcError, match="pairs is empty"):
        improve_vae(_tiny_vae(), [], steps=1)
