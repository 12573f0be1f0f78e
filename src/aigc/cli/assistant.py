"""``aigc assistant``: the customer-service assistant over a folder of documents.

    aigc assistant index FOLDER --index DIR     build or update an index (only changed files)
    aigc assistant index --demo                 the Debian FAQ (en + zh-cn) demo base
    aigc assistant ask "question"               one answer with sources (or a handoff)
    aigc assistant ask                          interactive conversation (empty line ends it)
    aigc assistant eval                         recall@5/MRR, escalation; --answers N with SmolLM2
    aigc assistant handoff list|answer|approve|reject   the human handoff queue

``--index`` defaults to the demo index under ``$AIGC_CACHE_DIR/assistant/debian-faq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aigc.errors import AigcError


def _demo_index() -> Path:
    from aigc.models.pretrained import cache_dir

    return cache_dir() / "assistant" / "debian-faq"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assistant", help="answer questions from your documents, with sources "
                       "and a human handoff",
                       description="Customer-service assistant: index a folder of Markdown, "
                       "text, HTML and PDF documents, answer questions from it with SmolLM2 "
                       "citing the passages, and hand questions it cannot answer to a person.")
    cmds = p.add_subparsers(dest="assistant_command", metavar="ACTION", required=True)

    i = cmds.add_parser("index", help="build or update an index of a folder of documents")
    i.add_argument("folder", nargs="?", help="the documents (.md .txt .html .pdf, and .gz)")
    i.add_argument("--demo", action="store_true",
                   help="index the Debian FAQ in English and Chinese (Debian packages "
                   "debian-faq and debian-faq-zh-cn)")
    i.add_argument("--index", default=None,
                   help="index folder (default with --demo: $AIGC_CACHE_DIR/assistant/debian-faq)")
    i.add_argument("--quiet", action="store_true", help="no line per file read")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=run_index)

    a = cmds.add_parser("ask", help="answer one question, or talk interactively")
    a.add_argument("question", nargs="?", help="the question (default: interactive)")
    _index_flag(a)
    a.add_argument("--k", type=int, default=5, help="passages retrieved (default: 5)")
    a.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid",
                   help="retrieval (default: hybrid)")
    a.add_argument("--adapter", default=None, help="a LoRA adapter folder for SmolLM2 "
                   "(from `aigc finetune-chat`)")
    a.add_argument("--style", choices=("generate", "extractive"), default="generate",
                   help="generate: SmolLM2 writes the answer; extractive: quote the best "
                   "passage (default: generate)")
    a.add_argument("--json", action="store_true", help="print the answer as JSON")
    a.set_defaults(func=run_ask)

    e = cmds.add_parser("eval", help="evaluate retrieval, escalation and answers on the "
                        "shipped question set")
    _index_flag(e)
    e.add_argument("--set", default=None, help="evaluation JSONL (default: the shipped "
                   "Debian FAQ set)")
    e.add_argument("--answers", type=int, default=0, metavar="N",
                   help="also generate answers with SmolLM2 for N in-scope and N out-of-scope "
                   "questions per language (slow: seconds per answer); 0: retrieval only")
    e.add_argument("--baseline", action="store_true",
                   help="with --answers: also SmolLM2 without retrieval")
    e.add_argument("--out", default=None, help="write the full report (JSON) here")
    e.set_defaults(func=run_eval)

    h = cmds.add_parser("handoff", help="the human handoff queue")
    _index_flag(h)
    hs = h.add_subparsers(dest="handoff_command", metavar="STEP", required=True)
    hl = hs.add_parser("list", help="list handoffs")
    hl.add_argument("--status", choices=("open", "answered", "approved", "rejected"))
    ha = hs.add_parser("answer", help="answer a handoff as a person")
    ha.add_argument("id", type=int)
    ha.add_argument("text")
    ha.add_argument("--by", required=True, help="who answers")
    hp = hs.add_parser("approve", help="add an answered handoff to the knowledge base")
    hp.add_argument("id", type=int)
    hr = hs.add_parser("reject", help="close a handoff without adding it")
    hr.add_argument("id", type=int)
    h.set_defaults(func=run_handoff)


def _index_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default=None,
                   help="index folder (default: the demo index, $AIGC_CACHE_DIR/assistant/"
                   "debian-faq)")


def _index_dir(args) -> Path:
    path = Path(args.index) if args.index else _demo_index()
    if not (path / "manifest.json").is_file():
        hint = ("build it with `aigc assistant index --demo`" if not args.index
                else "build it with `aigc assistant index FOLDER --index DIR`")
        raise AigcError(f"no assistant index at {path}; {hint}")
    return path


def run_index(args) -> int:
    from aigc.apps.assistant.index import DEBIAN_FAQ, build_index, demo_files

    if args.demo == bool(args.folder):
        raise AigcError("give either a FOLDER or --demo")
    if args.demo:
        files = demo_files()
        folder, index = DEBIAN_FAQ, Path(args.index) if args.index else _demo_index()
    else:
        if not args.index:
            raise AigcError("--index DIR is required with a FOLDER (where the index is kept)")
        files, folder, index = None, Path(args.folder), Path(args.index)
    report = build_index(folder, index, files=files, progress=not args.quiet)
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json
          else report.summary())
    return 0


def _print_answer(answer, *, json_out: bool) -> None:
    if json_out:
        d = answer.to_dict()
        d["passages"] = [{k: v for k, v in p.items() if k != "text"} for p in d["passages"]]
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return
    print(answer.text)
    for c in answer.citations:
        print(f"  [{c.n}] {c.source} § {c.section}")
    t = answer.timings
    note = "" if answer.handed_off or answer.cited_by_model else "; the model cited nothing, " \
        "top passage shown"
    print(f"[confidence {answer.confidence:.2f}; retrieval {t['retrieval_s']:.2f} s, "
          f"generation {t['generation_s']:.1f} s{note}"
          + (f"; handed off: {answer.reason}" if answer.handed_off else "") + "]",
          file=sys.stderr)


def run_ask(args) -> int:
    from aigc.apps.assistant.answer import Assistant
    from aigc.apps.assistant.retrieve import check_query

    if args.question is not None:
        check_query(args.question)  # before any model loads
    assistant = Assistant(_index_dir(args), adapter=args.adapter, k=args.k, mode=args.mode,
                          style=args.style)
    if args.question is not None:
        _print_answer(assistant.ask(args.question), json_out=args.json)
        return 0
    conversation = assistant.queue.new_conversation()
    print(f"conversation {conversation}; an empty line or Ctrl-D ends it", file=sys.stderr)
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        try:
            answer = assistant.ask(question, conversation_id=conversation)
        except AigcError as exc:  # one bad question does not end the conversation
            print(f"aigc: error: {exc}", file=sys.stderr)
            continue
        sys.stdout.write("bot> ")
        _print_answer(answer, json_out=args.json)
    return 0


def run_eval(args) -> int:
    from aigc.apps.assistant.answer import THRESHOLDS, Assistant, smollm2_generator
    from aigc.apps.assistant.evaluate import (
        answer_report,
        escalation_report,
        load_evalset,
        retrieval_report,
    )
    from aigc.apps.assistant.retrieve import Retriever

    if args.answers < 0:
        raise AigcError(f"--answers must be >= 0, got {args.answers}")
    if args.baseline and not args.answers:
        raise AigcError("--baseline needs --answers N")
    index = _index_dir(args)
    items = load_evalset(args.set)
    retriever = Retriever(index)
    report = {"index": str(index), "n_items": len(items),
              "retrieval": retrieval_report(retriever, items),
              "escalation": escalation_report(retriever, items, THRESHOLDS)}
    for mode, by_lang in report["retrieval"].items():
        for lang, r in by_lang.items():
            print(f"retrieval {mode:6s} {lang}: recall@5 {r['recall@5']:.3f}  MRR {r['mrr']:.3f}"
                  f"  (n={r['n']})")
    for lang, e in report["escalation"].items():
        u, c, cv = e["in_use"], e["calibrated_in_sample"], e["cross_validated_2fold"]
        print(f"escalation {lang}: threshold {u['threshold']:.2f}: out-of-scope handed off "
              f"{u['oos_handed_off']:.2f}, precision {u['precision']:.2f}, in-scope handed off "
              f"{u['in_scope_handed_off']:.2f}; calibrated {c['threshold']:.3f}; 2-fold CV: "
              f"oos {cv['oos_handed_off']:.2f}, in-scope {cv['in_scope_handed_off']:.2f}")
    # Extractive answers need no model: the whole set, in seconds.
    extractive = answer_report(Assistant(index, style="extractive"), items)
    report["answers_extractive"] = extractive
    for lang, s in extractive["assistant"].items():
        print(f"answers extractive {lang}: right citation {_pct(s['right_citation_of_answered'])}"
              f" of {s['answered']} answered; out-of-scope handed off "
              f"{_pct(s['oos_handed_off'])}; in-scope handed off {_pct(s['in_scope_handed_off'])}")
    if args.answers:
        subset = _subset(items, args.answers)
        generator = smollm2_generator()
        assistant = Assistant(index, generator=generator)
        report["answers"] = answer_report(assistant, subset,
                                          baseline_generator=generator if args.baseline else None)
        report["answers"]["ids"] = [it.id for it in subset]
        for name in ("assistant", "baseline_no_retrieval"):
            for lang, s in report["answers"].get(name, {}).items():
                print(f"answers {name} {lang}: {json.dumps(_round(s))}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False),
                                  encoding="utf-8")
        print(f"report written to {args.out}", file=sys.stderr)
    return 0


def _subset(items, n: int):
    """``n`` in-scope and ``n`` out-of-scope items per language, spread evenly over the set."""
    out = []
    for lang in ("en", "zh"):
        for scope in (True, False):
            group = [it for it in items if it.lang == lang and it.in_scope == scope]
            if not group:
                continue
            step = max(len(group) / n, 1.0)
            out.extend(group[int(i * step)] for i in range(min(n, len(group))))
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _round(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def run_handoff(args) -> int:
    from aigc.apps.assistant.answer import QUEUE_FILE
    from aigc.apps.assistant.handoff import HandoffQueue

    index = _index_dir(args)
    queue = HandoffQueue(index / QUEUE_FILE, index)
    if args.handoff_command == "list":
        for h in queue.list(args.status):
            print(f"#{h.id} [{h.status}] {h.question!r} (confidence {h.confidence:.2f}; "
                  f"{h.reason})" + (f" -> {h.answer!r} by {h.answered_by}" if h.answer else ""))
    elif args.handoff_command == "answer":
        h = queue.answer(args.id, args.text, by=args.by)
        print(f"#{h.id} answered by {h.answered_by}")
    elif args.handoff_command == "approve":
        h, report = queue.approve(args.id)
        print(f"#{h.id} approved: {h.document} added; {report.summary()}")
    else:
        h = queue.reject(args.id)
        print(f"#{h.id} rejected")
    return 0
