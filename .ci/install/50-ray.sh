#!/usr/bin/env bash
# Ray (the `fleet` extra): tests/trainer/test_backfill.py starts a real local Ray instance.
# Idempotent: a no-op when the project venv already imports ray.
set -euo pipefail
PY=${PY:-.venv/bin/python}
if "$PY" -c "import ray" 2>/dev/null; then
    echo "ray $("$PY" -c 'import ray; print(ray.__version__)') already installed"
    exit 0
fi
"$PY" -m pip install -q 'ray>=2.9'
"$PY" -c "import ray; print('ray', ray.__version__, 'installed')"
