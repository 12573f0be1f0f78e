"""The promotion gate: a candidate replaces production only if it is not worse, beyond a stated
tolerance, on the quality metrics of one fixed protocol.

Both versions are measured now, under the same protocol (``aigc eval``'s, with
:func:`aigc.metrics.card.compare_cards` refusing cards whose protocols differ):

* images (diffusion, GAN): FID against the dataset's test split with the shipped feature
  extractor, and conditional accuracy (does the image show the class it was asked for);
  ``n`` images with balanced labels, seed 0, the family's default sampler, steps and guidance.
  The candidate passes when FID <= (1 + ``fid_tolerance``) x production's FID and its
  accuracy is at most ``accuracy_tolerance`` below production's.
* text (our GPT): perplexity on the held-out test split of the model's own corpus (sliding
  windows, the tokenizer saved in the checkpoint). It passes when perplexity <= (1 +
  ``perplexity_tolerance``) x production's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from aigc.errors import AigcError

FID_TOLERANCE = 0.10  # the candidate's FID may be at most 10% above production's
ACCURACY_TOLERANCE = 0.02  # and its conditional accuracy at most 2 points below
PERPLEXITY_TOLERANCE = 0.05  # text: held-out perplexity at most 5% above production's


@dataclass
class GateResult:
    passed: bool
    kind: str  # image | text
    base: dict[str, float]
    candidate: dict[str, float]
    reasons: list[str]
    protocol: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    # the two full metric cards (kept with each version in the registry, not in the history)
    cards: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cards")
        return d

    def keep_cards(self, registry, base, candidate) -> None:
        """Store each version's card of this gate beside its weights (``cards/gate-*.json``),
        so every version carries the metric cards it was measured with."""
        n = self.protocol.get("n_generated") or self.protocol.get("n") or \
            self.protocol.get("tokens")
        label = f"gate-{self.kind}-n{n}-seed{self.protocol.get('seed', 0)}"
        for version, key in ((base, "base"), (candidate, "candidate")):
            registry.add_card(version.name, version.version, label, self.cards[key])


def measure(path: str, *, n: int, seed: int = 0, progress: bool = False):
    """The metric card of one model file under the gate's protocol."""
    from aigc.checkpoints import read_metadata

    family = read_metadata(path).get("family")
    if family in ("diffusion", "gan"):
        from aigc.evaluate import evaluate_image_model
        from aigc.metrics.features import load_extractor
        from aigc.models import model_from_checkpoint
        from aigc.records import sampling_options

        model, ckpt = model_from_checkpoint(path)
        data = ckpt.meta.get("data")
        if not data:
            raise AigcError(f"{path} does not record its dataset; the gate cannot measure it")
        opts = {k: v for k, v in sampling_options(model).items()
                if k in ("sampler", "steps", "guidance") and v is not None}
        ev = evaluate_image_model(model, data=data, extractor=load_extractor(data), n=n,
                                  seed=seed, sample_kwargs=opts, baseline=False,
                                  memorisation=False, progress=progress)
        return ev.card
    if family == "gpt":
        from aigc.data.text import load_corpus
        from aigc.evaluate import document_stream, stream_perplexity
        from aigc.metrics.card import MetricCard
        from aigc.models.gpt import load_text_model

        model, tokenizer, ckpt = load_text_model(path)
        corpus = load_corpus(ckpt.meta["data"])
        stream = document_stream(tokenizer, corpus.documents("test"))
        T = model.cfg.context_length
        values = stream_perplexity(model.eval(), stream, context_length=T, stride=T // 2,
                                   progress=progress)
        return MetricCard(kind="text", subject={}, protocol={
            "data": ckpt.meta["data"], "split": "test", "context_length": T, "stride": T // 2,
            "windows": values.pop("windows"), "tokens": values["tokens"]}, values=values,
            baseline={})
    raise AigcError(f"the promotion gate measures diffusion, gan and gpt models, not {family!r}")


def gate(base_path: str, candidate_path: str, *, n: int = 1000, seed: int = 0,
         fid_tolerance: float = FID_TOLERANCE, accuracy_tolerance: float = ACCURACY_TOLERANCE,
         perplexity_tolerance: float = PERPLEXITY_TOLERANCE,
         progress: bool = False) -> GateResult:
    """Measure both models under one protocol and apply the tolerances (module docstring)."""
    from aigc.metrics.card import compare_cards

    a = measure(base_path, n=n, seed=seed, progress=progress)
    b = measure(candidate_path, n=n, seed=seed, progress=progress)
    if a.protocol.get("data") != b.protocol.get("data"):
        raise AigcError(f"production is measured on {a.protocol.get('data')} and the candidate "
                        f"on {b.protocol.get('data')}: not the same task")
    compare_cards(a, b)  # raises, naming the fields, when the protocols differ
    reasons: list[str] = []
    if a.kind == "image":
        keys = ["fid", "conditional_accuracy"]
        fa, fb = a.values["fid"], b.values["fid"]
        if fb > fa * (1 + fid_tolerance):
            reasons.append(f"FID {fb:.2f} is more than {fid_tolerance:.0%} above production's "
                           f"{fa:.2f}")
        if "conditional_accuracy" in a.values:
            ca, cb = a.values["conditional_accuracy"], b.values["conditional_accuracy"]
            if cb < ca - accuracy_tolerance:
                reasons.append(f"conditional accuracy {cb:.3f} is more than "
                               f"{accuracy_tolerance * 100:.0f} points below production's "
                               f"{ca:.3f}")
        tol = {"fid_relative": fid_tolerance, "accuracy_points": accuracy_tolerance}
    else:
        keys = ["perplexity"]
        pa, pb = a.values["perplexity"], b.values["perplexity"]
        if pb > pa * (1 + perplexity_tolerance):
            reasons.append(f"held-out perplexity {pb:.3f} is more than "
                           f"{perplexity_tolerance:.0%} above production's {pa:.3f}")
        tol = {"perplexity_relative": perplexity_tolerance}
    pick = lambda card: {k: float(card.values[k]) for k in keys if k in card.values}  # noqa: E731
    return GateResult(passed=not reasons, kind=a.kind, base=pick(a), candidate=pick(b),
                      reasons=reasons, protocol=a.protocol, tolerances=tol,
                      cards={"base": json.loads(a.to_json()),
                             "candidate": json.loads(b.to_json())})
