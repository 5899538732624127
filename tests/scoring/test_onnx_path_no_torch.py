"""The station's ONNX path never imports torch: scorer + bundle load and score a real bundle without it.

The toy bundle is built here with torch (export); loading and scoring run in a fresh interpreter,
which must end with ``torch`` absent from ``sys.modules`` (importing it costs seconds and hundreds of
MB on an edge box that only runs ONNX Runtime).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_bundle import write_toy_bundle

from export.signing import generate_keypair

REPO = Path(__file__).resolve().parents[2]

STATION = """
import json, sys
import numpy as np
import gsal_edge.scoring.bundle as bundle
import gsal_edge.scoring.scorer  # noqa: F401

scorer = bundle.load_bundle(sys.argv[1], "onnxruntime", [sys.argv[2]])
x = (np.random.default_rng(0).random((40, 48)) * 65535).astype(np.uint16)
rec = scorer.score([x], ["slice-0"])[0]
print(json.dumps({"torch": "torch" in sys.modules, "backend": scorer.backend, "image_id": rec.image_id,
                  "proposals": len(rec.proposals), "e_rec": rec.e_rec}))
"""


def test_onnx_station_path_does_not_import_torch(tmp_path: Path) -> None:
    key, pub = generate_keypair(tmp_path / "keys" / "station.pem")
    bundle_dir = write_toy_bundle(tmp_path / "bundles", key)
    env = {**os.environ, "GSAL_ORT_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STATION, str(bundle_dir), str(pub)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["backend"] == "onnxruntime" and got["image_id"] == "slice-0"
    assert got["proposals"] == 3 and got["e_rec"] > 0
    assert got["torch"] is False, "importing and running the ONNX scoring path loaded torch"
