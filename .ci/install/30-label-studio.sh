#!/usr/bin/env bash
# Label Studio (the annotation server that tests/trainer/test_label_studio_live.py starts for real).
# Its pins clash with ours (Django stack, its own numpy/pydantic ranges), so it gets a side venv at
# <repo>/.venv-labelstudio/. Idempotent: a second run only checks the installed version (~1 s).
# The client side (label-studio-sdk, used by trainer/label_studio.py) goes in the project venv ($PY).
set -euo pipefail
cd "$(dirname "$0")/../.."
LS_VERSION=1.23.2
VENV=.venv-labelstudio
PY=${PY:-.venv/bin/python}

if [ -x "$VENV/bin/label-studio" ] && [ "$("$VENV/bin/python" -c \
    'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" = "$LS_VERSION" ]; then
  echo "label-studio $LS_VERSION already in $VENV"
else
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "label-studio==$LS_VERSION"
  echo "label-studio $LS_VERSION installed in $VENV"
fi

# the client (label-studio-sdk, the pyproject extra `labelstudio`) in the project venv, with our own numpy,
# pydantic, protobuf and grpcio held where they are (see the extra's comment on opencv)
if ! "$PY" -c 'import label_studio_sdk' 2>/dev/null; then
  pins=$("$PY" -m pip freeze --disable-pip-version-check | grep -iE '^(numpy|pydantic|protobuf|grpcio)==' || true)
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check "label-studio-sdk>=2,<3" "opencv-python-headless>=4.13" $pins
fi
echo "label-studio-sdk $("$PY" -c 'import importlib.metadata as m; print(m.version("label-studio-sdk"))') in $PY"
