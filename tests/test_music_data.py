"""Music data: tokenization, the tokens -> MIDI -> tokens round trip on the corpus, MIDI parity
with music21's own MIDI reader, transposition, windows, skipped pieces."""

from __future__ import annotations

import pytest
import torch

from aigc.data.music import (
    HEADER_LEN,
    VOCAB,
    Grammar,
    MusicWindows,
    Note,
    Piece,
    SkipPiece,
    load_music_corpus,
    parse_key,
    piece_from_midi,
    piece_from_score,
    piece_to_tokens,
    tokens_to_piece,
    write_midi,
)
from aigc.errors import DataError

N_CHORALES_FAST = 12


def _roundtrip(piece: Piece, tmp_path) -> None:
    """tokens -> Piece -> MIDI file on disk -> parsed back -> tokens must be identical."""
    tokens = piece_to_tokens(piece)
    decoded = tokens_to_piece(tokens, name=piece.name)
    path = write_midi(decoded, tmp_path / "piece.mid")
    back = piece_from_midi(path)  # strict: refuses anything off the grid
    assert piece_to_tokens(back) == tokens, piece.name
    assert back.notes == piece.notes and back.name == piece.name


@pytest.fixture(scope="module")
def chorales():
    """The first chorales of music21's list, parsed fresh (not from the cache)."""
    from music21 import corpus

    files = sorted(set(corpus.chorales.Iterator(returnType="filename")))[:N_CHORALES_FAST]
    pieces = []
    for f in files:
        try:
            pieces.append(piece_from_score(corpus.parse(f, forceSource=True), f, "chorale")[0])
        except SkipPiece:
            pass
    assert len(pieces) >= N_CHORALES_FAST - 3
    return pieces


@pytest.fixture(scope="module")
def folk():
    from music21 import corpus

    opus = corpus.parse("essenFolksong/erk5.abc", forceSource=True)  # 27 short German songs
    pieces, skipped = [], 0
    for i, score in enumerate(opus.scores):
        try:
            pieces.append(piece_from_score(score, f"erk5#{i}", "folk")[0])
        except SkipPiece:
            skipped += 1
    assert len(pieces) >= 10
    return pieces


def test_roundtrip_chorales_through_midi(chorales, tmp_path):
    for piece in chorales:
        assert piece.voices == 4
        _roundtrip(piece, tmp_path)


def test_roundtrip_folk_through_midi(folk, tmp_path):
    for piece in folk:
        assert piece.voices == 1 and not any(t.startswith("voice:") for t in piece_to_tokens(piece))
        _roundtrip(piece, tmp_path)


@pytest.mark.slow
def test_roundtrip_whole_corpus(tmp_path):
    for name in ("bach-chorales", "folk-tunes"):
        corpus = load_music_corpus(name, progress=False)
        pieces = [p for s in ("train", "val", "test") for p in corpus.split(s)]
        assert len(pieces) == corpus.report.kept and len(pieces) > 300
        for piece in pieces:
            _roundtrip(piece, tmp_path)


def test_midi_matches_music21_reader(chorales, tmp_path):
    """music21's own MIDI import sees the same notes (onset, pitch) and meter in our file."""
    from music21 import converter

    piece = chorales[0]
    path = write_midi(piece, tmp_path / "c.mid")
    score = converter.parse(str(path), forceSource=True)
    theirs = sorted((round(float(n.offset) * 12), round(float(n.quarterLength) * 12), p.midi)
                    for part in score.parts for n in part.flatten().stripTies().notes
                    for p in n.pitches)
    ours = sorted((n.onset, n.duration, n.pitch) for n in piece.notes)
    assert theirs == ours
    ts = score.recurse().getElementsByClass("TimeSignature").first()
    assert (ts.numerator, ts.denominator) == piece.meter


def test_tokens_are_documented_order():
    piece = Piece("t", "chorale", 2, "major", (3, 4), [
        Note(0, 1, 57, 12), Note(0, 0, 62, 12), Note(12, 0, 64, 6), Note(36, 3, 38, 36),
    ])
    assert piece_to_tokens(piece) == [
        "style:chorale", "key:D_major", "meter:3/4",
        "bar", "pos:0", "pitch:62", "dur:12", "voice:1", "pitch:57", "dur:12",
        "pos:12", "pitch:64", "dur:6",
        "bar", "pos:0", "voice:3", "pitch:38", "dur:36",
    ]
    assert tokens_to_piece(piece_to_tokens(piece), name="t") == piece


