#!/usr/bin/env bash
# Fuzzes Flip's file reader (safetensors layout, metadata, checksums, model matching) with
# libFuzzer for a time budget; not part of CI.
#   scripts/fuzz.sh [SECONDS]        default 600
# Builds `flip-fuzz` with -sanitize=fuzzer into .build-fuzz/, seeds a corpus with a valid
# model file, runs, and prints libFuzzer's summary (inputs tried, crashes). A crashing input
# is saved as .build-fuzz/crash-*; replay it with `swift build --product flip-fuzz &&
# .build/debug/flip-fuzz .build-fuzz/crash-*`.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-600}"
scripts/setup.sh >/dev/null
swift build --product flip-fuzz
swift build -c release --scratch-path .build-fuzz --product flip-fuzz \
  -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library -Xswiftc -DFLIP_LIBFUZZER \
  -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld  # Debian's gold fails on the fuzzer runtime
mkdir -p .build-fuzz/corpus .build-fuzz/artifacts
.build/debug/flip-fuzz --write-seed .build-fuzz/corpus/seed-model.safetensors
OMP_NUM_THREADS=1 .build-fuzz/release/flip-fuzz .build-fuzz/corpus \
  -max_total_time="$budget" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
  -artifact_prefix=.build-fuzz/artifacts/ 2>&1 | tee .build-fuzz/last-run.log | grep -E "^(#[0-9]+ +(DONE|INITED))|stat::|ERROR|SUMMARY|crash" || true
echo "log: .build-fuzz/last-run.log; crashes: $(ls .build-fuzz/artifacts | wc -l)"
