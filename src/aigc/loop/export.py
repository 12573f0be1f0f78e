"""``aigc feedback export``: a versioned, reproducible preference dataset from studio feedback.

A dataset folder holds::

    pairs.jsonl     one preference pair a line: chosen vs rejected item under the same condition
    ratings.jsonl   one rated item a line: mean stars, flags, implicit signals
    files/          the items' files, named by their SHA-256 (as the studio stores them)
    card.json       where every pair came from, counts, what was skipped and why

Pairs come from comparisons (the majority of the raters' votes on an unordered pair; ties and
even splits give no pair) and from stars (two items of the same model version and the same
condition whose mean stars differ by at least ``min_star_gap``). A pair needs both items to
have the same condition (class label or prompt): a preference between a "7" and a "3" says
nothing about how to draw either.

Reproducible: the same feedback gives the same bytes (sorted, no clock times), and the
dataset's id is the hash of its content. The split is a function of the pair alone (the SHA-256
of its two files), so a pair never moves between train and val when new feedback arrives.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from aigc.errors import AigcError

VAL_BUCKETS = 1  # of 10: a tenth of the pairs are held out for validation
MAX_STAR_PAIRS_PER_GROUP = 200


def condition_of(item: dict[str, Any]) -> dict[str, Any]:
    """The condition an item was made under: ``{"label": int|None, "prompt": str|None}``
    (text items: the prompt they continue)."""
    rec = item.get("record") or {}
    label = rec.get("label")
    return {"label": label if isinstance(label, int) else None,
            "prompt": item.get("prompt") if item.get("prompt") is not None else rec.get("prompt")}


def _condition_key(item: dict[str, Any]) -> str:
    return json.dumps(condition_of(item), sort_keys=True, ensure_ascii=False)


def split_of(chosen_file: str, rejected_file: str) -> str:
    """``train`` or ``val`` from the pair's two files alone (order-free)."""
    key = "|".join(sorted((chosen_file, rejected_file)))
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "val" if bucket < VAL_BUCKETS else "train"


@dataclass
class PreferenceData:
    pairs: list[dict[str, Any]]
    ratings: list[dict[str, Any]]
    skipped: dict[str, int]
    raters: int


def build_preferences(snapshot: dict[str, Any], *, min_star_gap: float = 1.0) -> PreferenceData:
    """Pairs and single ratings from a feedback snapshot (see the module docstring)."""
    items: dict[str, dict[str, Any]] = snapshot["items"]
    feedback = snapshot["feedback"]
    skipped: dict[str, int] = defaultdict(int)
    pairs: dict[tuple[str, str], dict[str, Any]] = {}

    def pair(chosen: dict, rejected: dict, source: str, **why: Any) -> None:
        key = (chosen["file"], rejected["file"])
        if key in pairs or key[::-1] in pairs:
            skipped["duplicate_pair"] += 1  # e.g. the same pair from stars and a comparison
            return
        pairs[key] = {
            "source": source, "chosen": chosen["id"], "rejected": rejected["id"],
            "chosen_file": chosen["file"], "rejected_file": rejected["file"],
            "kind": chosen["kind"], "condition": condition_of(chosen),
            "chosen_model_sha256": chosen["model_sha256"],
            "rejected_model_sha256": rejected["model_sha256"],
            "chosen_text": chosen.get("text"), "rejected_text": rejected.get("text"),
            "messages": (chosen.get("record") or {}).get("messages"),  # chat items: the turns
            "split": split_of(chosen["file"], rejected["file"]), **why,
        }

    # 1. comparisons: one majority verdict per unordered pair of items
    votes: dict[tuple[str, str], dict[str, Any]] = {}
    for fb in feedback:
        if fb["kind"] != "comparison":
            continue
        a, b = fb["item_id"], fb["other_id"]
        if a not in items or b not in items:
            skipped["item_missing"] += 1
            continue
        key = tuple(sorted((a, b)))
        v = votes.setdefault(key, {"wins": defaultdict(int), "ties": 0, "raters": set()})
        v["raters"].add(fb["rater"])
        if fb["value"] == "tie":
            v["ties"] += 1
        else:
            v["wins"][a if fb["value"] == "a" else b] += 1
    for (a, b), v in sorted(votes.items()):
        ia, ib = items[a], items[b]
        if ia["kind"] != ib["kind"]:
            skipped["different_kind"] += 1
        elif _condition_key(ia) != _condition_key(ib):
            skipped["different_condition"] += 1
        elif v["wins"][a] == v["wins"][b]:
            skipped["tie"] += 1
        else:
            win, lose = (ia, ib) if v["wins"][a] > v["wins"][b] else (ib, ia)
            pair(win, lose, "comparison", votes={"chosen": v["wins"][win["id"]],
                                                 "rejected": v["wins"][lose["id"]],
                                                 "ties": v["ties"]},
                 raters=len(v["raters"]))

    # 2. stars: higher vs lower mean for the same model version and condition
    stars: dict[str, list[float]] = defaultdict(list)
    flags: dict[str, list[str]] = defaultdict(list)
    signals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    raters = set()
    for fb in feedback:
        raters.add(fb["rater"])
        if fb["item_id"] not in items:
            continue
        if fb["kind"] == "stars":
            stars[fb["item_id"]].append(float(fb["score"]))
        elif fb["kind"] == "flag":
            flags[fb["item_id"]].append(fb["value"])
        elif fb["kind"] == "signal":
            signals[fb["item_id"]][fb["value"]] += 1
    groups: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for item_id, s in stars.items():
        it = items[item_id]
        groups[(it["model_sha256"], _condition_key(it))].append((sum(s) / len(s), item_id))
    for _, members in sorted(groups.items()):
        members.sort(key=lambda m: (-m[0], m[1]))
        made = 0
        for (hi, a), (lo, b) in combinations(members, 2):
            if hi - lo >= min_star_gap and made < MAX_STAR_PAIRS_PER_GROUP:
                pair(items[a], items[b], "stars", stars={"chosen": round(hi, 3),
                                                         "rejected": round(lo, 3)})
                made += 1

    ratings = []
    for item_id in sorted(set(stars) | set(flags) | set(signals)):
        it = items[item_id]
        s = stars.get(item_id, [])
        ratings.append({"item": item_id, "file": it["file"], "kind": it["kind"],
                        "model_sha256": it["model_sha256"], "condition": condition_of(it),
                        "stars": round(sum(s) / len(s), 3) if s else None, "n_stars": len(s),
                        "flags": sorted(flags.get(item_id, [])),
                        "signals": dict(sorted(signals.get(item_id, {}).items())),
                        "text": it.get("text")})
    out = sorted(pairs.values(), key=lambda p: (p["chosen_file"], p["rejected_file"]))
    for p in out:
        p["id"] = hashlib.sha256(f"{p['chosen_file']}>{p['rejected_file']}".encode()
                                 ).hexdigest()[:16]
    return PreferenceData(out, ratings, dict(sorted(skipped.items())), len(raters))


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                   for r in rows).encode("utf-8")


