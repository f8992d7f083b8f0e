"""The development Envoy config, rendered and extended — one home for scripts/render-envoy
(and so scripts/run) and the end-to-end tests.

`render` fills the template's ${NAME} placeholders. `with_extras` adds what the demo's flags
and the tests turn on: Envoy's jwt_authn with its JWKS cluster and the filter's `jwt` setting,
CORS origins, and the admin prefix routed to the control plane. Each insertion point must be
found exactly once in the template, so a changed template fails loudly instead of yielding a
half-configured gateway.
"""
from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

JWT_AUTHN = """\
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                opsgate:
                  issuer: "{issuer}"
                  audiences: {audiences}
                  remote_jwks:
                    http_uri: {{ uri: "{jwks_uri}", cluster: jwks, timeout: 2s }}
                    cache_duration: {cache_secs}s
                    async_fetch: {{ fast_listener: false, failed_refetch_duration: 1s }}
                    retry_policy:
                      num_retries: 3
                      retry_back_off: {{ base_interval: 0.2s, max_interval: 2s }}
                  clock_skew_seconds: 60
                  require_expiration: true
                  from_headers: [{{ name: Authorization, value_prefix: "Bearer " }}]
                  forward: true
                  forward_payload_header: x-opsgate-jwt-payload
                  pad_forward_payload_header: false
                  failed_status_in_metadata: opsgate_jwt_failure
              rules:
              - match: {{ prefix: "/" }}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: opsgate
                    - allow_missing_or_failed: {{}}
"""

JWKS_CLUSTER = """  - name: jwks
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: jwks
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {host}, port_value: {port} }}
"""


def render(template: str, values) -> str:
    """Every ${NAME} replaced by values[NAME]; a name with no value is an error."""
    missing = sorted({m for m in re.findall(r"\$\{([A-Z_]+)\}", template) if m not in values})
    if missing:
        raise SystemExit(f"render-envoy: no value for {', '.join(missing)}")
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: str(values[m.group(1)]), template)


def _insert(text: str, anchor: str, new: str, before: bool = False) -> str:
    if text.count(anchor) != 1:
        raise SystemExit(f"the Envoy template changed: {anchor!r} found {text.count(anchor)} times")
    return text.replace(anchor, new + anchor if before else anchor + new)


def with_extras(config: str, *, jwt_issuer: str | None = None, jwt_audiences: list[str] | None = None,
                jwks_uri: str | None = None, jwks_cache_secs: int = 300,
                cors_origins: list[str] | None = None, cors_credentials: bool = True,
                admin_prefix: str | None = None) -> str:
    """The rendered development config with the optional features turned on."""
    plugin: dict = {}
    if jwt_issuer:
        if not jwks_uri or not jwt_audiences:
            raise SystemExit("a JWT issuer needs its JWKS URI and at least one audience")
        plugin["jwt"] = {"issuer": jwt_issuer, "audiences": jwt_audiences}
    if cors_origins:
        plugin["cors"] = {"allowed_origins": cors_origins, "allow_credentials": cors_credentials,
                          "max_age_secs": 600}
    if admin_prefix:
        plugin["admin_prefix"] = admin_prefix
    if plugin:
        config = _insert(config, '"max_body_bytes": 1048576', ", " + json.dumps(plugin)[1:-1])
    if admin_prefix:
        # The admin API, and the console that drives it, through the gateway (a JWT is
        # verified by jwt_authn on the way).
        route = (f'              - match: {{ prefix: "{admin_prefix.rstrip("/")}/" }}\n'
                 "                route: { cluster: opsgate_control_plane, timeout: 30s }\n"
                 '              - match: { prefix: "/console" }\n'
                 "                route: { cluster: opsgate_control_plane, timeout: 30s }\n")
        config = _insert(config, '              - match: { prefix: "/api/v1/llm/" }', route, before=True)
    if jwt_issuer:
        jwks = urlsplit(jwks_uri)
        if jwks.scheme != "http" or not jwks.hostname or not jwks.port:
            raise SystemExit(f"the JWKS URI must be http://HOST:PORT/… on the demo's loopback: {jwks_uri}")
        authn = JWT_AUTHN.format(issuer=jwt_issuer, audiences=json.dumps(jwt_audiences),
                                 jwks_uri=jwks_uri, cache_secs=jwks_cache_secs)
        config = _insert(config, "          - name: envoy.filters.http.wasm\n", authn, before=True)
        config = _insert(config, "\n  clusters:\n", JWKS_CLUSTER.format(host=jwks.hostname, port=jwks.port))
    return config
