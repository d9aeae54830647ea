#!/usr/bin/env bash
# Set up this machine for the project: check Java 17 and the Postgres server binaries,
# create .venv with the pinned packages, install the project into it. Safe to re-run:
# the install is skipped while the requirements files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (found $("$PY" --version 2>&1))." >&2
  echo "       Debian/Ubuntu: apt-get install python3.11 python3.11-venv" >&2
  exit 1
fi

missing=0
if ! command -v java >/dev/null 2>&1; then
  echo "setup: no Java runtime; Spark needs Java 17: apt-get install openjdk-17-jre-headless" >&2
  missing=1
else
  jv=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  if [ "${jv:-0}" -lt 17 ]; then
    echo "setup: Java $jv found; Spark 4 needs 17+: apt-get install openjdk-17-jre-headless" >&2
    missing=1
  fi
fi
if [ -z "${RECS_DATABASE_URL:-}" ]; then
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "setup: Postgres server binaries (initdb, pg_ctl) not found:" >&2
    echo "       apt-get install postgresql   (or set RECS_DATABASE_URL to a server)" >&2
    missing=1
  fi
fi
[ "$missing" = 0 ] || exit 1

# Spark ALS uses a native BLAS when libblas.so.3 exists (about 1.25x faster here).
if ! ldconfig -p 2>/dev/null | grep -q 'libblas.so.3'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${RECS_INSTALL_BLAS:-1}" = 1 ]; then
    echo "setup: installing libopenblas0-pthread (native BLAS for Spark ALS)"
    (apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1; }) ||
      echo "setup: could not install libopenblas0-pthread; Spark falls back to Java BLAS" >&2
  else
    echo "setup: note: no native BLAS; for faster ALS: apt-get install libopenblas0-pthread" >&2
  fi
fi

# Headless Chromium for the browser test of the Airflow UI (Debian's package; Playwright
# drives it at /usr/bin/chromium and never downloads a browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${RECS_INSTALL_CHROMIUM:-1}" = 1 ]; then
    echo "setup: installing chromium (browser test of the Airflow UI)"
    (apt-get install -y -qq chromium >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) ||
      echo "setup: could not install chromium; the browser test will skip" >&2
  else
    echo "setup: note: no /usr/bin/chromium; the browser test skips (apt-get install chromium)" >&2
  fi
fi

stamp=.venv/.installed
want=$(cat requirements.txt requirements-dev.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing pinned packages into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null
.venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "setup: .venv ready"