def export_dataset(snapshot: dict[str, Any], files_dir: Path, out: Path, *, model: str,
                   family: str | None = None, min_star_gap: float = 1.0) -> Path:
    """Write the dataset of ``snapshot`` (feedback on the items of served model ``model``)
    under ``out/<dataset id>/`` and point ``out/latest`` at it. Returns the folder.

    Raises :class:`AigcError` when there is no pair to learn from (nothing is written)."""
    data = build_preferences(snapshot, min_star_gap=min_star_gap)
    counts = {k: sum(1 for f in snapshot["feedback"] if f["kind"] == k)
              for k in ("stars", "comparison", "flag", "signal")}
    if not data.pairs:
        raise AigcError(
            f"no preference pairs for model {model!r}: {counts['stars']} star rating(s) and "
            f"{counts['comparison']} comparison(s) gave none (skipped: "
            f"{data.skipped or 'nothing'}); pairs need two items of the same condition, "
            f"compared, or rated at least {min_star_gap:g} star(s) apart")
    pairs_b, ratings_b = _jsonl(data.pairs), _jsonl(data.ratings)
    digest = hashlib.sha256(pairs_b + b"\0" + ratings_b).hexdigest()
    dataset_id = f"fb-{digest[:12]}"
    kinds = sorted({p["kind"] for p in data.pairs})
    card = {
        "dataset": dataset_id, "sha256": digest, "format": 1, "model": model,
        "family": family, "kinds": kinds,
        "model_sha256s": sorted({p[k] for p in data.pairs
                                 for k in ("chosen_model_sha256", "rejected_model_sha256")}),
        "snapshot_last_feedback_id": snapshot["last_id"], "feedback_counts": counts,
        "pairs": len(data.pairs),
        "pairs_by_source": {s: sum(1 for p in data.pairs if p["source"] == s)
                            for s in ("comparison", "stars")},
        "pairs_by_split": {s: sum(1 for p in data.pairs if p["split"] == s)
                           for s in ("train", "val")},
        "rated_items": len(data.ratings), "raters": data.raters, "skipped": data.skipped,
        "min_star_gap": min_star_gap,
        "split_rule": "val when sha256(sorted file names) % 10 < 1; fixed per pair",
        "made_by": "aigc feedback export",
    }
    final = Path(out) / dataset_id
    if not (final / "card.json").is_file():
        tmp = Path(out) / f".{dataset_id}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "files").mkdir(parents=True)
        names = {p[k] for p in data.pairs for k in ("chosen_file", "rejected_file")} | \
            {r["file"] for r in data.ratings}
        for name in sorted(names):
            src = Path(files_dir) / name
            if not src.is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                raise AigcError(f"{src} is missing from the studio's files folder; the "
                                "dataset was not written")
            shutil.copyfile(src, tmp / "files" / name)
        (tmp / "pairs.jsonl").write_bytes(pairs_b)
        (tmp / "ratings.jsonl").write_bytes(ratings_b)
        (tmp / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True,
                                                  ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, final)
    latest = Path(out) / "latest"
    tmp_latest = latest.with_name(f".latest.tmp-{os.getpid()}")
    tmp_latest.write_text(dataset_id + "\n", encoding="utf-8")
    os.replace(tmp_latest, latest)
    return final


def load_dataset(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """``(card, pairs, folder)`` of a dataset folder, or of the ``latest`` one of an export
    folder."""
    folder = Path(path)
    if (folder / "latest").is_file() and not (folder / "card.json").is_file():
        folder = folder / (folder / "latest").read_text(encoding="utf-8").strip()
    if not (folder / "card.json").is_file():
        raise AigcError(f"{path} is not a feedback dataset (no card.json; make one with "
                        "`aigc feedback export`)")
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    pairs = [json.loads(line) for line in
             (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return card, pairs, folder
