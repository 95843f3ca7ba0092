"""End to end over real gRPC: a Python grpcio client generated from Envoy's own rls.proto
(not quorate's code) calls a running `quorate serve` and checks decisions and headers.

run.sh generates the stubs, starts the server with policy.yaml and sets QUORATE_GRPC.
Every test uses fresh descriptor values, so counters start at zero.
"""

import os
import uuid

import grpc
import pytest
from google.protobuf import json_format

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
Unit = rls_pb2.RateLimitResponse.RateLimit


@pytest.fixture(scope="module")
def rls():
    channel = grpc.insecure_channel(os.environ["QUORATE_GRPC"])
    grpc.channel_ready_future(channel).result(timeout=10)
    yield rls_pb2_grpc.RateLimitServiceStub(channel)
    channel.close()


def fresh(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def descriptor(*entries, hits_addend=None):
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits_addend is not None:
        d.hits_addend.value = hits_addend
    return d


def call(rls, domain, descriptors, hits_addend=0):
    return rls.ShouldRateLimit(
        rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits_addend),
        timeout=5,
    )


def headers(resp):
    """response_headers_to_add as a dict with lower-cased names (each name at most once)."""
    out = {}
    for h in resp.response_headers_to_add:
        name = h.key.lower()
        assert name not in out, f"{name} appears twice: {resp}"
        out[name] = h.value
    return out


def sf_params(member):
    """`"name";a=1;b=2` -> ("name", {"a": 1, "b": 2})."""
    name, *params = member.strip().split(";")
    assert name.startswith('"') and name.endswith('"'), member
    return name[1:-1], {k: int(v) for k, v in (p.split("=", 1) for p in params)}


def assert_limit(status, code, name, requests_per_unit, unit, remaining):
    assert status.code == code, status
    assert status.HasField("current_limit"), status
    assert status.current_limit.name == name
    assert status.current_limit.requests_per_unit == requests_per_unit
    assert status.current_limit.unit == unit
    assert status.limit_remaining == remaining
    reset = status.duration_until_reset
    assert reset.seconds > 0 or reset.nanos > 0, status


def test_allowed_until_the_limit_then_over_limit_with_headers(rls):
    user = fresh("u")
    for remaining in (2, 1, 0):
        resp = call(rls, "py", [descriptor(("user", user))])
        assert resp.overall_code == OK, resp
        assert len(resp.statuses) == 1
        assert_limit(resp.statuses[0], OK, "per_user", 3, Unit.HOUR, remaining)
        h = headers(resp)
        assert h["ratelimit-policy"] == '"per_user";q=3;w=3600', h
        name, params = sf_params(h["ratelimit"])
        assert name == "per_user"
        assert params["r"] == remaining
        assert 1 <= params["t"] <= 3600
        assert "retry-after" not in h
    resp = call(rls, "py", [descriptor(("user", user))])
    assert resp.overall_code == OVER_LIMIT, resp
    assert_limit(resp.statuses[0], OVER_LIMIT, "per_user", 3, Unit.HOUR, 0)
    h = headers(resp)
    assert 1 <= int(h["retry-after"]) <= 3600, h
    assert sf_params(h["ratelimit"])[1]["r"] == 0
    # Another user is unaffected.
    resp = call(rls, "py", [descriptor(("user", fresh("u")))])
    assert resp.overall_code == OK
    assert resp.statuses[0].limit_remaining == 2


def test_one_status_per_descriptor_in_request_order(rls):
    user, tenant = fresh("u"), fresh("t")
    resp = call(
        rls,
        "py",
        [
            descriptor(("tenant", tenant)),
            descriptor(("nothing", "matches")),
            descriptor(("client", "internal")),
            descriptor(("plan", "free"), ("user", user)),
            descriptor(("user", user)),
        ],
    )
    assert resp.overall_code == OK, resp
    assert len(resp.statuses) == 5
    s = resp.statuses
    assert_limit(s[0], OK, "py/tenant", 100, Unit.DAY, 99)
    assert s[1].code == OK and not s[1].HasField("current_limit"), s[1]
    assert s[2].code == OK and not s[2].HasField("current_limit"), s[2]
    # Depth decides: two entries reach the nested limit, one entry the top-level one.
    assert_limit(s[3], OK, "free_user", 10, Unit.MINUTE, 9)
    assert_limit(s[4], OK, "per_user", 3, Unit.HOUR, 2)
    names = [sf_params(m)[0] for m in headers(resp)["ratelimit-policy"].split(",")]
    assert names == ["py/tenant", "free_user", "per_user"]


