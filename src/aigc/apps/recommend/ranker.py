"""Per-person ranking of studio items: popularity + collaborative filtering + content similarity.

Every part speaks the same unit, stars above or below the average, so they add:

    score(u, i) = pop(i) + w_cf(n_u) * cf(u, i) + w_content * content(u, i)

* ``pop(i)``: the item's mean value over everyone (:mod:`signals`), minus the global mean,
  shrunk towards 0 by ``pop_shrink`` pseudo-answers (an item with one 5-star answer is not
  ranked above one with twenty 4.5s).
* ``cf(u, i)``, collaborative: ``cf_max`` x the personal part ``P[u] . Q[i]`` of the matrix
  factorisation (:mod:`collaborative`), plus ``neighbours_max`` x content-boosted user-user CF
  (Melville, Mooney & Nagarajan 2002): everyone's answers are filled in with their content
  predictions, and the people whose filled-in answers correlate best with the person's vote
  (``people_neighbours`` of them). Both grow with the number ``n`` of items the person has
  answered about, by ``n / (n + cf_ramp)``: a person's factors and correlations are noise
  until they have said enough.
* ``content(u, i)``: kernel regression of the person's own residuals ``r_j = y_j - ybar_u -
  pop(j)`` (``ybar_u``: their weighted mean, shrunk towards 3 stars by ``user_shrink``) over
  the ``content_neighbours`` items they answered about that are most similar to ``i``
  (``s_ij``: cosine of :mod:`content` features, positive only, same feature space, raised to
  ``content_power``): ``sum_j s_ij w_j r_j / (sum_j s_ij w_j + content_shrink)``. It works
  from the first answer and for items no one else has rated.

Cold start: a person with fewer than ``cold_signals`` answers gets the same score (``cf`` and
``content`` are 0 without answers, so it is popularity, then popularity near their first
answers), re-ranked for diversity by maximal marginal relevance (Carbonell & Goldstein 1998):
the next pick maximises ``score(i) - diversity * max_{j picked} sim(i, j)``, so ten copies of
the most popular kind do not fill the list.

Items the person has given any feedback about are never returned. The weights were chosen on
a tuning run of the simulation with another seed than the reported one (docs/recommend.md).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aigc.apps.recommend.collaborative import FactorConfig, FactorModel, fit_factors
from aigc.apps.recommend.content import ContentIndex
from aigc.apps.recommend.signals import Interactions, SignalWeights, collect

MAX_CATALOGUE = 20_000  # the most recent items considered
MAX_K = 100
NEUTRAL_STARS = 3.0  # the middle of the 1-5 scale


@dataclass(frozen=True)
class BlendWeights:
    """How the three parts are mixed (see the module docstring)."""

    cf_max: float = 0.5
    neighbours_max: float = 3.0
    people_neighbours: int = 30
    cf_ramp: float = 10.0
    content: float = 1.0
    content_neighbours: int = 20
    content_power: float = 3.0
    content_shrink: float = 1.0
    pop_shrink: float = 3.0
    user_shrink: float = 2.0
    cold_signals: int = 5
    diversity: float = 0.5

    def __post_init__(self):
        for name in ("cf_max", "neighbours_max", "content", "cf_ramp", "content_power", "content_shrink",
                     "pop_shrink",
                     "user_shrink", "diversity"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.people_neighbours < 1:
            raise ValueError(f"people_neighbours must be >= 1, got {self.people_neighbours}")
        if self.content_neighbours < 1:
            raise ValueError(f"content_neighbours must be >= 1, got {self.content_neighbours}")


@dataclass
class Scored:
    """One recommended item with the parts of its score."""

    item: dict[str, Any]
    score: float
    popularity: float
    collaborative: float
    content: float


@dataclass
class Recommendations:
    rater: str
    strategy: str  # "cold_start" | "blend"
    n_signals: int
    items: list[Scored]
    settings: list[dict[str, Any]] = field(default_factory=list)


def _setting_key(row: dict[str, Any]) -> tuple | None:
    """What a person could ask the studio again to get more like this item."""
    rec = row.get("record") or {}
    if row["kind"] == "image":
        if rec.get("label") is not None:
            return ("image", row["model"], "label", int(rec["label"]), rec.get("class_name"))
        if row.get("prompt"):
            return ("image", row["model"], "prompt", row["prompt"], None)
        return None
    if row["kind"] == "text":
        return ("text", row["model"], "prompt", row["prompt"], None) if row.get("prompt") else None
    if row["kind"] == "music" and rec.get("style"):
        return ("music", row["model"], "music", (rec.get("style"), rec.get("key"),
                                                 rec.get("meter")), None)
    return None


def _setting_body(key: tuple) -> dict[str, Any]:
    """A ``POST /api/jobs`` body for the setting ``key``."""
    kind, model, what, value, class_name = key
    if what == "label":
        return {"kind": kind, "model": model, "label": value, "class_name": class_name}
    if what == "prompt":
        return {"kind": kind, "model": model, "prompt": value}
    style, music_key, meter = value
    return {"kind": kind, "model": model, "style": style, "key": music_key, "meter": meter}


def _residuals(mine: dict[int, tuple[float, float]], pop: np.ndarray,
               W: BlendWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item indices, residuals ``y - ybar - pop``, confidences) of one person's answers."""
    js = np.array(sorted(mine))
    y = np.array([mine[j][0] for j in js])
    w = np.array([mine[j][1] for j in js])
    # the person's own mean, shrunk towards the neutral middle of the scale (not the global
    # mean: someone who has only given 5s to a few items still likes them)
    ybar = (np.sum(w * y) + W.user_shrink * NEUTRAL_STARS) / (np.sum(w) + W.user_shrink)
    return js, y - ybar - pop[js], w


