"""Count the features of the shipped image extractors that are constant (always zero, for a unit
read after a ReLU that never fires) on a whole split, and the FID of the split against itself.

    OMP_NUM_THREADS=1 python benchmarks/extractor_dead_features.py --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_line  # noqa: E402


def main() -> None:
    from aigc.data.images import load_images
    from aigc.metrics.features import constant_features, load_extractor
    from aigc.metrics.fid import FrechetDistance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["mnist", "fashion-mnist"])
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    for data in args.data:
        ext = load_extractor(data)
        ds = load_images(data, args.split)
        feats = ext.extract(ds.get_batch(torch.arange(len(ds)))["image"])["features"]
        dead = constant_features(feats)
        zero = int((feats == 0).all(0).sum())
        fid = FrechetDistance()
        fid.update(feats, real=True)
        fid.update(feats, real=False)
        self_fid = fid.compute()
        print(f"{data} {args.split} ({len(ds)} images), extractor sha256 {ext.sha256[:12]}..., "
              f"feature layer {ext.network.cfg.feature_layer}: {len(dead)} of "
              f"{ext.num_features} features constant ({zero} always zero); "
              f"self-FID {self_fid:.3g}")


if __name__ == "__main__":
    main()
