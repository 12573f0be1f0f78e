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
    assert main(["info", str(bad)]) == 0  # info shows what is there, broken JSON as text
    assert '"model_config": "{not json"' in capsys.readouterr().out
    meta = {"format": FORMAT, "family": "vae"}
    bad.write_bytes(_safetensors_bytes({"__metadata__": meta}))
    _one_error_line(capsys, ["sample", str(bad)], "metadata 'model_config' is missing")
    meta = {"format": FORMAT, "family": "vae", "model_config": "[]"}
    bad.write_bytes(_safetensors_bytes({"__metadata__": meta}))
    _one_error_line(capsys, ["sample", str(bad)], "is an incomplete aigc checkpoint")


# ------------------------------------------------------------------------------- CLI: --seed

HUGE_SEED = str(2**64)  # one past what torch.Generator.manual_seed accepts


@pytest.mark.parametrize("argv", [
    ["sample", "nope", "--seed", HUGE_SEED],
    ["generate", "nope", "--prompt", "x", "--seed", HUGE_SEED],
    ["music", "generate", "nope", "--out", "x.mid", "--seed", HUGE_SEED],
    ["music", "eval", "nope", "--seed", HUGE_SEED],
    ["eval", "nope", "--seed", HUGE_SEED],
    ["eval", "prepare-features", "--data", "mnist", "--seed", HUGE_SEED],
    ["finetune", "text-align", "nope", "--out", "x.safetensors", "--seed", HUGE_SEED],
    ["improve", "nope", "--feedback", "nope", "--seed", HUGE_SEED],
    ["sample", "nope", "--seed", "-1"],
])
def test_seed_out_of_range_is_one_line_before_any_work(capsys, argv):
    _one_error_line(capsys, argv, "--seed must be an integer between 0 and 2147483647")


def test_train_seed_out_of_range_is_one_line(tmp_path, capsys):
    _one_error_line(capsys, ["train", "vae", "--data", "mnist", "--out", str(tmp_path / "r"),
                             "--seed", HUGE_SEED], "seed must be an integer between 0 and")
    assert not (tmp_path / "r").exists()


def test_one_seed_range_for_cli_training_and_studio():
    from aigc.config import MAX_SEED, TrainConfig

    TrainConfig(seed=MAX_SEED)
    with pytest.raises(ValueError, match="seed must be an integer between 0 and 2147483647"):
        TrainConfig(seed=MAX_SEED + 1)
    schemas = pytest.importorskip("aigc.studio.schemas")
    assert schemas.MAX_SEED == MAX_SEED


# --------------------------------------------------------------------- CLI: --replay, --out


@pytest.fixture
def tiny_vae(tmp_path):
    from aigc.checkpoints import save_model_file
    from aigc.config import config_to_dict
    from aigc.models.vae import VAE, VAEConfig

    cfg = VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=2)
    return save_model_file(tmp_path / "vae.safetensors", family="vae",
                           model_config=config_to_dict(cfg), weights=VAE(cfg).state_dict())


def test_replay_of_a_missing_or_non_image_file_is_one_line(tmp_path, capsys):
    _one_error_line(capsys, ["sample", "--replay", str(tmp_path / "gone.png")], "no such file")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _one_error_line(capsys, ["sample", "--replay", str(text)], "is not a readable image")
    _one_error_line(capsys, ["info", str(text)], "is not a readable image")
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("aigc", "{broken")
    bad = tmp_path / "bad-record.png"
    Image.new("L", (8, 8)).save(bad, pnginfo=info)
    _one_error_line(capsys, ["sample", "--replay", str(bad)], "record is not valid JSON")


