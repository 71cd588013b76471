#!/usr/bin/env bash
# Checks that Flip reads ImageNet-format data written by the real tools: TFRecords from
# TensorFlow's tf.io.TFRecordWriter (TFDS's feature layout) and tar shards from webdataset's
# TarWriter. Makes a small image folder (scripts/make-imagenet-like.py), writes both with
# scripts/real-tools-data.py, and runs the test that compares what Flip reads with what was
# written (Tests/FlipTests/RealToolsDataTests.swift).
#
# Python: $FLIP_REAL_TOOLS_PYTHON if set, else a venv in .build/real-tools-venv with
# tensorflow-cpu 2.15.1, numpy < 2, Pillow and webdataset from PyPI (about 600 MB, once).
# With FLIP_REAL_TOOLS_OPTIONAL=1 (CI) a PyPI that cannot be reached skips the check, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${FLIP_REAL_TOOLS_PYTHON:-}
if [ -z "$py" ]; then
  venv=.build/real-tools-venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorflow, webdataset, PIL" 2>/dev/null; then
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "tensorflow-cpu==2.15.1" "numpy<2" pillow webdataset; }; then
      if [ "${FLIP_REAL_TOOLS_OPTIONAL:-0}" = 1 ]; then
        echo "real-tools-check: could not install TensorFlow and webdataset from PyPI; skipped" >&2
        exit 0
      fi
      exit 1
    fi
  fi
  py=$venv/bin/python
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" scripts/make-imagenet-like.py "$work/images" --train 60 --val 12 --classes 4 --width 200 --height 150
"$py" scripts/real-tools-data.py "$work/images" "$work/written"
swift build --build-tests
FLIP_REAL_TOOLS_DATA=$work/written FLIP_REAL_TOOLS_SOURCE=$work/images \
  swift test --skip-build --disable-xctest --filter RealToolsDataTests
