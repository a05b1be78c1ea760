#!/usr/bin/env python3
"""Writes the checked-in seed corpora, fuzz/corpus/<target>/seed-*, from the real shapes: the
simulators' answers (services/sf-sim, services/whmcs-sim) and the contract's bodies
(docs/contract.md section 6). Re-run after a format change; libFuzzer grows its own corpus
elsewhere (fuzz/target/corpus, see scripts/fuzz.sh), so this directory only holds seeds.

Framing per target (fuzz/src/lib.rs):
  sf_event_avro         selector byte (bit 0: decode with V1 or V2), then the Avro payload
  whmcs_reply           selector byte (low: action, high nibble: HTTP status), then the body
  sf_rest_reply         selector byte (low: kind, high nibble: HTTP status), then the body
  pubsub_trailers       `name: value` trailer lines
  *_message             subject line, header lines, empty line, payload
"""
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
# Index of each status in fuzz/src/lib.rs STATUSES, as the selector's high nibble.
STATUS = {200: 0, 201: 3, 204: 4, 400: 5, 401: 6, 403: 7, 404: 8, 429: 9, 500: 10, 503: 11}


def write(target, name, data):
    path = ROOT / target
    path.mkdir(parents=True, exist_ok=True)
    (path / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


# --- Avro (services/sf-sim/src/avro.rs: the record layout of V1 and V2) ------------------------
def zigzag(n):
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def avro_string(s):
    raw = s.encode()
    return zigzag(len(raw)) + raw


def avro_opt_string(s):
    return zigzag(0) if s is None else zigzag(1) + avro_string(s)


def event(v2, order_id, created=1_700_000_000_000, by="005Sm0000000001AAA", idem="k-1",
          corr="c-1", requested_by="ops", version=1.0, priority="High"):
    out = zigzag(created) + avro_string(by) + avro_opt_string(order_id)
    if v2:
        out += avro_opt_string(priority)
    out += avro_opt_string(idem) + avro_opt_string(corr) + avro_opt_string(requested_by)
    out += zigzag(0) if version is None else zigzag(1) + struct.pack("<d", version)
    return out


def avro_seeds():
    t = "sf_event_avro"
    for v2 in (False, True):
        tag = "v2" if v2 else "v1"
        full = event(v2, "801Sm0000000001AAA")
        write(t, f"{tag}-full", bytes([int(v2)]) + full)
        # Written with one version, decoded with the other (the selector bit picks the reader).
        write(t, f"{tag}-read-as-other", bytes([int(not v2)]) + full)
        write(t, f"{tag}-15-char-id", bytes([int(v2)]) + event(v2, "801Sm0000000001"))
        write(t, f"{tag}-nulls", bytes([int(v2)]) + event(v2, "801Sm0000000001AAA", idem=None,
                                                          corr=None, requested_by=None,
                                                          version=None, priority=None))
        # The simulator's poison kinds: missing and malformed OrderId__c, undecodable bytes.
        write(t, f"{tag}-missing-order-id", bytes([int(v2)]) + event(v2, None))
        write(t, f"{tag}-malformed-order-id", bytes([int(v2)]) + event(v2, "801' OR 1=1"))
    undecodable = zigzag(1_700_000_000_000) + avro_string("005Sm0000000001AAA") + \
        bytes([0x0E, 0x24]) + b"not avro"
    write(t, "undecodable", b"\x00" + undecodable)


# --- WHMCS (services/whmcs-sim/src/actions.rs) -------------------------------------------------
def whmcs_seeds():
    t = "whmcs_reply"
    ok = {"result": "success"}
    client = {"userid": 3, "id": 3, "client_id": 3, "firstname": "Ada", "lastname": "L",
              "email": "ada@example.com", "status": "Active", "currency": 1,
              "currency_code": "USD"}
    replies = [
        (0, 200, "client", {**ok, "client": client, **client}),
        (1, 200, "paymethods", {**ok, "clientid": 3, "paymethods": [
            {"id": 1, "type": "RemoteCreditCard", "description": "", "gateway_name": "stripe",
             "contact_type": "Client", "contact_id": 3, "remote_token": "tok",
             "last_updated": "01/01/2026 00:00", "card_last_four": "4242",
             "expiry_date": "12/30", "start_date": "", "issue_number": "",
             "card_type": "Visa"}]}),
        (1, 200, "paymethods-none", {**ok, "clientid": 3, "paymethods": []}),
        (2, 200, "products", {**ok, "totalresults": 1, "products": {"product": [
            {"pid": 1, "gid": 1, "type": "hostingaccount", "name": "VPS", "module": "autorelease",
             "paytype": "recurring", "allowqty": 0, "pricing": {"USD": {
                 "prefix": "$", "suffix": " USD", "msetupfee": "0.00", "monthly": "10.00",
                 "quarterly": "-1.00", "semiannually": "-1.00", "annually": "100.00",
                 "biennially": "-1.00", "triennially": "-1.00"}},
             "customfields": {"customfield": []}}]}}),
        (3, 200, "addorder", {**ok, "orderid": "7", "serviceids": "3,4", "productids": "3,4",
                              "addonids": "", "domainids": "", "invoiceid": "12"}),
        (3, 200, "addorder-noinvoice", {**ok, "orderid": 8, "productids": "5",
                                        "addonids": "", "domainids": ""}),
        (3, 200, "addorder-error", {"result": "error", "message": "Client ID Not Found"}),
        (4, 200, "acceptorder", ok),
        (4, 200, "acceptorder-error",
         {"result": "error", "message": "Order ID not found or Status not Pending"}),
        (4, 403, "auth", {"result": "error", "message": "Authentication Failed"}),
        (5, 200, "getorders", {**ok, "totalresults": "1", "startnumber": 0, "numreturned": 1,
                               "orders": {"order": [{
                                   "id": "9", "ordernum": "123", "userid": "3",
                                   "date": "2026-01-01 00:00:00", "amount": "10.00",
                                   "paymentmethod": "stripe", "invoiceid": "12",
                                   "status": "Pending", "notes": "prov:801Sm0000000001AAA",
                                   "lineitems": {"lineitem": [{
                                       "type": "product", "relid": "30",
                                       "producttype": "Hosting Account", "product": "VPS",
                                       "domain": "", "billingcycle": "Monthly",
                                       "amount": "$10.00 USD", "status": "Pending"}]}}]}}),
        (5, 200, "getorders-empty", {**ok, "totalresults": 0, "startnumber": 0,
                                     "numreturned": 0, "orders": ""}),
    ]
    for action, status, name, body in replies:
        write(t, name, bytes([STATUS[status] << 4 | action]) + dumps(body).encode())
    write(t, "warning", bytes([3]) + b'{"warning":"Invalid or Missing Payment Information"}')
    write(t, "html-503", bytes([STATUS[503] << 4 | 3]) + b"<html>busy</html>")


# --- Salesforce REST (services/sf-sim/src/oauth.rs, rest/) --------------------------------------
def rest_seeds():
    t = "sf_rest_reply"
    order = {"attributes": {"type": "Order", "url": "/services/data/v62.0/sobjects/Order/x"},
             "Id": "801Sm0000000001AAA", "AccountId": "001Sm0000000001AAA",
             "Status": "Activated", "Activation_Status__c": "Approved", "WHMCS_Order_ID__c": None,
             "Account": {"attributes": {"type": "Account"}, "WH_Account__c": "3"},
             "OrderItems": {"totalSize": 2, "done": False,
                            "nextRecordsUrl": "/services/data/v62.0/query/01gSm0000000001AAA-1",
                            "records": [{"Id": "802Sm0000000001AAA", "Quantity": 1.0,
                                         "Product2": {"Name": "VPS", "WH_Product_ID__c": 1,
                                                      "Billing_Cycle__c": "Monthly"}}]}}
    page = {"totalSize": 1, "done": True, "records": [order]}
    write(t, "query-generic", b"\x00" + dumps(page).encode())
    write(t, "query-more", b"\x00" + dumps({"totalSize": 3, "done": False, "nextRecordsUrl":
                                           "/services/data/v62.0/query/01gSm0000000001AAA-200",
                                           "records": []}).encode())
    write(t, "query-order", b"\x01" + dumps(page).encode())
    write(t, "composite", b"\x02" + dumps([
        {"id": "801Sm0000000001AAA", "success": True, "errors": []},
        {"success": False, "errors": [{"statusCode": "ENTITY_IS_DELETED",
                                       "message": "entity is deleted", "fields": []}]}]).encode())
    for status, name, body in [
        (400, "malformed-query", [{"message": "unexpected token", "errorCode": "MALFORMED_QUERY"}]),
        (401, "session", [{"message": "Session expired or invalid",
                           "errorCode": "INVALID_SESSION_ID"}]),
        (403, "limit", [{"message": "TotalRequests Limit exceeded.",
                         "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
        (503, "html", "<html>Service Unavailable</html>"),
    ]:
        raw = body if isinstance(body, str) else dumps(body)
        write(t, f"error-{name}", bytes([STATUS[status] << 4 | 3]) + raw.encode())
    token = {"access_token": "00DSm0000000001!AQ.token", "scope": "api",
             "instance_url": "http://127.0.0.1:8443/",
             "id": "http://127.0.0.1:8443/id/00DSm0000000001AAA/005Sm0000000001AAA",
             "token_type": "Bearer", "issued_at": "1700000000000", "signature": "c2ln"}
    write(t, "token", b"\x04" + dumps(token).encode())
    write(t, "token-rejected", bytes([STATUS[400] << 4 | 4]) + dumps(
        {"error": "invalid_grant", "error_description": "user hasn't approved this consumer"}
    ).encode())
    write(t, "token-busy", bytes([STATUS[503] << 4 | 4]) + b"<html>busy</html>")


# --- Pub/Sub trailers (services/sf-sim/src/pubsub.rs, libs/pubsub-proto) -----------------------
def trailer_seeds():
    t = "pubsub_trailers"
    rpc = "rpc-id: 3f1b2c4d-0000-4000-8000-000000000001\n"
    for name, code, message, error_code in [
        ("auth", 16, "auth error rpcId: 3f1b", "sfdc.platform.eventbus.grpc.service.auth.error"),
        ("replay-corrupted", 3, "Replay ID corrupted rpcId: 3f1b",
         "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"),
        ("replay-validation", 3, "Replay ID validation failed",
         "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"),
        ("unavailable", 14, "Service unavailable%20rpcId: 3f1b",
         "sfdc.platform.eventbus.grpc.service.unavailable"),
        ("topic", 5, "Topic not found", "sfdc.platform.eventbus.grpc.topic.not.found"),
        ("num-requested", 3, "num requested invalid",
         "sfdc.platform.eventbus.grpc.subscription.fetch.num.requested.invalid"),
    ]:
        write(t, name, f"grpc-status: {code}\ngrpc-message: {message}\nerror-code: {error_code}\n{rpc}")
    write(t, "no-error-code", "grpc-status: 13\ngrpc-message: internal\n")
    write(t, "details", "grpc-status: 7\ngrpc-message: denied\ngrpc-status-details-bin: CAcSBmRlbmllZA\n")


# --- NATS messages (docs/contract.md section 6) ------------------------------------------------
ORDER = "801Sm0000000001AAA"
HEADERS = ("Correlation-Id: c-1\n"
           "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"
           "tracestate: vendor=value\n")


def message(subject, body, headers=HEADERS):
    raw = body if isinstance(body, (str, bytes)) else dumps(body)
    raw = raw if isinstance(raw, bytes) else raw.encode()
    return f"{subject}\n{headers}Nats-Msg-Id: e-1\n\n".encode() + raw


REQUESTED = {"schema": "provisioning.requested.v1", "event_id": "e-1", "replay_id": "AAAAAAAPQkA=",
             "channel": "/event/OrderProvisionRequested__e", "schema_id": "s-1",
             "order_id": ORDER, "idem_key": "k-1", "correlation_id": "c-1",
             "requested_by": "ops", "version": 1.0, "created_at": "2023-11-14T22:13:20Z",
             "created_by_id": "005Sm0000000001AAA", "received_at": "2026-01-01T00:00:00Z"}
UPDATE = {"schema": "sf.order.update.v1", "order_id": ORDER, "sequence": 2,
          "fields": {"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "7",
                     "Provisioning_Error__c": None},
          "correlation_id": "c-1", "event_id": "e-1", "created_at": "2026-01-01T00:00:00Z"}


def message_seeds():
    t = "requested_message"
    write(t, "contract", message(f"provisioning.requested.{ORDER}", REQUESTED))
    write(t, "15-char-subject", message("provisioning.requested.801Sm0000000001",
                                        {**REQUESTED, "order_id": "801Sm0000000001"}))
    write(t, "nulls", message(f"provisioning.requested.{ORDER}", {
        **REQUESTED, "idem_key": None, "requested_by": None, "version": None,
        "created_at": None, "created_by_id": None}, headers=""))
    write(t, "other-order", message("provisioning.requested.801Sm0000000002AAA", REQUESTED))
    write(t, "not-json", message(f"provisioning.requested.{ORDER}", b"\xff\xfe"))
    t = "order_update_message"
    write(t, "contract", message(f"sf.order.update.{ORDER}", UPDATE))
    write(t, "retarget", message(f"sf.order.update.{ORDER}",
                                 {**UPDATE, "fields": {"Id": "801Sm0000000002AAA"}}))
    write(t, "wrong-schema", message(f"sf.order.update.{ORDER}", {**UPDATE, "schema": "v0"}))
    t = "deadletter_message"
    import base64
    for service, subject, payload, reason_code in [
        ("provisioner", f"provisioning.requested.{ORDER}", dumps(REQUESTED).encode(),
         "invalid_request"),
        ("sf-writer", f"sf.order.update.{ORDER}", dumps(UPDATE).encode(), "invalid_update"),
        ("sf-bridge", None, event(False, None), "order_id_missing"),
    ]:
        origin = {"stream": "PROVISIONING_REQUESTS", "stream_sequence": 7}
        if subject:
            origin["subject"] = subject
        else:
            origin = {"channel": "/event/OrderProvisionRequested__e", "event_id": "e-1",
                      "replay_id": "AAAAAAAPQkA="}
        body = {"schema": "provisioning.deadletter.v1", "service": service,
                "reason": "the reason", "reason_code": reason_code,
                "payload_base64": base64.b64encode(payload).decode(), "origin": origin,
                "dead_lettered_at": "2026-01-01T00:00:00Z"}
        write(t, service, message(f"provisioning.deadletter.{service}", body))
    write(t, "not-a-dead-letter", message("provisioning.deadletter.provisioner", "{}"))


if __name__ == "__main__":
    for target in ("sf_event_avro", "whmcs_reply", "sf_rest_reply", "pubsub_trailers",
                   "requested_message", "order_update_message", "deadletter_message"):
        shutil.rmtree(ROOT / target, ignore_errors=True)
    avro_seeds()
    whmcs_seeds()
    rest_seeds()
    trailer_seeds()
    message_seeds()
