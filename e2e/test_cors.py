"""CORS through a real Envoy: preflights answered by the filter for the configured origin
only, CORS headers on actual responses, and cookie sessions refused from other origins."""

import httpx

from conftest import APP_ORIGIN, SERVICE_KEY, auth

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
EVIL = "https://evil.example.net"
EXPOSED = ["x-provider-used", "x-cost-incurred", "x-credits-remaining", "x-ratelimit-limit",
           "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"]


def preflight(client, path: str, origin: str, headers: str = "authorization, content-type") -> httpx.Response:
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": headers})


def vary(r: httpx.Response) -> set[str]:
    return {v.strip().lower() for v in r.headers.get("vary", "").split(",")}


def test_preflight_from_the_configured_origin(client, stack):
    r = preflight(client, "/chat/completions", APP_ORIGIN,
                  "authorization, content-type, x-stainless-os, x-stainless-lang, openai-organization, x-evil")
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"authorization", "content-type", "x-stainless-os", "x-stainless-lang", "openai-organization"}
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in vary(r)
    # The preflight never reached the control plane's routes: it is answered even without
    # credentials.
    assert r.content == b""


def test_preflight_from_another_origin_is_403(client):
    for origin in [EVIL, "http://app.example.com", "null"]:
        r = preflight(client, "/chat/completions", origin)
        assert r.status_code == 403, (origin, r.text)
        err = r.json()["error"]
        assert err["code"] == "origin_not_allowed" and err["type"] == "permission_error"
        assert "access-control-allow-origin" not in r.headers


def test_actual_responses_carry_the_cors_headers(client):
    r = client.post("/chat/completions", json=CHAT, headers={**auth(SERVICE_KEY), "Origin": APP_ORIGIN})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "origin" in vary(r)
    exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
    assert set(EXPOSED) <= exposed, exposed
    assert float(r.headers["x-cost-incurred"]) > 0

    # Non-metered routes (answered by the control plane) and errors get them too.
    r = client.get("/credits", headers={**auth(SERVICE_KEY), "Origin": APP_ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    r = client.get("/credits", headers={**auth("sk-unknown-service-key-2025"), "Origin": APP_ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP_ORIGIN


def test_other_origins_get_no_cors_headers_but_bearer_still_works(client):
    r = client.post("/chat/completions", json=CHAT, headers={**auth(SERVICE_KEY), "Origin": EVIL})
    assert r.status_code == 200, r.text
    assert not any(k.startswith("access-control-") for k in r.headers)


def test_cookie_sessions_from_other_origins_are_refused(client):
    cookie = {"Cookie": "session_token=sess_e2e_0123456789"}
    for method, path in [("GET", "/credits"), ("POST", "/byok/keys"), ("POST", "/chat/completions"),
                         ("DELETE", "/auth/session")]:
        r = client.request(method, path, json={} if method == "POST" else None,
                           headers={**cookie, "Origin": EVIL})
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "origin_not_allowed"
        assert "sess_e2e_0123456789" not in r.text
    # A cross-site write without Origin.
    r = client.post("/byok/keys", json={}, headers={**cookie, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    # From the configured origin, the session is the control plane's to check (this one is
    # unknown: 401), and the refusal is readable by the page.
    r = client.get("/credits", headers={**cookie, "Origin": APP_ORIGIN})
    assert r.status_code == 401, r.text
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
