"""``aigc data list``, ``aigc data show NAME``, ``aigc data prepare NAME``, ``aigc data info NAME``."""

from __future__ import annotations

import argparse

import torch

from aigc.cli._common import check_out_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list datasets, show their splits and examples")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lp = dsub.add_parser("list", help="the named datasets and whether they are available here")
    lp.set_defaults(func=run_list)
    sp = dsub.add_parser(
        "show", help="counts per split and class, cleaning report, and a PNG grid of examples",
    )
    sp.add_argument("name", help="mnist, fashion-mnist, folder:PATH, a text corpus or a music "
                    "corpus (bach-chorales, folk-tunes, bach-and-folk, midi:PATH); see "
                    "`aigc data list`")
    sp.add_argument("--out", help="grid PNG path (default: out/data-NAME.png); music: the "
                    "piano rolls of a few pieces")
    sp.add_argument("--n", type=int, default=None,
                    help="examples in the grid (default 64; music: pieces drawn, default 4)")
    sp.set_defaults(func=run_show)
    pp = dsub.add_parser("prepare", help="build a dataset's prepared cache now (emoji: rasterise "
                         "and caption ~10k images once, a few minutes)")
    pp.add_argument("name", help="emoji")
    pp.add_argument("--force", action="store_true", help="rebuild even if the cache exists")
    pp.set_defaults(func=run_prepare)
    ip = dsub.add_parser("info", help="a prepared dataset's counts: images, concepts and captions "
                         "per split and style (emoji)")
    ip.add_argument("name", help="emoji")
    ip.add_argument("--sheet", help="also write a contact sheet PNG of examples with their en/zh "
                    "names to this path")
    ip.set_defaults(func=run_info)


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
    _list_music()
    return 0


