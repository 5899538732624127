"""``gsal-edge serve`` (the station scorer) and its clients ``score``, ``info``, ``load-bundle``.

Each command is a plain function so ``gsal_cli/main.py`` can mount it directly
(``app.command("serve")(serve)``) or mount the whole ``app``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import typer

from gsal_wire.cli_options import CLIENT_CA, REQUIRE_CLIENT_CERT, TLS_CERT, TLS_KEY, client_tls_options

log = logging.getLogger("gsal.server")

app = typer.Typer(help="Station scorer: gRPC server and client.", no_args_is_help=True, add_completion=False)

_station = client_tls_options("the station")
_trainer = client_tls_options("the trainer", prefix="trainer-")


def _fail(msg: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {msg}", err=True, fg="red")
    return typer.Exit(code)


@app.command("serve")
def serve(
    bundle: str | None = typer.Option(None, "--bundle", help="bundle directory to serve (or load later with load-bundle)"),
    watch_bundles: Path | None = typer.Option(
        None, "--watch-bundles", help="bundles folder to follow: whenever its LATEST names another bundle, verify, "
        "warm up and hot-swap to it (as LoadBundle); a refused bundle is logged and the current one keeps serving"),
    watch_interval_s: float = typer.Option(5.0, "--watch-interval-s", min=0.05, help="seconds between polls of "
                                           "--watch-bundles"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind"),
    port: int = typer.Option(50051, "--port", help="gRPC port (0: a free one)"),
    station_id: str | None = typer.Option(None, "--station-id", help="written to record.model.station"),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | torch | tensorrt"),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", help="ed25519 public key(s) bundles must be signed by"),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="accept bundles without a signature"),
    allow_untrained: bool = typer.Option(False, "--allow-untrained",
                                         help="accept 'untrained:seed=N,size=N' specs (tests/benchmarks)"),
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    client_ca: Path | None = CLIENT_CA,
    require_client_cert: bool = REQUIRE_CLIENT_CERT,
    admin_token_file: Path | None = typer.Option(None, "--admin-token-file", help="bearer token for LoadBundle"),
    score_token_file: Path | None = typer.Option(None, "--score-token-file", help="bearer token for scoring"),
    insecure: bool = typer.Option(False, "--insecure", help="plaintext gRPC (no TLS); logs a warning"),
    max_batch: int = typer.Option(8, "--max-batch", help="most slices per scorer call"),
    max_delay_ms: float = typer.Option(5.0, "--max-delay-ms", help="longest wait for a batch to fill"),
    queue_size: int = typer.Option(256, "--queue-size", help="queued slices before RESOURCE_EXHAUSTED"),
    max_message_mb: int = typer.Option(65, "--max-message-mb", help="gRPC max message size (MiB)"),
    max_slice_mb: int = typer.Option(64, "--max-slice-mb", help="largest accepted slice payload (MiB)"),
    workers: int = typer.Option(32, "--workers", min=1, help="most scoring calls in flight (Score streams + "
                                "ScoreOne), all clients; beyond: RESOURCE_EXHAUSTED at once"),
    max_streams_per_peer: int = typer.Option(16, "--max-streams-per-peer", min=1, help="streams one client "
                                             "address may hold open (Score, reflection, health Watch)"),
    max_aux_streams: int = typer.Option(8, "--max-aux-streams", min=1, help="open non-scoring streams "
                                        "(reflection, health Watch), all clients"),
    stream_idle_timeout_s: float = typer.Option(30.0, "--stream-idle-timeout-s", min=0.01, help="end a Score "
                                                "stream (DEADLINE_EXCEEDED) that sent nothing and has nothing "
                                                "outstanding for this long"),
    min_side: int = typer.Option(8, "--min-side", min=1, help="shortest accepted slice side (pixels)"),
    max_aspect: float = typer.Option(64.0, "--max-aspect", min=1.0, help="largest accepted long side / short "
                                     "side of a slice (the detector's resize needs it bounded)"),
    overflow: str = typer.Option("reject", "--overflow", help="when the scoring queue is full: reject "
                                 "(RESOURCE_EXHAUSTED) or defer (store the slice in --data-dir, answer 'deferred', "
                                 "score it later with `station drain-deferred`)"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="the station's data folder (the deferred "
                                         "queue lives in DATA_DIR/deferred, the forwarder's spool in "
                                         "DATA_DIR/forward-spool); needed by --overflow defer"),
    deferred_max_items: int = typer.Option(100_000, "--deferred-max-items", min=1, help="deferred slices kept "
                                           "on disk; beyond: RESOURCE_EXHAUSTED"),
    deferred_max_gb: float = typer.Option(8.0, "--deferred-max-gb", min=0.001, help="deferred bytes kept on disk "
                                          "(GiB); beyond: RESOURCE_EXHAUSTED"),
    grace_s: float = typer.Option(10.0, "--grace-s", help="shutdown: seconds for in-flight work to drain"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Prometheus endpoint on 127.0.0.1"),
    threads: int | None = typer.Option(None, "--threads", help="intra-op threads for the engines (torch and ORT)"),
    trainer: str | None = typer.Option(None, "--trainer", help="trainer host:port: forward every scored slice + "
                                       "record to it (needs --station-id)"),
    trainer_insecure: bool = _trainer.insecure,
    trainer_ca: Path | None = _trainer.ca,
    trainer_client_cert: Path | None = _trainer.client_cert,
    trainer_client_key: Path | None = _trainer.client_key,
    trainer_server_name: str | None = _trainer.server_name,
    trainer_chunk: int = typer.Option(64, "--trainer-chunk", help="records per push"),
    trainer_max_delay_ms: float = typer.Option(1000.0, "--trainer-max-delay-ms",
                                               help="longest a record waits for its push chunk to fill"),
    trainer_queue: int = typer.Option(10_000, "--trainer-queue",
                                      help="unsent records kept while the trainer is down; beyond: dropped"),
    trainer_spool: bool | None = typer.Option(
        None, "--trainer-spool/--no-trainer-spool", help="keep unsent records on disk until the trainer acknowledged "
        "them and replay them at start (default: on when --data-dir or --trainer-spool-dir is given)"),
    trainer_spool_dir: Path | None = typer.Option(None, "--trainer-spool-dir", help="the forwarder's spool folder "
                                                  "(default DATA_DIR/forward-spool)"),
    trainer_spool_sync: str = typer.Option("normal", "--trainer-spool-sync", help="normal: the spool survives a "
                                           "crash or SIGKILL; full: also a power loss (fsync per commit)"),
    advertise_address: str | None = typer.Option(
        None, "--advertise-address", help="host:port the trainer dials to reach this station (deploys, health "
        "checks); told to the trainer with every forwarded record (default: the bound address)"),
    malloc_arena_max: int = typer.Option(
        2, "--malloc-arena-max", min=0, envvar="GSAL_MALLOC_ARENA_MAX", help="cap glibc malloc arenas of this "
        "process (keeps RSS flat under load, see server/malloc_arenas.py); 0: glibc default; an existing "
        "MALLOC_ARENA_MAX wins"),
) -> None:
    """Serve GSAL scoring over gRPC until SIGINT/SIGTERM, then drain and stop.

    With --trainer, scored slices and their records are pushed to the trainer in the background (retry with
    backoff while it is down; a queue of --trainer-queue records, spooled to disk with --data-dir and replayed
    at the next start; flushed on shutdown within --grace-s).
    """
    from server.malloc_arenas import limit_malloc_arenas

    arenas = limit_malloc_arenas(malloc_arena_max)  # first: before any thread of this process exists
    from pydantic import ValidationError

    from gsal_edge.errors import GSALError
    from gsal_wire.cli_options import server_tls
    from gsal_wire.security import SecurityError, read_secret_file
    from server.app import StationServer
    from server.config import MiB, ServerConfig, TrainerLink
    from server.station import SwapError, default_scorer_factory

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s", arenas)
    try:
        tls = server_tls(tls_cert, tls_key, client_ca, require_client_cert)
        link = None
        if trainer:
            if not station_id:
                raise _fail("--trainer needs --station-id (the trainer files records by station)")
            link = TrainerLink(
                address=trainer, station_id=station_id, insecure=trainer_insecure, ca=trainer_ca,
                client_cert=trainer_client_cert, client_key=trainer_client_key, server_name=trainer_server_name,
                chunk_size=trainer_chunk, max_delay_ms=trainer_max_delay_ms, queue_size=trainer_queue,
                advertise_address=advertise_address, spool=trainer_spool, spool_dir=trainer_spool_dir,
                spool_sync=trainer_spool_sync,
            )
        elif (trainer_insecure or trainer_ca or trainer_client_cert or trainer_client_key or trainer_server_name
              or advertise_address or trainer_spool is not None or trainer_spool_dir):
            raise _fail("--trainer-* options need --trainer ADDR")
        cfg = ServerConfig(
            host=host, port=port, station_id=station_id, max_batch_size=max_batch, max_queue_delay_ms=max_delay_ms,
            queue_size=queue_size, max_message_bytes=max_message_mb * MiB, max_slice_bytes=max_slice_mb * MiB,
            max_scoring_rpcs=workers, max_streams_per_peer=max_streams_per_peer, max_aux_streams=max_aux_streams,
            stream_idle_timeout_s=stream_idle_timeout_s, min_side=min_side, max_aspect=max_aspect,
            overflow=overflow, data_dir=data_dir, deferred_max_items=deferred_max_items,
            deferred_max_bytes=max(MiB, int(deferred_max_gb * 1024 * MiB)),
            grace_s=grace_s, tls=tls, insecure=insecure, metrics_port=metrics_port,
            admin_token=read_secret_file(admin_token_file, "--admin-token-file") if admin_token_file else None,
            score_token=read_secret_file(score_token_file, "--score-token-file") if score_token_file else None,
            trainer=link,
        )
    except ValidationError as e:
        raise _fail(_validation_text(e)) from None
    except GSALError as e:
        raise _fail(str(e)) from None
    if threads:
        import torch

        torch.set_num_threads(threads)
    factory = default_scorer_factory(
        backend=backend, trusted_keys=trusted_key, allow_unsigned=allow_unsigned,
        allow_untrained=allow_untrained, station=station_id or "", threads=threads,
    )
    try:
        srv = StationServer(cfg, factory)
    except SecurityError as e:
        raise _fail(f"--trainer: {e}") from None
    # the handlers go in before the server starts: a SIGTERM right after "serving bundle" (the line launchers
    # wait for) must drain and exit 0, not kill the process with the forwarder's spool half-flushed
    done = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining (up to %.1fs)", signum, cfg.grace_s)
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        srv.start()
    except (OSError, GSALError, RuntimeError) as e:
        raise _fail(f"cannot start: {e}") from None
    typer.echo(f"listening on {srv.address}" + (f", metrics on 127.0.0.1:{srv.metrics_port}" if srv.metrics_port else ""))
    if link is not None:
        typer.echo(f"forwarding scored slices to trainer {link.address} as {link.station_id}"
                   + (" (plaintext)" if link.insecure else ""))
    if bundle:
        try:
            res = srv.load_bundle(bundle)
        except SwapError as e:
            srv.stop(0)
            raise _fail(f"--bundle: {e}", 1) from None
        typer.echo(f"serving bundle {res.bundle_id} (load {res.load_seconds:.2f}s, warm-up {res.warmup_seconds:.2f}s)")
    watcher = None
    if watch_bundles is not None:
        from gsal_edge.scoring.bundle import BundleError, resolve_bundle_dir
        from server.bundle_watcher import BundleWatcher

        current = None
        if bundle:
            try:
                current = resolve_bundle_dir(bundle)
            except BundleError:
                current = None  # e.g. an 'untrained:' spec: the first poll loads LATEST
        watcher = BundleWatcher(watch_bundles, srv.load_bundle, watch_interval_s, current=current).start()
        typer.echo(f"following {watch_bundles}/LATEST every {watch_interval_s:g}s")
    while not done.wait(0.5):
        pass
    if watcher is not None:
        watcher.stop()
    srv.stop()


def _validation_text(e: Exception) -> str:
    """A pydantic error as ``field: message`` lines, never with the input (it holds the tokens)."""
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e)
    lines = []
    for err in errors(include_input=False, include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ())) or "config"
        lines.append(f"{loc}: {err.get('msg', '')}")
    return "; ".join(lines)


def _client(server: str, ca: Path | None, client_cert: Path | None, client_key: Path | None,
            token_file: Path | None, admin_token_file: Path | None, insecure: bool,
            server_name: str | None):  # type: ignore[no-untyped-def]
    from gsal_wire.scorer_client import ScorerClient
    from gsal_wire.security import SecurityError, read_secret_file

    try:
        return ScorerClient(
            server, ca=ca, client_cert=client_cert, client_key=client_key, insecure=insecure,
            token=read_secret_file(token_file, "--token-file") if token_file else None,
            admin_token=read_secret_file(admin_token_file, "--admin-token-file") if admin_token_file else None,
            server_name=server_name,
        )
    except SecurityError as e:
        raise _fail(str(e)) from None


_server_opt = typer.Option(..., "--server", help="host:port of the station")


@app.command("score")
def score(
    server: str | None = typer.Option(None, "--server", help="host:port of the station to stream the slices to "
                                      "(or --bundle: score in this process)"),
    bundle: str | None = typer.Option(None, "--bundle", help="score offline, in this process, with this bundle "
                                      "(a bundle folder or a bundles folder with LATEST), verified as a station "
                                      "verifies it; no server, no TLS"),
    images: Path = typer.Option(..., "--images", help="folder of .png / .tif / .tiff / .npy slices"),
    out: Path | None = typer.Option(None, "--out", help="write score records here (JSONL); stdout if absent"),
    ca: Path | None = _station.ca,
    client_cert: Path | None = _station.client_cert,
    client_key: Path | None = _station.client_key,
    token_file: Path | None = typer.Option(None, "--token-file", help="scoring bearer token"),
    insecure: bool = _station.insecure,
    server_name: str | None = _station.server_name,
    line: str | None = typer.Option(None, "--line", help="meta.line for every slice"),
    part: str | None = typer.Option(None, "--part", help="meta.part for every slice"),
    timeout_s: float | None = typer.Option(None, "--timeout-s", help="deadline for the whole stream"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="also look in sub-folders"),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", help="--bundle: ed25519 public key(s) the bundle "
                                           "must be signed by"),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="--bundle: accept a bundle without a "
                                        "signature (its file hashes are still checked)"),
    backend: str = typer.Option("onnxruntime", "--backend", help="--bundle: onnxruntime | torch | tensorrt"),
    threads: int | None = typer.Option(None, "--threads", help="--bundle: intra-op threads for the engines"),
    batch: int = typer.Option(8, "--batch", min=1, help="--bundle: slices per scorer call"),
    station_id: str | None = typer.Option(None, "--station-id", help="--bundle: written to record.model.station "
                                          "(as a station's --station-id)"),
    with_embeddings: bool = typer.Option(False, "--with-embeddings", help="--bundle: make sure each proposal's CLIP "
                                         "region embedding is in proposals[i].embedding (for `graph induce`; "
                                         "bundles attach it unless their spec sets proposal_embedding false)"),
) -> None:
    """Score every slice in IMAGES (ids = relative paths) through a station (--server) or in this process
    (--bundle); write the score records as JSON Lines. Offline records are byte-identical to a station's."""
    from gsal_edge.scoring.offline import list_slice_files

    if (server is None) == (bundle is None):
        raise _fail("give exactly one of --server (stream to a station) and --bundle (score in this process)")
    if not images.is_dir():
        raise _fail(f"--images: {images} is not a folder")
    files = list_slice_files(images, recursive)
    if not files:
        from gsal_edge.data.slices import SLICE_SUFFIXES

        raise _fail(f"--images: no {'/'.join(SLICE_SUFFIXES)} files in {images}")
    meta = {k: v for k, v in (("line", line), ("part", part)) if v}
    if bundle is not None:
        station_only = {"--ca": ca, "--client-cert": client_cert, "--client-key": client_key,
                        "--token-file": token_file, "--insecure": insecure, "--server-name": server_name,
                        "--timeout-s": timeout_s}
        given = [k for k, v in station_only.items() if v]
        if given:
            raise _fail(f"{', '.join(given)}: only with --server")
        _score_offline(bundle, images, files, out, meta, trusted_key, allow_unsigned, backend, threads, batch,
                       station_id, with_embeddings)
        return
    offline_only = {"--trusted-key": trusted_key, "--allow-unsigned": allow_unsigned, "--station-id": station_id,
                    "--with-embeddings": with_embeddings, "--threads": threads}
    given = [k for k, v in offline_only.items() if v]
    if given:
        raise _fail(f"{', '.join(given)}: only with --bundle")
    assert server is not None
    _score_station(server, images, files, out, meta, ca, client_cert, client_key, token_file, insecure, server_name,
                   timeout_s)


