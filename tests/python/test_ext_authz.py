"""End to end over real gRPC: a Python grpcio client generated from Envoy's own
external_auth.proto (not quorate's code) calls `envoy.service.auth.v3.Authorization/Check`
on a running `quorate serve` (the authorization part of policy.yaml), the way Envoy's
ext_authz filter does.

Envoy's contract: an allow is an OK `status` with `ok_response` (headers for the upstream,
headers to remove, headers for the client) and `dynamic_metadata` for later filters; a deny
is a *successful* RPC whose `status` is non-OK, with `denied_response` (HTTP status,
headers, body). Only a failure to decide is an RPC error.

run.sh generates the stubs, starts the server and sets QUORATE_GRPC.
"""

import json
import os
import uuid

import grpc
import pytest

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

ALICE = "alice-secret-key"  # consumer alice, groups admins + staff
BOB = "bob-secret-key"  # consumer bob, group staff
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@pytest.fixture(scope="module")
def authz():
    channel = grpc.insecure_channel(os.environ["QUORATE_GRPC"])
    grpc.channel_ready_future(channel).result(timeout=10)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()


def check_request(path, headers=None, method="GET", host="api.example.com",
                  source="127.0.0.1", route=None, raw_headers=None):
    attrs = attribute_context_pb2.AttributeContext()
    attrs.source.address.socket_address.address = source
    attrs.source.address.socket_address.port_value = 40000
    http = attrs.request.http
    http.method = method
    http.path = path
    http.host = host
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    if raw_headers is not None:
        # Envoy's `encode_raw_headers: true`: header_map with bytes values.
        for k, v in raw_headers:
            http.header_map.headers.add(key=k, raw_value=v)
    else:
        # Envoy hands over lower-cased names, pseudo-headers included.
        http.headers[":method"] = method
        http.headers[":path"] = path
        http.headers[":authority"] = host
        for k, v in (headers or {}).items():
            http.headers[k.lower()] = v
    if route is not None:
        attrs.context_extensions["route"] = route
    return external_auth_pb2.CheckRequest(attributes=attrs)


def check(authz, *args, **kwargs):
    # A deny is an answer, not an error: this raises on any RPC error.
    return authz.Check(check_request(*args, **kwargs), timeout=5)


def options(opts):
    """HeaderValueOptions as {lower-cased name: value}; each name at most once."""
    out = {}
    for o in opts:
        name = o.header.key.lower()
        assert name not in out, f"{name} appears twice: {opts}"
        out[name] = o.header.value
    return out


def metadata(resp):
    fields = resp.dynamic_metadata.fields
    out = {k: v.string_value for k, v in fields.items() if k != "groups"}
    if "groups" in fields:
        out["groups"] = [g.string_value for g in fields["groups"].list_value.values]
    return out


def assert_denied(resp, code, http_status, error):
    assert resp.status.code == code.value[0], resp
    assert resp.status.message, resp
    assert resp.WhichOneof("http_response") == "denied_response", resp
    denied = resp.denied_response
    assert denied.status.code == http_status, resp
    headers = options(denied.headers)
    assert headers.get("content-type") == "application/json", headers
    body = json.loads(denied.body)
    assert body["error"] == error, body
    assert body["reason"], body
    return headers


def test_allow_carries_identity_headers_and_dynamic_metadata(authz):
    resp = check(authz, "/api/items?page=2",
                 headers={"x-api-key": ALICE, "x-consumer-id": "mallory"})
    assert resp.status.code == grpc.StatusCode.OK.value[0], resp
    assert resp.WhichOneof("http_response") == "ok_response", resp
    ok = resp.ok_response
    upstream = options(ok.headers)
    assert upstream["x-consumer-id"] == "alice"
    assert upstream["x-consumer-groups"] == "admins,staff"
    # Set, not appended: what the client sent in x-consumer-id is overwritten.
    assert all(o.append_action == OVERWRITE for o in ok.headers), ok
    # `hide: true`: the API key does not reach the upstream.
    assert "x-api-key" in list(ok.headers_to_remove), ok
    assert options(ok.response_headers_to_add)["x-served-by"] == "quorate"
    assert metadata(resp) == {
        "consumer": "alice",
        "groups": ["admins", "staff"],
        "route": "api",
        "identity": "keys",
    }


