"""The customer-service assistant on the Debian FAQ demo base: indexing time, retrieval quality,
escalation, answers with SmolLM2 (and SmolLM2 without retrieval as the baseline), and the
latency of one answer split into retrieval and generation.

    python benchmarks/assistant_answer.py [--answers 5] [--index DIR] [--threads 1]

``--answers N``: N in-scope and N out-of-scope questions per language are answered by SmolLM2
(the slow part: seconds per answer on a small CPU). Retrieval and escalation figures use the
whole evaluation set. Models are loaded (and warmed up on one question) before timing, so the
latencies are those of a running service. Writes benchmarks/results/assistant-<date>.json with
the load average, since other processes share the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine, machine_line  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=5)
    ap.add_argument("--index", default=None, help="index folder (default: a fresh temporary one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    from aigc.apps.assistant.answer import THRESHOLDS, Assistant, smollm2_generator
    from aigc.apps.assistant.evaluate import (
        answer_report,
        escalation_report,
        load_evalset,
        retrieval_report,
    )
    from aigc.apps.assistant.index import DEBIAN_FAQ, build_index, demo_files
    from aigc.apps.assistant.retrieve import Retriever
    from aigc.cli.assistant import _subset

    print(machine_line())
    load_before = os.getloadavg()
    index = Path(args.index) if args.index else Path(tempfile.mkdtemp()) / "debian-faq"
    t0 = time.perf_counter()
    report = build_index(DEBIAN_FAQ, index, files=demo_files(), progress=False)
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_index(None, index, progress=False)
    reindex_s = time.perf_counter() - t0
    print(f"index: {report.chunks_total} chunks from {len(report.files_read) + len(report.files_unchanged)} "
          f"files in {index_s:.1f} s (unchanged re-index {reindex_s:.2f} s)")

    items = load_evalset()
    retriever = Retriever(index)
    retriever.search("warm up", k=1)
    t0 = time.perf_counter()
    retrieval = retrieval_report(retriever, items)
    searches = sum(1 for it in items if it.in_scope) * 3
    per_search_ms = (time.perf_counter() - t0) / searches * 1000
    escalation = escalation_report(retriever, items, THRESHOLDS)
    for mode, by_lang in retrieval.items():
        for lang, r in by_lang.items():
            print(f"{mode:6s} {lang}: recall@5 {r['recall@5']:.3f} MRR {r['mrr']:.3f} (n={r['n']})")
    for lang, e in escalation.items():
        u = e["in_use"]
        print(f"escalation {lang} @ {u['threshold']}: oos handed off {u['oos_handed_off']:.3f}, "
              f"precision {u['precision']:.3f}, in-scope handed off "
              f"{u['in_scope_handed_off']:.3f}; 2-fold CV {e['cross_validated_2fold']}")

    generator = smollm2_generator()
    assistant = Assistant(index, generator=generator)
    assistant.ask("How do I put a package on hold?", record=False)  # warm-up, not timed
    subset = _subset(items, args.answers)
    answers = answer_report(assistant, subset, baseline_generator=generator)
    extractive = answer_report(Assistant(index, style="extractive"), subset)
    rows = answers["rows"]
    gen = [r["generation_s"] for r in rows if r["generation_s"] > 0]
    ret = [r["retrieval_s"] for r in rows]
    latency = {
        "retrieval_s_median": statistics.median(ret),
        "generation_s_median": statistics.median(gen) if gen else None,
        "generation_s_max": max(gen) if gen else None,
        "answered_with_generation": len(gen),
        "answer_s_median_when_generated": statistics.median(
            [r["retrieval_s"] + r["generation_s"] for r in rows if r["generation_s"] > 0])
        if gen else None,
        "search_ms_mean_over_evalset": per_search_ms,
    }
    for name, block in (("assistant", answers["assistant"]),
                        ("baseline_no_retrieval", answers["baseline_no_retrieval"]),
                        ("extractive", extractive["assistant"])):
        for lang, s in block.items():
            print(f"{name} {lang}: " + json.dumps(
                {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}))
    print("latency: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                    for k, v in latency.items()}))
    load_after = os.getloadavg()
    print(f"load average before {load_before}, after {load_after}")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        f"assistant-{dt.date.today().isoformat()}.json")
    out.write_text(json.dumps({
        "command": " ".join(sys.argv), "machine": machine(), "load_before": load_before,
        "load_after": load_after, "index": {"chunks": report.chunks_total,
                                           "seconds": index_s, "unchanged_reindex_s": reindex_s},
        "thresholds": THRESHOLDS, "retrieval": retrieval, "escalation": escalation,
        "answers": answers, "extractive": extractive, "latency": latency,
    }, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"raw output: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