def _content_scores(sim: np.ndarray, js: np.ndarray, resid: np.ndarray, w: np.ndarray,
                    W: BlendWeights) -> np.ndarray:
    """Kernel regression of the residuals ``resid`` of items ``js`` onto every item, ``(I,)``
    (the content part of the module docstring, before its weight)."""
    s = np.clip(sim[:, js], 0.0, None) ** W.content_power  # (I, n)
    if len(js) > W.content_neighbours:  # keep each item's nearest answered items
        cut = np.partition(s, -W.content_neighbours, axis=1)[:, -W.content_neighbours]
        s = np.where(s >= cut[:, None], s, 0.0)
    return (s @ (w * resid)) / (s @ w + W.content_shrink)


def _neighbour_scores(pseudo: np.ndarray, answered: np.ndarray, u: int,
                      W: BlendWeights) -> np.ndarray:
    """Content-boosted user-user CF (Melville, Mooney & Nagarajan, AAAI 2002): the Pearson
    correlation of person ``u``'s pseudo-answers with everyone else's picks up to
    ``people_neighbours`` positively correlated people; their pseudo-answers, weighted by
    correlation x n/(n + 10) (n: how many answers each gave), averaged. ``(I,)``"""
    if pseudo.shape[0] < 2:
        return np.zeros(pseudo.shape[1])
    X = pseudo - pseudo.mean(axis=1, keepdims=True)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    corr = X @ X[u]  # (U,)
    corr[u] = 0.0
    corr = np.clip(corr, 0.0, None) * answered / (answered + 10.0)
    if len(corr) > W.people_neighbours:
        corr[np.argsort(corr)[:-W.people_neighbours]] = 0.0
    return (corr @ pseudo) / (corr.sum() + 1e-12) if corr.sum() > 0 else np.zeros(pseudo.shape[1])


