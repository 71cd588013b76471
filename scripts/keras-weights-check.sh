#!/usr/bin/env bash
# Checks that Keras weights load into Flip and give Keras's outputs: scripts/keras-weights.py
# builds Larq Zoo's Bi-Real Net and QuickNet (and a tiny graph) in Keras with every variable
# random, saves them with model.save_weights and writes Keras's outputs on random inputs; the
# test (Tests/FlipTests/KerasWeightsTests.swift) loads each .h5 into Flip's twin and compares
# top-1 classes, pre-softmax outputs and the signs of every binarized layer's input. The files
# (about 110 MB) go to a temporary directory, removed at the end.
#
# Python: $FLIP_KERAS_WEIGHTS_PYTHON if set, else a venv in .build/keras-weights-venv with
# tensorflow-cpu 2.15.1, numpy < 2, larq 0.14.0 and larq-zoo 2.4.0 from PyPI. When
# scripts/real-tools-check.sh has made its venv (TensorFlow 2.15.1 too), that is copied as hard
# links (TensorFlow's 1.3 GB are not written twice) and only larq and larq-zoo are downloaded
# (as ../shared/peers/larq/zoo-setup.sh does).
# With FLIP_KERAS_WEIGHTS_OPTIONAL=1 (CI) a PyPI that cannot be reached skips the check, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${FLIP_KERAS_WEIGHTS_PYTHON:-}
if [ -z "$py" ]; then
  venv=.build/keras-weights-venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorflow, larq, larq_zoo" 2>/dev/null; then
    rm -rf "$venv"
    if .build/real-tools-venv/bin/python -c "import tensorflow" 2>/dev/null; then
      cp -al .build/real-tools-venv "$venv"
    else
      python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -m pip install -q "tensorflow-cpu==2.15.1" "numpy<2" "larq==0.14.0" "larq-zoo==2.4.0"; then
      if [ "${FLIP_KERAS_WEIGHTS_OPTIONAL:-0}" = 1 ]; then
        echo "keras-weights-check: could not install TensorFlow and larq-zoo from PyPI; skipped" >&2
        exit 0
      fi
      exit 1
    fi
  fi
  py=$venv/bin/python
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" scripts/keras-weights.py "$work" --models birealnet18 quicknet tiny --images 8
swift build --build-tests
FLIP_KERAS_WEIGHTS_DIR=$work swift test --skip-build --disable-xctest --filter KerasWeightsTests