def _list_music() -> None:
    """Music corpora (aigc.data.music): pieces per split when the parse cache has them; the
    list never parses (the first parse of a corpus takes minutes)."""
    from importlib.util import find_spec

    from aigc.data.music import CORPORA, SPLITS, cached_split_counts

    ok = find_spec("music21") is not None
    for name, about in CORPORA.items():
        print(f"{name:<15} {'available' if ok else 'UNAVAILABLE':<12} {about}")
        if not ok:
            print(f"{'':<15} needs the PyPI package music21 (its corpus ships in the wheel)")
            continue
        if name.startswith("midi:"):
            continue
        counts = cached_split_counts(name)
        if counts is None:
            print(f"{'':<15} not parsed yet (`aigc data show {name}` parses and caches it)")
        else:
            print(f"{'':<15} pieces: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS))


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


def _is_music(name: str) -> bool:
    from aigc.data.music import CORPORA

    return name in CORPORA or name.startswith("midi:")


def _show_music(args: argparse.Namespace) -> int:
    """Parse report, pieces/bars/notes/tokens per split, styles, keys and meters, and the
    piano rolls of a few training pieces (first 4 bars each) stacked in one PNG."""
    from collections import Counter

    import numpy as np

    from aigc.data.music import SPLITS, load_music_corpus, piece_to_tokens
    from aigc.errors import AigcError
    from aigc.media import save_png
    from aigc.music import piano_roll

    n = 4 if args.n is None else args.n
    if not 1 <= n <= 32:
        raise AigcError(f"--n must be between 1 and 32 pieces for music, got {n}")
    out = check_out_file(args.out or f"out/data-{args.name.replace(':', '-').replace('/', '_')}.png")
    corpus = load_music_corpus(args.name)
    print("\n".join(corpus.report.lines()))
    print(f"{'split':<6} {'pieces':>7} {'bars':>7} {'notes':>8} {'tokens':>9}")
    for s in SPLITS:
        pieces = corpus.split(s)
        print(f"{s:<6} {len(pieces):>7} {sum(p.bars for p in pieces):>7} "
              f"{sum(len(p.notes) for p in pieces):>8} "
              f"{sum(len(piece_to_tokens(p)) for p in pieces):>9}")
    every = [p for s in SPLITS for p in corpus.split(s)]
    for label, counter in (("styles", Counter(p.style for p in every)),
                           ("keys", Counter(p.key_name for p in every)),
                           ("meters", Counter(f"{p.meter[0]}/{p.meter[1]}" for p in every))):
        top = ", ".join(f"{k} {v}" for k, v in counter.most_common(6))
        more = f" (+{len(counter) - 6} more)" if len(counter) > 6 else ""
        print(f"{label}: {top}{more}")
    train = corpus.split("train") or every
    if not train:
        raise AigcError(f"{args.name}: no pieces to draw")
    n = min(n, len(train))
    # evenly spread over the split, so a mixed corpus shows each of its styles
    picks = [train[round(i * (len(train) - 1) / max(n - 1, 1))] for i in range(n)]
    rolls = [piano_roll(p.first_bars(4)) for p in picks]  # (H, W, 3) uint8 each
    width, gap = max(r.shape[1] for r in rolls), 6
    sheet = np.full((sum(r.shape[0] + gap for r in rolls), width, 3), 255, dtype=np.uint8)
    y = 0
    for r in rolls:
        sheet[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    save_png(out, sheet, record={"kind": "dataset-examples", "data": args.name,
                                 "pieces": [p.name for p in picks], "bars": 4})
    print(f"piano rolls of {', '.join(p.name for p in picks)} (first 4 bars): {out}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from aigc.data.images import SPLITS, load_images
    from aigc.errors import AigcError
    from aigc.media import save_grid

    if _is_text(args.name):
        return _show_text(args)
    if _is_music(args.name):
        return _show_music(args)
    if args.n is None:
        args.n = 64
    if not 1 <= args.n <= 1024:
        raise AigcError(f"--n must be between 1 and 1024, got {args.n}")
    out = check_out_file(args.out or f"out/data-{args.name.replace(':', '-').replace('/', '_')}.png")
    splits = {s: load_images(args.name, s) for s in SPLITS}
    train = splits["train"]
    if train.report is not None:
        print("\n".join(train.report.lines()))
    print(f"{args.name}: {train.channels}x{train.image_size}x{train.image_size}, "
          f"source {train.source}")
    classes = list(train.class_counts())
    width = max(len(c) for c in classes + ["class"])
    if len(classes) > 100:  # emoji: ~1.9k concepts; `aigc data info` has the summary
        print(f"{len(classes)} classes (`aigc data info {args.name}` for the counts)")
        width = 5
    print(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in SPLITS))
    if len(classes) <= 100:
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
    save_grid(out, train.get_batch(idx)["image"], nrow=int(n ** 0.5) or 1,
              record={"kind": "dataset-examples", "data": args.name})
    print(f"examples: {out}")
    return 0


_PREPARED = ("emoji",)  # datasets with a prepared cache (the others load straight from source)


def _check_prepared_name(name: str) -> None:
    from aigc.errors import AigcError

    if name not in _PREPARED:
        raise AigcError(f"dataset {name!r} has no prepared cache; `prepare` and `info` know: "
                        f"{', '.join(_PREPARED)} (the others load directly: `aigc data show`)")


def run_prepare(args: argparse.Namespace) -> int:
    from aigc.data import emoji

    _check_prepared_name(args.name)
    root = emoji.npm_modules_dir()
    out = emoji.cache_root() / emoji.cache_key(emoji.package_versions(root))
    if args.force or not (out / "records.jsonl").is_file():
        emoji.build(root, out)
    print(f"emoji: prepared set in {out}")
    return run_info(argparse.Namespace(name=args.name, sheet=None))


def run_info(args: argparse.Namespace) -> int:
    import json

    from aigc.data import emoji

    _check_prepared_name(args.name)
    sheet = check_out_file(args.sheet) if args.sheet else None
    path = emoji._locate()
    summary = json.loads((path / "build.json").read_text(encoding="utf-8"))
    print(f"emoji: {path} (dataset card: {path / 'CARD.md'})")
    print("\n".join(emoji.info_lines(summary)))
    if sheet is not None:
        print(f"contact sheet: {emoji.contact_sheet(path, sheet)}")
    return 0
