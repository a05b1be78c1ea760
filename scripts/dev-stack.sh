#!/usr/bin/env bash
# The whole pipeline on this machine, without Docker: a nats-server with JetStream, sf-sim (the
# Salesforce stand-in) and the services built so far, as local processes. Seeds demo data,
# approves the demo orders the way the Salesforce Flow does, and shows them flowing.
# Ctrl-C stops everything. State and logs live in .local/ (removed at start; KEEP_STATE=1 keeps it).
#
# Ports (override with the variables): NATS 14222, sf-sim login/admin 18081, sf-sim REST 18082,
# sf-sim Pub/Sub 17443, whmcs-sim 18090, sf-bridge health 18080, provisioner health 18083,
# sf-writer health 18084.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
state="$root/.local"
profile="${PROFILE:-debug}"
NATS_PORT="${NATS_PORT:-14222}"
SIM_LOGIN_PORT="${SIM_LOGIN_PORT:-18081}"
SIM_INSTANCE_PORT="${SIM_INSTANCE_PORT:-18082}"
SIM_PUBSUB_PORT="${SIM_PUBSUB_PORT:-17443}"
BRIDGE_HTTP_PORT="${BRIDGE_HTTP_PORT:-18080}"
WHMCS_PORT="${WHMCS_PORT:-18090}"
PROVISIONER_HTTP_PORT="${PROVISIONER_HTTP_PORT:-18083}"
WRITER_HTTP_PORT="${WRITER_HTTP_PORT:-18084}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
eval "$(scripts/ensure-nats.sh)"
nats_bin="${NATS_SERVER_BIN:-$NATS_SERVER_CURRENT}"

say "Building the services ($profile)"
if [ "$profile" = release ]; then cargo build --release --bins; else cargo build --bins; fi
bin="$root/target/$profile"

