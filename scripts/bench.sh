#!/usr/bin/env bash
# One benchmark command: builds the release binaries and benches once, runs the sf-bridge ingest
# bench and the end-to-end pipeline bench (and, with --all, the per-service benches), and splices
# each one's Markdown tables into docs/benchmarks.md between its markers
#   <!-- bench:<name>:begin --> ... <!-- bench:<name>:end -->
# under a header line naming the machine, the nats-server and rustc versions, the git revision and
# the date. A bench that writes no report (or fails) leaves its section as it was, and says so.
#
#   scripts/bench.sh            # ingest + pipeline, on nats-server 2.15.1
#   scripts/bench.sh --all      # also the per-service benches (tables printed, not written)
#   scripts/bench.sh --no-write # print the tables, leave docs/benchmarks.md alone
#   BENCH_QUICK=1 scripts/bench.sh   # small counts (development)
#
# NATS_SERVER_BIN picks another nats-server; the benches' own knobs (BENCH_EVENTS,
# BENCH_BACKLOG, BENCH_SCALE, ...) pass through.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

all=0
write=1
for arg in "$@"; do
  case "$arg" in
    --all) all=1 ;;
    --no-write) write=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ -z "${NATS_SERVER_BIN:-}" ]; then
  eval "$(scripts/ensure-nats.sh)"
  NATS_SERVER_BIN="$NATS_SERVER_CURRENT"
fi
export NATS_SERVER_BIN

doc="docs/benchmarks.md"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# name | cargo bench arguments
benches=(
  "ingest|-p sf-bridge --bench ingest"
  "pipeline|-p testkit --bench pipeline"
)
if [ "$all" = 1 ]; then
  benches+=(
    "provisioner-throughput|-p provisioner --bench throughput"
    "provisioner-status|-p provisioner --bench status"
    "sf-writer-throughput|-p sf-writer --bench throughput"
  )
fi

# Build everything once (the service binaries the benches start, and the benches), so that no
# bench's clock includes a compile.
bench_args=()
for entry in "${benches[@]}"; do
  read -r -a args <<<"${entry#*|}"
  bench_args+=("${args[@]}")
done
cargo build --release --bins -p sf-bridge -p provisioner -p sf-writer
cargo bench --no-run "${bench_args[@]}"

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
mem="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
nats_version="$("$NATS_SERVER_BIN" --version 2>/dev/null || echo "nats-server (unknown version)")"
rustc_version="$(rustc --version)"
revision="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo '+changes')"
date_utc="$(date -u +%Y-%m-%dT%H:%MZ)"
header="Measured by \`scripts/bench.sh\` on $(nproc) CPUs ($cpu), $mem; $nats_version; $rustc_version; git $revision; $date_utc."

status=0
for entry in "${benches[@]}"; do
  name="${entry%%|*}"
  read -r -a args <<<"${entry#*|}"
  report="$work/$name.md"
  echo "== $name: cargo bench ${args[*]}" >&2
  if ! BENCH_REPORT="$report" cargo bench "${args[@]}"; then
    echo "bench.sh: $name failed; its section of $doc is left as it was" >&2
    status=1
    continue
  fi
  if [ ! -s "$report" ]; then
    echo "bench.sh: $name wrote no BENCH_REPORT; its section of $doc is left as it was" >&2
    continue
  fi
  if [ "$write" = 0 ]; then
    continue
  fi
  begin="<!-- bench:$name:begin -->"
  end="<!-- bench:$name:end -->"
  if ! grep -qF "$begin" "$doc" || ! grep -qF "$end" "$doc"; then
    echo "bench.sh: $doc has no $begin ... $end markers; $name's tables are not written" >&2
    status=1
    continue
  fi
  { printf '%s\n\n' "$header"; cat "$report"; } >"$work/$name.section"
  # Everything between the markers is replaced; the markers and the rest stay.
  awk -v begin="$begin" -v end="$end" -v section="$work/$name.section" '
    $0 == begin { print; while ((getline line < section) > 0) print line; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }
  ' "$doc" >"$work/doc.md"
  cp "$work/doc.md" "$doc"
  echo "bench.sh: $name written into $doc" >&2
done
exit "$status"
