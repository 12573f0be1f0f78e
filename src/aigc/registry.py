"""Model names, versions and aliases; the shipped starter models are its first entries.

A model is referred to, everywhere a checkpoint is accepted, as one of:

* a path (a run folder, a checkpoint folder or a ``.safetensors`` file);
* ``starter:NAME`` — a starter model shipped inside the package (``aigc models list``);
* ``NAME@ALIAS`` or ``NAME@vK`` — a version of a registered model (see :class:`Registry`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aigc.checkpoints import MODEL_FILE, file_sha256
from aigc.errors import AigcError

STARTERS_DIR = Path(__file__).resolve().parent / "assets" / "starters"


def starter_names() -> list[str]:
    return sorted(p.stem for p in STARTERS_DIR.glob("*.safetensors"))


def starter_path(name: str) -> Path:
    path = STARTERS_DIR / f"{name}.safetensors"
    if not path.is_file():
        known = ", ".join("starter:" + k for k in starter_names()) or "(none installed)"
        raise AigcError(f"no starter model 'starter:{name}'; known: {known}")
    return path


def resolve_model(name: str) -> str:
    """``starter:NAME`` -> the shipped file; ``NAME@ALIAS|vK`` -> the registered version's file;
    anything else (a path) is returned unchanged."""
    if name.startswith("starter:"):
        return str(starter_path(name[len("starter:"):]))
    if "@" in name and not Path(name).exists():
        return str(Registry().resolve(name).path)
    return name


# ----------------------------------------------------------------------------- the registry

REGISTRY_ENV = "AIGC_REGISTRY"
ALIASES = ("production", "candidate")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Version:
    """One registered version of a model: a copy of its weights file plus where it came from."""

    name: str
    version: int
    path: Path  # the registry's own copy of the model.safetensors
    sha256: str
    family: str
    parent: str | None  # "NAME@vK" it was improved from, None for a first version
    created: str
    source: str  # what was registered: starter:NAME, a path, or a job id
    data: str | None = None  # the training data it names
    feedback: dict[str, Any] | None = None  # the preference dataset snapshot (id, sha256, pairs)
    card: dict[str, Any] | None = None  # its metric card (aigc eval), when one was made
    note: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["ref"] = self.ref
        return d


class Registry:
    """Named models with numbered versions and the aliases ``production`` and ``candidate``.

    On disk (``$AIGC_REGISTRY``, default ``./registry``)::

        NAME/versions/vK/model.safetensors   the weights, copied in (never changed again)
        NAME/versions/vK/version.json        :class:`Version` without the path
        NAME/aliases.json                    {"aliases": {...}, "history": [...]}
        NAME/.lock                           flock: one writer at a time

    Every change of aliases is one ``os.replace`` of ``aliases.json`` (aliases and history in
    the same file), so a process killed at any moment leaves the old state or the new one,
    never a mix. A shipped starter is version 1 of its name, registered on first use, and
    production until something is promoted over it.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get(REGISTRY_ENV) or "registry")

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        here = {p.parent.name for p in self.root.glob("*/aliases.json")} | \
            {p.parent.parent.parent.name for p in self.root.glob("*/versions/v*/version.json")}
        return sorted(here | set(starter_names()))

    def versions(self, name: str) -> list[Version]:
        self._check_name(name)
        self._adopt_starter(name)
        out = []
        for f in (self.root / name / "versions").glob("v*/version.json"):
            d = json.loads(f.read_text(encoding="utf-8"))
            d.pop("ref", None)
            d["path"] = f.parent / MODEL_FILE
            out.append(Version(**d))
        return sorted(out, key=lambda v: v.version)

    def state(self, name: str) -> dict[str, Any]:
        """``{"aliases": {alias: version}, "history": [...]}`` of a name."""
        self._adopt_starter(name)
        f = self.root / name / "aliases.json"
        if not f.is_file():
            return {"aliases": {}, "history": []}
        return json.loads(f.read_text(encoding="utf-8"))

    def resolve(self, ref: str) -> Version:
        """``NAME@production``, ``NAME@candidate``, ``NAME@vK`` or ``NAME`` (production)."""
        name, _, which = ref.partition("@")
        which = which or "production"
        versions = {v.version: v for v in self.versions(name)}
        if not versions:
            raise AigcError(f"no model named {name!r} in the registry {self.root} "
                            f"(known: {', '.join(self.names()) or 'none'})")
        if which in ALIASES:
            number = self.state(name)["aliases"].get(which)
            if number is None:
                raise AigcError(f"{name} has no {which} version (aliases: "
                                f"{self.state(name)['aliases'] or 'none'})")
        elif re.fullmatch(r"v\d+", which):
            number = int(which[1:])
        else:
            raise AigcError(f"{ref!r}: after '@' give production, candidate or vK (e.g. v2)")
        if number not in versions:
            raise AigcError(f"{name} has no version v{number}; it has "
                            f"{', '.join(f'v{k}' for k in sorted(versions))}")
        version = versions[number]
        if file_sha256(version.path) != version.sha256:
            raise AigcError(f"{version.path} does not match the SHA-256 registered for "
                            f"{version.ref}; the registry copy was changed")
        return version

    # ------------------------------------------------------------------ writing
    def register(self, name: str, checkpoint: str | Path, *, parent: str | None = None,
                 source: str | None = None, feedback: dict[str, Any] | None = None,
                 card: dict[str, Any] | None = None, note: str = "",
                 alias: str | None = None) -> Version:
        """Copy a checkpoint in as the next version of ``name`` (optionally pointing ``alias``
        at it). A model of another family than the name's versions is refused."""
        from aigc.checkpoints import read_metadata, resolve_checkpoint

        self._check_name(name)
        if alias is not None and alias not in ALIASES:
            raise AigcError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
        file = resolve_checkpoint(resolve_model(str(checkpoint)))
        meta = read_metadata(file)
        family = meta.get("family")
        if not family:
            raise AigcError(f"{file} is not an aigc checkpoint (no family in its metadata)")
        with self._locked(name):
            existing = self.versions(name)
            if existing and existing[-1].family != family:
                raise AigcError(f"{name} holds {existing[-1].family} models; {file} is a "
                                f"{family} model: register it under another name")
            number = existing[-1].version + 1 if existing else 1
            return self._write_version(name, number, file, family, parent=parent,
                                       source=source or str(Path(file).resolve()),
                                       data=json.loads(meta.get("meta") or "{}").get("data"),
                                       feedback=feedback, card=card, note=note, alias=alias)

    def promote(self, name: str, ref: str, *, reason: str, forced: bool = False,
                expected_production: int | None = None, alias: str = "production",
                gate: dict[str, Any] | None = None) -> dict[str, Any]:
        """Point ``alias`` at version ``ref`` in one atomic write, with the reason and the gate's
        verdict in the history. ``expected_production`` guards against a race: when another
        promotion moved production after this one read it (while it was evaluating), nothing
        is written and :class:`AigcError` says so."""
        version = self.resolve(ref if "@" in ref else f"{name}@{ref}")
        if version.name != name:
            raise AigcError(f"{ref} is not a version of {name}")
        with self._locked(name):
            state = self.state(name)
            current = state["aliases"].get("production")
            if expected_production is not None and current != expected_production:
                raise AigcError(f"{name}@production moved from v{expected_production} to "
                                f"v{current} while this promotion was evaluating; nothing was "
                                "changed: run it again against the new production")
            entry = {"at": _now(), "action": "promote", "alias": alias,
                     "from": state["aliases"].get(alias), "to": version.version,
                     "reason": reason, "forced": forced, "gate": gate}
            aliases = {**state["aliases"], alias: version.version}
            if alias == "production" and aliases.get("candidate") == version.version:
                aliases.pop("candidate")
            self._write_state(name, {"aliases": aliases,
                                     "history": [*state["history"], entry]})
        return entry

    def rollback(self, name: str, *, reason: str) -> dict[str, Any]:
        """Production goes back to the version it had before its latest promotion."""
        with self._locked(name):
            state = self.state(name)
            current = state["aliases"].get("production")
            previous = [h for h in state["history"] if h.get("alias") == "production"
                        and h["to"] == current and h.get("from") is not None]
            if current is None or not previous:
                raise AigcError(f"{name}: nothing to roll back to (production is "
                                f"{f'v{current}' if current else 'unset'} and has no earlier "
                                "version in its history)")
            back = previous[-1]["from"]
            entry = {"at": _now(), "action": "rollback", "alias": "production",
                     "from": current, "to": back, "reason": reason, "forced": False,
                     "gate": None}
            self._write_state(name, {"aliases": {**state["aliases"], "production": back},
                                     "history": [*state["history"], entry]})
        return entry

    def add_card(self, name: str, version: int, label: str, card: dict[str, Any]) -> Path:
        """Keep a metric card of ``NAME@vK`` (``versions/vK/cards/LABEL.json``); a version's
        weights and ``version.json`` never change, its cards accumulate."""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", label):
            raise AigcError(f"card label {label!r}: letters, digits, '.', '_', '-' only")
        folder = self.root / name / "versions" / f"v{version}"
        if not (folder / "version.json").is_file():
            raise AigcError(f"{name} has no version v{version}")
        (folder / "cards").mkdir(exist_ok=True)
        out = folder / "cards" / f"{label}.json"
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, out)
        return out

    def cards(self, name: str, version: int) -> dict[str, dict[str, Any]]:
        """``{label: card}`` of the cards kept for ``NAME@vK`` (besides ``Version.card``)."""
        folder = self.root / name / "versions" / f"v{version}" / "cards"
        return {f.stem: json.loads(f.read_text(encoding="utf-8"))
                for f in sorted(folder.glob("*.json"))}

    # --------------------------------------------------------------- internals
    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME.match(name):
            raise AigcError(f"model name {name!r} must be 1-64 lower-case letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit")

    def _adopt_starter(self, name: str) -> None:
        """A shipped starter becomes v1 (production) of its name the first time it is asked
        for, so improvement and rollback work on it like on any registered model."""
        if name not in starter_names() or (self.root / name / "aliases.json").is_file():
            return
        with self._locked(name):
            if (self.root / name / "versions" / "v1").is_dir():
                return
            self._write_version(name, 1, starter_path(name), None, parent=None,
                                source=f"starter:{name}", data=None, feedback=None,
                                card=_starter_card(name), note="shipped starter",
                                alias="production")

    def _write_version(self, name: str, number: int, file: Path, family: str | None, *,
                       parent, source, data, feedback, card, note, alias) -> Version:
        from aigc.checkpoints import read_metadata

        meta = read_metadata(file)
        family = family or meta["family"]
        data = data or json.loads(meta.get("meta") or "{}").get("data")
        final = self.root / name / "versions" / f"v{number}"
        tmp = final.with_name(f".v{number}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(file, tmp / MODEL_FILE)
        version = Version(name=name, version=number, path=final / MODEL_FILE,
                          sha256=file_sha256(tmp / MODEL_FILE), family=family, parent=parent,
                          created=_now(), source=source, data=data, feedback=feedback,
                          card=card, note=note)
        d = version.to_dict()
        d.pop("path")
        (tmp / "version.json").write_text(json.dumps(d, indent=1, ensure_ascii=False),
                                          encoding="utf-8")
        os.replace(tmp, final)  # the version appears whole or not at all
        if alias:
            state = self.state(name) if (self.root / name / "aliases.json").is_file() \
                else {"aliases": {}, "history": []}
            entry = {"at": _now(), "action": "register", "alias": alias,
                     "from": state["aliases"].get(alias), "to": number, "reason": note,
                     "forced": False, "gate": None}
            self._write_state(name, {"aliases": {**state["aliases"], alias: number},
                                     "history": [*state["history"], entry]})
        return version

    def _write_state(self, name: str, state: dict[str, Any]) -> None:
        f = self.root / name / "aliases.json"
        tmp = f.with_name(f".aliases.json.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, f)

    @contextlib.contextmanager
    def _locked(self, name: str):
        """One writer per name at a time: across processes (flock) and threads (an RLock);
        re-entrant in the thread that holds it."""
        key = str((self.root / name).resolve())
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(key, threading.RLock())
        with lock:
            depth = _DEPTH.__dict__.setdefault(key, 0)
            if depth:
                _DEPTH.__dict__[key] += 1
                try:
                    yield
                finally:
                    _DEPTH.__dict__[key] -= 1
                return
            (self.root / name).mkdir(parents=True, exist_ok=True)
            with open(self.root / name / ".lock", "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                _DEPTH.__dict__[key] = 1
                try:
                    yield
                finally:
                    _DEPTH.__dict__[key] = 0
                    fcntl.flock(fh, fcntl.LOCK_UN)


_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_DEPTH = threading.local()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _starter_card(name: str) -> dict[str, Any] | None:
    f = STARTERS_DIR / f"{name}.card.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
