#!/usr/bin/env bash
# PostgreSQL server binaries (Debian's package; tests run initdb + pg_ctl into a temp dir, never the
# system cluster) and psycopg 3 in the project venv (the `postgres` extra). Idempotent.
set -euo pipefail
PY=${PY:-.venv/bin/python}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y postgresql \
    || { apt-get -o DPkg::Lock::Timeout=600 update && apt-get -o DPkg::Lock::Timeout=600 install -y postgresql; }
fi
ls /usr/lib/postgresql/*/bin/initdb

if ! "$PY" -c "import psycopg" 2>/dev/null; then
  "$PY" -m pip install -q 'psycopg[binary]>=3.1'
fi
"$PY" -c "import psycopg; print('psycopg', psycopg.__version__)"
