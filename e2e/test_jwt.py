"""OIDC access tokens end to end: RS256 JWTs signed by a local identity provider, verified by
the filter in a real Envoy against the JWKS it fetches through its `jwks` cluster, used as
the OpenAI SDK's api_key. The control plane maps the token's `sub` to a user id."""

import json
import time
import uuid

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import ADMIN_PREFIX, ADMIN_TOKEN, APP_ORIGIN, AUDIENCE, INTERNAL_TOKEN, b64url

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Extract company info"}]}


def jwt_user(stack, plan: str = "professional", credits: str = "100") -> str:
    """A fresh organisation with one user whose id is a Keycloak-style subject (a UUID)."""
    sub = str(uuid.uuid4())
    org = f"org_{sub[:8]}"
    stack.cli("org", "create", org, "--name", f"E2E JWT {sub[:8]}", "--plan", "enterprise")
    stack.cli("org", "grant", org, credits)
    stack.cli("user", "create", sub, "--org", org, "--plan", plan)
    return sub


def sdk(stack, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.api, api_key=token, max_retries=0, timeout=30)


def envelope(r: httpx.Response) -> dict:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}, err
    return err


def credits_of(stack, key: str) -> float:
    r = httpx.get(f"{stack.api}/credits", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["credits_remaining"]


def test_valid_token_completion_is_metered_to_its_subject(stack):
    sub = jwt_user(stack)
    # A uc_ key of the same user, to read the balance through the public API.
    key = stack.cli("key", "issue", sub)["api_key"]
    before = credits_of(stack, key)
    token = stack.idp.token(sub, email=f"{sub[:8]}@example.com", roles=("offline_access",))
    stack.clear_provider_requests()
    raw = sdk(stack, token).chat.completions.with_raw_response.create(**CHAT)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Fake reply to: Extract company info"
    assert raw.headers["x-provider-used"] == "openai"
    cost = float(raw.headers["x-cost-incurred"])
    assert cost > 0
    # The provider got the platform key, never the client's token.
    [seen] = stack.provider_requests()
    headers = dict(seen["headers"])
    assert token not in json.dumps(seen)
    assert not any(k.lower().startswith("x-opsgate-identity") for k in headers)
    # Charged to that user: the settlement (which replaces the hold by the cost) lands
    # shortly after the response.
    deadline = time.time() + 10
    after = credits_of(stack, key)
    while time.time() < deadline and abs(after - (before - cost)) > 0.0015:
        time.sleep(0.2)
        after = credits_of(stack, key)
    assert after == pytest.approx(before - cost, abs=0.0015), (before, after, cost)


def test_streamed_completion_with_a_token(stack):
    sub = jwt_user(stack)
    stream = sdk(stack, stack.idp.token(sub)).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream it"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Fake reply to: stream it"


def refused_tokens(stack, sub: str) -> dict[str, str]:
    idp = stack.idp
    expired = idp.claims(sub)
    expired["exp"] = int(time.time()) - 120  # past the 60 s leeway
    wrong_aud = idp.claims(sub)
    wrong_aud["aud"] = ["account", "someone-else"]
    wrong_iss = idp.claims(sub)
    wrong_iss["iss"] = "http://127.0.0.1:1/realms/evil"
    good = idp.token(sub)
    head, _, sig = good.split(".")
    forged = idp.claims(sub)
    forged["sub"] = "someone-else"
    tampered = f"{head}.{b64url(json.dumps(forged).encode())}.{sig}"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "expired": idp.sign(expired),
        "wrong audience": idp.sign(wrong_aud),
        "wrong issuer": idp.sign(wrong_iss),
        "tampered": tampered,
        "another key, same kid": idp.sign(idp.claims(sub), key=other_key),
        "unknown kid": idp.sign(idp.claims(sub), key=other_key, kid="not-in-the-jwks"),
    }


