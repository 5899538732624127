"""The dashboard's HTTP server: standard-library ``http.server`` + jinja2 templates, no script, no CDN.

Routes (GET/HEAD only; everything else is 405): ``/`` the page, ``/api/status`` the same numbers as JSON,
``/thumbnail?key=<pool key>`` a windowed PNG of a stored slice, ``/static/dashboard.css``. Every
store-derived string reaches the page through jinja2's autoescaping (slice ids and meta come from
stations), and a strict Content-Security-Policy forbids scripts and any other origin. It binds
127.0.0.1 unless told otherwise; the store is opened read-only (:func:`open_read_only`).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gsal_edge.acquisition.concept_graph import ConceptGraph, load_graph
from gsal_edge.errors import GSALError
from trainer.dashboard.concept_svg import layout
from trainer.dashboard.readonly import DashboardError, open_read_only
from trainer.dashboard.status import choose_graph, dashboard_status
from trainer.dashboard.thumbnails import thumbnail_png
from trainer.store.pool_store import PoolStore

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def _env() -> Any:
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - jinja2 comes with torch; the extra names it anyway
        raise DashboardError("the dashboard needs jinja2: pip install 'gsal-edge[dashboard]'") from e
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, digits=4: "–" if v is None else f"{float(v):.{digits}g}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.0f} %"
    env.filters["when"] = lambda v: "–" if not v else str(v).replace("T", " ")[:16] + " UTC"
    env.filters["short"] = lambda v, n=14: "–" if not v else (v if len(v) <= n + 1 else v[:n] + "…")
    return env


class DashboardApp:
    """What the routes answer, over one store directory (opened read-only on first use)."""

    def __init__(self, store_dir: str | Path, *, graph: str | Path | ConceptGraph | None = None,
                 label_mode: str | None = None, refresh_s: int = 30) -> None:
        if label_mode not in (None, "typed", "binary"):
            raise DashboardError(f"--label-mode must be typed or binary, got {label_mode!r}")
        self.store_dir = Path(store_dir)
        self.graph = load_graph(graph) if isinstance(graph, (str, Path)) else graph  # a bad file fails now
        self.label_mode = label_mode
        self.refresh_s = int(refresh_s)
        self._store: PoolStore | None = None
        self._lock = threading.Lock()
        self._env = _env()
        self.css = (HERE / "static" / "dashboard.css").read_bytes()

    def store(self) -> PoolStore:
        with self._lock:
            if self._store is None:
                self._store = open_read_only(self.store_dir)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _status(self) -> tuple[dict[str, Any], ConceptGraph]:
        store = self.store()
        graph, note = choose_graph(store, self.graph)
        return dashboard_status(store, graph=graph, label_mode=self.label_mode, graph_note=note), graph

    def status(self) -> dict[str, Any]:
        """The ``/api/status`` dict."""
        return self._status()[0]

    def page(self) -> str:
        """The dashboard page (HTML)."""
        st, graph = self._status()
        return self._env.get_template("dashboard.html").render(
            s=st, drawing=layout(graph, st["coverage"]), refresh_s=self.refresh_s)

    def error_page(self, message: str) -> str:
        return self._env.get_template("error.html").render(message=message, store=str(self.store_dir),
                                                          refresh_s=self.refresh_s)

    def thumbnail(self, key: str) -> bytes | None:
        """PNG of a stored slice of the pool, None for an unknown key or a slice whose pixels stayed at the station."""
        try:
            info = self.store().slice_info(key)
        except GSALError:
            return None
        if info.image_path is None or not info.image_path.is_file():
            return None
        return thumbnail_png(info.image_path)


def make_handler(app: DashboardApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "gsal-dashboard"
        sys_version = ""

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: debug log instead of stderr
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: bytes, ctype: str, *, cache: str = "no-store") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _html(self, code: int, text: str) -> None:
            self._send(code, text.encode("utf-8"), "text/html; charset=utf-8")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            try:
                if url.path == "/":
                    self._html(200, app.page())
                elif url.path == "/api/status":
                    body = json.dumps(app.status(), indent=1, allow_nan=False).encode("utf-8")
                    self._send(200, body, "application/json")
                elif url.path == "/thumbnail":
                    keys = parse_qs(url.query).get("key", [])
                    png = app.thumbnail(keys[0]) if len(keys) == 1 else None
                    if png is None:
                        self._send(404, b"no such stored slice\n", "text/plain; charset=utf-8")
                    else:
                        self._send(200, png, "image/png", cache="private, max-age=300")
                elif url.path == "/favicon.ico":
                    self._send(204, b"", "image/x-icon", cache="private, max-age=86400")
                elif url.path == "/static/dashboard.css":
                    self._send(200, app.css, "text/css; charset=utf-8", cache="private, max-age=300")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")
            except GSALError as e:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e), url.path)
            except Exception:
                log.exception("dashboard: %s failed", url.path)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the trainer's log)", url.path)

        do_HEAD = do_GET

        def _error(self, code: int, message: str, path: str) -> None:
            if path == "/api/status":
                self._send(code, json.dumps({"error": message}).encode(), "application/json")
            else:
                self._html(code, app.error_page(message))

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # read-only

    return Handler


@dataclass
class RunningDashboard:
    server: ThreadingHTTPServer
    thread: threading.Thread
    app: DashboardApp

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.app.close()


def start_dashboard(store_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                    graph: str | ConceptGraph | None = None, label_mode: str | None = None,
                    refresh_s: int = 30) -> RunningDashboard:
    """Serve the dashboard of ``store_dir`` on host:port (0 = a free port) in a daemon thread."""
    app = DashboardApp(store_dir, graph=graph, label_mode=label_mode, refresh_s=refresh_s)
    try:
        server = ThreadingHTTPServer((host, port), make_handler(app))
    except OSError as e:
        raise DashboardError(f"dashboard: cannot bind {host}:{port} ({e.strerror or e})") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    log.info("dashboard on http://%s:%d/ (store %s, read-only)", host, server.server_address[1], store_dir)
    return RunningDashboard(server, thread, app)
