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
) -> None:
    """Run the Trainer gRPC service (client-streaming Ingest) until SIGINT/SIGTERM."""
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
    serve_forever(store, cfg, credentials=creds, port_file=port_file)


# ------------------------------------------------------------------------------------------ status / backup / audit


@app.command("status")
def status(
    store: Path = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    label_mode: str = typer.Option("typed", "--label-mode", help="Coverage counts: typed or binary."),
) -> None:
    """Pool, labels, rounds, bundles, stations and the audit log's integrity."""
    from trainer.rounds import store_status

    s = _open(store)
    try:
        st = store_status(s, label_mode=label_mode)
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


# ------------------------------------------------------------------------------------------ deploy / retrain


def _access(insecure: bool, ca: Path | None, cert: Path | None, key: Path | None,
            admin_token_file: Path | None, server_name: str | None):
    from trainer.deploy import StationAccess

    token = None
    if admin_token_file is not None:
        from gsal_wire.security import SecurityError, read_secret_file

        try:
            token = read_secret_file(admin_token_file, "--admin-token-file")
        except SecurityError as e:
            _fail(str(e))
    return StationAccess(insecure=insecure, ca=ca, client_cert=cert, client_key=key, admin_token=token,
                         server_name=server_name)


_stations = client_tls_options("the stations", prefix="stations-", cert_prefix="")
StInsecure, StCa, StCert, StKey, StName = (_stations.insecure, _stations.ca, _stations.client_cert,
                                           _stations.client_key, _stations.server_name)
StToken = typer.Option(None, "--admin-token-file", help="File with the stations' LoadBundle admin token.")


@app.command("deploy")
def deploy_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (or a bundles folder with LATEST)."),
    store: Path = StoreOpt,
    push: bool = typer.Option(True, "--push/--no-push", help="Send LoadBundle to the registered stations."),
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, admin_token_file: Path | None = StToken,
    server_name: str | None = StName,
) -> None:
    """Deploy a bundle to the registered stations and make it the serving one (e.g. the first bundle)."""
    from trainer.deploy import bundle_identity, deploy

    access = _access(stations_insecure, stations_ca, client_cert, client_key, admin_token_file, server_name)
    _deploy_in(store, lambda s: deploy(s, *bundle_identity(bundle), access, push=push))


def _deploy_in(store: Path, run) -> None:
    """Open the store, run one deploy or rollback in it, print the report (a DeployError: exit 1)."""
    from trainer.deploy import DeployError

    s = _open(store)
    try:
        rep = run(s)
    except DeployError as e:
        _fail(str(e), 1)
    finally:
        s.close()
    _print_deploy(rep)


def _print_deploy(rep) -> None:
    typer.echo(f"serving {rep.bundle_id} (replaced {rep.replaced})")
    for sid, r in rep.stations.items():
        typer.echo(f"  {sid}: {'ok' if r['ok'] else 'FAILED ' + str(r.get('code')) + ' ' + str(r.get('error'))}")
    if rep.failed:
        raise typer.Exit(code=1)


@app.command("rollback")
def rollback_cmd(
    store: Path = StoreOpt,
    push: bool = typer.Option(True, "--push/--no-push", help="Send LoadBundle to the registered stations."),
    stations_insecure: bool = StInsecure, stations_ca: Path | None = StCa, client_cert: Path | None = StCert,
    client_key: Path | None = StKey, admin_token_file: Path | None = StToken,
    server_name: str | None = StName,
) -> None:
    """Re-deploy the previous bundle; the current one is retired."""
    from trainer.deploy import rollback

    access = _access(stations_insecure, stations_ca, client_cert, client_key, admin_token_file, server_name)
    _deploy_in(store, lambda s: rollback(s, access, push=push))


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
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
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
                          signing_key=signing_key, models_dir=models, deploy=do_deploy, progress=True)
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


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=os.environ.get("GSAL_LOG", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()
