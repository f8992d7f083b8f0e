"""Every Envoy config we ship passes `envoy --mode validate`."""

import subprocess
from pathlib import Path

import pytest

from conftest import ENVOY, ROOT, WASM, IdentityProvider, e2e_envoy_config, render

VALUES = dict(ADMIN_PORT=9901, LISTEN_ADDR="127.0.0.1", LISTEN_PORT=8084, WASM_PATH=WASM,
              INTERNAL_TOKEN="validate-token-0123456789", SNAPSHOT_MS=5000, CP_PORT=8085, FAKE_PORT=8090)


def validate(text: str, tmp_path: Path):
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(text)
    out = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    assert "OK" in out.stdout + out.stderr


@pytest.mark.parametrize("name", ["opsgate-dev.yaml.in", "existing-envoy-example.yaml"])
def test_config_validates(name, tmp_path: Path):
    validate(render((ROOT / "envoy" / name).read_text(), VALUES), tmp_path)


def test_e2e_config_validates(tmp_path: Path):
    """The development config as the end-to-end stack runs it (jwt_authn and its JWKS
    cluster, the filter's jwt, cors, admin_prefix)."""
    idp = IdentityProvider()
    try:
        text = e2e_envoy_config(render((ROOT / "envoy/opsgate-dev.yaml.in").read_text(), VALUES), idp)
    finally:
        idp.stop()
    assert "- name: jwks" in text and "envoy.filters.http.jwt_authn" in text
    validate(text, tmp_path)


@pytest.mark.parametrize("name", ["opsgate-dev.yaml.in", "existing-envoy-example.yaml"])
def test_only_jwt_authn_can_set_the_verified_payload_header(name):
    """Every shipped config strips a client's copy of the header the filter reads a verified
    JWT payload from, before jwt_authn (if any) and the filter run; where jwt_authn is
    configured it is before the filter, never refuses on its own, reads the token only from
    the Authorization header and forwards it."""
    text = (ROOT / "envoy" / name).read_text()
    strip = text.index("- remove: x-opsgate-jwt-payload")
    wasm = text.index("- name: envoy.filters.http.wasm")
    assert strip < wasm
    if "envoy.filters.http.jwt_authn" in text:
        jwt = text.index("- name: envoy.filters.http.jwt_authn")
        assert strip < jwt < wasm
        for setting in ["forward: true", "forward_payload_header: x-opsgate-jwt-payload",
                        "allow_missing_or_failed: {}", "clock_skew_seconds: 60",
                        'from_headers: [{ name: Authorization, value_prefix: "Bearer " }]']:
            assert setting in text, setting


@pytest.mark.parametrize("name", ["opsgate-dev.yaml.in", "existing-envoy-example.yaml"])
def test_shipped_configs_reload_a_crashed_filter_and_bound_clients(name):
    text = (ROOT / "envoy" / name).read_text()
    # A crashed VM is reloaded (never FAIL_OPEN): requests are refused until it is back.
    assert "failure_policy: FAIL_RELOAD" in text and "FAIL_OPEN" not in text
    assert "reload_config:" in text
    assert "allow_on_headers_stop_iteration: true" in text
    for limit in ["request_headers_timeout:", "request_timeout:", "stream_idle_timeout:",
                  "idle_timeout: 300s", "max_headers_count:"]:
        assert limit in text, limit
    # A plain response's hold ends with the call.
    assert '"settle_wait_ms": 1000' in text
    # The routing header is the gateway's own: removed before a provider sees it.
    assert 'request_headers_to_remove: ["x-opsgate-cluster"]' in text