@pytest.mark.parametrize("bad", [
    ["style:folk", "key:C_major", "meter:4/4", "pos:0"],                         # no bar
    ["style:folk", "key:C_major", "meter:4/4", "bar", "pos:4", "pos:2"],          # pos goes back
    ["style:folk", "key:C_major", "meter:3/4", "bar", "pos:40"],                  # past bar end
    ["style:folk", "key:C_major", "meter:4/4", "bar", "pos:0", "pitch:60", "pitch:62"],  # no dur
    ["style:folk", "key:C_major", "meter:4/4", "bar", "pos:0", "voice:2", "pitch:60", "dur:3",
     "voice:1"],                                                                 # voice goes down
    ["key:C_major", "style:folk"],                                                # header order
])
def test_grammar_rejects_bad_sequences(bad):
    with pytest.raises(DataError):
        tokens_to_piece(bad)


def test_grammar_unfinished_note_is_an_error():
    with pytest.raises(DataError, match="inside a note"):
        tokens_to_piece(["style:folk", "key:C_major", "meter:4/4", "bar", "pos:0", "pitch:60"])


def test_real_pieces_have_no_same_voice_overlaps(chorales, folk):
    """Each voice of a chorale and each folk tune sounds one note at a time (issue 16: composed
    pieces had 86 overlaps per 1000 notes; real ones have none)."""
    from aigc.metrics.music import overlap_counts

    counts = [overlap_counts(p) for p in chorales + folk]
    assert sum(o for o, _ in counts) == 0 and sum(n for _, n in counts) > 2000


def test_grammar_mask_agrees_with_advance(chorales):
    import copy

    ids = VOCAB.encode(piece_to_tokens(chorales[0]))[:60]
    g = Grammar()
    for i in ids:
        mask = g.allowed()
        assert mask[i]
        for j in torch.nonzero(~mask)[::37, 0].tolist():  # forbidden tokens really are refused
            with pytest.raises(DataError):
                copy.deepcopy(g).advance(j)
        g.advance(i)


def test_transposition_moves_key_and_pitches(chorales):
    p = chorales[0]
    up = p.transposed(3)
    assert up.tonic == (p.tonic + 3) % 12 and [n.pitch for n in up.notes] == [n.pitch + 3 for n in p.notes]
    assert p.transposed(200) is None


@pytest.mark.parametrize("text,expected", [
    ("D major", (2, "major")), ("f# minor", (6, "minor")), ("Bb", (10, "major")),
    ("Eb_minor", (3, "minor")), ("C- major", (11, "major")),
])
def test_parse_key(text, expected):
    assert parse_key(text) == expected


@pytest.mark.parametrize("text", ["H major", "D dorian", "", "C major extra"])
def test_parse_key_rejects(text):
    with pytest.raises(DataError):
        parse_key(text)


def test_windows_start_with_header_and_mask_padding(folk):
    ds = MusicWindows(folk[:3], context_length=64, transpositions=(0, 2))
    batch = ds.get_batch(torch.arange(len(ds)))
    tokens, mask = batch["tokens"], batch["loss_mask"]
    assert tokens.shape == (len(ds), 65) and mask.shape == (len(ds), 64)
    assert (tokens[:, 0] == VOCAB.eos_id).all()
    assert (tokens[:, HEADER_LEN] == VOCAB.bar_id).all()  # every window starts at a bar
    for row in range(len(ds)):
        n = int(mask[row].sum())
        assert not mask[row, n:].any() and (tokens[row, n + 1 :] == 0).all()


def test_meter_change_is_skipped_with_reason():
    from music21 import meter, note, stream

    part = stream.Part()
    m1, m2 = stream.Measure(number=1), stream.Measure(number=2)
    m1.append([meter.TimeSignature("3/4"), note.Note("C4", quarterLength=3)])
    m2.append([meter.TimeSignature("2/4"), note.Note("D4", quarterLength=2)])
    part.append([m1, m2])
    score = stream.Score([part])
    with pytest.raises(SkipPiece, match="meter changes"):
        piece_from_score(score, "x", "folk")


def test_midi_folder_corpus(tmp_path, folk):
    for i, p in enumerate(folk[:6]):
        write_midi(p, tmp_path / f"{i}.mid")
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    corpus = load_music_corpus(f"midi:{tmp_path}")
    assert corpus.report.kept == 6 and corpus.report.skipped[0][0].endswith("bad.mid")
    got = sorted(len(p.notes) for s in ("train", "val", "test") for p in corpus.split(s))
    assert got == sorted(len(p.notes) for p in folk[:6])
