"""A real Label Studio server for integration tests, started on 127.0.0.1 with a temp data dir and a token.

Label Studio lives in its own venv (``.venv-labelstudio/``, installed by ``.ci/install/30-label-studio.sh``:
its pins clash with ours). A fresh data dir costs ~35 s of Django migrations, so the first start migrates
one into ``<repo>/.cache/label-studio-<version>/`` (built in a temp dir, renamed into place when done) and
every server afterwards starts from a copy of it in a few seconds. Each server gets its own user and
API token; the process runs in its own process group, killed as a group at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from external_tools import REPO, require

LS_VENV = ".venv-labelstudio"
INSTALL = "make services (or bash .ci/install/30-label-studio.sh)"
START_TIMEOUT_S = 120.0  # a first start migrates a fresh database (~35 s on 2 shared cores)
#: variables Label Studio reads under their bare names too (get_env falls back to them): never inherit
_BARE_NAMES = ("USERNAME", "PASSWORD", "HOST", "PORT", "USER_TOKEN")


@dataclass
class LabelStudioServer:
    """A running server: its URL, the API token of its one user, its files."""

    url: str
    token: str
    email: str
    data_dir: Path
    document_root: Path  # local-files serving root (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)
    log_path: Path


def label_studio_binary() -> Path:
    """The side venv's ``label-studio`` (skips, or fails under CI, when it is not installed)."""
    return require("Label Studio", f"{LS_VENV}/bin/label-studio", install=INSTALL)


def _version(binary: Path) -> str:
    out = subprocess.run([str(binary.parent / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('label-studio'))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, doc_root: Path, email: str, password: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _BARE_NAMES and not k.startswith("LABEL_STUDIO_")}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), LABEL_STUDIO_USERNAME=email, LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true", LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(doc_root), LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false", PYTHONUNBUFFERED="1",
    )
    return env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _running(binary: Path, data_dir: Path, doc_root: Path, log_path: Path, *, email: str, password: str,
             token: str) -> Iterator[str]:
    """Start ``label-studio start`` on a free loopback port; yield its URL once /health/ answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=_env(data_dir, doc_root, email, password, token), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=data_dir,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {proc.returncode} before serving; log {log_path}:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"label-studio did not answer {url}/health/ within {START_TIMEOUT_S:.0f} s; "
                                   f"log {log_path}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def migrated_data_dir(binary: Path) -> Path:
    """A data dir with every migration applied (built once per Label Studio version, then reused)."""
    cache = REPO / ".cache" / f"label-studio-{_version(binary)}"
    if (cache / "READY").exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache.parent))
    data, root = build / "data", build / "files"
    data.mkdir()
    root.mkdir()
    with _running(binary, data, root, build / "server.log", email="migrate@gsal.invalid",
                  password=secrets.token_urlsafe(12), token=secrets.token_hex(20)):
        pass
    (data / "READY").write_text("migrated\n")
    try:
        os.rename(data, cache)  # atomic; another session that got there first wins
    except OSError:
        pass
    shutil.rmtree(build, ignore_errors=True)
    return cache


@contextmanager
def label_studio_server(workdir: Path) -> Iterator[LabelStudioServer]:
    """A real Label Studio on 127.0.0.1 with its data under ``workdir`` and a fresh user + token."""
    binary = label_studio_binary()
    data_dir, doc_root = workdir / "ls-data", workdir / "ls-files"
    shutil.copytree(migrated_data_dir(binary), data_dir)
    doc_root.mkdir(parents=True, exist_ok=True)
    email, token = f"annotator-{secrets.token_hex(4)}@gsal.invalid", secrets.token_hex(20)
    log_path = workdir / "label-studio.log"
    with _running(binary, data_dir, doc_root, log_path, email=email, password=secrets.token_urlsafe(12),
                  token=token) as url:
        yield LabelStudioServer(url, token, email, data_dir, doc_root, log_path)
