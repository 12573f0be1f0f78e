"""Write a starter model's metric card: recipe, training facts and the measured agreement.

    python scripts/starter_card.py src/aigc/assets/starters/diffusion-mnist.safetensors \
        --run runs/diffusion-mnist --recipe configs/diffusion-mnist.json \
        --agreement out/agreement-diffusion-mnist.json --note "..."
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from aigc.checkpoints import file_sha256, read_metadata


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--run", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--agreement")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    model = Path(args.model)
    meta = read_metadata(model)
    wall = 0.0
    log = Path(args.run) / "log.csv"
    if log.is_file():
        with open(log, newline="") as fh:
            rows = list(csv.DictReader(fh))
        # wall_s restarts at 0 in each resumed session: sum each session's last value.
        prev = 0.0
        for r in rows:
            t = float(r["wall_s"])
            if t < prev:
                wall += prev
            prev = t
        wall += prev
    card = {
        "model": model.name, "sha256": file_sha256(model), "bytes": model.stat().st_size,
        "family": meta["family"], "step": int(meta["step"]), "recipe": args.recipe,
        "model_config": json.loads(meta["model_config"]),
        "train_config": json.loads(meta["train_config"]),
        "training_wall_seconds_logged": round(wall, 1),
        "versions": json.loads(meta["versions"]),
        "agreement": json.loads(Path(args.agreement).read_text()) if args.agreement else None,
        "notes": args.note,
    }
    out = model.with_suffix(".card.json")
    out.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
