"""Feature extractors for FID, KID, IS, precision/recall and conditional accuracy.

No Inception weights can be downloaded here, so aigc trains its own feature network per dataset
and ships it (``aigc/assets/features/{mnist,fashion-mnist}.safetensors``, SHA-256 recorded in
``aigc/assets/features/extractors.json``). ``aigc eval prepare-features --data NAME`` rebuilds one.
A user who has the standard FID Inception weights (``pt_inception-2015-12-05``) can point to them
instead (:class:`InceptionV3FID`).

Numbers computed with different extractors are not comparable; every metric card names the
extractor and the SHA-256 of its weights file.

    extractor = load_extractor("mnist")                    # shipped classifier, hash checked
    out = extractor.extract(images)                        # images (N, 1, 28, 28) in [0, 1]
    out["features"].shape, out["logits"].shape             # (N, 128), (N, 10)
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from aigc.errors import AigcError, DataError

FORMAT = "aigc-features/1"
ASSET_DIR = "assets/features"
RECORD_FILE = "extractors.json"


# ------------------------------------------------------------------------ the classifier


@dataclass(frozen=True)
class ClassifierConfig:
    """A small CNN whose penultimate layer is the feature space (like Inception's pool3)."""

    image_size: int = 28
    image_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, int, int] = (32, 64, 128)  # conv widths at full, 1/2 and 1/4 resolution
    feature_dim: int = 128
    dropout: float = 0.3
    # Where the features are read: "pre_relu" takes the feature layer before its ReLU. Read after
    # the ReLU ("post_relu", the layout of files written before this field existed), units whose
    # pre-activation is negative on every image are always zero: the shipped MNIST extractor had
    # 37 of 128 such units on the test split, a rank-deficient covariance for FID. Before the
    # ReLU a unit is a linear function of the conv features and is constant only if its weight
    # row is orthogonal to all of their variation; ``train_classifier`` refuses one that is.
    feature_layer: Literal["pre_relu", "post_relu"] = "pre_relu"


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class FeatureClassifier(nn.Module):
    """conv-pool x3 -> fc (features) -> ReLU -> fc (logits). Takes images in [0, 1]."""

    def __init__(self, cfg: ClassifierConfig):
        if cfg.feature_layer not in ("pre_relu", "post_relu"):
            raise ValueError(f"ClassifierConfig.feature_layer must be 'pre_relu' or 'post_relu', "
                             f"got {cfg.feature_layer!r}")
        super().__init__()
        self.cfg = cfg
        w1, w2, w3 = cfg.widths
        self.conv = nn.Sequential(
            _conv_block(cfg.image_channels, w1), nn.MaxPool2d(2),  # 28 -> 14
            _conv_block(w1, w2), nn.MaxPool2d(2),  # 14 -> 7
            _conv_block(w2, w3), nn.AdaptiveMaxPool2d(3),  # 7 -> 3
        )
        self.fc_features = nn.Linear(w3 * 9, cfg.feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc_logits = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x * 2.0 - 1.0).flatten(1)  # (B, w3 * 9)
        pre = self.fc_features(h)  # (B, feature_dim)
        hidden = F.relu(pre)
        feats = pre if self.cfg.feature_layer == "pre_relu" else hidden
        return feats, self.fc_logits(self.dropout(hidden))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


# ------------------------------------------------------------------------ the Inception


class _BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # The TF FID graph averages over valid pixels only at the borders.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = _BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = _BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv2d(c_in, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3d, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = _BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = _BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for i in range(1, 6):
            b7d = getattr(self, f"branch7x7dbl_{i}")(b7d)
        return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = _BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, c_in: int, pool: str):
        super().__init__()
        self.pool = pool  # "avg" in Mixed_7b, "max" in Mixed_7c (a quirk of the TF FID graph)
        self.branch1x1 = _BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = _BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, b3d, self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """Inception-v3 as in the TF FID graph (``pt_inception-2015-12-05``), in plain torch.

    Input: images ``(B, C, H, W)`` in [0, 1] with C = 1 or 3 (grey is repeated to RGB). They are
    resized to 299x299 (bilinear, ``align_corners=False``, as pytorch-fid does) and scaled to
    [-1, 1]. Output: the 2048-d pool3 features and the 1008 logits. Parameter names follow the
    weights file, so its state dict loads as is.
    """

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32)
        self.Mixed_5c = _InceptionA(256, 64)
        self.Mixed_5d = _InceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128)
        self.Mixed_6c = _InceptionC(768, 160)
        self.Mixed_6d = _InceptionC(768, 160)
        self.Mixed_6e = _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, pool="avg")
        self.Mixed_7c = _InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0  # (B, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        feats = x.mean(dim=(2, 3))  # (B, 2048): pool3
        return feats, self.fc(feats)  # logits (B, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]


