"""Evaluation of the assistant on the shipped question set (the Debian FAQ demo base).

The set (``src/aigc/assets/assistant/faq_eval.jsonl``) holds English and Chinese questions, some
paraphrases that share few words with their answer, each labelled with the FAQ section(s) that
answer it as ``{"source": "pkg-basics", "section": "7.12"}`` (the chapter file without its
language suffix, and the section number, which both translations share; a label also matches
its subsections, so ``12.2`` matches ``12.2.1``), plus out-of-scope questions with no label.
Labels name sections, not chunk ids, so they survive re-chunking.

Reported:

* retrieval: recall@k (a right passage among the first k) and MRR (1 / rank of the first right
  passage within the first 10, 0 when none) for ``bm25``, ``dense`` and ``hybrid``, per language;
* escalation from retrieval confidence alone: with the thresholds in use, and calibrated (the
  threshold per language minimising missed out-of-scope + wrongly handed-off in-scope
  questions); in-sample and 2-fold cross-validated (calibrate on half the questions, measure on
  the other half, both ways), since calibrating on the test questions flatters the result;
* answers (slow, SmolLM2): share of answered in-scope questions whose citations include a right
  passage (and how often the model cited by itself), handoff precision/recall on out-of-scope,
  wrongly handed-off in-scope share, and the same for SmolLM2 without retrieval as baseline.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from aigc.apps.assistant.retrieve import MODES, Retriever
from aigc.errors import AigcError

EVALSET = Path(__file__).resolve().parents[2] / "assets" / "assistant" / "faq_eval.jsonl"
MRR_DEPTH = 10
_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?\s")


@dataclass(frozen=True)
class EvalItem:
    id: str
    lang: str
    kind: str  # direct | paraphrase | out_of_scope
    question: str
    answers: tuple[tuple[str, str], ...]  # (source stem, section number)

    @property
    def in_scope(self) -> bool:
        return bool(self.answers)


def load_evalset(path: str | Path | None = None) -> list[EvalItem]:
    path = Path(path) if path else EVALSET
    items = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                items.append(EvalItem(r["id"], r["lang"], r["kind"], r["question"],
                                      tuple((a["source"], a["section"]) for a in r["answers"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise AigcError(f"{path}:{n}: not an evaluation item ({exc})") from None
    return items


def source_stem(source: str) -> str:
    """``zh-cn/pkg-basics.zh-cn.html`` -> ``pkg-basics``; ``kernel.en.html`` -> ``kernel``."""
    name = source.rsplit("/", 1)[-1]
    for suffix in (".gz", ".html", ".htm", ".txt", ".md", ".pdf", ".en", ".zh-cn"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def section_number(section: str) -> str:
    m = _NUMBER.match(section)
    return m.group(1) if m else ""


def is_right(source: str, section: str, answers) -> bool:
    stem, number = source_stem(source), section_number(section)
    return bool(number) and any(
        stem == s and (number == n or number.startswith(n + ".")) for s, n in answers)


def retrieval_report(retriever: Retriever, items: list[EvalItem], *, k: int = 5) -> dict:
    """``{mode: {lang: {"recall@k", "mrr", "n"}}}`` over the in-scope items."""
    out: dict = {}
    for mode in MODES:
        out[mode] = {}
        for lang in ("en", "zh"):
            rel = [it for it in items if it.in_scope and it.lang == lang]
            if not rel:
                continue
            recall = mrr = 0.0
            misses = []
            for it in rel:
                hits = retriever.search(it.question, k=max(k, MRR_DEPTH), mode=mode)
                ranks = [h.rank for h in hits if is_right(h.source, h.section, it.answers)]
                first = min(ranks) if ranks else None
                recall += first is not None and first <= k
                mrr += 1.0 / first if first else 0.0
                if first is None or first > k:
                    misses.append(it.id)
            out[mode][lang] = {f"recall@{k}": recall / len(rel), "mrr": mrr / len(rel),
                               "n": len(rel), "missed": misses}
    return out


def _confidences(retriever: Retriever, items: list[EvalItem], k: int, mode: str) -> list[float]:
    return [retriever.top_confidence(retriever.search(it.question, k=k, mode=mode))
            for it in items]


def _escalation(conf: list[float], items: list[EvalItem], threshold: float) -> dict:
    oos = [c < threshold for c, it in zip(conf, items) if not it.in_scope]
    ins = [c < threshold for c, it in zip(conf, items) if it.in_scope]
    handed = sum(oos) + sum(ins)
    return {"threshold": threshold,
            "oos_handed_off": sum(oos) / max(len(oos), 1),  # recall on out-of-scope
            "precision": sum(oos) / handed if handed else 1.0,
            "in_scope_handed_off": sum(ins) / max(len(ins), 1),
            "n_oos": len(oos), "n_in_scope": len(ins)}


def calibrate(conf: list[float], items: list[EvalItem]) -> float:
    """The threshold minimising missed out-of-scope + wrongly handed-off in-scope questions
    (each as a share of its group); ties go to the lowest threshold. Candidates: midpoints
    between the sorted confidences."""
    values = sorted(set(conf))
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-6]
    best, best_cost = 0.0, float("inf")
    for t in candidates:
        e = _escalation(conf, items, t)
        cost = (1 - e["oos_handed_off"]) + e["in_scope_handed_off"]
        if cost < best_cost - 1e-12:
            best, best_cost = t, cost
    return round(best, 4)


def escalation_report(retriever: Retriever, items: list[EvalItem], thresholds: dict, *,
                      k: int = 5, mode: str = "hybrid") -> dict:
    out = {}
    for lang in ("en", "zh"):
        group = [it for it in items if it.lang == lang]
        if not group or all(it.in_scope for it in group):
            continue
        conf = _confidences(retriever, group, k, mode)
        fitted = calibrate(conf, group)
        # 2-fold cross-validation: calibrate on even positions, measure on odd, and back.
        folds = []
        for part in (0, 1):
            train = [i for i in range(len(group)) if i % 2 == part]
            test = [i for i in range(len(group)) if i % 2 != part]
            t = calibrate([conf[i] for i in train], [group[i] for i in train])
            folds.append((t, [conf[i] for i in test], [group[i] for i in test]))
        cv_conf = [c for _, cs, _ in folds for c in cs]
        cv_items = [it for _, _, its in folds for it in its]
        cv_flags = [c < t for t, cs, _ in folds for c in cs]
        oos = [f for f, it in zip(cv_flags, cv_items) if not it.in_scope]
        ins = [f for f, it in zip(cv_flags, cv_items) if it.in_scope]
        assert len(cv_conf) == len(group)
        out[lang] = {
            "in_use": _escalation(conf, group, thresholds[lang]),
            "calibrated_in_sample": _escalation(conf, group, fitted),
            "cross_validated_2fold": {
                "thresholds": [t for t, _, _ in folds],
                "oos_handed_off": sum(oos) / max(len(oos), 1),
                "in_scope_handed_off": sum(ins) / max(len(ins), 1),
                "precision": sum(oos) / max(sum(oos) + sum(ins), 1)},
            "confidence": {it.id: round(c, 4) for it, c in zip(group, conf)},
        }
    return out


_DONT_KNOW = re.compile(r"i don'?t know|i do not know|不知道|无法回答", re.IGNORECASE)


def answer_report(assistant, items: list[EvalItem], *, baseline_generator=None) -> dict:
    """Run ``assistant.ask`` (and, with ``baseline_generator``, SmolLM2 without retrieval) on
    ``items``. Slow: one generation per answered question."""
    rows = []
    for it in items:
        a = assistant.ask(it.question, record=False)
        right = any(is_right(c.source, c.section, it.answers) for c in a.citations)
        model_right = a.cited_by_model and right
        rows.append({"id": it.id, "lang": it.lang, "in_scope": it.in_scope,
                     "handed_off": a.handed_off, "reason": a.reason,
                     "right_citation": right, "cited_by_model": a.cited_by_model,
                     "model_cited_right": model_right, "confidence": a.confidence,
                     "text": a.text, **a.timings})
    out = {"assistant": _answer_summary(rows), "rows": rows}
    if baseline_generator is not None:
        base = []
        for it in items:
            t0 = time.perf_counter()
            reply = baseline_generator([
                {"role": "system", "content": "You are a customer-service assistant for Debian "
                 "GNU/Linux. If you do not know the answer, reply exactly: I don't know."},
                {"role": "user", "content": it.question}])
            base.append({"id": it.id, "lang": it.lang, "in_scope": it.in_scope,
                         "handed_off": bool(_DONT_KNOW.search(reply)) or not reply.strip(),
                         "right_citation": False, "cited_by_model": False,
                         "model_cited_right": False, "text": reply,
                         "retrieval_s": 0.0, "generation_s": time.perf_counter() - t0})
        out["baseline_no_retrieval"] = _answer_summary(base)
        out["baseline_rows"] = base
    return out


def _answer_summary(rows: list[dict]) -> dict:
    out = {}
    for lang in ("en", "zh", "all"):
        rs = [r for r in rows if lang == "all" or r["lang"] == lang]
        ins = [r for r in rs if r["in_scope"]]
        oos = [r for r in rs if not r["in_scope"]]
        answered = [r for r in ins if not r["handed_off"]]
        handed = [r for r in rs if r["handed_off"]]
        gen = [r["generation_s"] for r in rs if r["generation_s"] > 0]
        out[lang] = {
            "n_in_scope": len(ins), "n_oos": len(oos), "answered": len(answered),
            "right_citation_of_answered": _share(sum(r["right_citation"] for r in answered),
                                                 len(answered)),
            "model_cited_right_of_answered": _share(
                sum(r["model_cited_right"] for r in answered), len(answered)),
            "model_cited_anything_of_answered": _share(
                sum(r["cited_by_model"] for r in answered), len(answered)),
            "oos_handed_off": _share(sum(r["handed_off"] for r in oos), len(oos)),
            "handoff_precision": _share(sum(not r["in_scope"] for r in handed), len(handed)),
            "in_scope_handed_off": _share(sum(r["handed_off"] for r in ins), len(ins)),
            "mean_generation_s": sum(gen) / len(gen) if gen else None,
            "mean_retrieval_s": sum(r["retrieval_s"] for r in rs) / max(len(rs), 1),
        }
    return out


def _share(a: int, n: int) -> float | None:
    return a / n if n else None
