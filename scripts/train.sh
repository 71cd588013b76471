#!/usr/bin/env bash
# Sets up what is missing, builds a release binary and trains binarynet-mlp on Fashion-MNIST
# (README's first command). Extra arguments go to `flip train`, e.g. --epochs 2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release
exec .build/release/flip train --model binarynet-mlp --epochs 10 --batch-size 512 --seed 0 --out runs/binarynet-mlp --overwrite "$@"
