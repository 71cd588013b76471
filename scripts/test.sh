#!/usr/bin/env bash
# Sets up what is missing, builds, and runs the whole test suite (README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --build-tests
# The release flip too: the test of Larq Zoo's networks training runs it (a debug build takes minutes per run).
swift build -c release
# The tests' files (run directories, checkpoints, data sets) go to a temporary directory of
# this run, removed when it ends however it ends: a run leaves nothing behind in /tmp.
TMPDIR=$(mktemp -d -t flip-tests.XXXXXX)
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
swift test --skip-build --disable-xctest
