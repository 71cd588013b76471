#!/usr/bin/env bash
# Sets up what is missing, builds, and runs the whole test suite (README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --build-tests
# The release flip too: the test of Larq Zoo's networks training runs it (a debug build takes minutes per run).
swift build -c release
swift test --skip-build --disable-xctest
