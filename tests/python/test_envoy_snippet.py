"""The Envoy snippet in examples/envoy/envoy.yaml is a valid Envoy v3 bootstrap, checked
against Envoy's own protos (shipped in the envoy-types crate): every field name, enum
value and typed_config `@type` must exist, as Envoy's own YAML loader demands. (Envoy's
extra validation rules and behaviour are not checked: no Envoy binary here.)

run.sh generates the stubs (the bootstrap and the filters the snippet uses).
"""

import os

import yaml
from google.protobuf import json_format

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers @type)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def load(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_envoy_snippet_is_a_valid_bootstrap_wired_to_quorate():
    bootstrap = json_format.ParseDict(load("examples/envoy/envoy.yaml"), bootstrap_pb2.Bootstrap())
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    quorate = clusters["quorate"].load_assignment.endpoints[0].lb_endpoints[0]
    assert quorate.endpoint.address.socket_address.port_value == 8081  # serve --grpc default

    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    # The source ext_authz sees is the connection's address, and Envoy serves the path
    # in the form quorate matched (dots resolved, slashes merged, %2F refused).
    assert hcm.use_remote_address.value is True
    assert hcm.normalize_path.value is True
    assert hcm.merge_slashes is True
    assert (
        hcm.path_with_escaped_slashes_action
        == http_connection_manager_pb2.HttpConnectionManager.REJECT_REQUEST
    )
    names = [f.name for f in hcm.http_filters]
    assert names == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.router",
    ]
    ext_authz = ext_authz_pb2.ExtAuthz()
    assert hcm.http_filters[0].typed_config.Unpack(ext_authz)
    assert ext_authz.grpc_service.envoy_grpc.cluster_name == "quorate"
    assert ext_authz.transport_api_version == config_source_pb2.V3
    rate_limit = rate_limit_pb2.RateLimit()
    assert hcm.http_filters[1].typed_config.Unpack(rate_limit)
    assert rate_limit.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "quorate"

    # The rate-limit descriptor is keyed on the consumer ext_authz put in dynamic metadata.
    route = hcm.route_config.virtual_hosts[0].routes[0].route
    action = route.rate_limits[0].actions[0].metadata
    assert action.descriptor_key == "consumer"
    assert action.metadata_key.key == "envoy.filters.http.ext_authz"
    assert [p.key for p in action.metadata_key.path] == ["consumer"]


def test_traefik_snippet_is_yaml_with_the_forward_auth_middleware():
    doc = load("examples/traefik/dynamic.yml")
    auth = doc["http"]["middlewares"]["quorate-auth"]["forwardAuth"]
    assert auth["address"].endswith("/authz")
    assert "X-Consumer-Id" in auth["authResponseHeaders"]
    assert doc["http"]["routers"]["app"]["middlewares"][0] == "quorate-auth"
