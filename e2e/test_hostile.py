"""No request can take the gateway down, and no client can steer the platform's provider
account — through a real Envoy.

Header bytes that are not UTF-8 (Envoy passes 0x80–0xFF as obs-text) once panicked the
filter's VM inside the proxy-wasm SDK; with FAIL_CLOSED every later request of that worker
was a 503. Here the five ways of sending them are tried, then a good request must still be
answered 200, and no log may hold a panic or the bytes. A crash (the test build's trigger) is
followed by a reloaded VM (FAIL_RELOAD).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from conftest import CRASH_WASM, SERVICE_KEY, Stack, auth

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def raw_request(port: int, head: bytes, body: bytes = b"") -> int:
    """Sends one HTTP/1.1 request with exactly these header bytes; returns the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def chat_head(extra: bytes, key: bytes = SERVICE_KEY.encode()) -> bytes:
    return (b"POST /api/v1/llm/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key + b"\r\n" + extra)


def good(stack) -> int:
    return httpx.post(f"{stack.api}/chat/completions", headers=auth(SERVICE_KEY),
                      content=CHAT, timeout=30).status_code


def assert_clean_logs(stack, *secrets: str):
    logs = stack.all_logs()
    assert "panicked" not in logs, logs[-3000:]
    for secret in secrets:
        assert secret not in logs


def test_five_hostile_headers_then_a_good_request(stack):
    port = stack.port
    user_key = stack.user_key.encode()
    # 1. An unauthenticated request outside the API, four times (once per worker and more).
    for _ in range(4):
        # Not the filter's path: Envoy has no route for it (a crashed VM would answer 503).
        assert raw_request(port, b"GET /elsewhere HTTP/1.1\r\nHost: gateway\r\nX-Anything: caf\xe9\r\n") == 404
        # The health check, which the filter answers itself.
        assert raw_request(port, b"GET / HTTP/1.1\r\nHost: gateway\r\nX-Anything: caf\xe9\r\n") == 200
    # 2. The byte in Authorization, after a valid key: 401, the key never logged. (Refused at
    # the headers, so no body is sent: none is left unread when Envoy closes the connection.)
    assert raw_request(port, chat_head(b"", key=user_key + b"\xe9")) == 401
    # 3. In X-Power-Level: 400.
    assert raw_request(port, chat_head(b"X-Power-Level: caf\xe9\r\n")) == 400
    # 4. In a header the filter does not read, on a metered call: ignored, answered.
    assert raw_request(port, chat_head(b"X-Anything: caf\xe9\r\n"), CHAT) == 200
    # 5. Over HTTP/2 (prior knowledge), in X-Power-Level. Without a body: an HTTP/2 server may
    # answer early and reset a stream whose body is still coming, which curl reports as an error.
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge",
         f"{stack.api}/models", "-H", f"Authorization: Bearer {SERVICE_KEY}", "-H", b"X-Power-Level: caf\xe9"],
        capture_output=True, timeout=30)
    assert out.stdout.decode().split() == ["400", "2"], out
    # Every worker still answers: a good request, several times, on fresh connections.
    for _ in range(6):
        assert good(stack) == 200
    assert_clean_logs(stack, stack.user_key)


def test_the_client_cannot_steer_the_platforms_provider_account(stack):
    stack.clear_provider_requests()
    client = OpenAI(base_url=stack.api, api_key=SERVICE_KEY,
                    default_headers={"OpenAI-Organization": "org-attacker", "OpenAI-Project": "proj-attacker",
                                     "OpenAI-Beta": "assistants=v2", "X-Custom": "steer", "Cookie": "a=b"})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    seen = stack.provider_requests()
    assert seen, "the provider saw the call"
    names = {k.lower() for k, _ in seen[-1]["headers"]}
    for name in ["openai-organization", "openai-project", "openai-beta", "x-custom", "cookie",
                 "x-opsgate-cluster", "x-stainless-lang"]:
        assert name not in names, (name, sorted(names))
    # A field that changes what the platform is billed is refused, naming it.
    with pytest.raises(Exception) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       service_tier="priority")
    assert getattr(e.value, "status_code", None) == 400
    assert e.value.body["param"] == "service_tier"


def test_oversized_bodies_to_the_control_plane_are_413_envelopes(stack):
    r = httpx.post(f"{stack.api}/byok/keys", headers=auth(stack.user_key), content=b"x" * (3 << 20), timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"


@pytest.fixture(scope="module")
def crash_stack():
    if not CRASH_WASM.exists():
        pytest.fail(f"the crash-trigger filter is not built at {CRASH_WASM}: run scripts/test")
    with tempfile.TemporaryDirectory(prefix="opsgate-e2e-crash-") as tmp:
        s = Stack(Path(tmp), wasm=CRASH_WASM)
        try:
            yield s.start()
        finally:
            s.stop()


def test_a_crashed_vm_is_reloaded_and_never_fails_open(crash_stack):
    s = crash_stack
    assert good(s) == 200
    secret = "uc_" + "feedface" * 8
    r = httpx.post(f"{s.api}/chat/completions", headers={**auth(SERVICE_KEY), "X-Opsgate-Test-Crash": secret},
                   content=CHAT, timeout=30)
    assert r.status_code == 503, r.text
    # While the VM is being reloaded nothing passes unauthenticated.
    deadline, answered = time.time() + 20, []
    while time.time() < deadline:
        unauth = httpx.post(f"{s.api}/chat/completions", content=CHAT, timeout=30).status_code
        assert unauth in (401, 503), unauth
        answered.append(good(s))
        if answered[-3:] == [200, 200, 200]:
            break
        time.sleep(0.2)
    assert answered[-3:] == [200, 200, 200], answered
    logs = s.all_logs()
    assert "opsgate: filter panicked at plugin/src/filter/" in logs
    assert secret not in logs and "crash trigger" not in logs


def test_the_control_plane_down_is_a_503_envelope(crash_stack):
    s = crash_stack
    cp = next(p for p in s.procs if "opsgate" in " ".join(map(str, p.args)) and "serve" in p.args)
    os.killpg(cp.pid, signal.SIGKILL)
    cp.wait()
    for path in ["/models", "/credits", "/usage"]:
        r = httpx.get(f"{s.api}{path}", headers=auth(SERVICE_KEY), timeout=30)
        assert r.status_code == 503, (path, r.text)
        err = r.json()["error"]
        # From Envoy's plain-text reply replaced by the filter — or, on a worker whose VM was
        # just reloaded and could not fetch its snapshot, from the filter itself.
        assert err["code"] == "service_unavailable", err
        assert "control plane" in err["message"] or "starting" in err["message"], err