def _score_station(server: str, images: Path, files: list[Path], out: Path | None, meta: dict[str, str],
                   ca: Path | None, client_cert: Path | None, client_key: Path | None, token_file: Path | None,
                   insecure: bool, server_name: str | None, timeout_s: float | None) -> None:
    """``score --server``: stream the files to a station, write what it answers."""
    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from gsal_edge.acquisition.records import ScoreRecord
    from gsal_edge.data.slices import read_slice_file
    from gsal_edge.errors import GSALError
    from gsal_wire.convert import make_pb_slice
    from gsal_wire.pb import scorer_pb2
    from gsal_wire.scorer_client import ItemDeferred, ItemFailed, to_result

    client = _client(server, ca, client_cert, client_key, token_file, None, insecure, server_name)

    def requests():  # type: ignore[no-untyped-def]
        for p in files:
            sid = p.relative_to(images).as_posix()
            try:
                f = read_slice_file(str(p))
            except (GSALError, OSError, ValueError) as e:
                log.warning("%s: skipped (%s)", p, e)
                continue
            yield scorer_pb2.ScoreRequest(
                slice=make_pb_slice(sid, data=f.data, encoding=f.encoding, shape=f.shape, dtype=f.dtype, meta=meta)
            )

    fh = sys.stdout if out is None else out.with_suffix(out.suffix + ".tmp").open("w", encoding="utf-8")
    n_ok = n_err = n_deferred = 0
    t0 = time.perf_counter()
    try:
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                      TimeRemainingColumn(), console=Console(stderr=True)) as prog:
            task = prog.add_task("score", total=len(files), rate="")
            for resp in client.stream(requests(), timeout=timeout_s):
                res = to_result(resp)
                if isinstance(res, ItemFailed):
                    n_err += 1
                    prog.console.print(f"[red]{res.slice_id}: {res.code_name} ({res.field or '-'}) {res.message}")
                elif isinstance(res, ItemDeferred):
                    n_deferred += 1
                    prog.console.print(f"[yellow]{res.slice_id}: deferred ({res.reason})")
                else:
                    assert isinstance(res, ScoreRecord)
                    fh.write(res.to_json() + "\n")
                    n_ok += 1
                done = n_ok + n_err + n_deferred
                prog.update(task, advance=1, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.1f} slices/s")
    except grpc.RpcError as e:
        raise _fail(f"{server}: {e.code().name}: {e.details()}", 1) from None
    finally:
        client.close()
        if out is not None:
            fh.close()
    if out is not None:
        out.with_suffix(out.suffix + ".tmp").replace(out)
    if n_deferred:
        typer.echo(f"{n_deferred} slices deferred by the station (scored later by `station drain-deferred`)",
                   err=True)
    _summary(n_ok, n_err, len(files), time.perf_counter() - t0, out)


