#!/usr/bin/env bash
# Fuzzes Flip's file reader with libFuzzer and AddressSanitizer for a time budget, on one core;
# not part of CI.
#   scripts/fuzz.sh [SECONDS]        default 600
# Builds `flip-fuzz` with -sanitize=fuzzer,address into .build-fuzz/ (a release build, -O with
# bounds and overflow checks on as every release build; linked with lld, since Debian's gold
# fails on the fuzzer runtime). Each input goes through what Flip does with an untrusted file: the
# safetensors layout, the JSON header and tensor index, both checksums, format and version,
# binary_kernels, and loading into a model (names, dtypes, shapes, bit-packed kernels).
# Flip files carry CRC-32s of their payload and of their header (metadata and tensor index), so
# nearly every random mutation used to stop at a checksum. flip-fuzz's custom mutator
# (Sources/flip-fuzz/Restamp.swift) re-stamps both after every mutation whose layout still
# decodes (7 in 8; the rest keep stale checksums), so mutated headers reach the checks behind
# them. The corpus (.build-fuzz/corpus, kept between runs) starts from a model, a checkpoint,
# a binary export and a version 1 file of a tiny model, with a dictionary of their JSON tokens.
# Prints libFuzzer's summary (inputs run, coverage, corpus, crashes). A crash is saved as
# .build-fuzz/artifacts/crash-* — a Flip file with valid checksums; replay it under ASan with
# `.build-fuzz/release/flip-fuzz FILE`, or read it with `flip checkpoint inspect FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-600}"
scripts/setup.sh >/dev/null
swift build -c release --scratch-path .build-fuzz --product flip-fuzz \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DFLIP_LIBFUZZER \
  -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld  # Debian's gold fails on the fuzzer runtime
fuzz=.build-fuzz/release/flip-fuzz
mkdir -p .build-fuzz/corpus .build-fuzz/artifacts
"$fuzz" --write-seed .build-fuzz/corpus
"$fuzz" --write-dict .build-fuzz/flip.dict
OMP_NUM_THREADS=1 "$fuzz" .build-fuzz/corpus -dict=.build-fuzz/flip.dict \
  -max_total_time="$budget" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
  -artifact_prefix=.build-fuzz/artifacts/ 2>&1 | tee .build-fuzz/last-run.log |
  grep -E "^#[0-9]+[[:space:]]+(DONE|INITED)|stat::|ERROR|SUMMARY|crash" || true
echo "log: .build-fuzz/last-run.log; crashes: $(ls .build-fuzz/artifacts | wc -l)"
