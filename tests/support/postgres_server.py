"""A real PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` into a temp dir, 127.0.0.1, a free port.

One server per test session (:func:`shared_server`, started on first use, stopped at exit); each test
gets a database of its own (the ``pg_url`` fixture). As root (how CI runs) the server runs as the
``postgres`` user that Debian's package creates (``runuser``): PostgreSQL refuses to run as root.
Binaries come from Debian's ``postgresql`` package (``.ci/install/10-postgresql.sh``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from external_tools import require

INSTALL = "make services (.ci/install/10-postgresql.sh: apt-get install postgresql)"
SUPERUSER = "gsal"


def _bin_dir() -> Path:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True)
    return require("PostgreSQL initdb", *versions, "initdb", install=INSTALL).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throw-away cluster; ``url(db)`` names a database on it, :meth:`crash` stops it like a power cut."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the 'postgres' user (Debian's postgresql package creates it)")
            self.run_as = "postgres"
        self.base = Path(tempfile.mkdtemp(prefix="gsal-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        if self.run_as:
            shutil.chown(self.base, self.run_as, self.run_as)
        self.port = 0
        self._cmd("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-instructions")

    def _cmd(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if check and res.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}\n{tail}")
        return res

    def start(self) -> None:
        """Start (or restart, same port) and wait until it accepts connections."""
        for _ in range(3):
            port = self.port or _free_port()
            opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {self.base} -c max_connections=60"
            res = self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                            "start", check=False)
            if res.returncode == 0:
                self.port = port
                return
            if self.port:  # a restart must get its old port back
                break
        raise RuntimeError(f"PostgreSQL did not start: {res.stderr[-1000:]}\n{self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: no checkpoint, no clean shutdown; the next start replays the WAL."""
        self.stop("immediate")

    def url(self, db: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


_SERVER: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The session's one server (skipped, or failed under CI, where PostgreSQL or psycopg is missing)."""
    global _SERVER
    try:
        import psycopg  # noqa: F401
    except ImportError:
        msg = f"psycopg not installed: pip install 'gsal-edge[postgres]' or {INSTALL}"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    if _SERVER is None:
        server = PostgresServer(_bin_dir())
        server.start()
        atexit.register(server.cleanup)
        _SERVER = server
    return _SERVER


@pytest.fixture
def pg_server() -> PostgresServer:
    return shared_server()


@pytest.fixture
def pg_url(pg_server: PostgresServer):
    """A fresh, empty database on the session's server (dropped afterwards)."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    # best effort: the whole server is removed at exit anyway
    with contextlib.suppress(Exception):
        pg_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