def _summary(n_ok: int, n_err: int, n_files: int, seconds: float, out: Path | None) -> None:
    typer.echo(f"{n_ok} records, {n_err} errors, {n_files} files in {seconds:.1f}s"
               + (f" -> {out}" if out else ""), err=True)
    if n_err:
        raise typer.Exit(1)


def _score_offline(bundle: str, images: Path, files: list[Path], out: Path | None, meta: dict[str, str],
                   trusted_key: list[Path], allow_unsigned: bool, backend: str, threads: int | None, batch: int,
                   station_id: str | None, with_embeddings: bool) -> None:
    """``score --bundle``: load and verify the bundle as a station does, score in this process."""
    from tqdm import tqdm

    from gsal_edge.data.slices import SliceError
    from gsal_edge.errors import GSALError
    from gsal_edge.scoring.offline import score_files
    from server.station import SwapError, default_scorer_factory

    if not trusted_key and not allow_unsigned:
        raise _fail("--bundle needs --trusted-key KEY (or --allow-unsigned), as a station does")
    if threads:
        import torch

        torch.set_num_threads(threads)
    factory = default_scorer_factory(backend=backend, trusted_keys=trusted_key, allow_unsigned=allow_unsigned,
                                     station=station_id or "", threads=threads)
    try:
        scorer = factory(bundle)
    except SwapError as e:
        raise _fail(f"--bundle: {e}", 1) from None
    except (GSALError, OSError, ValueError) as e:
        raise _fail(f"--bundle: {bundle!r} rejected: {type(e).__name__}: {e}", 1) from None
    typer.echo(f"scoring offline with bundle {scorer.bundle_id} ({backend})", err=True)
    fh = sys.stdout if out is None else out.with_suffix(out.suffix + ".tmp").open("w", encoding="utf-8")
    n_ok = n_err = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(files), desc="scoring", unit="slice", file=sys.stderr, dynamic_ncols=True)

    def skipped(p: Path, e: Exception) -> None:
        log.warning("%s: skipped (%s)", p, e)
        bar.update(1)

    try:
        for res in score_files(scorer, files, images, meta=meta, batch_size=batch, station_id=station_id,
                               with_embeddings=with_embeddings, on_skip=skipped):
            if res.record is None:
                n_err += 1
                e = res.error
                code, field = ("INVALID_ARGUMENT", e.field) if isinstance(e, SliceError) else ("INTERNAL", "-")
                bar.write(f"{res.slice_id}: {code} ({field}) {e}", file=sys.stderr)
            elif res.proposal_embeddings is None:
                fh.write(res.record.to_json() + "\n")
                n_ok += 1
            else:
                fh.write(_with_proposal_embeddings(res.record, res.proposal_embeddings) + "\n")
                n_ok += 1
            bar.update(1)
    finally:
        bar.close()
        if out is not None:
            fh.close()
    if out is not None:
        out.with_suffix(out.suffix + ".tmp").replace(out)
    _summary(n_ok, n_err, len(files), time.perf_counter() - t0, out)


