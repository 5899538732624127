#!/usr/bin/env bash
# Headless Chromium (Debian's package) and Playwright's Python package in the project venv, for the
# dashboard's browser test. Playwright drives the system /usr/bin/chromium: never `playwright install`
# (that downloads browsers). Idempotent.
set -euo pipefail
PY=${PY:-.venv/bin/python}

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y chromium \
    || { apt-get -o DPkg::Lock::Timeout=600 update && apt-get -o DPkg::Lock::Timeout=600 install -y chromium; }
fi
chromium --version

if ! "$PY" -c "import playwright.sync_api" 2>/dev/null; then
  "$PY" -m pip install -q 'playwright>=1.40'
fi
"$PY" -c "from importlib.metadata import version; print('playwright', version('playwright'))"
