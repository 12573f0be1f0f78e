"""Symbolic music: music21's corpus <-> pieces of notes <-> event tokens <-> MIDI / MusicXML.

One module per concern:

- :mod:`~aigc.data.music.pieces`: :class:`Note`, :class:`Piece`, the tick grid, keys, meters;
- :mod:`~aigc.data.music.tokens`: the event tokenization and its vocabulary (:data:`VOCAB`);
- :mod:`~aigc.data.music.grammar`: which token may come next (:class:`Grammar`), decoding;
- :mod:`~aigc.data.music.midi`: MIDI files written and read;
- :mod:`~aigc.data.music.scores`: scores parsed with music21 (never through its pickle cache);
- :mod:`~aigc.data.music.corpora`: the named corpora, their fixed splits and parse cache;
- :mod:`~aigc.data.music.windows`: training windows and token streams.

Every public name is importable from here (``from aigc.data.music import Piece``).
"""

from aigc.data.music.corpora import (
    CACHE_VERSION,
    CORPORA,
    SPLITS,
    MusicCorpus,
    MusicCorpusReport,
    _cache_counts,
    _parse_source,
    cache_dir,
    cache_path,
    cached_split_counts,
    load_music_corpus,
)
from aigc.data.music.grammar import Grammar, tokens_to_piece
from aigc.data.music.midi import (
    MIDI_TICKS_PER_QUARTER,
    MidiNotes,
    midi_bytes,
    piece_from_midi,
    read_midi,
    write_midi,
)
from aigc.data.music.pieces import (
    MAX_BAR,
    MAX_DURATION,
    MAX_VOICES,
    METERS,
    MODES,
    STYLES,
    TICKS_PER_QUARTER,
    TONIC_NAMES,
    Note,
    Piece,
    meter_bar_ticks,
    parse_key,
    parse_meter,
)
from aigc.data.music.scores import SkipPiece, parse_score, piece_from_score
from aigc.data.music.tokens import (
    HEADER_LEN,
    TOKENIZATION_VERSION,
    VOCAB,
    MusicVocab,
    header_tokens,
    piece_ids,
    piece_to_tokens,
)
from aigc.data.music.windows import TRANSPOSITIONS, MusicWindows, token_stream
from aigc.data.text import hash_split

__all__ = [
    "CACHE_VERSION", "CORPORA", "HEADER_LEN", "MAX_BAR", "MAX_DURATION", "MAX_VOICES", "METERS",
    "MIDI_TICKS_PER_QUARTER", "MODES", "SPLITS", "STYLES", "TICKS_PER_QUARTER", "TONIC_NAMES",
    "TOKENIZATION_VERSION", "TRANSPOSITIONS", "VOCAB", "Grammar", "MidiNotes", "MusicCorpus",
    "MusicCorpusReport", "MusicVocab", "MusicWindows", "Note", "Piece", "SkipPiece",
    "_cache_counts", "_parse_source", "cache_dir", "cache_path", "cached_split_counts",
    "hash_split", "header_tokens", "load_music_corpus", "meter_bar_ticks", "midi_bytes",
    "parse_key", "parse_meter", "parse_score", "piece_from_midi", "piece_from_score",
    "piece_ids", "piece_to_tokens", "read_midi", "token_stream", "tokens_to_piece", "write_midi",
]