class Recommender:
    """Ranks a store's items for one person. Thread-safe; the factorisation is refitted only
    when the feedback changed, and item features are computed once per item."""

    def __init__(self, store, weights: BlendWeights | None = None,
                 factors: FactorConfig | None = None,
                 signal_weights: SignalWeights | None = None):
        self.store = store
        self.weights = weights or BlendWeights()
        self.factors = factors or FactorConfig()
        self.signal_weights = signal_weights or SignalWeights()
        self.content = ContentIndex(store.files_dir)
        self._lock = threading.Lock()
        self._cache_key: tuple | None = None
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Items, interactions, factors and similarities, rebuilt when feedback or items
        changed since the last call (pass it to :meth:`recommend` to rank many people, or
        with other :class:`BlendWeights`, against one snapshot)."""
        rows = self.store.list_feedback()
        items = self.store.list_items(limit=MAX_CATALOGUE)
        key = (len(rows), rows[-1]["id"] if rows else 0, len(items),
               items[0]["id"] if items else None)
        with self._lock:
            if key == self._cache_key:
                return self._cache
            self.content.update(items)
            ids = [r["id"] for r in items]
            index = {i: j for j, i in enumerate(ids)}
            inter = collect(rows, self.signal_weights)
            raters = inter.raters()
            uu, ii, yy, ww = [], [], [], []
            for u, rater in enumerate(raters):
                for item_id, (y, w) in inter.values[rater].items():
                    if item_id in index:
                        uu.append(u)
                        ii.append(index[item_id])
                        yy.append(y)
                        ww.append(w)
            model = fit_factors(np.array(uu, dtype=np.int64), np.array(ii, dtype=np.int64),
                                np.array(yy), np.array(ww), len(raters), len(ids),
                                self.factors)
            pop = self._popularity(inter, index, len(ids))
            sim = self.content.similarity(ids)
            # (U, I) everyone's pseudo-answers: their own residual where they answered, the
            # content prediction elsewhere (Melville et al.'s content-boosted CF)
            pseudo = np.zeros((len(raters), len(ids)))
            answered = np.zeros(len(raters))
            for u, rater in enumerate(raters):
                mine = {index[i]: yw for i, yw in inter.values[rater].items() if i in index}
                if mine:
                    js, resid, w = _residuals(mine, pop, self.weights)
                    pseudo[u] = _content_scores(sim, js, resid, w, self.weights)
                    pseudo[u, js] = resid
                    answered[u] = len(js)
            self._cache = {"items": items, "ids": ids, "index": index, "inter": inter,
                           "raters": {r: u for u, r in enumerate(raters)}, "model": model,
                           "pop": pop, "sim": sim, "pseudo": pseudo, "answered": answered}
            self._cache_key = key
            return self._cache

    def _popularity(self, inter: Interactions, index: dict[str, int], n: int) -> np.ndarray:
        """Shrunk mean value of each item minus the global mean, ``(n,)``."""
        mu = inter.global_mean()
        num, den = np.zeros(n), np.zeros(n)
        for row in inter.values.values():
            for item_id, (y, w) in row.items():
                if item_id in index:
                    num[index[item_id]] += w * (y - mu)
                    den[index[item_id]] += w
        return num / (den + self.weights.pop_shrink)

    # ---------------------------------------------------------------- ranking
    def scores(self, rater: str, state: dict[str, Any] | None = None,
               weights: BlendWeights | None = None) -> tuple[dict[str, Any],
                                                             dict[str, np.ndarray]]:
        """The state and the score parts of every catalogue item for ``rater``."""
        st = state or self.state()
        W = weights or self.weights
        inter: Interactions = st["inter"]
        n_items = len(st["ids"])
        pop = st["pop"]
        mine = {st["index"][i]: yw for i, yw in inter.values.get(rater, {}).items()
                if i in st["index"]}
        cf = np.zeros(n_items)
        content = np.zeros(n_items)
        if mine:
            u = st["raters"][rater]
            model: FactorModel = st["model"]
            n = len(mine)
            cf = (W.cf_max * n / (n + W.cf_ramp)) * model.interaction(u)
            js, resid, w = _residuals(mine, pop, W)
            content = W.content * _content_scores(st["sim"], js, resid, w, W)
            cf = cf + (W.neighbours_max * n / (n + W.cf_ramp)) * _neighbour_scores(
                st["pseudo"], st["answered"], u, W)
        return st, {"popularity": pop, "collaborative": cf, "content": content,
                    "score": pop + cf + content}

    def recommend(self, rater: str, k: int = 10, *, with_settings: bool = True,
                  state: dict[str, Any] | None = None,
                  weights: BlendWeights | None = None) -> Recommendations:
        """The ``k`` best items ``rater`` has not given feedback about, best first.
        ``weights`` other than the recommender's own: for comparisons (the popularity part
        keeps the shrinkage the state was built with)."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
        W = weights or self.weights
        st, parts = self.scores(rater, state, W)
        inter: Interactions = st["inter"]
        seen = inter.seen.get(rater, set())
        n_signals = len(inter.values.get(rater, {}))
        score = parts["score"]
        candidates = [j for j, i in enumerate(st["ids"]) if i not in seen]
        cold = n_signals < W.cold_signals
        if cold and W.diversity > 0:
            picked = self._diverse(candidates, score, st["sim"], k, W.diversity)
        else:
            # stable: ties keep the store's order (newest first)
            picked = sorted(candidates, key=lambda j: -score[j])[:k]
        out = [Scored(st["items"][j], float(score[j]), float(parts["popularity"][j]),
                      float(parts["collaborative"][j]), float(parts["content"][j]))
               for j in picked]
        rec = Recommendations(rater, "cold_start" if cold else "blend", n_signals, out)
        if with_settings:
            rec.settings = self._settings(st, score, inter.values.get(rater, {}))
        return rec

    @staticmethod
    def _diverse(candidates: list[int], score: np.ndarray, sim: np.ndarray, k: int,
                 diversity: float) -> list[int]:
        """Maximal marginal relevance over ``candidates``."""
        left = sorted(candidates, key=lambda j: -score[j])
        picked: list[int] = []
        penalty = np.zeros(len(score))
        while left and len(picked) < k:
            best = max(left, key=lambda j: score[j] - diversity * penalty[j])
            picked.append(best)
            left.remove(best)
            penalty = np.maximum(penalty, np.clip(sim[:, best], 0.0, None))
        return picked

    def _settings(self, st: dict[str, Any], score: np.ndarray,
                  mine: dict[str, tuple[float, float]], n: int = 3) -> list[dict[str, Any]]:
        """Up to ``n`` settings (model + class, prompt or music style) to generate with: the
        mean over a setting's items of the person's own answer (minus their mean) where they
        gave one, and of the predicted score elsewhere."""
        ybar = float(np.mean([y for y, _ in mine.values()])) if mine else 0.0
        groups: dict[tuple, list[float]] = {}
        for j, row in enumerate(st["items"]):
            key = _setting_key(row)
            if key is None:
                continue
            own = mine.get(row["id"])
            groups.setdefault(key, []).append(own[0] - ybar if own else float(score[j]))
        ranked = sorted(groups.items(), key=lambda kv: (-float(np.mean(kv[1])), str(kv[0])))
        return [{**_setting_body(key), "score": float(np.mean(vals)), "items": len(vals)}
                for key, vals in ranked[:n]]
