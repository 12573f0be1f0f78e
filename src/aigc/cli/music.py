"""``aigc music``: music corpora, composing with a music GPT, rendering, and measuring.

    aigc music corpus bach-chorales                        parse (cached), report, split sizes
    aigc music generate CKPT --bars 8 --key "D major" --out piece.mid --out piece.wav --out piece.png
    aigc music render piece.mid --out piece.wav --out piece.png --out piece.musicxml
    aigc music eval CKPT --n 20 --out metrics.json         GPT vs n-gram vs held-out corpus

``aigc generate CKPT --bars 8 --key "D major" --out piece.mid`` does the same as
``aigc music generate`` when CKPT is a music model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aigc.cli._common import check_out_file
from aigc.errors import AigcError


def add_music_flags(p: argparse.ArgumentParser) -> None:
    """The composing flags (shared with ``aigc generate``, which dispatches music checkpoints)."""
    g = p.add_argument_group("music (for music checkpoints)")
    g.add_argument("--bars", type=int, default=8, help="bars to compose (default 8)")
    g.add_argument("--key", default=None, help='key, e.g. "D major", "F# minor" (default: C major, '
                   "or the opening's key)")
    g.add_argument("--meter", default=None, help="time signature, e.g. 3/4 (default 4/4)")
    g.add_argument("--style", default=None, choices=["chorale", "folk"],
                   help="chorale (4 voices) or folk (1 voice) (default: chorale; with --opening "
                   "the style its MIDI file records, else folk)")
    g.add_argument("--opening", default=None, metavar="FILE",
                   help="continue these bars: a .mid, .abc or .musicxml/.xml/.mxl file")
    g.add_argument("--opening-bars", type=int, default=None,
                   help="use only the first N bars of --opening")
    g.add_argument("--out", action="append", default=[], metavar="FILE",
                   help="write the piece: .mid, .wav, .png (piano roll), .score.png (lilypond), "
                   ".musicxml; repeatable")
    g.add_argument("--synth", default="auto", choices=["auto", "fluidsynth", "builtin"],
                   help="WAV synthesiser (auto: FluidSynth when installed)")
    g.add_argument("--tempo", type=float, default=90.0, help="quarter notes per minute (default 90)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("music", help="music corpora, composing, rendering and music metrics")
    msub = p.add_subparsers(dest="music_command", metavar="ACTION", required=True)

    cp = msub.add_parser("corpus", help="parse a music corpus (cached) and report what was kept")
    cp.add_argument("name", help="bach-chorales, folk-tunes, folk-tunes-all or bach-and-folk")
    cp.add_argument("--report", help="write the full report (every skipped piece) as JSON here")
    cp.set_defaults(func=run_corpus)

    gp = msub.add_parser("generate", help="compose a piece with a music GPT")
    gp.add_argument("checkpoint")
    gp.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1.0)")
    gp.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    gp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1: off)")
    gp.add_argument("--seed", type=int, default=None, help="random seed (default: fresh, printed)")
    gp.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    add_music_flags(gp)
    gp.set_defaults(func=run_generate)

    rp = msub.add_parser("render", help="turn a MIDI file into WAV, piano roll PNG or MusicXML")
    rp.add_argument("midi")
    rp.add_argument("--out", action="append", default=[], metavar="FILE", required=True)
    rp.add_argument("--synth", default="auto", choices=["auto", "fluidsynth", "builtin"])
    rp.add_argument("--tempo", type=float, default=90.0)
    rp.set_defaults(func=run_render)

    ep = msub.add_parser("eval", help="metrics of a music GPT beside an n-gram baseline and the "
                         "held-out corpus")
    ep.add_argument("checkpoint")
    ep.add_argument("--data", help="corpus (default: the one the model was trained on)")
    ep.add_argument("--n", type=int, default=20, help="pieces per style to compose (default 20)")
    ep.add_argument("--bars", type=int, default=8, help="bars per composed piece (default 8)")
    ep.add_argument("--temperature", type=float, default=1.0)
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--samples", help="folder for the composed pieces (MIDI + piano roll)")
    ep.add_argument("--out", help="JSON path for the values and their protocol")
    ep.set_defaults(func=run_eval)


# ------------------------------------------------------------------------------- commands


def run_corpus(args: argparse.Namespace) -> int:
    from aigc.data.music import SPLITS, load_music_corpus, piece_to_tokens

    corpus = load_music_corpus(args.name)
    print("\n".join(corpus.report.lines()))
    for s in SPLITS:
        pieces = corpus.split(s)
        tokens = sum(len(piece_to_tokens(p)) for p in pieces)
        bars = sum(p.bars for p in pieces)
        print(f"{s:>5}: {len(pieces):5d} pieces, {bars:6d} bars, {tokens:8d} tokens")
    if args.report:
        Path(args.report).write_text(json.dumps(corpus.report.to_json(), indent=1))
        print(f"full report: {args.report}")
    return 0


def load_opening(path: str, style: str | None, bars: int | None):
    """A user's opening bars as a :class:`~aigc.data.music.Piece` (MIDI, ABC or MusicXML)."""
    from aigc.data.music import SkipPiece, parse_score, piece_from_midi, piece_from_score

    file = Path(path)
    if not file.is_file():
        raise AigcError(f"--opening {path}: no such file")
    if file.suffix.lower() in (".mid", ".midi"):
        piece = piece_from_midi(file, style=style, quantize=True)
    elif file.suffix.lower() in (".abc", ".musicxml", ".xml", ".mxl"):
        try:
            parsed = parse_score(file)
        except Exception as exc:  # music21 raises many types for bad files
            raise AigcError(f"--opening {path}: music21 could not parse it: {exc}") from None
        if hasattr(parsed, "scores") and parsed.scores:
            parsed = parsed.scores[0]
        try:
            piece, _ = piece_from_score(parsed, file.stem, style or "folk")
        except SkipPiece as exc:
            raise AigcError(f"--opening {path} cannot be tokenized: {exc}") from None
    else:
        raise AigcError(f"--opening {path}: use a .mid, .abc, .musicxml, .xml or .mxl file")
    if bars is not None:
        if bars < 1:
            raise AigcError(f"--opening-bars must be >= 1, got {bars}")
        piece = piece.first_bars(bars)
    if not piece.notes:
        raise AigcError(f"--opening {path} has no notes in the bars asked for")
    return piece


