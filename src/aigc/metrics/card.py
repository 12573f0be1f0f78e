"""Metric cards: every number with the protocol that produced it.

A card is one JSON file (and a Markdown rendering beside it) with four parts:

* ``subject``: what was measured (checkpoint path and SHA-256, family, step);
* ``protocol``: how (dataset, reference split, n real / n generated, seeds, extractor and its
  SHA-256, sampler, steps, guidance, EMA or raw weights, metric settings);
* ``values`` and ``baseline``: the metrics, and the same metrics for real data against real data
  (train split vs reference split, same n), so a reader knows what "good" looks like;
* ``environment``: library versions, date, wall time.

Two cards are comparable only when their protocols are equal field by field;
:func:`compare_cards` refuses otherwise and names the fields that differ. Environment differences
(library versions) are reported but do not block a comparison.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aigc.errors import AigcError

FORMAT = "aigc-metric-card/1"

# How each value is read: higher is better (+1), lower is better (-1), informational (0).
DIRECTION = {
    "fid": -1, "kid_mean": -1, "kid_std": 0, "is_mean": +1, "is_std": 0, "precision": +1,
    "recall": +1, "density": +1, "coverage": +1, "conditional_accuracy": +1, "psnr_db": +1,
    "ssim": +1, "negative_elbo_nats": -1, "reconstruction_nats": -1, "kl_nats": 0,
    "perplexity": -1, "nll_per_token": -1, "bleu": +1, "chrf": +1, "rouge1": +1, "rouge2": +1,
    "rougeL": +1, "distinct_1": +1, "distinct_2": +1, "self_bleu": -1, "verse_form_rate": +1,
    "nearest_train_l2_mean": 0, "bits_per_character": -1, "tokens": 0, "mean_chars": 0,
}
# Text-to-image cards (aigc.evaluate.text_to_image.metric_key / fid_key make these names).
DIRECTION.update({f"{s}_{r}_{m}": +1 for s in ("seen_heldout", "unseen")
                  for r in ("en_tokens", "en_sentence", "zh_sentence", "zh_sentence_by_en")
                  for m in ("top1", "top5", "clipscore")})
DIRECTION.update({f"{m}_{r}": d for r in ("en_sentence", "zh_sentence")
                  for m, d in (("fid", -1), ("kid_mean", -1), ("kid_std", 0))})


def library_versions() -> dict[str, str]:
    """Versions of the libraries a metric value can depend on."""
    from aigc.checkpoints import library_versions as base

    versions = base()
    for dist in ("torchmetrics", "scipy", "sacrebleu", "rouge-score"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


@dataclass
class MetricCard:
    kind: str  # "image" or "text"
    subject: dict[str, Any]
    protocol: dict[str, Any]
    values: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    format: str = FORMAT

    def __post_init__(self) -> None:
        if not self.environment:
            self.environment = {"versions": library_versions(),
                                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, ensure_ascii=False,
                          default=_json_default)

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``PATH.json`` and ``PATH.md`` (``path`` may end in .json or have no suffix)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".md") else path
        stem.parent.mkdir(parents=True, exist_ok=True)
        js, md = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
        js.write_text(self.to_json() + "\n", encoding="utf-8")
        md.write_text(self.to_markdown(), encoding="utf-8")
        return js, md

    @classmethod
    def read(cls, path: str | Path) -> MetricCard:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AigcError(f"metric card not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise AigcError(f"{path} is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise AigcError(f"{path} is not an aigc metric card (format "
                            f"{raw.get('format') if isinstance(raw, dict) else None!r}, "
                            f"expected {FORMAT!r})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    # ------------------------------------------------------------------ text
    def to_markdown(self) -> str:
        s, p = self.subject, self.protocol
        lines = [f"# Metric card: {s.get('family', '?')} on {p.get('data', '?')}", ""]
        lines += [f"- **{k}**: `{v}`" for k, v in s.items()]
        lines += ["", "| metric | value | real vs real (baseline) | better |", "|---|---|---|---|"]
        for key, value in self.values.items():
            if isinstance(value, (list, dict)):
                continue
            base = self.baseline.get(key, "")
            arrow = {1: "higher", -1: "lower", 0: ""}.get(DIRECTION.get(key, 0), "")
            lines.append(f"| {key} | {format_value(value)} | {format_value(base)} | {arrow} |")
        lines += ["", "## Protocol", ""]
        lines += [f"- **{k}**: `{json.dumps(v, ensure_ascii=False)}`" for k, v in flatten(p).items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        lines += ["", "## Environment", ""]
        lines += [f"- **{k}**: `{v}`" for k, v in flatten(self.environment).items()]
        return "\n".join(lines) + "\n"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def protocol_differences(a: MetricCard, b: MetricCard) -> list[tuple[str, Any, Any]]:
    """``(field, value in a, value in b)`` for every protocol field that differs."""
    fa, fb = flatten(a.protocol), flatten(b.protocol)
    missing = object()
    return [(k, fa.get(k, missing), fb.get(k, missing)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, missing) != fb.get(k, missing)]


def compare_cards(a: MetricCard, b: MetricCard) -> dict[str, Any]:
    """Side-by-side values of two cards measured under the same protocol.

    Raises:
        AigcError: when the kinds or protocols differ; the message names each differing field.
    """
    if a.kind != b.kind:
        raise AigcError(f"cannot compare a {a.kind} card with a {b.kind} card")
    diffs = protocol_differences(a, b)
    if diffs:
        shown = "; ".join(f"{k}: {_show(x)} vs {_show(y)}" for k, x, y in diffs)
        raise AigcError(f"the cards were measured under different protocols, so their numbers "
                        f"are not comparable. Differing fields: {shown}")
    rows = []
    for key in a.values:
        va, vb = a.values.get(key), b.values.get(key)
        if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
            continue
        direction = DIRECTION.get(key, 0)
        better = "" if direction == 0 or va == vb else ("A" if (va - vb) * direction > 0 else "B")
        rows.append({"metric": key, "a": va, "b": vb, "b_minus_a": vb - va, "better": better,
                     "baseline": a.baseline.get(key)})
    env = [k for k in sorted(set(flatten(a.environment.get("versions", {})))
                             | set(flatten(b.environment.get("versions", {}))))
           if a.environment.get("versions", {}).get(k) != b.environment.get("versions", {}).get(k)]
    return {"rows": rows, "version_differences": env}


def _show(value: Any) -> str:
    return "(absent)" if not isinstance(value, (str, int, float, bool, list, type(None))) \
        else json.dumps(value, ensure_ascii=False)
