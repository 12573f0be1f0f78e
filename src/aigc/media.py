"""Pictures a person looks at: image grids and PNGs that carry their own provenance record.

Every PNG aigc writes holds a text chunk ``aigc`` with a JSON record (model file SHA-256, seed,
sampler, prompt, library versions, ...), so a file alone says how it was made::

    save_png(path, grid, record={"seed": 0, "model_sha256": "..."})
    read_record(path)  # -> {"seed": 0, ...}
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from aigc.errors import AigcError

RECORD_KEY = "aigc"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in ``[0, 1]`` -> ``uint8`` (values outside are clipped)."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile ``(N, C, H, W)`` floats in ``[0, 1]`` into an ``(H', W', C)`` uint8 array."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((pad + rows * (h + pad), pad + nrow * (w + pad), c), fill, dtype=np.uint8)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = pixels[i]
    return grid


def png_bytes(array: np.ndarray, record: dict[str, Any] | None = None, *,
              size: tuple[int, int] | None = None) -> bytes:
    """A uint8 ``(H, W[, C])`` array as PNG bytes with its JSON provenance record.

    The one PNG encoder of aigc: :func:`save_png` writes what it returns, and the studio serves
    it. ``size`` is ``(width, height)`` to resize to (nearest neighbour), ``None`` to keep.
    The record is written before the pixels, so :func:`read_record` never decodes them.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    img = Image.fromarray(array)
    if size is not None and size != img.size:
        img = img.resize(size, Image.Resampling.NEAREST)
    info = PngImagePlugin.PngInfo()
    if record is not None:
        info.add_itxt(RECORD_KEY, json.dumps(record, sort_keys=True, ensure_ascii=False))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(path: str | Path, array: np.ndarray, record: dict[str, Any] | None = None,
             scale: int = 1) -> Path:
    """Write a uint8 ``(H, W[, C])`` array as PNG with a JSON provenance record, atomically
    (upscaled ``scale`` x, nearest neighbour).

    A path that cannot be written (a folder, or a folder that cannot be created) raises
    :class:`AigcError`, and no temporary file is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise AigcError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AigcError(f"cannot write {path}: its folder cannot be created ({exc})") from None
    height, width = array.shape[:2]
    data = png_bytes(array, record, size=(width * scale, height * scale) if scale > 1 else None)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise AigcError(f"cannot write {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)  # already renamed away when all went well
    return path


def save_grid(path: str | Path, images: torch.Tensor, *, nrow: int | None = None,
              record: dict[str, Any] | None = None, scale: int = 2) -> Path:
    """Tile images into a grid PNG (upscaled ``scale`` x for small images) with its record."""
    return save_png(path, make_grid(images, nrow=nrow), record=record, scale=scale)


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The provenance record embedded by :func:`save_png`, or ``None``.

    Only the header chunks are read (``save_png`` writes the record before the pixels), so a
    huge or hostile image is never decoded. A missing file, a file that is not an image, or a
    record that is not a JSON object raises :class:`AigcError` naming the file.
    """
    try:
        with Image.open(path) as img:
            text = img.info.get(RECORD_KEY)
    except FileNotFoundError:
        raise AigcError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise AigcError(f"{path} is not a readable image: {exc}") from None
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise AigcError(f"{path}: its aigc record is not valid JSON") from None
    if not isinstance(record, dict):
        raise AigcError(f"{path}: its aigc record is not a JSON object")
    return record
