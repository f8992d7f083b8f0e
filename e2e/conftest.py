"""End-to-end fixtures: a real stack on ephemeral loopback ports.

One stack per test session: the fake provider, the control plane (SQLite, demo seed, a test
catalogue with tiny starter limits), a local OIDC identity provider (an RSA key made for the
run, its JWKS served over HTTP) and a real Envoy running the built filter, from the
development template plus what the end-to-end tests need (the JWKS cluster, `jwt`, `cors`
and `admin_prefix`, see `e2e_envoy_config`). Everything is torn down at the end, whatever
happened.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import envoy_config  # noqa: E402  (scripts/envoy_config.py)

SERVICE_KEY = "sk-loopnet-service-key-2025"
PROVIDER_KEY = "e2e-platform-key-canary-7f3a"
# A user's own OpenRouter key that the fake provider accepts (canary: must never leak).
BYOK_KEY = "sk-or-v1-e2e-canary-byok-5d1c9a7e20"
INTERNAL_TOKEN = "e2e-internal-token-0123456789"
ADMIN_TOKEN = "e2e-admin-token-0123456789"
# What the e2e gateway accepts: tokens for this audience, browsers from this origin.
AUDIENCE = "opsgate-gateway"
APP_ORIGIN = "https://app.example.com"
ADMIN_PREFIX = "/admin/v1"


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


BIN_DIR = Path(os.environ.get("OPSGATE_BIN_DIR", _target_dir() / "debug"))
WASM = Path(os.environ.get("OPSGATE_WASM", _target_dir() / "wasm32-wasip1/filter/opsgate_plugin.wasm"))
CRASH_WASM = Path(os.environ.get("OPSGATE_CRASH_WASM",
                                 _target_dir() / "wasm32-wasip1/crash-test/opsgate_plugin.wasm"))
ENVOY = Path(os.environ.get("OPSGATE_ENVOY", Path(sys.executable).parent / "envoy"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: str, values: dict) -> str:
    return envoy_config.render(template, values)


def test_catalogue() -> str:
    """The built-in catalogue with the starter plan cut to 2 calls a day (429 tests)."""
    text = (ROOT / "control-plane/config/catalogue.toml").read_text()
    return text.replace("daily_calls = 34", "daily_calls = 2", 1)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class IdentityProvider:
    """A Keycloak-like issuer on loopback: an RSA key made for this run, its JWKS served at
    Keycloak's path, and RS256 access tokens signed with it."""

    REALM = "/realms/opsgate"
    KID = "e2e-rsa-1"

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # Keys published besides the first (a rotation adds one).
        self.extra: list[tuple[rsa.RSAPrivateKey, str]] = []
        # While set, the JWKS endpoint answers 503 (an outage).
        self.outage = False
        self.fetches = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != idp.jwks_path:
                    self.send_error(404)
                    return
                idp.fetches += 1
                if idp.outage:
                    self.send_error(503)
                    return
                body = json.dumps(idp.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}{self.REALM}"
        self.jwks_path = f"{self.REALM}/protocol/openid-connect/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, name="jwks", daemon=True)

    def start(self) -> "IdentityProvider":
        self.thread.start()
        return self

    def stop(self):
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
        n = key.public_key().public_numbers()
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64url(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": b64url(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}

    def jwks(self) -> dict:
        return {"keys": [self.jwk(self.key, self.KID)] + [self.jwk(k, kid) for k, kid in self.extra]}

    def claims(self, sub: str, *, lifetime: int = 300, email: str | None = None,
               roles: tuple[str, ...] = ()) -> dict:
        now = int(time.time())
        c = {"iss": self.issuer, "aud": ["account", AUDIENCE], "sub": sub, "typ": "Bearer",
             "iat": now - 5, "nbf": now - 5, "exp": now + lifetime, "azp": "opsgate-web",
             "realm_access": {"roles": list(roles)}}
        if email:
            c["email"] = email
        return c

    def sign(self, claims: dict, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None,
             header: dict | None = None) -> str:
        header = header if header is not None else {"alg": "RS256", "typ": "JWT", "kid": kid or self.KID}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = (key or self.key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(sig)}"

    def token(self, sub: str, **kw) -> str:
        """A valid RS256 access token for `sub`."""
        return self.sign(self.claims(sub, **kw))


# How long jwt_authn keeps the JWKS before refreshing it: short here, so the rotation and
# outage tests see refreshes within seconds.
JWKS_CACHE_SECS = 3


def e2e_envoy_config(config: str, idp: IdentityProvider) -> str:
    """The rendered development config plus what the end-to-end tests exercise: Envoy's
    jwt_authn with its JWKS cluster, the filter's `jwt`, `cors` and `admin_prefix` settings,
    and a route sending the admin prefix to the control plane — built by the same code as
    `scripts/run --jwt --cors-origin … --admin-prefix …` (scripts/envoy_config.py)."""
    return envoy_config.with_extras(
        config, jwt_issuer=idp.issuer, jwt_audiences=[AUDIENCE],
        jwks_uri=f"http://127.0.0.1:{idp.port}{idp.jwks_path}", jwks_cache_secs=JWKS_CACHE_SECS,
        cors_origins=[APP_ORIGIN], admin_prefix=ADMIN_PREFIX)


class Stack:
    def __init__(self, tmp: Path, wasm: Path = WASM):
        self.tmp = tmp
        self.wasm = wasm
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[str, Path] = {}
        self.idp: IdentityProvider | None = None

    def _spawn(self, name: str, args: list[str], env=None) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        p = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    @staticmethod
    def _port_from(p: subprocess.Popen, name: str) -> int:
        deadline = time.time() + 30
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}")
                continue
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1))
        raise RuntimeError(f"{name} did not report its port")

    def start(self) -> "Stack":
        fake = self._spawn("fake-provider", [str(BIN_DIR / "fake-provider"), "--port", "0", "--api-key", f"{PROVIDER_KEY},{BYOK_KEY}"])
        self.fake_port = self._port_from(fake, "fake-provider")
        (self.tmp / "catalogue.toml").write_text(test_catalogue())
        self.db_url = f"sqlite://{self.tmp}/opsgate.db"
        cp = self._spawn(
            "control-plane",
            [str(BIN_DIR / "opsgate"), "serve", "--demo", "--port", "0", "--data-dir", str(self.tmp),
             "--catalogue", str(self.tmp / "catalogue.toml"), "--admin-token", ADMIN_TOKEN],
            # JSON log lines, as in production (the demo's default is text).
            env={"OPSGATE_INTERNAL_TOKEN": INTERNAL_TOKEN, "OPSGATE_DEMO_PROVIDER_KEY": PROVIDER_KEY,
                 "OPSGATE_LOG_FORMAT": "json"},
        )
        self.cp_port = self._port_from(cp, "control-plane")
        self.idp = IdentityProvider().start()
        self.port = free_port()
        self.admin_port = free_port()
        config = e2e_envoy_config(render(
            (ROOT / "envoy/opsgate-dev.yaml.in").read_text(),
            dict(ADMIN_PORT=self.admin_port, LISTEN_ADDR="127.0.0.1", LISTEN_PORT=self.port, WASM_PATH=self.wasm,
                 INTERNAL_TOKEN=INTERNAL_TOKEN, SNAPSHOT_MS=500, CP_PORT=self.cp_port, FAKE_PORT=self.fake_port),
        ), self.idp)
        self.envoy_config = self.tmp / "envoy.yaml"
        self.envoy_config.write_text(config)
        self._spawn("envoy", [str(ENVOY), "-c", str(self.envoy_config), "--disable-hot-restart", "--log-level", "warn"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.base}/api/v1/llm"
        self._wait_ready()
        self._wait_jwks()
        self.user_key = (self.tmp / "demo-user-key.txt").read_text().strip()
        return self

    def _wait_ready(self):
        deadline = time.time() + 60
        last = None
        while time.time() < deadline:
            try:
                r = httpx.post(f"{self.api}/chat/completions", json={},
                               headers={"Authorization": "Bearer sk-nobody-service-key-2025"}, timeout=2)
                last = r.status_code
                if r.status_code == 401:  # the snapshot is loaded: keys are being checked
                    return
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(f"the gateway did not become ready (last: {last}); logs in {self.tmp}")

    def _wait_jwks(self):
        """jwt_authn has the keys once a valid token for an unknown subject is no longer
        refused as unverified (it may be refused for being unknown)."""
        token = self.idp.token("readiness-probe")
        deadline = time.time() + 30
        last = None
        while time.time() < deadline:
            try:
                r = httpx.get(f"{self.api}/models", headers={"Authorization": f"Bearer {token}"}, timeout=2)
                last = r.text
                if "could not be verified" not in r.text:
                    return
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(f"the gateway did not load the JWKS (last: {last}); logs in {self.tmp}")

    def cli(self, *args: str) -> dict | list | str:
        out = subprocess.run([str(BIN_DIR / "opsgate"), *args, "--database-url", self.db_url],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            return out.stdout

    def provider_requests(self) -> list:
        return httpx.get(f"http://127.0.0.1:{self.fake_port}/_fake/requests").json()

    def clear_provider_requests(self):
        httpx.delete(f"http://127.0.0.1:{self.fake_port}/_fake/requests")

    def stop(self):
        if self.idp is not None:
            self.idp.stop()
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def all_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs.values() if path.exists())


def running(kind, prefix: str):
    """A started `kind` (Stack or a subclass) in a temporary folder, stopped and removed
    after, whatever happened; the built binaries are checked first."""
    for path, what in [(BIN_DIR / "opsgate", "control plane"), (BIN_DIR / "fake-provider", "fake provider"),
                       (WASM, "filter"), (ENVOY, "Envoy")]:
        if not path.exists():
            pytest.exit(f"{what} not found at {path}: run scripts/test", returncode=2)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        s = kind(Path(tmp))
        try:
            yield s.start()
        finally:
            s.stop()


@pytest.fixture(scope="session")
def stack():
    yield from running(Stack, "opsgate-e2e-")


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.api, timeout=30) as c:
        yield c


def quiet(read):
    """`read()` once the ledger has stopped moving: earlier calls settle asynchronously
    (the filter batches settlements), so a before/after comparison starts from here."""
    value = read()
    while True:
        time.sleep(0.5)
        again = read()
        if again == value:
            return value
        value = again


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def new_user(stack, plan: str, credits: str = "1000", org_plan: str = "enterprise") -> tuple[str, str]:
    """A fresh organisation with one user on `plan`; returns (user id, uc_ key)."""
    suffix = os.urandom(4).hex()
    org, user = f"org_{suffix}", f"user_{suffix}"
    stack.cli("org", "create", org, "--name", f"E2E {suffix}", "--plan", org_plan)
    if credits != "0":
        stack.cli("org", "grant", org, credits)
    stack.cli("user", "create", user, "--org", org, "--plan", plan)
    key = stack.cli("key", "issue", user)["api_key"]
    return user, key
