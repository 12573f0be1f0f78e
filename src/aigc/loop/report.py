"""``aigc feedback report``: one HTML page on what people thought of what was generated.

Sections: ratings per model version with 95% intervals; a Bradley-Terry fit of the comparisons
between model versions (strengths on the Elo scale, bootstrap intervals) and the raw win-rates
(Wilson intervals); the same per class, prompt and sampler; how much raters agree; drift over
time; the worst-rated items with their full records. The plots are drawn with matplotlib and
embedded as PNG, so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import random
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

Z95 = 1.959964
MAX_ROWS = 25  # values of one facet shown in its plot and table


# ------------------------------------------------------------------------------ statistics


def wilson_interval(wins: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson, 1927); ``(0, 1)`` for ``n = 0``."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean stars and their 95% t-interval, clipped to the 1-5 scale (the whole scale for
    one value)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, 1.0, 5.0
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return m, max(1.0, m - half), min(5.0, m + half)  # stars live on 1..5


def bradley_terry(games: list[tuple[str, str]], iterations: int = 200) -> dict[str, float]:
    """Strengths ``s`` with P(i beats j) = s_i / (s_i + s_j), fitted to ``(winner, loser)``
    games by Hunter's (2004) MM algorithm. Each player also plays one win and one loss against a
    fixed virtual opponent of strength 1 (a weak prior: the fit exists even for a player that
    never lost). Returned on the Elo scale: 400 log10(s), mean 0 over the players."""
    players = sorted({p for g in games for p in g})
    if not players:
        return {}
    s = dict.fromkeys(players, 1.0)
    wins = defaultdict(float)
    met: dict[str, dict[str, int]] = {p: defaultdict(int) for p in players}
    for w, lo in games:
        wins[w] += 1
        met[w][lo] += 1
        met[lo][w] += 1
    for _ in range(iterations):
        new = {}
        for i in players:
            denom = sum(n / (s[i] + s[j]) for j, n in met[i].items()) + 2 / (s[i] + 1.0)
            new[i] = (wins[i] + 1) / denom
        s = new
    elo = {p: 400 * math.log10(v) for p, v in s.items()}
    mean = sum(elo.values()) / len(elo)
    return {p: e - mean for p, e in elo.items()}


def bootstrap_bt(games: list[tuple[str, str]], rounds: int = 200,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of :func:`bradley_terry` over resampled games."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        sample = [games[rng.randrange(len(games))] for _ in games]
        for p, e in bradley_terry(sample, iterations=100).items():
            draws[p].append(e)
    out = {}
    for p, d in draws.items():
        d.sort()
        out[p] = (d[int(0.025 * (len(d) - 1))], d[int(0.975 * (len(d) - 1))])
    return out


def rater_agreement(feedback: list[dict[str, Any]]) -> dict[str, Any]:
    """How much raters agree. Stars: over items rated by two or more raters, the share of
    rater pairs within one star of each other and the mean absolute difference. Comparisons:
    over item pairs compared by two or more raters, the share of votes that side with the
    majority. Per rater: count and mean stars (a rater's leniency)."""
    by_item: dict[str, dict[str, float]] = defaultdict(dict)
    per_rater: dict[str, list[float]] = defaultdict(list)
    for fb in feedback:
        if fb["kind"] == "stars":
            by_item[fb["item_id"]][fb["rater"]] = float(fb["score"])
            per_rater[fb["rater"]].append(float(fb["score"]))
    close, diffs = 0, []
    for ratings in by_item.values():
        for a, b in combinations(sorted(ratings.values()), 2):
            diffs.append(abs(a - b))
            close += abs(a - b) <= 1
    votes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for fb in feedback:
        if fb["kind"] == "comparison" and fb["value"] != "tie":
            a, b = fb["item_id"], fb["other_id"]
            winner = a if fb["value"] == "a" else b
            votes[tuple(sorted((a, b)))].append(winner)
    agree = total = 0
    for vs in votes.values():
        if len(vs) >= 2:
            top = max(vs.count(v) for v in set(vs))
            agree += top
            total += len(vs)
    return {
        "star_pairs": len(diffs),
        "stars_within_one": close / len(diffs) if diffs else None,
        "stars_mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
        "comparison_votes": total,
        "comparison_majority_share": agree / total if total else None,
        "raters": {r: {"ratings": len(v), "mean_stars": sum(v) / len(v)}
                   for r, v in sorted(per_rater.items())},
    }


# ------------------------------------------------------------------------------- the page


def _version_label(sha: str, labels: dict[str, str], model: str) -> str:
    return labels.get(sha) or f"{model} ({sha[:8]})"


def analyse(snapshot: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The numbers of the report, as plain data (the page renders this)."""
    labels = labels or {}
    items, feedback = snapshot["items"], snapshot["feedback"]

    def version(item_id: str) -> str:
        it = items[item_id]
        return _version_label(it["model_sha256"], labels, it["model"])

    def facets(item_id: str) -> dict[str, str]:
        it = items[item_id]
        rec = it.get("record") or {}
        opts = rec.get("options") or rec
        out = {"version": version(item_id)}
        if rec.get("class_name") is not None or rec.get("label") is not None:
            out["class"] = str(rec.get("class_name") or rec.get("label"))
        if it.get("prompt"):
            out["prompt"] = it["prompt"][:60]
        if opts.get("sampler"):
            out["sampler"] = f"{opts['sampler']} {opts.get('steps', '')}".strip()
        return out

    stars: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    item_wins: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    games: list[tuple[str, str]] = []
    flags: dict[str, int] = defaultdict(int)
    for fb in feedback:
        if fb["item_id"] not in items:
            continue
        if fb["kind"] == "stars":
            for facet, value in facets(fb["item_id"]).items():
                stars[facet][value].append(float(fb["score"]))
        elif fb["kind"] == "flag":
            flags[fb["value"]] += 1
        elif fb["kind"] == "comparison" and fb["other_id"] in items and fb["value"] != "tie":
            a, b = fb["item_id"], fb["other_id"]
            win, lose = (a, b) if fb["value"] == "a" else (b, a)
            for item_id, won in ((win, 1), (lose, 0)):
                for facet, value in facets(item_id).items():
                    item_wins[facet][value][0] += won
                    item_wins[facet][value][1] += 1
            if version(win) != version(lose):
                games.append((version(win), version(lose)))
    rows: dict[str, list[dict[str, Any]]] = {}
    for facet in ("version", "class", "prompt", "sampler"):
        values = sorted(set(stars[facet]) | set(item_wins[facet]))
        rows[facet] = []
        for v in values:
            m, lo, hi = mean_interval(stars[facet].get(v, []))
            k, n = item_wins[facet].get(v, [0, 0])
            wlo, whi = wilson_interval(k, n)
            rows[facet].append({"value": v, "ratings": len(stars[facet].get(v, [])),
                                "stars": m, "stars_lo": lo, "stars_hi": hi,
                                "wins": k, "games": n, "win_rate": k / n if n else None,
                                "win_lo": wlo, "win_hi": whi})
    bt = bradley_terry(games)
    bt_ci = bootstrap_bt(games) if games else {}
    # drift: mean stars per time bucket and version (hours when the span is under two days)
    times = [fb["created"] for fb in feedback if fb["kind"] == "stars"]
    span = (max(times) - min(times)) if times else 0
    bucket_s = 60 if span < 2 * 3600 else 3600 if span < 2 * 86400 else 86400
    drift: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for fb in feedback:
        if fb["kind"] == "stars" and fb["item_id"] in items:
            drift[version(fb["item_id"])][fb["created"] // bucket_s * bucket_s].append(
                float(fb["score"]))
    per_item: dict[str, list[float]] = defaultdict(list)
    for fb in feedback:
        if fb["kind"] == "stars" and fb["item_id"] in items:
            per_item[fb["item_id"]].append(float(fb["score"]))
    worst = sorted(per_item, key=lambda i: (sum(per_item[i]) / len(per_item[i]), i))[:12]
    return {
        "counts": {k: sum(1 for f in feedback if f["kind"] == k)
                   for k in ("stars", "comparison", "flag", "signal")},
        "items": len(items), "raters": len({f["rater"] for f in feedback}),
        "rows": rows, "bradley_terry": {p: {"elo": e, "lo": bt_ci.get(p, (e, e))[0],
                                            "hi": bt_ci.get(p, (e, e))[1]}
                                        for p, e in sorted(bt.items(), key=lambda x: -x[1])},
        "games": len(games), "flags": dict(flags), "agreement": rater_agreement(feedback),
        "drift": {v: sorted((t, sum(s) / len(s), len(s)) for t, s in d.items())
                  for v, d in drift.items()}, "drift_bucket_s": bucket_s,
        "worst": [{"item": items[i], "stars": sum(per_item[i]) / len(per_item[i]),
                   "n": len(per_item[i])} for i in worst],
        "last_feedback_id": snapshot.get("last_id", 0),
    }


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bar_plot(rows: list[dict[str, Any]], key: str, lo: str, hi: str, xlabel: str,
              xlim: tuple[float, float]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 0.9))
    y = list(range(len(rows)))
    vals = [r[key] for r in rows]
    # (a bootstrap percentile interval need not contain the point estimate: clip at 0)
    err = [[max(0.0, v - r[lo]) for v, r in zip(vals, rows)],
           [max(0.0, r[hi] - v) for v, r in zip(vals, rows)]]
    ax.barh(y, vals, xerr=err, color="#4c78a8", ecolor="#333", capsize=3)
    ax.set_yticks(y, [r["value"] if "value" in r else r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _drift_plot(drift: dict[str, list[tuple[float, float, int]]], bucket_s: int) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not drift:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3))
    t0 = min(t for d in drift.values() for t, _, _ in d)
    for version, d in sorted(drift.items()):
        ax.plot([(t - t0) / bucket_s for t, _, _ in d], [m for _, m, _ in d], marker="o",
                label=version)
    ax.set_xlabel({60: "minutes", 3600: "hours"}.get(bucket_s, "days")
                  + " since the first rating")
    ax.set_ylabel("mean stars")
    ax.set_ylim(1, 5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def feedback_report(snapshot: dict[str, Any], *, files_dir: str | Path | None = None,
                    labels: dict[str, str] | None = None, title: str = "aigc feedback") -> str:
    """The report as one self-contained HTML page."""
    a = analyse(snapshot, labels)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             "<style>body{font:14px system-ui,sans-serif;max-width:1000px;margin:2em auto;"
             "padding:0 1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid"
             " #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,"
             "th:first-child{text-align:left}.worst{display:flex;flex-wrap:wrap;gap:12px}"
             ".worst figure{margin:0;width:300px}.worst img{image-rendering:pixelated;width:96px}"
             "pre{white-space:pre-wrap;font-size:11px;background:#f7f7f7;max-height:160px;"
             "overflow:auto}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f"<p>{a['items']} rated items, {a['raters']} raters; {a['counts']['stars']} star "
             f"ratings, {a['counts']['comparison']} comparisons, {a['counts']['flag']} flags, "
             f"{a['counts']['signal']} implicit signals (snapshot up to feedback "
             f"#{a['last_feedback_id']}, made {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             ").</p>"]
    if not snapshot["feedback"]:
        parts.append("<p>No feedback yet: rate, compare or flag items in the studio.</p>")
        return "".join(parts) + "</body></html>"

    parts.append("<h2>Model versions: Bradley–Terry strengths from comparisons</h2>")
    if a["bradley_terry"]:
        rows = [{"name": p, **v} for p, v in a["bradley_terry"].items()]
        lo = min(r["lo"] for r in rows) - 50
        hi = max(r["hi"] for r in rows) + 50
        img = _bar_plot(rows, "elo", "lo", "hi", "strength (Elo scale, 95% bootstrap interval)",
                        (lo, hi))
        parts.append(f"<img src='{img}' alt='Bradley-Terry strengths'>" if img else "")
        parts.append(f"<p>From {a['games']} comparisons between items of different versions. "
                     "A difference of 100 means the stronger version wins 64% of the time.</p>")
    else:
        parts.append("<p>No comparison between items of two different versions yet.</p>")

    for facet, name in (("version", "model version"), ("class", "class"),
                        ("prompt", "prompt"), ("sampler", "sampler and steps")):
        rows = a["rows"][facet]
        if not rows:
            continue
        parts.append(f"<h2>By {e(name)}</h2>")
        if len(rows) > MAX_ROWS:  # e.g. hundreds of prompts: the most-rated ones
            parts.append(f"<p>The {MAX_ROWS} most-rated of {len(rows)} values.</p>")
            rows = sorted(rows, key=lambda r: (-r["ratings"], -r["games"], str(r["value"])))
            rows = rows[:MAX_ROWS]
        img = _bar_plot(rows, "stars", "stars_lo", "stars_hi", "mean stars (95% t-interval)",
                        (1, 5))
        if img:
            parts.append(f"<img src='{img}' alt='mean stars by {e(name)}'>")
        parts.append("<table><tr><th>" + e(name) + "</th><th>ratings</th><th>mean stars</th>"
                     "<th>95% interval</th><th>comparisons</th><th>win-rate</th>"
                     "<th>95% Wilson</th></tr>")
        for r in rows:
            parts.append(
                f"<tr><td>{e(str(r['value']))}</td><td>{r['ratings']}</td>"
                f"<td>{_fmt(r['stars'])}</td><td>{_fmt(r['stars_lo'])}–{_fmt(r['stars_hi'])}"
                f"</td><td>{r['games']}</td><td>{_fmt(r['win_rate'], '.0%')}</td>"
                f"<td>{_fmt(r['win_lo'], '.0%')}–{_fmt(r['win_hi'], '.0%')}</td></tr>")
        parts.append("</table>")

    ag = a["agreement"]
    parts.append("<h2>Rater agreement</h2><ul>"
                 f"<li>stars: {ag['star_pairs']} pairs of raters on the same item; "
                 f"{_fmt(ag['stars_within_one'], '.0%')} within one star, mean absolute "
                 f"difference {_fmt(ag['stars_mean_abs_diff'])}</li>"
                 f"<li>comparisons: {ag['comparison_votes']} votes on pairs seen by several "
                 f"raters; {_fmt(ag['comparison_majority_share'], '.0%')} side with the "
                 "majority</li></ul><table><tr><th>rater</th><th>ratings</th>"
                 "<th>mean stars</th></tr>")
    for r, v in ag["raters"].items():
        parts.append(f"<tr><td>{e(r)}</td><td>{v['ratings']}</td>"
                     f"<td>{_fmt(v['mean_stars'])}</td></tr>")
    parts.append("</table>")
    if a["flags"]:
        parts.append("<h2>Flags</h2><table><tr><th>reason</th><th>count</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in sorted(a["flags"].items()))
            + "</table>")
    img = _drift_plot(a["drift"], a["drift_bucket_s"])
    if img:
        parts.append(f"<h2>Drift over time</h2><img src='{img}' alt='mean stars over time'>")

    parts.append("<h2>Worst-rated items</h2><div class='worst'>")
    for w in a["worst"]:
        it = w["item"]
        body = ""
        f = Path(files_dir) / it["file"] if files_dir else None
        if it["kind"] == "image" and f is not None and f.is_file():
            body = ("<img alt='' src='data:image/png;base64,"
                    + base64.b64encode(f.read_bytes()).decode() + "'>")
        elif it.get("text"):
            body = f"<pre>{e(it['text'][:400])}</pre>"
        parts.append(f"<figure>{body}<figcaption>{_fmt(w['stars'])} stars ({w['n']}) · "
                     f"{e(it['model'])} · seed {it.get('seed')}</figcaption><details><summary>"
                     f"record</summary><pre>{e(json.dumps(it.get('record'), indent=1, ensure_ascii=False))}"
                     "</pre></details></figure>")
    parts.append("</div></body></html>")
    return "".join(parts)
