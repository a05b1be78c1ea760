#!/usr/bin/env bash
# Container health check without curl: GET /health over bash's /dev/tcp, healthy on HTTP 200.
#
#   healthcheck            port from the running binary's own variable (below)
#   healthcheck 8081       explicit port
#
# The port follows the variable the binary actually listens on: HTTP_ADDR (default 8080) for
# sf-bridge, provisioner and sf-writer, SF_SIM_LOGIN_ADDR (8081) for sf-sim, WHMCS_SIM_ADDR (8090)
# for whmcs-sim. The check always connects to 127.0.0.1.
set -euo pipefail

port_of() { # "ip:port" or "[v6]:port" -> port
  local addr="$1"
  printf '%s' "${addr##*:}"
}

port="${1:-}"
if [ -z "$port" ]; then
  binary=""
  if [ -r /proc/1/cmdline ]; then
    binary="$(tr '\0' '\n' </proc/1/cmdline | head -n1)"
    binary="$(basename "$(readlink -f "$(command -v "$binary" 2>/dev/null || printf '%s' "$binary")")")"
  fi
  case "$binary" in
    sf-sim) port="$(port_of "${SF_SIM_LOGIN_ADDR:-0.0.0.0:8081}")" ;;
    whmcs-sim) port="$(port_of "${WHMCS_SIM_ADDR:-0.0.0.0:8090}")" ;;
    *) port="$(port_of "${HTTP_ADDR:-0.0.0.0:8080}")" ;;
  esac
fi

exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || { echo "no answer on :$port" >&2; exit 1; }
case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) echo "/health on :$port: ${status%$'\r'}" >&2; exit 1 ;;
esac
