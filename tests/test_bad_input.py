"""Bad input found from outside (issue 16): each case is one line on stderr, exit 2, nothing left
behind; the pieces of aigc that read untrusted files (image folders, checkpoints, music) neither
crash on them nor load a pickle."""

import pickle

import pytest

from aigc.cli import main


def _one_error_line(capsys, argv, pattern):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("aigc: error: "), err
    assert pattern in err[0], err[0]
    return err[0]


# ------------------------------------------------------------------------------------ music21


@pytest.fixture
def music21_scratch(tmp_path, monkeypatch):
    """music21's shared pickle folder (``/tmp/music21``) moved to a private one for the test, and
    every unpickling refused, so a test fails if music21 writes or reads a pickle."""
    pytest.importorskip("music21")
    from music21 import environment

    scratch = tmp_path / "music21-scratch"
    scratch.mkdir()
    env = environment.Environment()
    before = env["directoryScratch"]
    env["directoryScratch"] = str(scratch)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    yield scratch
    env["directoryScratch"] = before


def test_music21_corpus_parse_writes_and_reads_no_pickle(music21_scratch):
    from aigc.data.music import MusicCorpusReport, _parse_source

    for _ in range(2):  # the second parse is where music21 would load its pickle
        report = MusicCorpusReport("test")
        pieces = _parse_source("bach/bwv66.6.mxl", "chorale", report)
        assert len(pieces) == 1 and not report.skipped, report.skipped
    assert list(music21_scratch.iterdir()) == []


def test_music21_opening_parse_writes_and_reads_no_pickle(music21_scratch, tmp_path):
    from aigc.cli.music import load_opening

    abc = tmp_path / "tune.abc"
    abc.write_text("X:1\nT:t\nM:4/4\nL:1/4\nK:G\nG A B c | d e f g |\n", encoding="utf-8")
    for _ in range(2):
        piece = load_opening(str(abc), "folk", None)
        assert len(piece.notes) == 8
    assert list(music21_scratch.iterdir()) == []


# -------------------------------------------------------------------------------- checkpoints


def _safetensors_bytes(header) -> bytes:
    import json
    import struct

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize("header, pattern", [
    ([1, 2, 3], "its header is a JSON list, not an object"),
    ("text", "its header is a JSON str, not an object"),
    ({"w": [0, 4]}, "tensor 'w' has no valid data_offsets"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, "no valid data_offsets"),
    ({"__metadata__": ["format"]}, "its __metadata__ is not an object of strings"),
    ({"__metadata__": {"format": 1}}, "its __metadata__ is not an object of strings"),
])
def test_malformed_safetensors_header_is_one_line(tmp_path, capsys, header, pattern):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_safetensors_bytes(header))
    _one_error_line(capsys, ["sample", str(bad)], pattern)
    _one_error_line(capsys, ["info", str(bad)], pattern)


def test_aigc_metadata_that_is_not_json_is_named(tmp_path, capsys):
    from aigc.checkpoints import FORMAT

    bad = tmp_path / "bad.safetensors"
    meta = {"format": FORMAT, "family": "vae", "model_config": "{not json"}
    bad.write_bytes(_safetensors_bytes({"__metadata__": meta}))
    _one_error_line(capsys, ["sample", str(bad)], "metadata 'model_config' is not valid JSON")
    meta = {"format": FORMAT, "family": "vae"}
    bad.write_bytes(_safetensors_bytes({"__metadata__": meta}))
    _one_error_line(capsys, ["sample", str(bad)], "metadata 'model_config' is missing")
    meta = {"format": FORMAT, "family": "vae", "model_config": "[]"}
    bad.write_bytes(_safetensors_bytes({"__metadata__": meta}))
    _one_error_line(capsys, ["sample", str(bad)], "is an incomplete aigc checkpoint")