def test_bad_tokens_are_401_envelopes(stack):
    sub = jwt_user(stack)
    for why, token in refused_tokens(stack, sub).items():
        with pytest.raises(openai.AuthenticationError) as e:
            sdk(stack, token).chat.completions.create(**CHAT)
        assert e.value.status_code == 401, why
        assert e.value.code == "invalid_api_key", why
        r = httpx.post(f"{stack.api}/chat/completions", json=CHAT,
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 401, (why, r.text)
        err = envelope(r)
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error", why
        assert token not in r.text and token.split(".")[2] not in r.text, why
        # Refused at the edge on non-metered routes too.
        r = httpx.get(f"{stack.api}/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 401, (why, r.text)
        envelope(r)


def test_a_token_for_an_unknown_subject_is_refused(stack):
    token = stack.idp.token(str(uuid.uuid4()))
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, token).chat.completions.create(**CHAT)


def test_the_jwks_was_fetched_through_the_cluster(stack):
    assert stack.idp.fetches >= 1


def test_models_list_with_a_token(stack):
    """Non-metered: the filter passes the verified identity to the control plane, which
    filters the list by the subject's plan."""
    sub = jwt_user(stack, plan="professional")
    ids = {m.id for m in sdk(stack, stack.idp.token(sub)).models.list()}
    assert "gpt-4o-mini" in ids and "o1-preview" not in ids


def test_credits_with_a_token(stack):
    sub = jwt_user(stack, credits="42")
    r = httpx.get(f"{stack.api}/credits", headers={"Authorization": f"Bearer {stack.idp.token(sub)}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == sub


def test_a_client_cannot_send_an_identity(stack):
    """Identity headers from a client are removed at the edge: without a real credential the
    request is refused there, even with the internal token in hand."""
    sub = jwt_user(stack)
    forged = b64url(json.dumps({"subject": sub, "email": None, "roles": ["opsgate-admin"]}).encode())
    spoof = {"x-opsgate-identity": forged, "x-opsgate-identity-auth": INTERNAL_TOKEN}
    for path in ["/credits", "/models", "/usage", "/byok/keys"]:
        r = httpx.get(f"{stack.api}{path}", headers=spoof, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert envelope(r)["code"] == "invalid_api_key"


def test_admin_prefix_through_the_gateway(stack):
    admin = f"{stack.base}{ADMIN_PREFIX}"
    # The admin token is not a JWT: it passes untouched and the admin API checks it.
    r = httpx.get(f"{admin}/orgs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{admin}/orgs", headers={"Authorization": "Bearer not-the-admin-token"}, timeout=10)
    assert r.status_code in (401, 403), r.text
    envelope(r)
    # A bad JWT is refused at the edge; none at all too.
    sub = jwt_user(stack)
    expired = refused_tokens(stack, sub)["expired"]
    r = httpx.get(f"{admin}/orgs", headers={"Authorization": f"Bearer {expired}"}, timeout=10)
    assert r.status_code == 401 and "expired" in envelope(r)["message"], r.text
    r = httpx.get(f"{admin}/orgs", timeout=10)
    assert r.status_code == 401 and envelope(r)["code"] == "invalid_api_key", r.text
    # A valid JWT of a member (no admin role) reaches the admin API, which refuses it...
    r = httpx.get(f"{admin}/orgs", headers={"Authorization": f"Bearer {stack.idp.token(sub)}"}, timeout=10)
    assert r.status_code == 403, r.text
    envelope(r)
    # ... and one with the admin role is let in on its verified identity.
    token = stack.idp.token(sub, roles=("opsgate-admin",))
    r = httpx.get(f"{admin}/orgs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text


def test_token_audience_is_the_configured_one(stack):
    claims = stack.idp.claims(jwt_user(stack))
    claims["aud"] = AUDIENCE  # a plain string audience is fine too
    r = httpx.post(f"{stack.api}/chat/completions", json=CHAT,
                   headers={"Authorization": f"Bearer {stack.idp.sign(claims)}"}, timeout=30)
    assert r.status_code == 200, r.text


def test_browser_session_from_a_token(stack):
    """A browser app on the configured origin exchanges its token for a session cookie,
    then calls with the cookie; another origin cannot use that cookie; logout revokes it."""
    sub = jwt_user(stack)
    origin = {"Origin": APP_ORIGIN}
    with httpx.Client(base_url=stack.api, timeout=10) as c:
        r = c.post("/auth/session", headers={**origin, "Authorization": f"Bearer {stack.idp.token(sub)}"})
        assert r.status_code == 201, r.text
        assert r.json()["user_id"] == sub
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN
        assert r.headers["access-control-allow-credentials"] == "true"
        session = r.cookies["session_token"]
        c.cookies.clear()  # sent explicitly below, as a browser would
        cookie = {"Cookie": f"session_token={session}"}
        r = c.get("/credits", headers={**cookie, **origin})
        assert r.status_code == 200 and r.json()["user_id"] == sub, r.text
        # Metered with the cookie, from the configured origin.
        r = c.post("/chat/completions", json=CHAT, headers={**cookie, **origin})
        assert r.status_code == 200, r.text
        # The same cookie from another origin: refused at the edge.
        r = c.get("/credits", headers={**cookie, "Origin": "https://evil.example.net"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
        r = c.delete("/auth/session", headers={**cookie, **origin})
        assert r.status_code == 204, r.text
        r = c.get("/credits", headers={**cookie, **origin})
        assert r.status_code == 401, r.text
