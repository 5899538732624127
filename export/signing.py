"""Ed25519 keys and bundle signing (the verifying half lives in ``gsal_edge.scoring.bundle``)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gsal_edge.scoring.bundle import MANIFEST, SIGNATURE, BundleError, key_id

DEFAULT_KEY = Path(os.environ.get("GSAL_SIGNING_KEY", "artifacts/keys/gsal_signing_key.pem"))


def public_key_path(private_path: str | Path) -> Path:
    """``name.pem`` -> ``name.pub.pem`` (where ``keygen`` writes the public half)."""
    p = Path(private_path)
    return p.with_name(p.name[: -len(".pem")] + ".pub.pem" if p.name.endswith(".pem") else p.name + ".pub.pem")


def generate_keypair(private_path: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key; return both paths."""
    priv = Path(private_path)
    pub = public_key_path(priv)
    if priv.exists() and not overwrite:
        raise FileExistsError(f"{priv}: key exists (pass overwrite to replace it)")
    priv.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from an unencrypted PEM file; errors name the file."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except OSError as e:
        raise BundleError(f"{p}: cannot read signing key ({e.strerror}); create one with `gsal-edge export keygen`") from e
    except (ValueError, TypeError) as e:
        raise BundleError(f"{p}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{p}: {type(key).__name__} is not an Ed25519 private key")
    return key


def sign_bundle(bundle_dir: str | Path, key: Ed25519PrivateKey) -> str:
    """Sign the exact bytes of ``manifest.json``; write ``manifest.sig``; return the key id."""
    root = Path(bundle_dir)
    sig = key.sign((root / MANIFEST).read_bytes())
    kid = key_id(key.public_key())
    (root / SIGNATURE).write_text(
        json.dumps({"algorithm": "ed25519", "key_id": kid, "signature": base64.b64encode(sig).decode()}, indent=2)
        + "\n"
    )
    return kid