[ "${KEEP_STATE:-0}" = 1 ] || rm -rf "$state"
mkdir -p "$state/logs" "$state/keys"
if [ ! -f "$state/keys/sf.key.pem" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$state/keys/sf.key.pem" 2>/dev/null
  openssl pkey -in "$state/keys/sf.key.pem" -pubout -out "$state/keys/sf.pub.pem"
fi

pids=()
cleanup() {
  trap - EXIT INT TERM
  say "Stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Logs are in $state/logs."
}
trap cleanup EXIT INT TERM

wait_http() { # url, name
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not come up; see $state/logs" >&2; exit 1
}

say "Starting nats-server ($("$nats_bin" --version)) on $NATS_PORT"
"$nats_bin" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$state/nats" -m $((NATS_PORT + 1)) >"$state/logs/nats.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$((NATS_PORT + 1))/healthz" nats-server

say "Starting sf-sim"
SF_SIM_LOGIN_ADDR="127.0.0.1:$SIM_LOGIN_PORT" SF_SIM_INSTANCE_ADDR="127.0.0.1:$SIM_INSTANCE_PORT" \
SF_SIM_PUBSUB_ADDR="127.0.0.1:$SIM_PUBSUB_PORT" SF_SIM_PUBLIC_KEY_PATH="$state/keys/sf.pub.pem" \
SF_SIM_CLIENT_ID=demo-consumer-key SF_SIM_USERNAME=integration@demo.example SF_SIM_KEEPALIVE_SECS=5 \
LOG_FORMAT=pretty "$bin/sf-sim" >"$state/logs/sf-sim.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$SIM_LOGIN_PORT/health" sf-sim

say "Starting whmcs-sim (demo clients and products)"
WHMCS_SIM_ADDR="127.0.0.1:$WHMCS_PORT" WHMCS_SIM_IDENTIFIER=demo-identifier WHMCS_SIM_SECRET=demo-secret \
WHMCS_SIM_SEED_DEMO=true LOG_FORMAT=pretty "$bin/whmcs-sim" >"$state/logs/whmcs-sim.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$WHMCS_PORT/health" whmcs-sim

say "Starting provisioner"
NATS_URL="nats://127.0.0.1:$NATS_PORT" HTTP_ADDR="127.0.0.1:$PROVISIONER_HTTP_PORT" \
SF_LOGIN_URL="http://127.0.0.1:$SIM_LOGIN_PORT" SF_CLIENT_ID=demo-consumer-key \
SF_USERNAME=integration@demo.example SF_PRIVATE_KEY_PATH="$state/keys/sf.key.pem" \
WHMCS_API_URL="http://127.0.0.1:$WHMCS_PORT/includes/api.php" WHMCS_API_IDENTIFIER=demo-identifier \
WHMCS_API_SECRET=demo-secret LOG_FORMAT=json "$bin/provisioner" >"$state/logs/provisioner.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$PROVISIONER_HTTP_PORT/health" provisioner

say "Starting sf-writer"
NATS_URL="nats://127.0.0.1:$NATS_PORT" HTTP_ADDR="127.0.0.1:$WRITER_HTTP_PORT" \
SF_LOGIN_URL="http://127.0.0.1:$SIM_LOGIN_PORT" SF_CLIENT_ID=demo-consumer-key \
SF_USERNAME=integration@demo.example SF_PRIVATE_KEY_PATH="$state/keys/sf.key.pem" \
LOG_FORMAT=pretty "$bin/sf-writer" >"$state/logs/sf-writer.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$WRITER_HTTP_PORT/health" sf-writer

say "Starting sf-bridge"
NATS_URL="nats://127.0.0.1:$NATS_PORT" HTTP_ADDR="127.0.0.1:$BRIDGE_HTTP_PORT" \
SF_LOGIN_URL="http://127.0.0.1:$SIM_LOGIN_PORT" SF_CLIENT_ID=demo-consumer-key \
SF_USERNAME=integration@demo.example SF_PRIVATE_KEY_PATH="$state/keys/sf.key.pem" \
SF_PUBSUB_ENDPOINT="http://127.0.0.1:$SIM_PUBSUB_PORT" SF_EVENTS_REPLAY=ALL \
LOG_FORMAT=pretty "$bin/sf-bridge" >"$state/logs/sf-bridge.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$BRIDGE_HTTP_PORT/health" sf-bridge
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$BRIDGE_HTTP_PORT/health/sf-events" | grep -q '"state":"subscribed"' && break
  sleep 0.1
done

say "Seeding demo data in sf-sim and approving the orders"
seed="$(curl -fsS -X POST "http://127.0.0.1:$SIM_LOGIN_PORT/admin/seed-demo")"
orders="$(python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["orders"]))' <<<"$seed")"
for order in $orders; do
  curl -fsS -X POST "http://127.0.0.1:$SIM_LOGIN_PORT/admin/orders/$order/approve" >/dev/null
  echo "approved Order $order (Activation_Status__c = Activating, OrderProvisionRequested__e published)"
done

say "Orders flowing"
count=$(wc -w <<<"$orders")
for _ in $(seq 1 150); do
  done_count=$(grep -cE 'Order provisioned in WHMCS|Provisioning failed|Provisioning skipped' "$state/logs/provisioner.log" || true)
  [ "$done_count" -ge "$count" ] && break
  sleep 0.2
done
python3 - "$state/logs/provisioner.log" <<'PY'
import json, sys
journeys = {}
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    fields = {}
    for span in entry.get("spans", []):
        fields |= span
    fields |= entry
    order = fields.get("order_id")
    if not order:
        continue
    j = journeys.setdefault(order, {"steps": [], "end": None, "correlation": fields.get("correlation_id")})
    message = entry.get("message", "")
    if message == "Step completed.":
        j["steps"].append(f'{entry.get("step")} {entry.get("duration_ms")}ms')
    elif message.startswith("Order provisioned"):
        j["end"] = f'ACTIVATED (WHMCS order {entry.get("whmcs_order_id")})'
    elif message.startswith("Provisioning failed"):
        j["end"] = f'FAILED {entry.get("error_code")}: {entry.get("error_message")}'
    elif message.startswith("Provisioning skipped"):
        j["end"] = f'SKIPPED: {entry.get("reason")}'
for order, j in journeys.items():
    print(f"Order {order}  correlation {j['correlation']}")
    print("   " + " -> ".join(j["steps"]))
    print(f"   => {j['end']}")
PY
for order in $orders; do
  trace="$(NATS_URL="nats://127.0.0.1:$NATS_PORT" "$bin/provctl" --json order "$order" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin).get("trace_id") or "-")' 2>/dev/null || echo -)"
  echo "Order $order  trace $trace"
done

say "The Orders in Salesforce (sf-sim), as sf-writer left them"
for order in $orders; do
  for _ in $(seq 1 50); do
    status="$(curl -fsS "http://127.0.0.1:$SIM_LOGIN_PORT/admin/orders/$order" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("Activation_Status__c"))')"
    [ "$status" != "Activating" ] && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$SIM_LOGIN_PORT/admin/orders/$order" | python3 -c '
import json, sys
o = json.load(sys.stdin)
error = " ".join(str(v) for v in (o.get("Activation_Error_Code__c"), o.get("Activation_Error_Message__c")) if v)
print("Order %s: %s  WHMCS_Order_ID__c=%s  %s" % (o.get("Id"), o.get("Activation_Status__c"), o.get("WHMCS_Order_ID__c"), error))'
done

say "provctl status"
NATS_URL="nats://127.0.0.1:$NATS_PORT" "$bin/provctl" status || true
first_order="$(awk '{print $1}' <<<"$orders")"
say "provctl order $first_order"
NATS_URL="nats://127.0.0.1:$NATS_PORT" "$bin/provctl" order "$first_order" || true

say "The order status API (what the portal asks): GET /orders/$first_order?wait=10"
curl -fsS "http://127.0.0.1:$PROVISIONER_HTTP_PORT/orders/$first_order?wait=10" | python3 -m json.tool || true
say "provctl orders --state failed"
NATS_URL="nats://127.0.0.1:$NATS_PORT" "$bin/provctl" orders --state failed || true

say "sf-bridge /health/sf-events"
curl -fsS "http://127.0.0.1:$BRIDGE_HTTP_PORT/health/sf-events" | python3 -m json.tool

cat <<MSG

The stack is running. Try:
  curl -X POST http://127.0.0.1:$SIM_LOGIN_PORT/admin/orders/<OrderId>/approve   # approve again
  curl http://127.0.0.1:$BRIDGE_HTTP_PORT/metrics | grep sf_bridge_
  curl http://127.0.0.1:$PROVISIONER_HTTP_PORT/metrics | grep provisioner_
  curl http://127.0.0.1:$WHMCS_PORT/admin/orders                                  # what WHMCS holds
  curl "http://127.0.0.1:$PROVISIONER_HTTP_PORT/orders/<OrderId>?wait=30"          # an order's status (long poll)
  NATS_URL=nats://127.0.0.1:$NATS_PORT $bin/provctl status                    # operator view
  tail -f $state/logs/provisioner.log
Ctrl-C stops everything.
MSG
wait
