"""``aigc models list|show|register|promote|rollback``: the model registry."""

from __future__ import annotations

import argparse
import json

from aigc.errors import AigcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="registered models: versions, aliases, promotion",
                       description="Every model has a name and numbered versions (content hash, "
                       "parent, the feedback dataset it learned from, its metric card) and the "
                       "aliases production and candidate. The shipped starters are the first "
                       "versions of their names. The registry folder is $AIGC_REGISTRY "
                       "(default ./registry).")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("list", help="names, versions and aliases")
    a.set_defaults(func=run_list)
    a = acts.add_parser("show", help="one name's versions, lineage and history")
    a.add_argument("name")
    a.set_defaults(func=run_show)
    a = acts.add_parser("register", help="add a checkpoint as the next version of NAME")
    a.add_argument("name")
    a.add_argument("checkpoint")
    a.add_argument("--alias", choices=["candidate", "production"], default=None)
    a.add_argument("--note", default="")
    a.set_defaults(func=run_register)
    a = acts.add_parser("promote", help="make a version production, if it passes the gate",
                        description="Measures production and the version on one fixed protocol "
                        "(images: FID and conditional accuracy, n images; text: held-out "
                        "perplexity) and refuses a version worse beyond the tolerances "
                        "(FID +10%%, accuracy -2 points, perplexity +5%%) unless --force, "
                        "whose reason is recorded.")
    a.add_argument("name")
    a.add_argument("version", nargs="?", default="candidate",
                   help="vK or candidate (default candidate)")
    a.add_argument("--n", type=int, default=1000, help="images for the image gate (default 1000)")
    a.add_argument("--force", action="store_true", help="promote even if the gate fails")
    a.add_argument("--reason", default="", help="why (required with --force)")
    a.set_defaults(func=run_promote)
    a = acts.add_parser("rollback", help="production goes back to its previous version")
    a.add_argument("name")
    a.add_argument("--reason", required=True)
    a.set_defaults(func=run_rollback)


def run_list(args: argparse.Namespace) -> int:
    from aigc.registry import Registry

    reg = Registry()
    for name in reg.names():
        versions = reg.versions(name)
        aliases = reg.state(name)["aliases"]
        tags = ", ".join(f"{k}=v{v}" for k, v in sorted(aliases.items()))
        print(f"{name:28s} {versions[-1].family if versions else '?':10s} "
              f"{len(versions)} version(s)  {tags}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from aigc.registry import Registry

    reg = Registry()
    versions = reg.versions(args.name)
    if not versions:
        raise AigcError(f"no model named {args.name!r}; `aigc models list` shows the names")
    state = reg.state(args.name)
    out = {"name": args.name, "aliases": state["aliases"],
           "versions": [{k: v for k, v in ver.to_dict().items() if k != "card"}
                        | {"card": bool(ver.card),
                           "cards": {label: c.get("values", {}) for label, c in
                                     reg.cards(args.name, ver.version).items()}}
                        for ver in versions],
           "history": state["history"]}
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


def run_register(args: argparse.Namespace) -> int:
    from aigc.registry import Registry

    v = Registry().register(args.name, args.checkpoint, alias=args.alias, note=args.note)
    print(f"registered {v.ref} ({v.family}, sha256 {v.sha256[:12]}...)"
          + (f" as {args.alias}" if args.alias else ""))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from aigc.loop.promotion import gate
    from aigc.registry import Registry

    if args.force and not args.reason.strip():
        raise AigcError("--force needs --reason: the history records why the gate was overruled")
    if not 10 <= args.n <= 10000:
        raise AigcError(f"--n must be between 10 and 10000, got {args.n}")
    reg = Registry()
    candidate = reg.resolve(f"{args.name}@{args.version}")
    production = reg.resolve(f"{args.name}@production")
    if candidate.version == production.version:
        raise AigcError(f"{candidate.ref} is production already")
    print(f"gate: measuring {production.ref} (production) and {candidate.ref} ...")
    result = gate(str(production.path), str(candidate.path), n=args.n, progress=True)
    for k in result.base:
        print(f"  {k:22s} production {result.base[k]:.4f}   candidate {result.candidate[k]:.4f}")
    result.keep_cards(reg, production, candidate)
    if not result.passed and not args.force:
        raise AigcError(f"{candidate.ref} not promoted: " + "; ".join(result.reasons)
                        + " (--force --reason '...' overrides, and is recorded)")
    entry = reg.promote(args.name, f"v{candidate.version}", forced=not result.passed,
                        reason=args.reason or ("gate passed" if result.passed else ""),
                        expected_production=production.version, gate=result.to_dict())
    print(f"{args.name}@production: v{entry['from']} -> v{entry['to']}"
          + (" (FORCED past the gate)" if entry["forced"] else " (gate passed)"))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from aigc.registry import Registry

    entry = Registry().rollback(args.name, reason=args.reason)
    print(f"{args.name}@production: v{entry['from']} -> v{entry['to']} (rolled back)")
    return 0