def test_allow_from_raw_header_map(authz):
    resp = check(authz, "/api/items", raw_headers=[("x-api-key", BOB.encode())])
    assert resp.status.code == grpc.StatusCode.OK.value[0], resp
    assert options(resp.ok_response.headers)["x-consumer-id"] == "bob"


def test_missing_credentials_is_a_401_deny_with_a_challenge(authz):
    resp = check(authz, "/api/items")
    headers = assert_denied(resp, grpc.StatusCode.UNAUTHENTICATED, 401, "unauthenticated")
    assert 'realm="quorate-py"' in headers["www-authenticate"], headers


def test_unknown_key_is_a_401_deny(authz):
    resp = check(authz, "/api/items", headers={"x-api-key": "not-a-key"})
    headers = assert_denied(resp, grpc.StatusCode.UNAUTHENTICATED, 401, "unauthenticated")
    assert "www-authenticate" in headers
    assert "not-a-key" not in resp.denied_response.body


def test_acl_is_a_403_deny_naming_the_caller_in_metadata(authz):
    resp = check(authz, "/admin/users", headers={"x-api-key": BOB})
    assert_denied(resp, grpc.StatusCode.PERMISSION_DENIED, 403, "forbidden")
    assert metadata(resp)["consumer"] == "bob"
    allowed = check(authz, "/admin/users", headers={"x-api-key": ALICE})
    assert allowed.status.code == grpc.StatusCode.OK.value[0], allowed


def test_over_the_limit_is_a_429_deny_with_retry_after(authz):
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    headers = {"x-api-key": ALICE, "x-test-bucket": bucket}
    for remaining in (1, 0):
        resp = check(authz, "/limited/x", headers=headers)
        assert resp.status.code == grpc.StatusCode.OK.value[0], resp
        client = options(resp.ok_response.response_headers_to_add)
        assert client["ratelimit"].startswith(f'"per_consumer";r={remaining};t='), client
    resp = check(authz, "/limited/x", headers=headers)
    denied = assert_denied(resp, grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limited")
    assert 1 <= int(denied["retry-after"]) <= 3600, denied
    assert denied["ratelimit-policy"] == '"per_consumer";q=2;w=3600', denied
    assert denied["ratelimit"].startswith('"per_consumer";r=0;t='), denied
    # Counted per consumer: bob still passes in the same bucket.
    resp = check(authz, "/limited/x", headers={"x-api-key": BOB, "x-test-bucket": bucket})
    assert resp.status.code == grpc.StatusCode.OK.value[0], resp


def test_route_named_by_context_extensions_and_source_address(authz):
    inside = check(authz, "/anything", route="internal", source="10.1.2.3")
    assert inside.status.code == grpc.StatusCode.OK.value[0], inside
    assert metadata(inside)["route"] == "internal"
    outside = check(authz, "/anything", route="internal", source="192.0.2.7")
    assert_denied(outside, grpc.StatusCode.PERMISSION_DENIED, 403, "forbidden")
    unknown = check(authz, "/anything", route="no-such-route", source="10.1.2.3")
    assert_denied(unknown, grpc.StatusCode.PERMISSION_DENIED, 403, "no_route")


def test_unmatched_request_is_denied(authz):
    resp = check(authz, "/elsewhere", headers={"x-api-key": ALICE}, host="other.example")
    assert_denied(resp, grpc.StatusCode.PERMISSION_DENIED, 403, "no_route")


def test_unreadable_header_is_a_400_deny_not_an_error(authz):
    resp = check(authz, "/api/items", raw_headers=[("x-api-key", b"\xff\xfe")])
    assert_denied(resp, grpc.StatusCode.INVALID_ARGUMENT, 400, "bad_request")