def test_one_descriptor_over_limit_makes_the_whole_answer_over_limit(rls):
    user, tenant = fresh("u"), fresh("t")
    call(rls, "py", [descriptor(("user", user))], hits_addend=3)
    resp = call(rls, "py", [descriptor(("tenant", tenant)), descriptor(("user", user))])
    assert resp.overall_code == OVER_LIMIT, resp
    assert resp.statuses[0].code == OK
    # All-or-nothing: the OVER_LIMIT request took nothing from the tenant's counter.
    assert resp.statuses[0].limit_remaining == 100
    assert resp.statuses[1].code == OVER_LIMIT
    assert "retry-after" in headers(resp)


def test_hits_addend_request_and_descriptor_level(rls):
    tenant = fresh("t")
    resp = call(rls, "py", [descriptor(("tenant", tenant))], hits_addend=10)
    assert resp.statuses[0].limit_remaining == 90
    resp = call(rls, "py", [descriptor(("tenant", tenant), hits_addend=5)], hits_addend=10)
    assert resp.statuses[0].limit_remaining == 85
    resp = call(rls, "py", [descriptor(("tenant", tenant), hits_addend=0)])
    assert resp.statuses[0].limit_remaining == 85, "descriptor-level 0 checks without counting"
    resp = call(rls, "py", [descriptor(("tenant", tenant))], hits_addend=0)
    assert resp.statuses[0].limit_remaining == 84, "request-level 0 means 1"


def test_unknown_domain_is_ok_without_limits(rls):
    resp = call(rls, "no-such-domain", [descriptor(("user", "x")), descriptor(("a", "b"))])
    assert resp.overall_code == OK
    assert len(resp.statuses) == 2
    for s in resp.statuses:
        assert s.code == OK and not s.HasField("current_limit"), s
    assert len(resp.response_headers_to_add) == 0


@pytest.mark.parametrize(
    "domain, descriptors, field",
    [
        ("", [descriptor(("user", "x"))], "domain"),
        ("py", [], "descriptors"),
        ("py", [descriptor()], "descriptors[0].entries"),
        ("py", [descriptor(("user", "x")), descriptor(("", "v"))], "descriptors[1].entries[0].key"),
    ],
)
def test_malformed_requests_are_invalid_argument(rls, domain, descriptors, field):
    with pytest.raises(grpc.RpcError) as err:
        call(rls, domain, descriptors)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert err.value.details().startswith(field), err.value.details()


def test_wildcards_anywhere_share_one_counter_and_return_metadata(rls):
    bucket = fresh("bucket")

    def ask(path):
        return call(rls, "py", [descriptor(("bucket", bucket), ("path", path))])

    first = ask("/api/v1/orders/17")
    assert first.overall_code == OK
    assert_limit(first.statuses[0], OK, "orders", 2, Unit.HOUR, 1)
    meta = json_format.MessageToDict(first.dynamic_metadata)
    assert meta["domain"] == "py"
    assert meta["descriptors"] == [{"entries": [f"bucket={bucket}", "path=/api/v1/orders/17"]}]
    assert meta["metadata"] == {"tier": "gold", "quota": {"orders": 2}}
    # Another value matching the same pattern (each * may match nothing): same counter.
    second = ask("/api/v2/orders/")
    assert_limit(second.statuses[0], OK, "orders", 2, Unit.HOUR, 0)
    third = ask("/api/x/orders/9")
    assert third.overall_code == OVER_LIMIT
    # Only descriptors that pass contribute metadata.
    assert "metadata" not in json_format.MessageToDict(third.dynamic_metadata)
    # Not the pattern: no rule, no limit, no metadata.
    other = ask("/api/v1/carts/1")
    assert other.overall_code == OK
    assert not other.statuses[0].HasField("current_limit")
    assert not other.HasField("dynamic_metadata")
