#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. formatting and lints (skip with SKIP_LINT=1),
#   2. the deployment files against their schemas (scripts/validate-deploy.sh),
#   3. the supply-chain check (cargo deny; advisories when ADVISORY_DB is given, as .ci/run does),
#   4. a 30 s fuzzing pass per fuzz target,
#   5. every crate's tests against Debian's nats-server 2.9,
#   6. the NATS integration tests again against the current nats-server release.
# Each test starts its own nats-server (free port, temporary store), so nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

# CI builds once from a clean clone: incremental artefacts would only cost disk (several GB).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

eval "$(scripts/ensure-nats.sh)"
# promtool for the alert rules' checks in tests/tests/monitoring.rs (required there when set).
eval "$(scripts/ensure-promtool.sh)"
export PROMTOOL
echo "nats-server (Debian):  $("$NATS_SERVER_DEBIAN" --version)"
echo "nats-server (current): $("$NATS_SERVER_CURRENT" --version)"

if [ "${SKIP_LINT:-0}" != 1 ]; then
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  echo "== cargo clippy"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

echo "== deployment files (schemas)"; scripts/validate-deploy.sh

echo "== supply chain (cargo deny)"; scripts/supply-chain.sh

echo "== fuzzing (short pass)"; scripts/fuzz.sh 30

echo "== tests (nats-server $("$NATS_SERVER_DEBIAN" --version | awk '{print $2}'))"
NATS_SERVER_BIN="$NATS_SERVER_DEBIAN" cargo test --workspace --no-fail-fast

echo "== NATS integration tests (nats-server $("$NATS_SERVER_CURRENT" --version | awk '{print $2}'))"
NATS_SERVER_BIN="$NATS_SERVER_CURRENT" cargo test --no-fail-fast -p sf-bridge -p provisioner -p sf-writer --test it
NATS_SERVER_BIN="$NATS_SERVER_CURRENT" cargo test --no-fail-fast -p platform --test jetstream --test publish --test service
NATS_SERVER_BIN="$NATS_SERVER_CURRENT" cargo test --no-fail-fast -p testkit --test hostile --test secured_nats --test secrets --test tls
