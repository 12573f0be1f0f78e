"""How the sentiment CUSUM's k and h were chosen: on the *validation* split of the VADER rated
sets (the replay benchmark reports on the test split), VADER's scores of positive / negative /
neutral texts, mixed as an entity's stream (15% neutral), for several (k, h): false alarms per
10,000 texts of a stationary 60/40 stream, and detections (of 10) with their median delay for
flips 0.75->0.25, 0.3->0.75 and a subtle 0.7->0.45 of the positive share.

    PYTHONPATH=src python benchmarks/monitor_tune_sentiment.py \
        | tee benchmarks/results/monitor_tune_sentiment.txt
"""

import random
import statistics

from aigc.apps.sentiment.changepoint import Cusum
from aigc.apps.sentiment.data import read_vader_rated, split
from aigc.apps.sentiment.scorer import load_scorer

rows = split(read_vader_rated())["val"]
sc = load_scorer("vader")
pools = {}
for lab in ("positive", "negative", "neutral"):
    texts = [r.text for r in rows if r.label == lab]
    pools[lab] = [s.score for s in sc.score(texts)]
print("VADER score (n, mean, sd) by human label:",
      {k: (len(v), round(statistics.mean(v), 3), round(statistics.pstdev(v), 3))
       for k, v in pools.items()})
def draw(rng, p):
    if rng.random() < 0.15:
        return rng.choice(pools["neutral"])
    return rng.choice(pools["positive"] if rng.random() < p else pools["negative"])
for k, h in [(0.5, 10), (0.25, 15), (0.25, 20), (0.3, 14), (0.2, 25)]:
    fa = 0
    for seed in range(10):
        rng, det = random.Random(seed), Cusum(k, h, 50, 0.1)
        fa += sum(det.update(draw(rng, 0.6)) is not None for _ in range(4000))
    res = {}
    for (a, b) in [(0.75, 0.25), (0.3, 0.75), (0.7, 0.45)]:
        ds = []
        for seed in range(10):
            rng, det = random.Random(100 + seed), Cusum(k, h, 50, 0.1)
            d = None
            for i in range(2000):
                x = draw(rng, a if i < 600 else b)
                if det.update(x) and i >= 600:
                    d = i - 600
                    break
            ds.append(d)
        found = [d for d in ds if d is not None]
        res[f"{a}->{b}"] = (len(found), statistics.median(found) if found else None)
    print(k, h, "FA per 10k", fa / 4, res)
