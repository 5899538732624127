"""`gsal-edge trainer ...`: the trainer node's commands (also `python -m trainer.cli ...`).

Every command works on one store (``--store``, default ``$GSAL_TRAINER_STORE`` or ``artifacts/trainer``):
a directory with ``pool.sqlite``, ``images/``, ``audit.jsonl``, ``bundles/``, or
``postgresql://user@host:port/db[?files=DIR]`` (the tables in PostgreSQL, the files in DIR; see
``trainer.store.location``). Heavy imports (gRPC, torch) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from gsal_wire.cli_options import CLIENT_CA, TLS_CERT, TLS_KEY, client_tls_options

app = typer.Typer(
    name="trainer",
    help="Trainer node: ingest score records, select rounds, annotation round trip, retrain and deploy.",
    no_args_is_help=True,
    add_completion=False,
)
log = logging.getLogger("trainer")

DEFAULT_STORE = os.environ.get("GSAL_TRAINER_STORE", "artifacts/trainer")
# The value stays a string (a PostgreSQL URL is no path): commands get the spec as given, whatever their
# annotation says, and hand it to _open / trainer.store.location.
StoreOpt = typer.Option(
    DEFAULT_STORE, "--store", parser=str, metavar="DIR|URL",
    help="Trainer store: a directory (pool.sqlite, images/, ...), sqlite://DIR, or "
         "postgresql://user@host:port/db[?files=DIR] (tables in PostgreSQL, files in DIR; see docs/postgresql.md).",
)


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=code)


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _open(store: str | Path):
    """The store a --store value names (exit 2 with the reason if it cannot be opened)."""
    from gsal_edge.errors import GSALError
    from trainer.store import open_store

    try:
        return open_store(store)
    except GSALError as e:
        _fail(str(e))


# ------------------------------------------------------------------------------------------ serve

# the trainer's connections to its stations for periodic health checks (`serve --health-interval`)
_health = client_tls_options("the stations (health checks)", prefix="stations-", cert_prefix="stations-")
StTokenFile = typer.Option(None, "--token-file", help="File with the stations' scoring token (GetModelInfo, "
                           "canary probe scoring), when they require one.")


@app.command("serve")
def serve(
    store: Path = StoreOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 unless you mean to expose it)."),
    port: int = typer.Option(50061, "--port", help="Port (0 = pick a free one; see --port-file)."),
    port_file: Path | None = typer.Option(None, "--port-file", help="Write the bound port here once serving."),
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    client_ca: Path | None = CLIENT_CA,
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext gRPC (tests, loopback demos only)."),
    batch_items: int = typer.Option(128, "--batch-items", help="Commit every N ingested items."),
    workers: int = typer.Option(8, "--workers", help="Concurrent Ingest streams."),
    health_interval: float = typer.Option(0.0, "--health-interval", min=0.0, help="Seconds between health "
                                          "checks of the registered stations (0 = off; see `trainer stations`)."),
    health_insecure: bool = _health.insecure, health_ca: Path | None = _health.ca,
    health_cert: Path | None = _health.client_cert, health_key: Path | None = _health.client_key,
    health_server_name: str | None = _health.server_name, health_token_file: Path | None = StTokenFile,
    ingest_graph: str = typer.Option(
        "thin_film_ct", "--graph", help="Concept graph every ingested record must fit (its concepts and "
        "similarity keys are fine nodes); others are rejected and put aside in quarantine.jsonl. 'none' = no check."),
    dashboard_port: int | None = typer.Option(
        None, "--dashboard-port", help="Also serve the read-only browser dashboard on this port (0 = a free one)."),
    dashboard_host: str = typer.Option("127.0.0.1", "--dashboard-host", help="Address the dashboard binds."),
    dashboard_port_file: Path | None = typer.Option(
        None, "--dashboard-port-file", help="Write the dashboard's bound port here once serving."),
) -> None:
    """Run the Trainer gRPC service (client-streaming Ingest) until SIGINT/SIGTERM.

    Image references (SliceRef) are accepted only under the stations' roots (`trainer ref-roots`).
    """
    from trainer.ingest_service import IngestConfig, serve_forever

    creds = None
    if insecure:
        if tls_cert or tls_key:
            _fail("--insecure and --tls-cert/--tls-key are exclusive")
        log.warning("trainer serving WITHOUT TLS (--insecure): use only on loopback or a trusted network")
    else:
        if not (tls_cert and tls_key):
            _fail("give --tls-cert and --tls-key (add --client-ca for mutual TLS), or --insecure explicitly")
        from gsal_wire.cli_options import server_tls
        from gsal_wire.security import server_credentials

        tls = server_tls(tls_cert, tls_key, client_ca, require_client_cert=client_ca is not None)
        creds = server_credentials(tls)
    cfg = IngestConfig(host=host, port=port, batch_items=batch_items, max_workers=workers)
    graph_obj = None
    if ingest_graph.lower() != "none":
        from gsal_edge.acquisition.concept_graph import load_graph
        from gsal_edge.errors import GSALError

        try:
            graph_obj = load_graph(ingest_graph)
        except GSALError as e:
            _fail(str(e))
    monitor = None
    if health_interval > 0:
        from trainer.fleet import HealthMonitor

        access = _access(health_insecure, health_ca, health_cert, health_key, None, health_server_name,
                         health_token_file)
        monitor = HealthMonitor(store, access, health_interval).start()
    dash = None
    if dashboard_port is not None:
        dash = _start_dashboard(store, dashboard_host, dashboard_port, dashboard_port_file, None, None)
    try:
        serve_forever(store, cfg, credentials=creds, port_file=port_file, graph=graph_obj)
    finally:
        if dash is not None:
            dash.stop()
        if monitor is not None:
            monitor.stop()


# ------------------------------------------------------------------------------------------ dashboard


def _start_dashboard(store: Path, host: str, port: int, port_file: Path | None, graph: str | None,
                     label_mode: str | None):
    """Start the read-only dashboard thread (see trainer.dashboard); a bad option or port exits 2."""
    from gsal_edge.errors import GSALError
    from trainer.dashboard.server import start_dashboard
    from trainer.images import atomic_write

    try:
        dash = start_dashboard(store, host=host, port=port, graph=graph, label_mode=label_mode)
    except GSALError as e:
        _fail(str(e))
    if port_file:
        atomic_write(Path(port_file), f"{dash.port}\n".encode())
    typer.echo(f"dashboard: {dash.url} (read-only; JSON at {dash.url}api/status)", err=True)
    return dash


@app.command("dashboard")
def dashboard_cmd(
    store: Path = StoreOpt,
    port: int = typer.Option(8765, "--port", help="Port of the dashboard (0 = pick a free one; see --port-file)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 unless you mean to expose it)."),
    port_file: Path | None = typer.Option(None, "--port-file", help="Write the bound port here once serving."),
    graph: str | None = typer.Option(None, "--graph", help="Concept graph for coverage (default: the latest round's)."),
    label_mode: str | None = typer.Option(
        None, "--label-mode", help="Coverage counts: typed or binary (default: the latest round's)."),
) -> None:
    """Serve a read-only browser dashboard of a store (pool, stations, coverage, rounds, picks, audit)."""
    import signal
    import threading

    dash = _start_dashboard(store, host, port, port_file, graph, label_mode)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        dash.stop()


# ------------------------------------------------------------------------------------------ status / backup / audit


@app.command("status")
def status(
    store: Path = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    label_mode: str = typer.Option("typed", "--label-mode", help="Coverage counts: typed or binary."),
) -> None:
    """Pool, labels, rounds, bundles, stations and the audit log's integrity."""
    from trainer.quarantine import quarantine_summary
    from trainer.rounds import store_status

    s = _open(store)
    try:
        st = store_status(s, label_mode=label_mode)
        st["quarantine"] = quarantine_summary(s.root)
    finally:
        s.close()
    if as_json:
        _echo_json(st)
        return
    p = st["pool"]
    typer.echo(f"store {p['store']} (schema v{p['schema_version']}), current bundle {p['current_bundle']}")
    typer.echo(f"  stations {p['stations']}, slices {p['slices']}, records {p['records']} "
               f"({p['stale_records']} stale), unlabeled fresh {p['unlabeled_fresh']}")
    typer.echo(f"  labeled {p['labeled']} images / {p['label_boxes']} boxes; rounds {p['rounds']} "
               f"({p['open_rounds']} waiting for labels)")
    typer.echo(f"  coverage ({st['label_mode']}): {st['coverage'] or '{}'}")
    for b in st["bundles"]:
        typer.echo(f"  bundle {b['role']:>9}: {b['bundle_id']}  {b.get('metrics') or ''}")
    for r in st["rounds"][-5:]:
        typer.echo(f"  round {r['id']}: {r['strategy']} b={r['budget']} {r['n_labeled']}/{r['n_picks']} labeled "
                   f"({r['status']})")
    typer.echo(f"  audit log: {st['audit']}")
    q = st["quarantine"]
    typer.echo(f"  quarantine: {q['count']} item(s) put aside at ingest {q['by_kind'] or ''} ({q['file']})")


