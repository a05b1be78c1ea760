#!/usr/bin/env bash
# A third-party client against sf-sim: the widely used Node.js Pub/Sub client from npm
# (salesforce-pubsub-api-client, which speaks only TLS) authenticates with its own OAuth 2.0 JWT
# bearer flow, subscribes to sf-sim's topic, fetches the writer schemas with GetSchema, decodes
# the Avro payloads itself and must find the fields sf-sim's admin API published. A check of the
# simulator's fidelity by a client nobody here wrote (docs/testing.md, "Third-party client").
#
# Not run by CI: it installs packages from the npm registry. Needs node (>= 20), npm, openssl,
# curl and cargo. Exits non-zero when anything differs.
#
#   scripts/pubsub-node-check.sh
#
# SF_SIM_BIN: an sf-sim binary to use instead of building one.
set -euo pipefail

# Pinned: the check is of this client's behaviour; a new release is a deliberate bump.
CLIENT_VERSION=5.5.2
AVRO_JS_VERSION=1.12.1

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in node npm openssl curl; do
    command -v "$tool" >/dev/null || { echo "pubsub-node-check: $tool is required" >&2; exit 2; }
done

work=$(mktemp -d)
sim_pid=
cleanup() {
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${SF_SIM_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet -p sf-sim --bin sf-sim)
    SF_SIM_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/sf-sim"
fi

echo "== npm install salesforce-pubsub-api-client@$CLIENT_VERSION (into $work)"
# avro-js is held at 1.12.1: 1.12.2 (which the client's ^1.12.1 would take) still requires
# underscore but no longer declares it, so the client cannot even be imported with it.
cat >"$work/package.json" <<JSON
{
  "name": "pubsub-node-check",
  "private": true,
  "dependencies": { "salesforce-pubsub-api-client": "$CLIENT_VERSION" },
  "overrides": { "avro-js": "$AVRO_JS_VERSION" }
}
JSON
# --ignore-scripts: nothing the client needs is built at install time.
(cd "$work" && npm install --silent --no-audit --no-fund --ignore-scripts)

# The connected app's key pair: sf-sim checks the client's assertion with the public half.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
openssl pkey -in "$work/key.pem" -pubout -out "$work/key.pub.pem"

read -r login_port instance_port pubsub_port < <(node -e '
const net = require("node:net");
const ports = [];
const next = () => { const s = net.createServer().listen(0, "127.0.0.1", () => {
  ports.push(s.address().port); s.close(); ports.length < 3 ? next() : console.log(ports.join(" ")); }); };
next();')

client_id=3MVG9node.check.consumer.key
username=node-check@sfsim.example
channel=/event/OrderProvisionRequested__e
echo "== sf-sim with TLS (login :$login_port, instance :$instance_port, pubsub :$pubsub_port)"
env SF_SIM_PUBLIC_KEY_PATH="$work/key.pub.pem" SF_SIM_CLIENT_ID="$client_id" \
    SF_SIM_USERNAME="$username" SF_SIM_PUBLIC_HOST=localhost \
    SF_SIM_LOGIN_ADDR="127.0.0.1:$login_port" SF_SIM_INSTANCE_ADDR="127.0.0.1:$instance_port" \
    SF_SIM_PUBSUB_ADDR="127.0.0.1:$pubsub_port" \
    SF_SIM_TLS=generate SF_SIM_TLS_CA_OUT="$work/ca.pem" \
    "$SF_SIM_BIN" >"$work/sf-sim.log" 2>&1 &
sim_pid=$!

login="https://localhost:$login_port"
admin() { curl --silent --show-error --fail --cacert "$work/ca.pem" -H 'content-type: application/json' "$@"; }
# sf-sim is another process: polled until it answers over TLS with its own CA.
for _ in $(seq 1 100); do
    if [ -s "$work/ca.pem" ] && admin "$login/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$sim_pid" 2>/dev/null; then cat "$work/sf-sim.log" >&2; exit 1; fi
    sleep 0.1
done
admin "$login/health" >/dev/null || { cat "$work/sf-sim.log" >&2; exit 1; }

echo "== two events through the admin API"
# For an Order created through the admin API, one event with each schema version, so the client
# has to fetch two writer schemas.
account=$(admin -X POST "$login/admin/accounts" -d '{"name": "Node Check Ltd", "wh_account": "42"}')
product=$(admin -X POST "$login/admin/products" -d '{"name": "Hosting", "wh_product_id": "7", "billing_cycle": "Monthly"}')
account_id=$(node -p 'JSON.parse(process.argv[1]).id' "$account")
product_id=$(node -p 'JSON.parse(process.argv[1]).id' "$product")
order=$(admin -X POST "$login/admin/orders" \
    -d "{\"account_id\": \"$account_id\", \"items\": [{\"product_id\": \"$product_id\", \"quantity\": 1}]}")
order_id=$(node -p 'JSON.parse(process.argv[1]).id' "$order")
publish() { # schema correlation-id
    admin -X POST "$login/admin/events" -d "{\"order_id\": \"$order_id\", \"idem_key\": \"$order_id:$1\", \
\"correlation_id\": \"$2\", \"requested_by\": \"node-check\", \"version\": 1, \"schema\": \"$1\"}"
}
first_correlation=$(node -p 'require("node:crypto").randomUUID()')
correlation=$(node -p 'require("node:crypto").randomUUID()')
first=$(publish v1 "$first_correlation")
second=$(publish v2 "$correlation")

cat >"$work/check.mjs" <<'NODE'
// Subscribes with the npm client and checks what it decoded against what sf-sim published.
import fs from "node:fs";
import grpc from "@grpc/grpc-js";
import PubSubApiClient from "salesforce-pubsub-api-client";

const env = process.env;
const expected = JSON.parse(env.EXPECTED);

// The client passes its own bundled CA file (dist/cacert-*.pem, Salesforce's roots) to
// grpc.credentials.createSsl as rootCerts, so Node's default store, and NODE_EXTRA_CA_CERTS with
// it, does not apply to the gRPC channel. The least intrusive way in: the client's roots plus
// sf-sim's CA, for this process only, with verification (and the host name check) left on.
const simCa = fs.readFileSync(env.SF_SIM_CA);
const createSsl = grpc.credentials.createSsl;
grpc.credentials.createSsl = (rootCerts, ...rest) =>
  createSsl(Buffer.concat([rootCerts ?? Buffer.alloc(0), Buffer.from("\n"), simCa]), ...rest);

const show = (value) =>
  JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v));
