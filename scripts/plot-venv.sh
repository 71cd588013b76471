#!/usr/bin/env bash
# Prints the path of a Python with matplotlib, making .build/plot-venv (from PyPI) if needed.
# Used by scripts/scaling.sh and `flip plot`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.build/plot-venv
if ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
  python3 -m venv "$venv" >/dev/null && "$venv/bin/pip" install -q matplotlib >/dev/null ||
    { echo "plot-venv.sh: could not install matplotlib into $venv (pip install matplotlib needs PyPI)" >&2; exit 1; }
fi
echo "$PWD/$venv/bin/python"
