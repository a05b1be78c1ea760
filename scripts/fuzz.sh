#!/usr/bin/env bash
# Fuzzes every parser of outside input (cargo-fuzz / libFuzzer; targets in fuzz/, see
# docs/reliability.md "Fuzzing"):
#   scripts/fuzz.sh [seconds-per-target] [target...]
# 300 s per target is the documented long pass, `scripts/fuzz.sh 30` the CI short pass.
# Installs cargo-fuzz (pinned, --locked) under .tools/ when missing, builds every target, runs
# each from the checked-in seeds (fuzz/corpus/<target>) plus the corpus earlier runs grew
# (fuzz/target/corpus/<target>, not checked in), prints per target the executions and whether
# anything was found, and exits non-zero on any crash, timeout (an input that takes longer than
# FUZZ_TIMEOUT_SECS, 10 s by default: a stall) or out-of-memory. A finding's input is saved in
# fuzz/artifacts/<target>/; reproduce it with
#   RUSTC_BOOTSTRAP=1 .tools/cargo-fuzz-0.13.1/bin/cargo-fuzz run --sanitizer none -a <target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds="${1:-300}"
shift || true
cargo_fuzz_version=0.13.1
tools="$root/.tools/cargo-fuzz-$cargo_fuzz_version"
cargo_fuzz="$tools/bin/cargo-fuzz"
timeout_secs="${FUZZ_TIMEOUT_SECS:-10}"
rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}"

# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, coverage options); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, so no second toolchain is needed.
export RUSTC_BOOTSTRAP=1

if [ ! -x "$cargo_fuzz" ]; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version" >&2
  CARGO_TARGET_DIR="$root/.tools/cargo-fuzz-build" \
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools" --quiet
  rm -rf "$root/.tools/cargo-fuzz-build"
fi

# No sanitizer: the code under test forbids `unsafe`, and what is looked for is a panic, a stall
# or unbounded memory, which libFuzzer catches itself; without ASan every target runs several
# times faster. Debug assertions stay on so an arithmetic overflow is a finding, not a wrap.
flags=(--sanitizer none --debug-assertions)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("$cargo_fuzz" list)
fi

echo "fuzz: building ${#targets[@]} targets"
"$cargo_fuzz" build "${flags[@]}"

failed=0
summary=()
for target in "${targets[@]}"; do
  grown="fuzz/target/corpus/$target"
  mkdir -p "$grown" "fuzz/artifacts/$target"
  dict=()
  if [ -f "fuzz/dictionaries/$target.dict" ]; then dict=("-dict=fuzz/dictionaries/$target.dict"); fi
  log="fuzz/target/fuzz-$target.log"
  echo "fuzz: $target for ${seconds}s"
  set +e
  "$cargo_fuzz" run "${flags[@]}" "$target" "$grown" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout="$timeout_secs" -rss_limit_mb="$rss_limit_mb" \
    -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
  status=$?
  set -e
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | awk '{print $2}')"
  corpus="$(find "$grown" -type f | wc -l)"
  if [ "$status" -eq 0 ]; then
    result="nothing found"
  else
    failed=1
    if grep -q 'ERROR: libFuzzer: timeout' "$log"; then result="TIMEOUT (stall)"
    elif grep -q 'ERROR: libFuzzer: out-of-memory' "$log"; then result="OUT OF MEMORY"
    elif grep -q 'panicked at' "$log"; then result="PANIC: $(grep -m1 -A1 'panicked at' "$log" | tr '\n' ' ')"
    else result="FAILED (exit $status)"
    fi
    result="$result; input: $(grep -o 'fuzz/artifacts/[^ ]*' "$log" | head -1); log: $log"
    tail -40 "$log" >&2
  fi
  summary+=("$(printf '%-22s %12s execs  corpus %5s  %s' "$target" "${execs:-?}" "$corpus" "$result")")
done

echo "== fuzzing results (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