@app.command("backup")
def backup(
    out: Path = typer.Option(..., "--out", help="Backup database file to write."),
    store: Path = StoreOpt,
    images: Path | None = typer.Option(None, "--images", help="Also copy missing image files into this folder."),
) -> None:
    """Online, consistent copy of pool.sqlite (sqlite3 backup API) while the trainer keeps serving (SQLite only)."""
    s = _open(store)
    try:
        info = s.backup(out, images_dir=images)
    finally:
        s.close()
    typer.echo(f"backup {info['database']}: {info['bytes']} bytes, {info['images_copied']} image file(s) copied")


@app.command("audit")
def audit(
    store: Path = StoreOpt,
    repair_torn_tail: bool = typer.Option(False, "--repair-torn-tail", help="Cut a torn last line (crash)."),
) -> None:
    """Verify the hash chain of audit.jsonl (exit 1 naming the first broken line)."""
    from trainer.audit_log import AuditError, AuditLog
    from trainer.store.location import parse_store
    from trainer.store.types import StoreError

    try:
        loc = parse_store(store)
    except StoreError as e:
        _fail(str(e))
    logf = AuditLog(loc.files / "audit.jsonl")
    if repair_torn_tail:
        try:
            before = logf.truncate_to_intact()
        except AuditError as e:
            _fail(str(e), 1)
        typer.echo(f"before repair: {before}")
    res = logf.verify()
    typer.echo(f"{logf.path}: {res}")
    unlogged: list[int] = []
    if loc.backend != "sqlite" or (loc.files / "pool.sqlite").exists():
        from trainer.rounds import audit_entry_hashes

        s = _open(store)
        try:
            logged = set(audit_entry_hashes(logf.path))
            unlogged = [r["id"] for r in s.rounds() if r["audit_hash"] not in logged]
        finally:
            s.close()
        if unlogged:
            typer.echo(f"rounds whose recorded audit hash matches no entry of the log: {unlogged}")
    if not res.ok or unlogged:
        raise typer.Exit(code=1)