def test_replayed_record_with_a_huge_seed_is_one_line(tiny_vae, tmp_path, capsys):
    from aigc.media import read_record, save_png

    out = tmp_path / "s.png"
    assert main(["sample", str(tiny_vae), "--n", "2", "--out", str(out)]) == 0
    record = read_record(out)
    record["seed"] = 2**64
    import numpy as np

    save_png(out, np.zeros((8, 8), np.uint8), record=record)
    capsys.readouterr()
    _one_error_line(capsys, ["sample", "--replay", str(out), "--out", str(tmp_path / "t.png")],
                    "--seed must be an integer between 0 and 2147483647, got 18446744073709551616")


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def test_bad_out_is_refused_before_sampling_and_leaves_nothing(tiny_vae, tmp_path, capsys):
    folder = tmp_path / "already-a-folder.png"
    folder.mkdir()
    # a checkpoint that does not exist: the --out error must come first, before any loading
    _one_error_line(capsys, ["sample", str(tmp_path / "missing"), "--out", str(folder)],
                    "is a folder")
    _one_error_line(capsys, ["sample", str(tiny_vae), "--n", "2", "--out", str(folder)],
                    "is a folder")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_error_line(capsys, ["sample", str(tiny_vae), "--out", str(blocker / "sub" / "s.png")],
                    f"its folder cannot be created, {blocker} is a file")
    _one_error_line(capsys, ["reconstruct", str(tiny_vae), "--data", "mnist",
                             "--out", str(folder)], "is a folder")
    _one_error_line(capsys, ["data", "show", "mnist", "--out", str(folder)], "is a folder")
    _one_error_line(capsys, ["music", "render", str(tmp_path / "none.mid"),
                             "--out", str(folder)], "is a folder")
    _one_error_line(capsys, ["eval", str(tiny_vae), "--report", str(folder)],
                    "--report " + str(folder) + " is a folder")
    assert _leftovers(tmp_path) == [] and list(folder.iterdir()) == []
    assert not (blocker.parent / "sub").exists()


def test_save_png_to_a_folder_raises_and_leaves_no_temporary_file(tmp_path):
    import numpy as np

    from aigc.errors import AigcError
    from aigc.media import save_png

    folder = tmp_path / "x.png"
    folder.mkdir()
    with pytest.raises(AigcError, match="is a folder"):
        save_png(folder, np.zeros((8, 8), np.uint8))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AigcError, match="folder cannot be created"):
        save_png(blocker / "y.png", np.zeros((8, 8), np.uint8))
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------ folder: image files


