"""``aigc data list`` and ``aigc data show NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list datasets, show their splits and examples")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lp = dsub.add_parser("list", help="the named datasets and whether they are available here")
    lp.set_defaults(func=run_list)
    sp = dsub.add_parser(
        "show", help="counts per split and class, cleaning report, and a PNG grid of examples",
    )
    sp.add_argument("name", help="mnist, fashion-mnist or folder:PATH")
    sp.add_argument("--out", help="grid PNG path (default: out/data-NAME.png)")
    sp.add_argument("--n", type=int, default=64, help="examples in the grid (default 64)")
    sp.set_defaults(func=run_show)


def run_list(args: argparse.Namespace) -> int:
    from aigc.data.images import DATASETS, dataset_available

    for name, about in DATASETS.items():
        ok, why = dataset_available(name) if ":" not in name else (True, "")
        status = "available" if ok else "UNAVAILABLE"
        print(f"{name:<15} {status:<12} {about}")
        if not ok:
            print(f"{'':<15} {why}")
    from aigc.data.text import CORPORA, corpus_available

    for name, about in CORPORA.items():  # text corpora (aigc.data.text)
        ok, why = corpus_available(name) if ":" not in name else (True, "")
        print(f"{name:<15} {'available' if ok else 'UNAVAILABLE':<12} {about}")
        if not ok:
            print(f"{'':<15} {why}")
    return 0


def _is_text(name: str) -> bool:
    from aigc.data.text import CORPORA

    return name in CORPORA or name.startswith("text:")


def _show_text(args: argparse.Namespace) -> int:
    """Cleaning report, documents and characters per split, and the first training document."""
    from aigc.data.text import SPLITS, load_corpus

    corpus = load_corpus(args.name)
    print("\n".join(corpus.report.lines()))
    print(f"{args.name}: source {corpus.source}")
    print(f"{'split':<6} {'documents':>10} {'characters':>12}" + (f" {'pairs':>7}" if corpus.pairs else ""))
    for s in SPLITS:
        pairs = f" {len(corpus.pairs[s]):>7}" if corpus.pairs else ""
        print(f"{s:<6} {len(corpus.documents(s)):>10} {corpus.characters(s):>12}{pairs}")
    first = corpus.documents("train")[0] if corpus.documents("train") else ""
    print("first training document:\n" + (first[:400] + (" ..." if len(first) > 400 else "")))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from aigc.data.images import SPLITS, load_images
    from aigc.errors import AigcError
    from aigc.media import save_grid

    if _is_text(args.name):
        return _show_text(args)
    if not 1 <= args.n <= 1024:
        raise AigcError(f"--n must be between 1 and 1024, got {args.n}")
    splits = {s: load_images(args.name, s) for s in SPLITS}
    train = splits["train"]
    if train.report is not None:
        print("\n".join(train.report.lines()))
    print(f"{args.name}: {train.channels}x{train.image_size}x{train.image_size}, "
          f"source {train.source}")
    classes = list(train.class_counts())
    width = max(len(c) for c in classes + ["class"])
    print(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in SPLITS))
    counts = {s: ds.class_counts() for s, ds in splits.items()}
    for c in classes:
        print(f"{c:<{width}} " + " ".join(f"{counts[s].get(c, 0):>7}" for s in SPLITS))
    print(f"{'total':<{width}} " + " ".join(f"{len(splits[s]):>7}" for s in SPLITS))
    n = min(args.n, len(train))
    if train.labels is not None:  # a few of each class, in class order, so a reader sees them all
        order = torch.argsort(train.labels[: max(n * 20, 1000)], stable=True)
        per = max(1, n // len(train.class_names))
        picks = [i for c in range(len(train.class_names))
                 for i in order[train.labels[order] == c][:per].tolist()][:n]
        idx = torch.tensor(picks)
    else:
        idx = torch.arange(n)
    out = Path(args.out or f"out/data-{args.name.replace(':', '-').replace('/', '_')}.png")
    save_grid(out, train.get_batch(idx)["image"], nrow=int(n ** 0.5) or 1,
              record={"kind": "dataset-examples", "data": args.name})
    print(f"examples: {out}")
    return 0