@app.command("register-station")
def register_station(
    station: str = typer.Argument(..., help="Station id (as its records' model.station)."),
    address: str = typer.Option(..., "--address", help="host:port of the station's Scorer (deploy target)."),
    store: Path = StoreOpt,
) -> None:
    """Register a station so `retrain`/`rollback` deploy bundles to it with LoadBundle."""
    s = _open(store)
    try:
        s.register_station(station, address)
    finally:
        s.close()
    typer.echo(f"station {station} at {address} registered")


# ------------------------------------------------------------------------------------------ image reference roots


@app.command("ref-roots")
def ref_roots_cmd(
    store: Path = StoreOpt,
    add: list[str] | None = typer.Option(None, "--add", help="STATION=ROOT: let STATION send references under "
                                         "ROOT (an absolute directory or an https://host/prefix/ URL); repeatable."),
    remove: list[str] | None = typer.Option(None, "--remove", help="STATION=ROOT to withdraw; repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show or change which storage each station may reference (SliceRef); without a root, refs are refused."""
    from trainer.ref_policy import RefPolicy, RefRefused

    s = _open(store)  # the store's files directory holds ref_roots.json (whatever backend holds the tables)
    root = s.root
    s.close()
    try:
        policy = RefPolicy.load(root)
        for spec, change in [(a, "add") for a in add or []] + [(r, "remove") for r in remove or []]:
            station, sep, where = spec.partition("=")
            if not sep or not station or not where:
                _fail(f"--{change} {spec!r}: give STATION=ROOT")
            policy = policy.with_root(station, where) if change == "add" else policy.without_root(station, where)
        if add or remove:
            policy.save(root)
    except RefRefused as e:
        _fail(str(e))
    if as_json:
        _echo_json({k: list(v) for k, v in policy.roots.items()})
        return
    if not policy.roots:
        typer.echo("no reference roots: every SliceRef is refused (stations must send pixels)")
    for station, roots in sorted(policy.roots.items()):
        typer.echo(f"{station}: {', '.join(roots)}")


# ------------------------------------------------------------------------------------------ rounds

GraphOpt = typer.Option("thin_film_ct", "--graph", help="Concept graph file or packaged name.")
ConfigOpt = typer.Option(None, "--config", help="GSAL config YAML (label_mode, weights, batch_aware, ...).")
SetOpt = typer.Option(None, "--set", help="Override a GSAL parameter: name=value (repeatable).")
BinaryClassOpt = typer.Option("defect", "--binary-class", help="The one label class in binary label mode.")


def _graph_and_config(graph: str, config: Path | None, sets: list[str] | None):
    from gsal_edge.acquisition.concept_graph import load_graph
    from gsal_edge.acquisition.config import GSALConfig
    from gsal_edge.errors import GSALError

    try:
        cfg = GSALConfig.from_yaml(config) if config else GSALConfig()
        cfg = cfg.with_overrides(list(sets or []))
        return load_graph(graph), cfg
    except GSALError as e:
        _fail(str(e))


@app.command("select")
def select(
    budget: int = typer.Option(..., "--budget", help="How many images to pick this round."),
    store: Path = StoreOpt,
    graph: str = GraphOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    strategy: str = typer.Option("gsal", "--strategy", help="gsal (default) or a baseline/ablation name."),
) -> None:
    """Fuse the unlabeled pool with the graph and coverage counts; write picks + rationale (DB + audit log)."""
    from gsal_edge.errors import GSALError
    from trainer.rounds import select_round

    g, cfg = _graph_and_config(graph, config, set_)
    s = _open(store)
    try:
        res = select_round(s, g, cfg, budget, strategy=strategy)
    except (GSALError, KeyError) as e:
        _fail(e.args[0] if isinstance(e, KeyError) and e.args else str(e))
    finally:
        s.close()
    typer.echo(f"round {res.round_id}: {len(res.picks)} picks from a pool of {res.pool_size} "
               f"(audit entry {res.audit_hash[:16]})")
    typer.echo(f"  coverage n(v): { {k: int(v) for k, v in res.counts.items()} }")
    asg = res.info.get("assigner")
    if asg:
        t = asg.get("temperature")
        typer.echo(f"  assigner {asg['kind']}: " + (asg["note"] if "note" in asg else
                   ", ".join(f"{c}={s}" for c, s in asg["sources"].items())
                   + (f"; fitted T = {t:.4g}" if t is not None else "; T not fitted")
                   + f"; {asg['reassigned']['reassigned']} proposal(s) re-assigned, "
                   f"{asg['reassigned']['without_embedding']} without embedding kept"))
    if res.info.get("skipped_records", {}).get("count"):
        sk = res.info["skipped_records"]
        typer.echo(f"  skipped {sk['count']} record(s) that do not fit the graph, e.g. {sk['examples'][:3]}", err=True)
    for p in res.picks:
        typer.echo(f"  {p['rank']:>3}. {p['image_id']}  A = {p['acquisition']:.4f}  {p['sentence']}")


@app.command("export-tasks")
def export_tasks(
    out: Path = typer.Option(..., "--out", help="Folder for images/, coco.json, label_studio_tasks.json, ..."),
    store: Path = StoreOpt,
    round_id: int | None = typer.Option(None, "--round", help="Round to export (default: the latest)."),
    graph: str = GraphOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    binary_class: str = BinaryClassOpt,
    image_url_prefix: str | None = typer.Option(
        None, "--image-url-prefix", help="Prefix of data.image in Label Studio tasks (default /data/local-files/?d=)."),
) -> None:
    """Export the selected images as COCO and Label Studio tasks with detector pre-annotations."""
    from gsal_edge.errors import GSALError
    from trainer.rounds import export_tasks as run

    g, cfg = _graph_and_config(graph, config, set_)
    s = _open(store)
    try:
        info = run(s, g, out, round_id=round_id, label_mode=cfg.label_mode, binary_class=binary_class,
                   image_url_prefix=image_url_prefix)
    except GSALError as e:
        _fail(str(e))
    finally:
        s.close()
    typer.echo(f"round {info['round']}: {info['images']} images, {info['predictions']} pre-annotations -> {out}")
    for sk in info.get("skipped", []):
        typer.echo(f"  skipped {sk['key']}: {sk['reason']}", err=True)


@app.command("import-labels")
def import_labels(
    labels: Path | None = typer.Argument(None, help="COCO file or Label Studio JSON export."),
    store: Path = StoreOpt,
    round_id: int | None = typer.Option(None, "--round", help="Round the labels belong to (default: latest)."),
    fmt: str | None = typer.Option(None, "--format", help="coco | label-studio (default: detected)."),
    simulate_annotator: Path | None = typer.Option(
        None, "--simulate-annotator", help="Ground-truth COCO: reveal the true labels of the selected images."),
    allow_unselected: bool = typer.Option(False, "--allow-unselected", help="Accept labels of pool images "
                                          "outside the round (e.g. a seed set); they must name the pool key."),
    graph: str = GraphOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    binary_class: str = BinaryClassOpt,
    concepts: str = typer.Option("auto", "--concepts", help="Binary label mode: how a box gets its fine "
                                 "concept: clip (serving bundle's CLIP on the box crop), proposals (best-overlapping "
                                 "stored proposal), auto (clip when a bundle is serving)."),
) -> None:
    """Validate finished labels completely, then store them in one transaction (nothing half-written)."""
    from gsal_edge.errors import GSALError
    from trainer.rounds import import_labels as run

    if (labels is None) == (simulate_annotator is None):
        _fail("give a labels file or --simulate-annotator GROUND_TRUTH (exactly one)")
    g, cfg = _graph_and_config(graph, config, set_)
    s = _open(store)
    try:
        rep = run(s, g, labels or simulate_annotator, round_id=round_id, fmt=fmt, label_mode=cfg.label_mode,
                  binary_class=binary_class, simulate=simulate_annotator is not None,
                  allow_unselected=allow_unselected, concepts=concepts)
    except GSALError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    typer.echo(f"{'seed set' if rep.round_id is None else f'round {rep.round_id}'}: imported {rep.images} images / {rep.boxes} boxes from {rep.source} "
               f"{rep.per_class}; {len(rep.pending)} selected image(s) still unlabeled")
    for line in rep.ignored[:10]:
        typer.echo(f"  ignored: {line}")


# ------------------------------------------------------------------------------------------ live Label Studio

LsUrlOpt = typer.Option(..., "--label-studio", help="Label Studio server URL, e.g. http://127.0.0.1:8080.")
LsTokenOpt = typer.Option(..., "--token-file", help="File holding your Label Studio API token "
                          "(Account & Settings -> Access Token).")
LsProjectOpt = typer.Option("GSAL Edge", "--project", help="Title of the Label Studio project (created if missing).")


def _label_studio(url: str, token_file: Path):
    from trainer.label_studio import LabelStudio, LabelStudioError, read_token

    try:
        return LabelStudio(url, read_token(token_file))
    except LabelStudioError as e:
        _fail(str(e), 1)


@app.command("push")
def push(
    label_studio: str = LsUrlOpt,
    token_file: Path = LsTokenOpt,
    project: str = LsProjectOpt,
    round_id: int | None = typer.Option(None, "--round", help="Round to push (default: the latest)."),
    store: Path = StoreOpt,
    graph: str = GraphOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    binary_class: str = BinaryClassOpt,
    min_score: float = typer.Option(0.0, "--min-score", help="Pre-annotate only proposals with this detector "
                                    "confidence or more."),
) -> None:
    """Create or update a Label Studio project with a round's picks: images, pre-annotations, rationale."""
    from gsal_edge.errors import GSALError
    from trainer.label_studio import push_round

    g, cfg = _graph_and_config(graph, config, set_)
    ls = _label_studio(label_studio, token_file)
    s = _open(store)
    try:
        rep = push_round(s, g, ls, round_id=round_id, project=project, mode=cfg.label_mode,
                         binary_class=binary_class, min_prediction_score=min_score, progress=True)
    except GSALError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    how = "created" if rep.project_created else ("labeling config updated" if rep.config_updated else "updated")
    typer.echo(f"round {rep.round_id} -> {rep.url}/projects/{rep.project_id} ({rep.project!r}, {how}): "
               f"{rep.tasks_created} new task(s), {rep.tasks_completed} completed, {rep.tasks_skipped} already "
               f"there, {rep.predictions} pre-annotation(s); classes {', '.join(rep.classes)}")


@app.command("pull")
def pull(
    label_studio: str = LsUrlOpt,
    token_file: Path = LsTokenOpt,
    project: str = LsProjectOpt,
    round_id: list[int] | None = typer.Option(None, "--round", help="Import only this round (repeatable; "
                                              "default: every round in the project)."),
    store: Path = StoreOpt,
    graph: str = GraphOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    binary_class: str = BinaryClassOpt,
    concepts: str = typer.Option("auto", "--concepts", help="Binary label mode: how a box gets its fine "
                                 "concept (clip, proposals, auto; as in import-labels)."),
) -> None:
    """Import the project's finished annotations, validated as a whole (nothing written on any problem)."""
    from gsal_edge.errors import GSALError
    from trainer.label_studio import pull as run

    g, cfg = _graph_and_config(graph, config, set_)
    ls = _label_studio(label_studio, token_file)
    s = _open(store)
    try:
        reports = run(s, g, ls, project=project, rounds=round_id or None, mode=cfg.label_mode,
                      binary_class=binary_class, concepts=concepts)
    except GSALError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    if not reports:
        typer.echo(f"{ls.url}: project {project!r} has no finished annotation yet")
    for rep in reports:
        typer.echo(f"round {rep.round_id}: imported {rep.images} images / {rep.boxes} boxes {rep.per_class}; "
                   f"{len(rep.pending)} selected image(s) still unlabeled")


# ------------------------------------------------------------------------------------------ deploy / retrain


def _access(insecure: bool, ca: Path | None, cert: Path | None, key: Path | None,
            admin_token_file: Path | None, server_name: str | None, token_file: Path | None = None,
            parallel: int | None = None):
    from gsal_wire.security import SecurityError, read_secret_file
    from trainer.deploy import StationAccess

    try:
        admin = read_secret_file(admin_token_file, "--admin-token-file") if admin_token_file else None
        token = read_secret_file(token_file, "--token-file") if token_file else None
    except SecurityError as e:
        _fail(str(e))
    extra = {"max_parallel": parallel} if parallel else {}
    return StationAccess(insecure=insecure, ca=ca, client_cert=cert, client_key=key, admin_token=admin,
                         server_name=server_name, token=token, **extra)


_stations = client_tls_options("the stations", prefix="stations-", cert_prefix="")
StInsecure, StCa, StCert, StKey, StName = (_stations.insecure, _stations.ca, _stations.client_cert,
                                           _stations.client_key, _stations.server_name)
StToken = typer.Option(None, "--admin-token-file", help="File with the stations' LoadBundle admin token.")


StationsOpt = typer.Option(None, "--stations", help="Comma-separated station ids (default: every registered "
                          "station with an address; see `trainer stations`).")
ParallelOpt = typer.Option(16, "--parallel", min=1, help="Stations loading the bundle at the same time.")


@app.command("deploy")
def deploy_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (or a bundles folder with LATEST)."),
    store: Path = StoreOpt,
    push: bool = typer.Option(True, "--push/--no-push", help="Send LoadBundle to the registered stations."),
    stations: str | None = StationsOpt,
    canary: str | None = typer.Option(None, "--canary", help="Station id to deploy to first: it must come back "
                                      "SERVING the bundle with score drift <= --drift-max, else it is rolled "
                                      "back and no other station is touched."),
    drift_max: float = typer.Option(0.5, "--drift-max", min=0.0, max=2.0, help="Canary gate: largest allowed "
                                    "1 - Spearman rho of the probe slices' D_img, old vs new bundle (0..2)."),
    no_drift_gate: bool = typer.Option(False, "--health-only", help="Canary: gate on health only (no probe "
                                       "scoring)."),
    probe_images: Path | None = typer.Option(None, "--probe-images", help="Canary probe slices from this folder "
                                             "(default: the last --probe-n slices the canary sent)."),
    probe_n: int = typer.Option(16, "--probe-n", min=3, help="Canary: number of probe slices."),
    healthy_timeout: float = typer.Option(60.0, "--healthy-timeout", min=0.0, help="Canary: seconds to come back "
                                          "SERVING the new bundle."),
    parallel: int = ParallelOpt,
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, admin_token_file: Path | None = StToken,
    server_name: str | None = StName, token_file: Path | None = StTokenFile,
) -> None:
    """Deploy a bundle to the registered stations (all, or --stations; --canary first) and make it serving."""
    from trainer.canary import CanaryOptions
    from trainer.deploy import bundle_identity, deploy
    from trainer.fleet import parse_station_list

    access = _access(stations_insecure, stations_ca, client_cert, client_key, admin_token_file, server_name,
                     token_file, parallel)
    names = parse_station_list(stations)
    copts = None
    if (canary or names) and not push:
        _fail("--canary and --stations send LoadBundle; they do not go with --no-push")
    if canary:
        copts = CanaryOptions(station=canary, drift_max=None if no_drift_gate else drift_max,
                              probe_images=probe_images, probe_n=probe_n, healthy_timeout_s=healthy_timeout)
    elif probe_images is not None or no_drift_gate:
        _fail("--probe-images and --health-only go with --canary ID")
    _deploy_in(store, lambda s: deploy(s, *bundle_identity(bundle), access, push=push, stations=names,
                                       canary=copts, progress=True))


def _deploy_in(store: Path, run) -> None:
    """Open the store, run one deploy or rollback in it, print the report (a DeployError: exit 1)."""
    from gsal_edge.errors import GSALError
    from trainer.deploy import DeployError

    s = _open(store)
    try:
        rep = run(s)
    except DeployError as e:
        if e.report is not None:
            _print_stations(e.report)
        _fail(str(e), 1)
    except GSALError as e:  # a bad station list, an unusable canary probe set
        _fail(str(e))
    finally:
        s.close()
    _print_deploy(rep)


def _print_stations(rep) -> None:
    for sid, r in rep.stations.items():
        status = r.get("status", "ok" if r.get("ok") else "failed")
        if status == "ok":
            line = f"ok ({r.get('deploy_s', '?')}s: load {r.get('load_s')}s, warm-up {r.get('warmup_s')}s)"
        elif status == "skipped":
            line = f"skipped: {r.get('reason')}"
        else:
            line = f"FAILED {r.get('code') or ''} {r.get('reason') or r.get('error')}".replace("  ", " ")
        typer.echo(f"  {sid}: {line}")
    if rep.canary:
        c = rep.canary
        typer.echo(f"  canary {c['station']}: {'passed' if c['passed'] else 'FAILED'} ({c.get('reason')})")


def _print_deploy(rep) -> None:
    typer.echo(f"serving {rep.bundle_id} (replaced {rep.replaced}) in {rep.seconds:.2f}s")
    _print_stations(rep)
    if rep.failed:
        raise typer.Exit(code=1)


@app.command("rollback")
def rollback_cmd(
    store: Path = StoreOpt,
    push: bool = typer.Option(True, "--push/--no-push", help="Send LoadBundle to the registered stations."),
    stations: str | None = StationsOpt,
    parallel: int = ParallelOpt,
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, admin_token_file: Path | None = StToken,
    server_name: str | None = StName, token_file: Path | None = StTokenFile,
) -> None:
    """Re-deploy the previous bundle on every station serving the current one; the current one is retired."""
    from trainer.deploy import rollback
    from trainer.fleet import parse_station_list

    access = _access(stations_insecure, stations_ca, client_cert, client_key, admin_token_file, server_name,
                     token_file, parallel)
    _deploy_in(store, lambda s: rollback(s, access, push=push, stations=parse_station_list(stations),
                                         progress=True))


@app.command("stations")
def stations_cmd(
    store: Path = StoreOpt,
    check: bool = typer.Option(False, "--check", help="Health-check every station first (concurrently)."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds per station health check."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, server_name: str | None = StName, token_file: Path | None = StTokenFile,
) -> None:
    """The station registry: id, address, bundle, health and when each was last seen / checked."""
    import time

    from trainer.fleet import check_fleet

    s = _open(store)
    try:
        if check:
            access = _access(stations_insecure, stations_ca, client_cert, client_key, None, server_name,
                             token_file)
            check_fleet(s, access, timeout_s=timeout)
        rows = s.stations()
    finally:
        s.close()
    if as_json:
        _echo_json(rows)
        return
    now = time.time()
    ago = lambda t: "never" if t is None else f"{now - t:.0f}s ago"
    typer.echo(f"{len(rows)} station(s)")
    for r in rows:
        typer.echo(f"  {r['station_id']:<16} {r.get('address') or '(no address)':<22} {r.get('bundle_id') or '-'}")
        typer.echo(f"      health {r.get('health') or 'unchecked'} ({r.get('health_detail') or '-'}, checked "
                   f"{ago(r.get('health_checked_at'))}); last seen {ago(r.get('last_seen'))}")
    if check and any(r.get("health") != "serving" for r in rows if r.get("address")):
        raise typer.Exit(code=1)


@app.command("rescore")
def rescore_cmd(
    station: str = typer.Option(..., "--station-address", help="host:port of a station serving the current bundle."),
    store: Path = StoreOpt,
    limit: int | None = typer.Option(None, "--limit", help="At most this many slices."),
    token_file: Path | None = typer.Option(None, "--token-file", help="The station's scoring token."),
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, server_name: str | None = StName,
) -> None:
    """Re-score stale slices (records of a non-current bundle) through a station, so they are selectable again."""
    from trainer.deploy import DeployError, rescore_stale

    access = _access(stations_insecure, stations_ca, client_cert, client_key, None, server_name)
    token = None
    if token_file is not None:
        from gsal_wire.security import read_secret_file

        token = read_secret_file(token_file, "--token-file")
    s = _open(store)
    try:
        res = rescore_stale(s, station, access, token=token, limit=limit)
    except DeployError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    typer.echo(f"rescored {res['rescored']} slice(s), {res['failed']} failed, {res['remaining_stale']} still stale")


@app.command("retrain")
def retrain_cmd(
    val: Path = typer.Option(..., "--val", help="Fixed validation split (COCO/VOC/YOLO), never in the pool."),
    store: Path = StoreOpt,
    warm_start: bool = typer.Option(False, "--warm-start/--from-scratch", help="Initialise from the serving weights."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default: the detector config's)."),
    max_iters: int | None = typer.Option(None, "--max-iters", min=1, help="Stop after this many iterations."),
    seed: int = typer.Option(0, "--seed"),
    metric: str = typer.Option("f1", "--metric", help="Gate metric: f1, map50 or ap."),
    tolerance: float = typer.Option(0.0, "--tolerance", min=0.0, help="Deploy if new >= serving - tolerance."),
    models: Path | None = typer.Option(None, "--models", help="Sources folder instead of the serving bundle's."),
    export_config: Path | None = typer.Option(None, "--export-config", help="Export config YAML."),
    signing_key: Path | None = typer.Option(None, "--signing-key", help="ed25519 private key to sign the bundle."),
    do_deploy: bool = typer.Option(True, "--deploy/--no-deploy", help="Deploy when the gate passes."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (per process with torchrun)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Training processes: > 1 trains data-parallel (DDP, "
                              "torchrun; gloo on CPU, nccl on GPU) with the same global batch."),
    launcher: str = typer.Option("auto", "--launcher", help="auto (torchrun when --nproc > 1), inprocess or "
                                 "torchrun (also for --nproc 1)."),
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, admin_token_file: Path | None = StToken,
    server_name: str | None = StName,
) -> None:
    """Retrain on all labels, gate on the validation split, export a bundle and deploy it if not worse."""
    from gsal_edge.errors import GSALError
    from trainer.retrain import RetrainOptions, retrain

    if threads:
        import torch

        torch.set_num_threads(threads)
    access = _access(stations_insecure, stations_ca, client_cert, client_key, admin_token_file, server_name)
    opts = RetrainOptions(val=val, warm_start=warm_start, epochs=epochs, seed=seed, metric=metric,
                          tolerance=tolerance, max_iters=max_iters, export_config=export_config,
                          signing_key=signing_key, models_dir=models, deploy=do_deploy, progress=True,
                          nproc=nproc, launcher=launcher, threads=threads)
    s = _open(store)
    try:
        rep = retrain(s, opts, access, say=typer.echo)
    except GSALError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    typer.echo(rep.gate.sentence())
    for n in rep.notes:
        typer.echo(f"  {n}")
    if rep.deploy is not None:
        _print_deploy(rep.deploy)
    elif not rep.gate.passed:
        typer.echo("  not deployed; the serving bundle stays")



# ------------------------------------------------------------------------------------------ export-fiftyone


@app.command("export-fiftyone")
def export_fiftyone(
    out: Path = typer.Option(..., "--out", help="Folder to write (data/, metadata.json, samples.json); load it with "
                             "fo.Dataset.from_dir(OUT, dataset_type=fo.types.FiftyOneDataset)."),
    store: Path = StoreOpt,
    round_id: int | None = typer.Option(None, "--round", help="Round to export (default: the latest)."),
    graph: str = GraphOpt,
) -> None:
    """Export a round as a FiftyOne dataset: pool, picks, ground truth, proposals with concept and D(p),
    A(x) and the rationale as sample fields (docs/fiftyone.md)."""
    from tqdm import tqdm

    from gsal_edge.acquisition.concept_graph import load_graph
    from gsal_edge.errors import GSALError
    from trainer.fiftyone_export import export_fiftyone as run

    try:
        g = load_graph(graph)
    except GSALError as e:
        _fail(str(e))
    s = _open(store)
    try:
        with tqdm(desc="export-fiftyone", unit="sample", file=sys.stderr) as bar:
            info = run(s, g, out, round_id=round_id, progress=bar.update)
    except GSALError as e:
        _fail(str(e))
    finally:
        s.close()
    typer.echo(f"round {info['round']}: {info['samples']} samples ({info['pool']} in the round's pool, "
               f"{info['picks']} picks, {info['labeled']} labeled) -> {out}")
    if info["skipped"]:
        typer.echo(f"  left out {len(info['skipped'])} slice(s) without a local image: {info['skipped'][:5]}")


# ------------------------------------------------------------------------------------------ backfill


@app.command("backfill")
def backfill_cmd(
    images: str = typer.Option(..., "--images", help="Archive folder (or file:// URI) of .png/.tif/.tiff/.npy "
                               "slices; slice ids are the paths relative to it."),
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (or a bundles folder with LATEST)."),
    store: Path = StoreOpt,
    station: str = typer.Option("backfill", "--station", help="Station id the records are stored under."),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", help="ed25519 public key(s) the bundle must be "
                                           "signed by (repeatable)."),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Accept a bundle without a signature."),
    ray_address: str = typer.Option("local", "--ray-address", help="local (start a Ray instance here), auto (the "
                                    "running cluster), ray://head:10001, or none (in-process, no Ray)."),
    workers: int = typer.Option(2, "--workers", min=0, help="Ray actors, one scorer each (0 = in-process)."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", min=1, help="CPUs (= ONNX Runtime threads) "
                                        "each Ray actor reserves."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs each Ray actor reserves "
                                          "(1 = one scorer per GPU; use with --backend tensorrt or torch)."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, help="CPUs of a local Ray instance "
                                        "(default workers x cpus-per-worker)."),
    object_store_mb: int = typer.Option(200, "--object-store-mb", min=75, help="Object store of a local Ray "
                                        "instance (MiB)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | tensorrt | torch"),
    device: str = typer.Option("cpu", "--device", help="In-process: cpu or cuda:N (a Ray actor with "
                               "--gpus-per-worker uses the GPU Ray gives it)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="In-process: ONNX Runtime intra-op "
                                       "threads (default: its own)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices per scorer call."),
    ingest_batch: int = typer.Option(64, "--ingest-batch", min=1, help="Records per store commit."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Take at most this many not-yet-stored slices."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Also look in sub-folders."),
    line: str | None = typer.Option(None, "--line", help="meta.line for every record."),
    part: str | None = typer.Option(None, "--part", help="meta.part for every record."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's counts as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Score an archive with a bundle (Ray workers or in-process) into the pool; resumable, idempotent."""
    from trainer.backfill import BackfillConfig, BackfillError, run_backfill

    cfg = BackfillConfig(
        images=images, bundle=str(bundle), station=station, trusted_keys=tuple(str(k) for k in trusted_key),
        allow_unsigned=allow_unsigned, recursive=recursive, limit=limit,
        meta={k: v for k, v in (("line", line), ("part", part)) if v}, batch_size=batch_size,
        ingest_batch=ingest_batch, ray_address=ray_address, workers=workers, cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker, num_cpus=num_cpus, object_store_mb=object_store_mb, backend=backend,
        device=device, threads=threads,
    )
    s = _open(store)
    try:
        rep = run_backfill(cfg, s, progress=progress)
    except BackfillError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    if as_json:
        from dataclasses import asdict

        _echo_json({**asdict(rep), "failed": rep.failed, "slices_per_s": rep.slices_per_s})
    else:
        typer.echo(rep.summary())
        for sid, why in rep.failures[:20]:
            typer.echo(f"  not scored: {sid}: {why}", err=True)
    if rep.failed:
        raise typer.Exit(code=1)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=os.environ.get("GSAL_LOG", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()
