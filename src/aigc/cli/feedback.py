"""``aigc feedback export|report``: what the studio's users said, as a preference dataset or a
report page."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigc.errors import AigcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feedback", help="export studio feedback as a preference dataset, or "
                       "write the analysis report",
                       description="Read the ratings, comparisons, flags and signals people gave "
                       "in the studio. `export` writes a versioned preference dataset (pairs + "
                       "single ratings + the files) for `aigc improve`; `report` writes one HTML "
                       "page of ratings and win-rates per model version, class, prompt and "
                       "sampler with intervals, rater agreement, drift and the worst items.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("export", "write a preference dataset"),
                       ("report", "write the analysis report (HTML)")):
        a = acts.add_parser(name, help=text)
        a.add_argument("--studio-data", default="studio-data",
                       help="the studio's data folder (default studio-data)")
        a.add_argument("--db", help="the studio's database URL if not the folder's SQLite")
        if name == "export":
            a.add_argument("--model", required=True,
                           help="the served model name whose items to export (e.g. "
                                "diffusion-mnist)")
            a.add_argument("--out", default="out/feedback",
                           help="export folder; the dataset goes to OUT/<id>/ and OUT/latest "
                                "names it (default out/feedback)")
            a.add_argument("--min-star-gap", type=float, default=1.0,
                           help="stars: pair two items whose mean stars differ by at least this "
                                "(default 1)")
            a.set_defaults(func=run_export)
        else:
            a.add_argument("--out", default="out/feedback-report.html", help="HTML file")
            a.set_defaults(func=run_report)


def _store(args: argparse.Namespace):
    from aigc.studio.store import Store

    folder = Path(args.studio_data)
    if args.db is None and not (folder / "studio.db").is_file():
        raise AigcError(f"{folder} holds no studio database (studio.db); pass --studio-data "
                        "or --db")
    return Store(folder, args.db)


def version_labels() -> dict[str, str]:
    """``{sha256: NAME@vK}`` for every registered version (items name their model's hash)."""
    from aigc.registry import Registry

    reg = Registry()
    return {v.sha256: v.ref for name in reg.names() for v in reg.versions(name)}


def run_export(args: argparse.Namespace) -> int:
    from aigc.cli._common import check_out_folder
    from aigc.loop.export import export_dataset

    check_out_folder(args.out)
    if args.min_star_gap <= 0 or args.min_star_gap > 4:
        raise AigcError(f"--min-star-gap must be in (0, 4], got {args.min_star_gap}")
    store = _store(args)
    try:
        snapshot = store.feedback_snapshot(model=args.model)
        families = {(it.get("record") or {}).get("family") for it in snapshot["items"].values()}
        families.discard(None)
        if len(families) > 1:
            raise AigcError(f"items of {args.model!r} come from several families: {families}")
        folder = export_dataset(snapshot, store.files_dir, Path(args.out), model=args.model,
                                family=next(iter(families), None),
                                min_star_gap=args.min_star_gap)
    finally:
        store.close()
    import json

    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    print(f"{card['dataset']}: {card['pairs']} pairs ({card['pairs_by_source']}, split "
          f"{card['pairs_by_split']}), {card['rated_items']} rated items, {card['raters']} "
          f"raters -> {folder}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from aigc.cli._common import check_out_file
    from aigc.loop.report import feedback_report

    check_out_file(args.out)
    store = _store(args)
    try:
        page = feedback_report(store.feedback_snapshot(), files_dir=store.files_dir,
                               labels=version_labels())
    finally:
        store.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"report: {out}")
    return 0