def _png_claiming(path, width, height):
    """A tiny PNG whose header claims ``width x height`` grey pixels (a decompression bomb's
    shape: a few hundred bytes on disk, gigabytes once decoded)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)  # four rows of the promised image
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def _noise(shape, seed=0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


@pytest.fixture
def images():
    import aigc.data.images as im

    im.scan_folder.cache_clear()
    yield im
    im.scan_folder.cache_clear()


def _names(pairs):
    return {str(p).rsplit("/", 1)[-1]: why for p, why in pairs}


def _plain_folder(root, n=6, side=16, seed=0):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_noise((side, side), seed + i)).save(root / f"{i}.png")
    return root


def test_decompression_bomb_is_named_and_skipped(tmp_path, images, capsys):
    root = _plain_folder(tmp_path / "f")
    _png_claiming(root / "bomb.png", 100_000, 100_000)  # 10^10 pixels, > 2 x Pillow's limit
    splits, report = images.scan_folder(str(root))
    assert report.kept == 6
    assert "decompression bomb" in _names(report.unreadable)["bomb.png"]
    lone = tmp_path / "lone"
    lone.mkdir()
    _png_claiming(lone / "bomb.png", 100_000, 100_000)
    _one_error_line(capsys, ["data", "show", f"folder:{lone}", "--out", str(tmp_path / "g.png")],
                    "no readable PNG/JPEG/GIF/WebP/BMP images")


def test_large_images_are_refused_or_decoded_at_reduced_scale(tmp_path, images, monkeypatch):
    from PIL import Image

    root = _plain_folder(tmp_path / "f")
    _png_claiming(root / "claims-5000.png", 5000, 5000)  # under Pillow's limit, over ours
    Image.fromarray(_noise((200, 200, 3))).save(root / "big.png")
    Image.fromarray(_noise((400, 400, 3), 1)).save(root / "big.jpg", quality=90)
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 100 * 100)
    _, report = images.scan_folder(str(root), image_size=16)
    rejected = _names(report.rejected)
    assert "5000x5000 = 25,000,000 pixels is above the 10,000-pixel limit" in rejected[
        "claims-5000.png"]
    assert "200x200 = 40,000 pixels is above" in rejected["big.png"]
    # the JPEG decodes at 1/8 scale (50x50 = 2,500 pixels) straight from the DCT: kept
    assert "big.jpg" not in rejected and report.kept == 7
    assert _names(report.converted)["big.jpg"] == "mode RGB -> L, size 400x400 -> 16x16"


def test_folder_scan_holds_one_decoded_image_at_a_time(tmp_path, images, monkeypatch):
    import weakref

    from PIL import ImageFile

    root = _plain_folder(tmp_path / "f", n=12, side=64)
    alive, peak = [0], [0]
    load = ImageFile.ImageFile.load

    def counting_load(self):
        if not getattr(self, "_counted", False):
            self._counted = True
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(self, lambda: alive.__setitem__(0, alive[0] - 1))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    _, report = images.scan_folder(str(root), image_size=16)
    assert report.kept == 12 and peak[0] == 1


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path, images):
    import numpy as np
    from PIL import Image

    root = tmp_path / "f"
    root.mkdir()
    ramp = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    Image.fromarray(ramp).save(root / "deep.png")
    with Image.open(root / "deep.png") as img:
        assert img.mode.startswith("I")  # what Pillow makes of a 16-bit grey PNG
    splits, report = images.scan_folder(str(root))
    got = np.concatenate([s.images.numpy().ravel() for s in splits.values() if len(s)])
    assert got.tolist() == list(range(256))  # v / 257: every grey level kept, in order
    assert "mode I;16 -> L" in _names(report.converted)["deep.png"] or "mode I -> L" in _names(
        report.converted)["deep.png"]


def test_links_special_files_and_other_formats_are_named(tmp_path, images):
    import os

    from PIL import Image

    root = tmp_path / "f"
    _plain_folder(root / "a", n=4)
    _plain_folder(root / "b", n=4, seed=10)
    (root / "empty").mkdir()
    outside = tmp_path / "secret.png"
    Image.fromarray(_noise((16, 16), 99)).save(outside)
    (root / "a" / "escape.png").symlink_to(outside)
    (root / "a" / "inside.png").symlink_to(root / "b" / "0.png")  # inside: read (a duplicate)
    (root / "a" / "dangling.png").symlink_to(tmp_path / "gone.png")
    (root / "linked-dir").symlink_to(tmp_path)
    (root / "b" / "loop.png").symlink_to(root / "b" / "loop.png")
    os.mkfifo(root / "b" / "pipe.png")  # reading it would block forever
    Image.fromarray(_noise((16, 16), 7)).save(root / "b" / "g.gif")
    Image.fromarray(_noise((16, 16, 3), 8)).save(root / "b" / "w.bmp")
    frames = [Image.fromarray(_noise((16, 16), 20 + i)) for i in range(3)]
    frames[0].save(root / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "b" / "scan.tif").write_bytes(b"II*\x00")
    Image.fromarray(_noise((16, 16), 9)).save(root / "b" / "tiff-in-disguise.png", format="TIFF")
    _, report = images.scan_folder(str(root))
    skipped = _names(report.skipped)
    assert skipped["escape.png"] == f"link to {outside}, outside the folder: not followed"
    assert skipped["dangling.png"].startswith("broken link")
    assert skipped["linked-dir"] == "link to a folder: not followed"
    assert skipped["pipe.png"] == "not a regular file"
    assert skipped["loop.png"].startswith("broken link")
    assert skipped["empty"] == "sub-folder without images: not a class"
    # a link inside the folder is read: here it makes b/0.png a duplicate
    assert _names(report.duplicates) == {"0.png": str(root / "a" / "inside.png")}
    assert "tiff-in-disguise.png" in _names(report.unreadable)
    assert _names(report.converted)["anim.gif"].startswith("first frame of an animation")
    assert report.kept == 8 + 3  # 4 + 4 PNGs, the two GIFs and the BMP
    lines = "\n".join(report.lines())
    for name in ("escape.png", "dangling.png", "linked-dir", "pipe.png", "empty", "scan.tif"):
        assert name in lines, name
    assert "ignored    " + str(root / "b" / "scan.tif") + ": not an image file (.tif" in lines


@pytest.mark.parametrize("argv", [
    ["train", "vae", "--data", "mnist", "--out", "{file}"],
    ["train", "vae", "--data", "mnist", "--out", "{file}/run"],
    ["finetune", "gpt", "x.safetensors", "--data", "austen", "--out", "{file}"],
    ["demo", "--out", "{file}"],
    ["feedback", "export", "--model", "m", "--out", "{file}"],
    ["improve", "smollm2", "--feedback", "x", "--out", "{file}"],
])
def test_run_folder_out_is_checked_before_any_work(tmp_path, capsys, argv):
    from aigc.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = [a.format(file=blocker) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and str(blocker) in err[0], err
    assert blocker.read_text() == "not a folder"
