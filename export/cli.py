"""``gsal-edge export``: the typer app that ``gsal_cli/main.py`` mounts as ``gsal-edge export``.

    gsal-edge export --models DIR --out BUNDLES_DIR [--key FILE] [--fp16] [--tensorrt auto|off|on] [--simplify] [--quantize int8]
    gsal-edge export keygen [--key FILE]
    gsal-edge export verify BUNDLE_DIR [--pub FILE ...]
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Export checkpoints into a signed ONNX (+TensorRT) bundle; keys; bundle verification.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _echo_export(res: object) -> None:
    from export.parity import format_report
    from export.pipeline import ExportResult

    assert isinstance(res, ExportResult)
    typer.echo(f"bundle  {res.bundle_dir}")
    typer.echo(f"id      {res.bundle_id}")
    typer.echo(f"time    {res.seconds:.1f}s total (" + ", ".join(f"{k} {v:.1f}s" for k, v in res.stage_seconds.items()) + ")")
    typer.echo(f"size    {res.bundle_bytes / 1e6:.2f} MB total")
    for rel, n in res.sizes.items():
        typer.echo(f"        {rel:<28} {n / 1e6:8.2f} MB")
    for line in format_report(res.parity):
        typer.echo(line)
    trt = res.tensorrt
    if trt.get("status") not in (None, "off"):
        typer.echo(f"tensorrt {trt.get('status')}: {trt.get('reason', '')}; plans: {sorted(trt.get('plans', {}))}"
                   + (f"; failed: {trt['failures']}" if trt.get("failures") else ""))


@app.callback()
def export(
    ctx: typer.Context,
    models: Path | None = typer.Option(None, "--models", help="folder with detector.pt, prior/, clip/ [graph.yaml, gsal.yaml]"),
    out: Path | None = typer.Option(None, "--out", help="bundles folder; the bundle goes to OUT/bundle-<id12>"),
    key: Path | None = typer.Option(None, "--key", help="ed25519 private key (PEM); default $GSAL_SIGNING_KEY or artifacts/keys/"),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT FP16 engines"),
    tensorrt: str = typer.Option("auto", "--tensorrt", help="auto: build where TensorRT + GPU exist; off; on: required"),
    simplify: bool = typer.Option(False, "--simplify", help="run onnxslim on every graph"),
    config: Path | None = typer.Option(None, "--config", help="YAML overriding export settings (tolerances, profiles)"),
    detector: Path | None = typer.Option(None, "--detector", help="detector checkpoint (overrides --models)"),
    prior: Path | None = typer.Option(None, "--prior", help="diffusion prior folder (overrides --models)"),
    clip: Path | None = typer.Option(None, "--clip", help="CLIP folder with gsal_clip.json (overrides --models)"),
    graph: str | None = typer.Option(None, "--graph", help="concept graph file or packaged name"),
    gsal_config: Path | None = typer.Option(None, "--gsal-config", help="GSAL config YAML (K, t, M, proposal mode)"),
    torch_weights: bool = typer.Option(True, "--torch-weights/--no-torch-weights", help="ship PyTorch sources too"),
    quantize: str = typer.Option("off", "--quantize", help="int8: dynamic INT8 (MatMul/Gemm) of the detector and "
                                 "CLIP, kept only if records' concepts and top-b picks still match PyTorch"),
    unsigned: bool = typer.Option(False, "--unsigned", help="write no signature (stations then refuse it by default)"),
) -> None:
    """Export the four engines into a signed bundle (prints time, sizes, parity)."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None or (models is None and not (detector and prior and clip)):
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    if quantize not in ("off", "int8"):
        raise typer.BadParameter("must be off or int8", param_hint="--quantize")
    if tensorrt not in ("auto", "off", "on"):
        raise typer.BadParameter("must be auto, off or on", param_hint="--tensorrt")
    from export.config import load_export_config
    from export.pipeline import run_export
    from export.signing import DEFAULT_KEY, generate_keypair, load_private_key
    from export.sources import discover_sources
    from gsal_edge.errors import GSALError

    try:
        cfg = load_export_config(config, simplify=simplify or None, fp16=fp16 or None, tensorrt_mode=tensorrt,
                                 torch_weights=torch_weights, quantize=quantize)
        srcs = discover_sources(models, detector, prior, clip, graph, gsal_config)
        signing = None
        if not unsigned:
            kpath = key or DEFAULT_KEY
            if key is None and not kpath.exists():
                _, pub = generate_keypair(kpath)
                typer.echo(f"no signing key yet: created {kpath} (public key {pub})")
            signing = load_private_key(kpath)
        typer.echo("sources " + ", ".join(f"{k}={v}" for k, v in srcs.as_dict().items()))
        res = run_export(srcs, out, cfg, signing, progress=typer.echo)
    except GSALError as e:
        typer.echo(f"export failed: {e}", err=True)
        raise typer.Exit(1) from None
    _echo_export(res)


@app.command("keygen")
def keygen(
    key: Path | None = typer.Option(None, "--key", help="private key path (public key: <name>.pub.pem)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing key"),
) -> None:
    """Create an ed25519 signing key pair."""
    from export.signing import DEFAULT_KEY, generate_keypair
    from gsal_edge.scoring.bundle import key_id, load_public_key

    try:
        priv, pub = generate_keypair(key or DEFAULT_KEY, overwrite=force)
    except FileExistsError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"private {priv}\npublic  {pub}\nkey id  {key_id(load_public_key(pub))}")


@app.command("verify")
def verify(
    bundle: Path = typer.Argument(..., help="bundle folder (or a bundles folder with LATEST)"),
    pub: list[Path] | None = typer.Option(None, "--pub", help="trusted public key(s); default: the default key's"),
    load: bool = typer.Option(False, "--load", help="also open every engine in ONNX Runtime"),
) -> None:
    """Check every file's sha256 and the ed25519 signature of a bundle."""
    from export.signing import DEFAULT_KEY, public_key_path
    from gsal_edge.scoring.bundle import BundleError, load_bundle, verify_bundle

    keys = list(pub or [public_key_path(DEFAULT_KEY)])
    try:
        m = verify_bundle(bundle, keys)
        if load:
            load_bundle(m.root, "onnxruntime", keys)
    except BundleError as e:
        typer.echo(f"REFUSED: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"OK {m.root} {m.bundle_id} ({len(m.files)} files, created {m.data.get('created')}, "
               f"commit {m.data.get('git_commit')})")
