#!/usr/bin/env bash
# Makes Prometheus' promtool available for the rules checks (deploy/prometheus/check.sh, run by
# tests/tests/monitoring.rs) and prints its path as a shell assignment:
#   PROMTOOL  promtool on PATH, or the one from Debian's `prometheus` package unpacked under
#             .tools/ (downloaded with apt-get, never installed: no Prometheus daemon is started)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools/prometheus"

if command -v promtool >/dev/null 2>&1; then
  echo "PROMTOOL=$(command -v promtool)"
  exit 0
fi
bin="$tools/usr/bin/promtool"
if [ ! -x "$bin" ]; then
  echo "ensure-promtool: unpacking promtool from Debian's prometheus package into $tools" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  $SUDO apt-get update -qq >&2
  (cd "$work" && apt-get download -qq prometheus >&2)
  mkdir -p "$tools"
  dpkg -x "$work"/prometheus_*.deb "$tools"
fi
echo "PROMTOOL=$bin"