def run_generate(args: argparse.Namespace) -> int:
    from aigc.checkpoints import file_sha256, library_versions
    from aigc.models.music_gpt import ComposeParams, compose, load_music_model
    from aigc.music import save_piece

    if not args.out:
        raise AigcError("--out is required for music: e.g. --out piece.mid (.wav, .png, .musicxml)")
    for out in args.out:
        check_out_file(out)
    model, vocab, ckpt = load_music_model(args.checkpoint, use_ema=not getattr(args, "raw", False))
    opening = load_opening(args.opening, args.style, args.opening_bars) if args.opening else None
    if opening is not None and (args.key or args.meter):
        print("aigc: note: --key/--meter are taken from --opening", file=sys.stderr)
    style = args.style or (opening.style if opening is not None else "chorale")
    params = ComposeParams(bars=args.bars, style=style, key=args.key or "C major",
                           meter=args.meter or "4/4", temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    comp = compose(model, params, opening=opening, vocab=vocab)
    record = {"kind": "music", "model": str(ckpt.path), "model_sha256": file_sha256(ckpt.path),
              "seed": comp.seed, "bars": params.bars, "style": params.style,
              "key": comp.piece.key_name, "meter": f"{comp.piece.meter[0]}/{comp.piece.meter[1]}",
              "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
              "opening": args.opening, "versions": library_versions()}
    for out in args.out:
        print(save_piece(comp.piece, out, record=record, tempo_qpm=args.tempo, synth=args.synth))
    print(f"[{comp.piece.bars} bars, {len(comp.piece.notes)} notes, {len(comp.tokens)} tokens, "
          f"seed {comp.seed}, model {ckpt.path}]", file=sys.stderr)
    return 0


def run_render(args: argparse.Namespace) -> int:
    from aigc.data.music import piece_from_midi
    from aigc.music import save_piece

    for out in args.out:
        check_out_file(out)
    piece = piece_from_midi(args.midi, quantize=True)
    for out in args.out:
        print(save_piece(piece, out, record={"kind": "music-render", "source": args.midi},
                         tempo_qpm=args.tempo, synth=args.synth))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from aigc.metrics.music import evaluate_music_model

    if args.out:
        check_out_file(args.out)
    report = evaluate_music_model(args.checkpoint, data=args.data, n=args.n, bars=args.bars,
                                  temperature=args.temperature, seed=args.seed,
                                  samples_dir=args.samples)
    print(format_table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"metrics and protocol: {out}")
    return 0


def format_table(report: dict) -> str:
    cols = [("pitch_class_js", "PCH JS"), ("in_key_rate", "in-key"), ("density_js", "density JS"),
            ("duration_js", "duration JS"), ("parallel_rate", "par. 5/8"),
            ("overlaps_per_1000_notes", "overlap/1k"),
            ("notes_per_bar", "notes/bar"), ("perplexity", "test ppl")]
    lines = []
    for style, rows in report["values"].items():
        lines.append(f"style {style}:")
        lines.append(f"  {'':<22}" + "".join(f"{label:>12}" for _, label in cols))
        for name, row in rows.items():
            cells = []
            for key, _ in cols:
                v = row.get(key)
                cells.append(f"{v:>12.4f}" if isinstance(v, float) else f"{'-':>12}")
            lines.append(f"  {name:<22}" + "".join(cells))
    return "\n".join(lines)
