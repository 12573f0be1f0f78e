"""What each person told the studio about each item, as one number on the star scale.

The studio's ``feedback`` table holds stars, pairwise comparisons, flags and implicit signals
(download, regenerate, copy), each with its ``rater``. A recommender wants, per (person, item),
one preference value ``y`` (on the 1-5 star scale) and a confidence ``w``:

=========================  ======  =====  ==============================================
feedback                   y       w      why
=========================  ======  =====  ==============================================
stars s                    s       1.0    the explicit answer
comparison, won            4.0     0.5    better than another item: likely liked
comparison, lost           2.0     0.5    worse than another item: likely not
comparison, tie            3.0     0.25   seen, no preference
flag (any reason)          1.0     1.0    wrong, low quality or unsafe: do not show again
signal download / copy     4.5     0.5    kept it: a strong implicit like
signal regenerate          3.0     0.25   wanted another version: interest, not approval
=========================  ======  =====  ==============================================

Several pieces about one (person, item) are averaged with their weights, and the weights add
up (capped at 2.0): a person who starred and downloaded an item is surer than one who only
starred it. The numbers are the defaults of :class:`SignalWeights`; the simulation in
``benchmarks/recommend_sim.py`` only exercises stars, comparisons and downloads.

Every item a person has given any feedback about counts as *seen*: it is never recommended to
them again (a comparison shows both items; a flag is an explicit "not this").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_CONFIDENCE = 2.0


@dataclass(frozen=True)
class SignalWeights:
    """(value on the star scale, confidence) of each kind of feedback; see the module table."""

    comparison_win: tuple[float, float] = (4.0, 0.5)
    comparison_loss: tuple[float, float] = (2.0, 0.5)
    comparison_tie: tuple[float, float] = (3.0, 0.25)
    flag: tuple[float, float] = (1.0, 1.0)
    download: tuple[float, float] = (4.5, 0.5)
    copy: tuple[float, float] = (4.5, 0.5)
    regenerate: tuple[float, float] = (3.0, 0.25)


@dataclass
class Interactions:
    """Preference values of people for items.

    ``values[rater][item] = (y, w)``: the weighted mean value ``y`` on the star scale and the
    confidence ``w`` (capped at :data:`MAX_CONFIDENCE`). ``seen[rater]`` is every item the rater
    gave feedback about (a superset of ``values[rater]``'s keys). ``counts[rater]`` is the number
    of feedback rows of the rater that were read.
    """

    values: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    seen: dict[str, set[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def raters(self) -> list[str]:
        return sorted(self.values)

    def global_mean(self) -> float:
        """Confidence-weighted mean of every value (3.0, the middle of the scale, when empty)."""
        num = den = 0.0
        for row in self.values.values():
            for y, w in row.values():
                num += w * y
                den += w
        return num / den if den else 3.0


def _pieces(row: dict[str, Any], weights: SignalWeights) -> list[tuple[str, float, float]]:
    """(item, y, w) pieces of one feedback row; empty for a row that says nothing here."""
    kind, value = row["kind"], row["value"]
    if kind == "stars":
        score = row.get("score")
        stars = float(score) if score is not None else float(value)
        return [(row["item_id"], stars, 1.0)]
    if kind == "comparison":
        a, b = row["item_id"], row.get("other_id")
        if b is None:
            return []
        if value == "tie":
            return [(a, *weights.comparison_tie), (b, *weights.comparison_tie)]
        win, lose = (a, b) if value == "a" else (b, a)
        return [(win, *weights.comparison_win), (lose, *weights.comparison_loss)]
    if kind == "flag":
        return [(row["item_id"], *weights.flag)]
    if kind == "signal" and value in ("download", "copy", "regenerate"):
        return [(row["item_id"], *getattr(weights, value))]
    return []


def collect(rows: Iterable[dict[str, Any]],
            weights: SignalWeights | None = None) -> Interactions:
    """:class:`Interactions` from feedback rows (``Store.list_feedback()`` rows, any order)."""
    weights = weights or SignalWeights()
    sums: dict[str, dict[str, list[float]]] = {}
    out = Interactions()
    for row in rows:
        rater = row["rater"]
        out.counts[rater] = out.counts.get(rater, 0) + 1
        seen = out.seen.setdefault(rater, set())
        seen.add(row["item_id"])
        if row.get("other_id"):
            seen.add(row["other_id"])
        for item, y, w in _pieces(row, weights):
            acc = sums.setdefault(rater, {}).setdefault(item, [0.0, 0.0])
            acc[0] += w * y
            acc[1] += w
    for rater, per_item in sums.items():
        out.values[rater] = {item: (num / den, min(den, MAX_CONFIDENCE))
                             for item, (num, den) in per_item.items()}
    return out