def _with_proposal_embeddings(rec, embeddings) -> str:  # type: ignore[no-untyped-def]
    """The record's JSON line with ``proposals[i].embedding`` (rounded as the image embedding is)."""
    d = rec.to_dict()
    for p, e in zip(d["proposals"], embeddings):
        p["embedding"] = [round(float(v), 6) for v in e]
    return json.dumps(d, separators=(",", ":"))


@app.command("info")
def info(
    server: str = _server_opt, ca: Path | None = _station.ca, client_cert: Path | None = _station.client_cert,
    client_key: Path | None = _station.client_key,
    token_file: Path | None = typer.Option(None, "--token-file", help="scoring bearer token"),
    insecure: bool = _station.insecure, server_name: str | None = _station.server_name,
) -> None:
    """Print the station's health and serving bundle (JSON)."""
    import grpc

    c = _client(server, ca, client_cert, client_key, token_file, None, insecure, server_name)
    try:
        mi = c.model_info()
        typer.echo(json.dumps({"health": c.health(), "bundle_id": mi.bundle_id, "backend": mi.backend,
                               "models": list(mi.models), "graph": mi.graph, "station_id": mi.station_id,
                               "info": json.loads(mi.info_json or "{}")}, indent=2))
    except grpc.RpcError as e:
        raise _fail(f"{server}: {e.code().name}: {e.details()}", 1) from None
    finally:
        c.close()


