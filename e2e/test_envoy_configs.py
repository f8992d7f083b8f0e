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
    """The development config as the end-to-end stack runs it (JWKS cluster, jwt, cors,
    admin_prefix)."""
    idp = IdentityProvider()
    try:
        text = e2e_envoy_config(render((ROOT / "envoy/opsgate-dev.yaml.in").read_text(), VALUES), idp)
    finally:
        idp.stop()
    assert '"jwks_cluster": "jwks"' in text and "- name: jwks" in text
    validate(text, tmp_path)


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
