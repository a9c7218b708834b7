#!/usr/bin/env bash
# Create the virtualenv and install the project with its pinned dependency tree; make sure Java 17 is there.
# Usage: scripts/setup.sh [PYTHON] [VENV]
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: java not found, installing OpenJDK 17 with apt" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "setup: Spark needs Java 17: install it (e.g. apt-get install openjdk-17-jre-headless) and rerun" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e ".[pipeline,dev]"
echo "setup: ready ($("$VENV/bin/python" --version), $(java -version 2>&1 | head -n 1))" >&2
