"""``aigc worker``: run the studio's generation jobs in a process of its own, on any machine.

A worker needs exactly two things shared with the API server: the database (``--db``, normally
PostgreSQL) and the folder of generated files (``--files``, e.g. an NFS mount of the server's
``DATA/files``). It loads the models it serves — under the same names as the server — and runs
the studio's own :class:`~aigc.studio.jobs.JobRunner` for the image, text and music jobs of
those models:

* a claim takes queued jobs with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) and holds them under
  the worker's name with a lease that a heartbeat renews every third of ``lease_s``;
* a worker that dies stops renewing; any live worker (or the API server) puts its jobs back in
  the queue once the lease ends, and the attempt number fences every write, so a worker that
  only stalled cannot overwrite the job another worker finished (see :mod:`aigc.studio.store`);
* idle workers wake on ``NOTIFY`` (PostgreSQL) and poll every ``poll_s`` seconds in any case.

    worker = Worker(StudioSettings(db_url="postgresql+psycopg://aigc@db/aigc",
                                   files_dir=Path("/mnt/studio/files"), models_dir=Path("models")))
    worker.run(stop_event)   # returns when stop_event is set
"""

from __future__ import annotations

import logging
import threading

from aigc.studio.jobs import GENERATION_KINDS
from aigc.studio.service import StudioSettings

log = logging.getLogger("aigc.studio")


class Worker:
    """The models of ``settings`` and a job runner for ``kinds`` (default: image, text, music),
    without an HTTP server."""

    def __init__(self, settings: StudioSettings, kinds: tuple[str, ...] = GENERATION_KINDS):
        from aigc.studio.app import build_studio

        unknown = sorted(set(kinds) - set(GENERATION_KINDS))
        if not kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {GENERATION_KINDS}, got "
                             f"{tuple(kinds)}")
        self.kinds = tuple(kinds)
        self.studio = build_studio(settings)
        self.runner = self.studio.runner

    def models(self) -> dict[str, list[str]]:
        """``{kind: [model names]}`` this worker runs jobs for."""
        tables = {"image": self.studio.images, "text": self.studio.texts,
                  "music": self.studio.musics}
        return {k: sorted(tables[k]) for k in self.kinds}

    def run(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set; then stop the threads and close the database."""
        try:  # a start that fails half-way still stops what it started and closes the db
            self.runner.start(kinds=self.kinds)
            stop.wait()
        finally:
            self.runner.stop()
            self.studio.store.close()
