"""`scripts/run` as a newcomer uses it, with every demo flag: BYOK with the demo's own key,
JWTs from a local issuer (and a session from one), CORS origins and the admin prefix — no
hand-edited Envoy YAML. Ctrl-C stops it, draining Envoy first: no hold is left open."""

import os
import re
import signal
import sqlite3
import subprocess
import time

import httpx
import pytest

from conftest import BIN_DIR, ROOT, free_port

ORIGIN = "https://demo.example.com"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo-run")
    ports = {name: free_port() for name in ["port", "cp", "fake", "admin", "idp"]}
    env = {**os.environ, "OPSGATE_PROFILE": "debug", "CARGO_TARGET_DIR": str(BIN_DIR.parent)}
    proc = subprocess.Popen(
        [str(ROOT / "scripts/run"), "--port", str(ports["port"]), "--cp-port", str(ports["cp"]),
         "--provider-port", str(ports["fake"]), "--admin-port", str(ports["admin"]),
         "--idp-port", str(ports["idp"]), "--data-dir", str(data),
         "--byok", "--jwt", "--cors-origin", ORIGIN, "--admin-prefix", "/admin/v1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    banner, deadline = [], time.time() + 240
    try:
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        assert "Ctrl-C stops everything" in text, text[-3000:]
        yield {"proc": proc, "banner": text, "data": data, "ports": ports,
               "api": f"http://127.0.0.1:{ports['port']}/api/v1/llm",
               "base": f"http://127.0.0.1:{ports['port']}"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_the_banner_says_how_to_try_each_feature(demo):
    b = demo["banner"]
    for needle in ["/byok/keys", "demo-user.jwt", "demo-admin.jwt", "/auth/session", ORIGIN,
                   "/admin/v1/", "/docs", "/console/"]:
        assert needle in b, needle


def test_byok_with_the_demos_own_key_costs_nothing(demo):
    user_key = (demo["data"] / "demo-user-key.txt").read_text().strip()
    own = re.search(r'"api_key":"(sk-proj-[^"]+)"', demo["banner"]).group(1)
    h = {"Authorization": f"Bearer {user_key}"}
    with httpx.Client(base_url=demo["api"], timeout=30) as c:
        r = c.post("/byok/keys", headers=h, json={"provider": "openai", "api_key": own})
        assert r.status_code == 201, r.text
        r = c.post("/chat/completions", headers=h,
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "mine"}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-cost-incurred"] == "0.000"
        requests = httpx.get(f"http://127.0.0.1:{demo['ports']['fake']}/_fake/requests").json()
        assert dict(requests[-1]["headers"])["authorization"] == f"Bearer {own}"


def test_jwts_from_the_local_issuer_sessions_cors_and_the_admin_prefix(demo):
    user_jwt = (demo["data"] / "demo-user.jwt").read_text().strip()
    admin_jwt = (demo["data"] / "demo-admin.jwt").read_text().strip()
    with httpx.Client(base_url=demo["base"], timeout=30) as c:
        deadline = time.time() + 20  # jwt_authn fetches the JWKS after start
        while True:
            r = c.get("/api/v1/llm/credits", headers={"Authorization": f"Bearer {user_jwt}"})
            if r.status_code == 200 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["user_id"] == "demo-user", r.text
        s = c.post("/api/v1/llm/auth/session", headers={"Authorization": f"Bearer {user_jwt}"})
        assert s.status_code == 201, s.text
        cookie = s.cookies.get("session_token")
        assert cookie
        r = c.get("/api/v1/llm/credits", headers={"Cookie": f"session_token={cookie}"})
        assert r.status_code == 200 and r.json()["user_id"] == "demo-user", r.text
        pre = c.options("/api/v1/llm/chat/completions",
                        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert pre.headers.get("access-control-allow-origin") == ORIGIN, pre.headers
        r = c.get("/admin/v1/orgs", headers={"Authorization": f"Bearer {admin_jwt}"})
        assert r.status_code == 200, r.text
        assert "org_demo" in {o["id"] for o in r.json()["data"]}
        r = c.get("/admin/v1/orgs", headers={"Authorization": f"Bearer {user_jwt}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"


def test_the_console_through_the_gateway_signs_in_an_admin_jwt(demo):
    admin_jwt = (demo["data"] / "demo-admin.jwt").read_text().strip()
    user_jwt = (demo["data"] / "demo-user.jwt").read_text().strip()
    console = {"X-Console-Request": "1"}
    with httpx.Client(base_url=demo["base"], timeout=30) as c:
        page = c.get("/console/")
        assert page.status_code == 200 and "opsgate" in page.text.lower()
        refused = c.post("/admin/v1/console/session", headers={**console, "Authorization": f"Bearer {user_jwt}"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required", refused.text
        s = c.post("/admin/v1/console/session", headers={**console, "Authorization": f"Bearer {admin_jwt}"})
        assert s.status_code == 201, s.text
        assert s.json()["actor"] == "console:jwt:demo-admin"
        session = s.cookies.get("opsgate_console")
        assert session and "HttpOnly" in s.headers["set-cookie"] and "SameSite=Strict" in s.headers["set-cookie"]
    # The cookie alone (no Authorization) reaches the admin API through the filter.
    with httpx.Client(base_url=demo["base"], timeout=30, headers={"Cookie": f"opsgate_console={session}"}) as c:
        orgs = c.get("/admin/v1/orgs")
        assert orgs.status_code == 200 and "org_demo" in orgs.text, orgs.text
        unsafe = c.post("/admin/v1/orgs/org_demo/grants", json={"credits": 1})
        assert unsafe.status_code == 403, "a write without the console's header is refused (CSRF)"
        grant = c.post("/admin/v1/orgs/org_demo/grants", headers=console, json={"credits": 1})
        assert grant.status_code == 200, grant.text
        audit = c.get("/admin/v1/audit?limit=1").json()["data"][0]
        assert audit["actor"] == "console:jwt:demo-admin" and audit["action"] == "org.grant", audit


def test_zz_ctrl_c_drains_and_leaves_no_hold(demo):
    os.killpg(demo["proc"].pid, signal.SIGINT)
    demo["proc"].wait(timeout=90)
    db = sqlite3.connect(demo["data"] / "opsgate.db")
    held = db.execute("SELECT COUNT(*) FROM holds WHERE status = 'held'").fetchone()[0]
    assert held == 0