def _inception_state_dict(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Check a state dict against the Inception layout; return it ready for ``load_state_dict``."""
    expected = InceptionV3FID().state_dict()
    # Older BatchNorm files lack num_batches_tracked; it plays no part in inference.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    wanted = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or extra:
        raise AigcError(
            f"{source} does not have the layout of the FID Inception weights "
            f"(pt_inception-2015-12-05): {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    for k in wanted:
        if state[k].shape != expected[k].shape:
            raise AigcError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, "
                            f"expected {tuple(expected[k].shape)}")
    for k, v in expected.items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
    return {k: v.float() for k, v in state.items()}


def convert_inception_pth(src: str | Path, dst: str | Path) -> Path:
    """One-time conversion of ``pt_inception-2015-12-05-*.pth`` to safetensors.

    Uses ``torch.load(weights_only=True)``, torch's restricted unpickler, which accepts only
    tensors and plain containers and refuses to run code. aigc itself only ever loads the
    safetensors file this writes.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise AigcError(f"Inception weights not found: {src}")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted loader is the file's
        raise AigcError(f"{src} could not be read by torch.load(weights_only=True): {exc}") from None
    if not isinstance(state, dict):
        raise AigcError(f"{src} does not hold a state dict")
    state = _inception_state_dict(state, src)
    save_canonical(state, dst, {"format": "aigc-inception-fid/1", "converted_from": src.name})
    return dst


# ------------------------------------------------------------------------ extractor


@dataclass
class FeatureExtractor:
    """A feature network plus what identifies it: name, file hash, the data it fits.

    ``data`` is the dataset a classifier was trained on (``None`` for Inception, which takes any
    image). ``class_names`` lets conditional accuracy map labels to classes.
    """

    name: str
    sha256: str
    network: nn.Module
    data: str | None
    image_size: int | None
    image_channels: int | None
    class_names: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        if isinstance(self.network, InceptionV3FID):
            return 2048
        return self.network.cfg.feature_dim

    def describe(self) -> dict[str, Any]:
        """What a metric card records about the extractor."""
        return {"name": self.name, "sha256": self.sha256, "data": self.data,
                "num_features": self.num_features, **self.info}

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise if ``images`` cannot be fed to this extractor (shape, channels, size, NaN)."""
        if images.ndim != 4:
            raise AigcError(f"{what} must be (N, C, H, W), got shape {tuple(images.shape)}")
        n, c, h, w = images.shape
        if self.image_channels is not None and c != self.image_channels:
            raise AigcError(f"{what} have {c} channels; extractor {self.name} expects "
                            f"{self.image_channels}")
        if self.image_channels is None and c not in (1, 3):
            raise AigcError(f"{what} have {c} channels; Inception takes 1 or 3")
        if self.image_size is not None and (h, w) != (self.image_size, self.image_size):
            raise AigcError(f"{what} are {h}x{w}; extractor {self.name} expects "
                            f"{self.image_size}x{self.image_size} (no silent resizing)")
        if not torch.isfinite(images).all():
            raise AigcError(f"{what} contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise AigcError(f"{what} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")

    def check_dataset(self, data: str) -> None:
        """Raise if this extractor was trained on another dataset than ``data``."""
        if self.data is not None and self.data != data:
            raise AigcError(f"extractor {self.name} was trained on {self.data!r}, not {data!r}: "
                            "its features say nothing reliable about other data; use "
                            f"--features for {data!r} (see `aigc eval prepare-features`)")

    @torch.no_grad()
    def extract(self, images: torch.Tensor, *, batch_size: int = 500) -> dict[str, torch.Tensor]:
        """``{"features": (N, D), "logits": (N, K)}`` in float64 for images in [0, 1]."""
        self.check_images(images)
        self.network.eval()
        device = next(self.network.parameters()).device
        feats, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            f, lg = self.network.features_and_logits(images[start:start + batch_size].float()
                                                     .to(device))
            feats.append(f.double().cpu())
            logits.append(lg.double().cpu())
        out = {"features": torch.cat(feats), "logits": torch.cat(logits)}
        if not torch.isfinite(out["features"]).all():
            raise AigcError(f"extractor {self.name} produced NaN/inf features")
        return out


def _asset_root() -> Path:
    return Path(str(resources.files("aigc"))) / ASSET_DIR


def shipped_records() -> dict[str, dict[str, Any]]:
    """``{dataset: {"file", "sha256", "test_accuracy", ...}}`` of the shipped extractors."""
    path = _asset_root() / RECORD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_extractor(spec: str, *, device: str = "cpu") -> FeatureExtractor:
    """Load a feature extractor.

    Args:
        spec: a dataset name with a shipped classifier (``mnist``, ``fashion-mnist``), a path to
            a classifier ``.safetensors`` written by ``aigc eval prepare-features``, or
            ``inception:PATH`` for the FID Inception weights as safetensors.
    """
    if spec.startswith("inception:"):
        return _load_inception(Path(spec[len("inception:"):]), device)
    records = shipped_records()
    if spec in records:
        rec = records[spec]
        path = _asset_root() / rec["file"]
        ext = load_classifier_file(path, device=device)
        if ext.sha256 != rec["sha256"]:
            raise AigcError(f"shipped extractor {path} has SHA-256 {ext.sha256}, but "
                            f"{RECORD_FILE} records {rec['sha256']}: the file was changed")
        return ext
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        return load_classifier_file(path, device=device)
    raise AigcError(f"no feature extractor {spec!r}: shipped ones are "
                    f"{', '.join(sorted(records)) or '(none)'}; or pass a .safetensors path "
                    "from `aigc eval prepare-features`, or inception:PATH")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from aigc.checkpoints import read_metadata

    if not path.is_file():
        raise AigcError(f"feature extractor weights not found: {path}")
    try:
        meta = read_metadata(path)
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as exc:
        raise AigcError(f"{path} could not be read as safetensors: {exc}") from None


def load_classifier_file(path: str | Path, *, device: str = "cpu") -> FeatureExtractor:
    from aigc.checkpoints import file_sha256

    path = Path(path)
    tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise AigcError(f"{path} is not an aigc feature extractor (format="
                        f"{meta.get('format')!r}, expected {FORMAT!r})")
    raw = json.loads(meta["config"])
    # Files written before ``feature_layer`` existed read their features after the ReLU.
    raw.setdefault("feature_layer", "post_relu")
    cfg = ClassifierConfig(**{**raw, "widths": tuple(raw["widths"])})
    net = FeatureClassifier(cfg)
    net.load_state_dict(tensors)
    net.to(device).eval()
    info = json.loads(meta.get("info", "{}"))
    return FeatureExtractor(
        name=f"aigc-classifier-{meta['data']}", sha256=file_sha256(path), network=net,
        data=meta["data"], image_size=cfg.image_size, image_channels=cfg.image_channels,
        class_names=json.loads(meta.get("class_names", "[]")),
        info={"test_accuracy": info.get("test_accuracy"), "file": path.name},
    )


def _load_inception(path: Path, device: str) -> FeatureExtractor:
    from aigc.checkpoints import file_sha256

    if path.suffix == ".pth":
        raise AigcError(f"{path} is a torch pickle; aigc loads only safetensors. Convert it once "
                        "with `aigc eval convert-inception SRC.pth DST.safetensors`")
    tensors, _ = _read(path)
    net = InceptionV3FID()
    net.load_state_dict(_inception_state_dict(tensors, path))
    net.to(device).eval()
    return FeatureExtractor(name="inception-v3-fid", sha256=file_sha256(path), network=net,
                            data=None, image_size=None, image_channels=None,
                            info={"file": path.name, "resize": "bilinear to 299x299"})


def save_canonical(tensors: dict[str, torch.Tensor], path: str | Path,
                   metadata: dict[str, str]) -> Path:
    """Write safetensors whose bytes depend only on the tensors and the metadata.

    ``safetensors`` writes header keys in hash-map order, which changes from call to call, so two
    saves of the same weights get different SHA-256s. Here the JSON header is rewritten with sorted
    keys (data offsets are relative to the end of the header, so the tensor bytes stay as they
    are): the same weights give the same file hash, and a rebuilt extractor can be checked
    against the shipped one byte for byte.
    """
    raw = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return path


# ------------------------------------------------------------------------ training


@torch.no_grad()
def classifier_accuracy(net: nn.Module, dataset, batch_size: int = 1000) -> float | None:
    """Top-1 accuracy on a labelled split (``None`` for an empty split)."""
    if len(dataset) == 0:
        return None
    net.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.get_batch(torch.arange(start, min(start + batch_size, len(dataset))))
        correct += int((net(batch["image"]).argmax(1) == batch["label"]).sum())
    return correct / len(dataset)


def train_classifier(data: str, out: str | Path, *, epochs: int | None = None, seed: int = 0,
                     batch_size: int = 128, lr: float = 2e-3, progress: bool = True) -> dict:
    """Train the feature classifier on ``data``'s train split and write it as safetensors.

    Deterministic for a given seed, torch version and thread count (CPU). Returns a summary with
    the val/test accuracy, the SHA-256 of the file and the wall time.
    """
    from aigc.checkpoints import file_sha256, library_versions
    from aigc.data.images import load_images

    train, val, test = (load_images(data, s) for s in ("train", "val", "test"))
    if train.labels is None:
        raise DataError(f"{data} has no labels; a feature classifier needs labelled images")
    if epochs is None:
        epochs = {"mnist": 3}.get(data, 6)
    cfg = ClassifierConfig(image_size=train.image_size, image_channels=train.channels,
                           num_classes=len(train.class_names))
    torch.manual_seed(seed)
    net = FeatureClassifier(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{data} epoch {epoch + 1}/{epochs}",
                   disable=not progress, unit="step")
        for i in bar:
            batch = train.get_batch(order[i * batch_size:(i + 1) * batch_size])
            loss = F.cross_entropy(net(batch["image"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - t0
    check_split, check_set = ("val", val) if len(val) else ("train", train)
    n_check = min(len(check_set), 5000)
    check_images = check_set.get_batch(torch.arange(n_check))["image"]
    constant = constant_features(_features_of(net, check_images))
    if constant:
        raise AigcError(
            f"the trained {data} extractor has {len(constant)} of {cfg.feature_dim} features that "
            f"are constant on the first {n_check} {check_split} images (units {constant[:10]}"
            f"{' ...' if len(constant) > 10 else ''}): FID/KID would measure in a degenerate "
            f"space. Nothing was written to {out}; train with another --seed or more --epochs")
    val_acc, test_acc = classifier_accuracy(net, val), classifier_accuracy(net, test)
    info = {"val_accuracy": val_acc and round(val_acc, 4),
            "test_accuracy": test_acc and round(test_acc, 4),
            "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
            "torch": library_versions()["torch"], "threads": torch.get_num_threads()}
    cfg_json = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    meta = {"format": FORMAT, "data": data, "config": json.dumps(cfg_json, sort_keys=True),
            "class_names": json.dumps(train.class_names), "info": json.dumps(info, sort_keys=True)}
    out = save_canonical(net.state_dict(), out, meta)
    return {**info, "data": data, "file": str(out), "sha256": file_sha256(out),
            "train_seconds": round(seconds, 1), "constant_features_checked_on":
            f"{n_check} {check_split} images"}


@torch.no_grad()
def _features_of(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    net.eval()
    return torch.cat([net.features_and_logits(images[i:i + batch_size])[0].double()
                      for i in range(0, len(images), batch_size)])


def constant_features(features: torch.Tensor, *, tol: float = 1e-6) -> list[int]:
    """Indices of the columns of ``features`` (N, D) whose range over the N rows is <= ``tol``.

    Such a unit adds nothing to FID/KID but a zero row and column to the covariance. Raises on
    fewer than two rows: one image cannot tell a constant unit from a varying one.
    """
    features = check_features(features)
    if features.shape[0] < 2:
        raise AigcError(f"constant_features needs at least 2 rows, got {features.shape[0]}")
    spread = features.max(0).values - features.min(0).values  # (D,)
    return [int(i) for i in torch.nonzero(spread <= tol).flatten()]


def check_features(features: torch.Tensor, what: str = "features") -> torch.Tensor:
    """Return ``features`` as float64 ``(N, D)`` on CPU; raise on a wrong shape or NaN/inf."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise AigcError(f"{what} must be a 2-d tensor (N, D), got {shape}")
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(1).sum())
        raise AigcError(f"{what} contain NaN or infinite values in {bad} of {len(features)} rows")
    return features.detach().to("cpu", torch.float64)


class FeatureBank:
    """One set of feature rows (real or generated), checked on entry and kept until ``reset``.

    The sample-based metrics (KID, precision/recall) hold one bank per set, the way FID holds one
    :class:`aigc.metrics.fid.GaussianStatistics` per set.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._rows: list[torch.Tensor] = []

    def update(self, features: torch.Tensor) -> None:
        self._rows.append(check_features(features))

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows)

    def tensor(self) -> torch.Tensor:
        """All rows as float64 ``(N, D)`` (``(0, 0)`` when empty)."""
        return torch.cat(self._rows) if self._rows else torch.zeros(0, 0, dtype=torch.float64)
