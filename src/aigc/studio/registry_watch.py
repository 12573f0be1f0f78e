"""The studio serves each registered name's ``production`` version and follows promotions and
rollbacks without a restart.

A daemon thread reads each served name's aliases every ``interval`` seconds (one small JSON
file); when production points at another version, it loads that version's backend first and
then swaps it into the studio's table under the same name, so a job either runs wholly on the
old version or wholly on the new one. Items keep the version that made them in their record
(``checkpoint: NAME@vK`` and the model's SHA-256).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("aigc.studio")


def load_backend(name: str, path: Path) -> tuple[str, Any] | None:
    """``(kind, backend)`` of one model file, whatever its kind; ``None`` if none loads it."""
    from aigc.studio.backends import load_image_backends, load_music_backends, load_text_backends

    for kind, loader in (("image", load_image_backends), ("music", load_music_backends),
                         ("text", load_text_backends)):
        found, _ = loader([(name, path)])
        if name in found:
            return kind, found[name]
    return None


class RegistryWatcher:
    def __init__(self, studio, registry, interval: float = 2.0):
        self.studio = studio
        self.registry = registry
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the watcher thread and a promote job may both sync

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aigc-registry-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception:  # a half-written registry must not kill the watcher
                log.exception("registry watch failed; serving the versions already loaded")

    def sync(self) -> list[str]:
        """Load the production version of every served name that moved; returns the names
        switched."""
        with self._lock:
            return self._sync()

    def _sync(self) -> list[str]:
        switched = []
        for name, loaded in list(self.studio.served_versions.items()):
            production = self.registry.state(name)["aliases"].get("production")
            if production is None or production == loaded:
                continue
            version = self.registry.resolve(f"{name}@v{production}")
            got = load_backend(name, version.path)
            if got is None:
                log.error("registry: %s cannot be served; keeping v%s", version.ref, loaded)
                continue
            kind, backend = got
            table = {"image": self.studio.images, "music": self.studio.musics,
                     "text": self.studio.texts}[kind]
            table[name] = backend  # one assignment: a job sees the old or the new backend
            self.studio.served_versions[name] = production
            log.info("registry: %s now serves v%s (was v%s)", name, production, loaded)
            switched.append(name)
        return switched