@app.command("load-bundle")
def load_bundle(
    path: str = typer.Argument(..., help="bundle directory on the station"),
    server: str = _server_opt, ca: Path | None = _station.ca, client_cert: Path | None = _station.client_cert,
    client_key: Path | None = _station.client_key,
    admin_token_file: Path = typer.Option(..., "--admin-token-file", help="admin bearer token"),
    expected_bundle_id: str = typer.Option("", "--expect", help="refuse unless the bundle has this id"),
    insecure: bool = _station.insecure, server_name: str | None = _station.server_name,
) -> None:
    """Hot-swap the station to another bundle (verified and warmed up first)."""
    import grpc

    c = _client(server, ca, client_cert, client_key, None, admin_token_file, insecure, server_name)
    try:
        r = c.load_bundle(path, expected_bundle_id)
        typer.echo(f"{r.previous_bundle_id or '(none)'} -> {r.bundle_id} "
                   f"(load {r.load_seconds:.2f}s, warm-up {r.warmup_seconds:.2f}s)")
    except grpc.RpcError as e:
        raise _fail(f"{server}: {e.code().name}: {e.details()}", 1) from None
    finally:
        c.close()


@app.command("drain-deferred")
def drain_deferred_cmd(
    data_dir: Path = typer.Option(..., "--data-dir", help="the station's --data-dir (its deferred slices are in "
                                  "DATA_DIR/deferred)"),
    server: str = _server_opt, ca: Path | None = _station.ca, client_cert: Path | None = _station.client_cert,
    client_key: Path | None = _station.client_key,
    token_file: Path | None = typer.Option(None, "--token-file", help="scoring bearer token"),
    insecure: bool = _station.insecure, server_name: str | None = _station.server_name,
    out: Path | None = typer.Option(None, "--out", help="append the records of the drained slices here (JSONL)"),
    window: int = typer.Option(8, "--window", min=1, help="deferred slices in flight at once"),
    max_seconds: float | None = typer.Option(None, "--max-seconds", min=0.0, help="stop after this long even if "
                                             "slices are left (run again later); default: until empty"),
    backoff_s: float = typer.Option(0.5, "--backoff-s", min=0.0, help="wait between passes while the station "
                                    "is busy"),
) -> None:
    """Score the slices a station deferred (--overflow defer): stream them, oldest first, to the running
    station (which forwards the records to its trainer as usual); each is deleted once its record came back.
    Exit code 1 when slices were rejected or are left."""
    from tqdm import tqdm

    from server.deferred import DeferredQueue
    from server.drain import drain_deferred

    if not (data_dir / "deferred").is_dir():
        raise _fail(f"--data-dir: {data_dir} has no deferred/ folder (was the station run with --overflow defer?)")
    queue = DeferredQueue(data_dir)
    c = _client(server, ca, client_cert, client_key, token_file, None, insecure, server_name)
    fh = None if out is None else out.open("a", encoding="utf-8")
    bar = tqdm(total=len(queue), desc="drain-deferred", unit="slice", file=sys.stderr, dynamic_ncols=True)
    try:
        rep = drain_deferred(queue, c, fh, window=window, max_seconds=max_seconds, backoff_s=backoff_s,
                             on_item=lambda _sid, outcome: bar.update(1) if outcome in ("scored", "rejected")
                             else None)
    finally:
        bar.close()
        c.close()
        if fh is not None:
            fh.close()
    typer.echo(json.dumps({"scored": rep.scored, "rejected": rep.rejected, "failed": rep.failed,
                           "left": rep.left, "seconds": round(rep.seconds, 2)}))
    if rep.rejected or rep.left:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
