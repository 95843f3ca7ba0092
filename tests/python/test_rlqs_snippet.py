"""The RLQS snippet in examples/envoy/rlqs.yaml is a valid Envoy v3 bootstrap wired to
quorate, checked against Envoy's own protos (shipped in the envoy-types crate): every field
name, enum value and typed_config `@type` must exist, as Envoy's YAML loader demands.
(Envoy's validation rules and behaviour are not checked: no Envoy binary here; the RLQS
protocol itself is tested with a simulated fleet in tests/tests/rlqs.rs.)

run.sh generates the stubs (the bootstrap and the filters the snippet uses).
"""

import os

import yaml
from google.protobuf import json_format

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers @type)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401 (registers @type)
from envoy.type.v3 import ratelimit_strategy_pb2

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def load(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return yaml.safe_load(f)


def bucket_settings(action):
    settings = rate_limit_quota_pb2.RateLimitQuotaBucketSettings()
    assert action.typed_config.Unpack(settings)
    return settings


def test_rlqs_snippet_is_a_valid_bootstrap_wired_to_quorate():
    bootstrap = json_format.ParseDict(load("examples/envoy/rlqs.yaml"), bootstrap_pb2.Bootstrap())
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    quorate = clusters["quorate"].load_assignment.endpoints[0].lb_endpoints[0]
    assert quorate.endpoint.address.socket_address.port_value == 8081  # serve --grpc default

    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    names = [f.name for f in hcm.http_filters]
    assert names == ["envoy.filters.http.rate_limit_quota", "envoy.filters.http.router"]
    config = rate_limit_quota_pb2.RateLimitQuotaFilterConfig()
    assert hcm.http_filters[0].typed_config.Unpack(config)
    assert config.rlqs_server.envoy_grpc.cluster_name == "quorate"
    assert config.domain == "edge"

    per_tenant = bucket_settings(config.bucket_matchers.matcher_list.matchers[0].on_match.action)
    shared = bucket_settings(config.bucket_matchers.on_no_match.action)
    assert "tenant" in per_tenant.bucket_id_builder.bucket_id_builder
    assert shared.bucket_id_builder.bucket_id_builder["name"].string_value == "api"
    deny_all = ratelimit_strategy_pb2.RateLimitStrategy.DENY_ALL
    for settings in (per_tenant, shared):
        # quorate's `rlqs.interval` is 1s in the policy the snippet documents.
        assert settings.reporting_interval.ToMilliseconds() == 1000
        # The fleet guarantee needs a proxy without a live share to deny.
        assert settings.no_assignment_behavior.fallback_rate_limit.blanket_rule == deny_all
        assert settings.expired_assignment_behavior.fallback_rate_limit.blanket_rule == deny_all
        assert settings.deny_response_settings.http_status.code == 429

