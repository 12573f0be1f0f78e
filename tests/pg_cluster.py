"""A throwaway PostgreSQL cluster for the PostgreSQL tier: Debian's ``initdb`` and ``pg_ctl``
in a temporary folder, on a free loopback port, as an unprivileged user when run as root
(PostgreSQL refuses to run as root). Trust authentication, fsync off: for tests only."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from studio_fixtures import free_port

PG_BIN = Path(os.environ.get("AIGC_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "nobody"  # when running as root


def missing_reason() -> str | None:
    """Why the PostgreSQL tier cannot run here (None when it can)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return (f"PostgreSQL tier: {PG_BIN / tool} not found (install Debian's "
                    "'postgresql' package, or set AIGC_PG_BIN to its bin folder)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "PostgreSQL tier: the driver psycopg is not installed (pip install 'aigc[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "PostgreSQL tier: running as root and 'runuser' is missing to drop to 'nobody'"
    return None


class Cluster:
    """``start()`` it, ``new_database()`` per test, ``stop()`` at the end."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="aigc-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = ["runuser", "-u", RUN_AS, "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, user=RUN_AS)

    def _run(self, *cmd: str) -> None:
        res = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if res.returncode:
            log = self.root / "log"
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n"
                               f"{res.stderr}\n{log.read_text() if log.exists() else ''}")

    def start(self) -> Cluster:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "aigc", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", options, "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://aigc@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=aigc dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