const logger = {
  debug() {},
  info: (...args) => console.log("[client]", ...args),
  warn: (...args) => console.log("[client] WARN", ...args),
  error: (...args) => console.log("[client] ERROR", ...args),
};

const client = new PubSubApiClient(
  {
    authType: "oauth-jwt-bearer",
    loginUrl: env.SF_LOGIN_URL,
    clientId: env.SF_CLIENT_ID,
    username: env.SF_USERNAME,
    privateKey: fs.readFileSync(env.SF_PRIVATE_KEY_PATH, "utf8"),
    pubSubEndpoint: env.SF_PUBSUB_ENDPOINT,
  },
  logger,
);
await client.connect();

const received = [];
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no events within 30 s")), 30_000);
  client.subscribeFromEarliestEvent(
    env.SF_CHANNEL,
    (_subscription, type, data) => {
      if (type === "event") {
        received.push(data);
      } else if (type === "lastEvent") {
        clearTimeout(timer);
        resolve();
      } else if (type === "error" || type === "end") {
        clearTimeout(timer);
        reject(new Error(`${type}: ${show(data)}`));
      }
    },
    expected.length,
  );
});
client.close();

const failures = [];
const check = (what, actual, wanted) => {
  if (actual !== wanted) failures.push(`${what}: got ${show(actual)}, expected ${show(wanted)}`);
};
check("events received", received.length, expected.length);
received.forEach((event, i) => {
  const want = expected[i];
  console.log(`event ${i + 1}: ${show(event)}`);
  if (!want) return;
  const replayId = Number(Buffer.from(want.published.replay_id, "base64").readBigUInt64BE());
  check(`event ${i + 1} id`, event.id, want.published.event_id);
  check(`event ${i + 1} schemaId`, event.schemaId, want.published.schema_id);
  check(`event ${i + 1} replayId`, event.replayId, replayId);
  check(`event ${i + 1} OrderId__c`, event.payload.OrderId__c, want.order_id);
  check(`event ${i + 1} CorrelationId__c`, event.payload.CorrelationId__c, want.correlation_id);
  check(`event ${i + 1} CreatedById length`, String(event.payload.CreatedById).length, 18);
  const createdMs = Number(event.payload.CreatedDate);
  if (!(Math.abs(Date.now() - createdMs) < 10 * 60_000)) {
    failures.push(`event ${i + 1} CreatedDate ${show(event.payload.CreatedDate)} is not a recent epoch-ms`);
  }
});
if (failures.length) {
  console.log(`FAILED:\n  ${failures.join("\n  ")}`);
  process.exit(1);
}
console.log(`OK: ${received.length} events received and decoded, fields as published`);
process.exit(0);
NODE

echo "== subscribe with the npm client"
expected=$(node -e '
const [first, second, orderId, firstCorrelation, correlation] = process.argv.slice(1);
console.log(JSON.stringify([
  { published: JSON.parse(first), order_id: orderId, correlation_id: firstCorrelation },
  { published: JSON.parse(second), order_id: orderId, correlation_id: correlation },
]));' "$first" "$second" "$order_id" "$first_correlation" "$correlation")
status=0
# NODE_EXTRA_CA_CERTS covers the client's token and userinfo requests (Node's fetch uses the
# default store); the gRPC channel gets the CA in check.mjs.
(cd "$work" && env NODE_EXTRA_CA_CERTS="$work/ca.pem" EXPECTED="$expected" SF_SIM_CA="$work/ca.pem" \
    SF_LOGIN_URL="$login" SF_CLIENT_ID="$client_id" SF_USERNAME="$username" \
    SF_PRIVATE_KEY_PATH="$work/key.pem" SF_PUBSUB_ENDPOINT="localhost:$pubsub_port" \
    SF_CHANNEL="$channel" node check.mjs) || status=$?
if [ "$status" -ne 0 ]; then
    echo "-- sf-sim log" >&2; cat "$work/sf-sim.log" >&2
fi
exit "$status"
