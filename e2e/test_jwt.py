"""OIDC access tokens end to end: RS256 JWTs signed by a local identity provider, verified by
Envoy's jwt_authn against the JWKS it fetches through its `jwks` cluster, decided by the filter
(which reads the payload jwt_authn forwards), used as the OpenAI SDK's api_key. The control
plane maps the token's `sub` to a user id. Every attack on the tokens is refused with a 401
envelope that says why; key rotation and a JWKS outage are handled by jwt_authn's cache."""

import hashlib
import hmac
import json
import time
import uuid

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import ADMIN_PREFIX, ADMIN_TOKEN, APP_ORIGIN, AUDIENCE, INTERNAL_TOKEN, JWKS_CACHE_SECS, b64url

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


def unsigned(header: dict, claims: dict, signature: bytes) -> str:
    part = lambda v: b64url(json.dumps(v).encode())
    return f"{part(header)}.{part(claims)}.{b64url(signature) if signature else ''}"


def refused_tokens(stack, sub: str) -> dict[str, tuple[str, str]]:
    """Every attack of the suite: (token, what the 401's message says)."""
    idp = stack.idp
    now = int(time.time())
    expired = idp.claims(sub)
    expired["exp"] = now - 120  # past the 60 s leeway
    not_yet = idp.claims(sub)
    not_yet["nbf"] = now + 120
    wrong_aud = idp.claims(sub)
    wrong_aud["aud"] = ["account", "someone-else"]
    wrong_iss = idp.claims(sub)
    wrong_iss["iss"] = "http://127.0.0.1:1/realms/evil"
    id_token = idp.claims(sub)
    id_token["typ"] = "ID"
    good = idp.token(sub)
    head, _, sig = good.split(".")
    forged = idp.claims(sub)
    forged["sub"] = "someone-else"
    tampered = f"{head}.{b64url(json.dumps(forged).encode())}.{sig}"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = idp.claims(sub)
    # HS256 "signed" with the RSA public key as the HMAC secret (the classic confusion).
    public_pem = idp.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": idp.KID}
    hs_input = f"{b64url(json.dumps(hs_header).encode())}.{b64url(json.dumps(claims).encode())}"
    hs256 = f"{hs_input}.{b64url(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())}"
    huge = idp.claims(sub)
    huge["padding"] = "x" * 20_000
    return {
        "expired": (idp.sign(expired), "expired"),
        "not yet valid": (idp.sign(not_yet), "not valid yet"),
        "wrong audience": (idp.sign(wrong_aud), "audience"),
        "wrong issuer": (idp.sign(wrong_iss), "issuer"),
        "an ID token": (idp.sign(id_token), "not an access token"),
        "tampered payload": (tampered, "could not be verified"),
        "tampered signature": (f"{head}.{good.split('.')[1]}.{sig[:-4]}AAAA", "could not be verified"),
        "another key, same kid": (idp.sign(claims, key=other_key), "could not be verified"),
        "unknown kid": (idp.sign(claims, key=other_key, kid="not-in-the-jwks"), "could not be verified"),
        "no kid": (idp.sign(claims, header={"alg": "RS256", "typ": "JWT"}), "key id"),
        "alg none": (unsigned({"alg": "none", "kid": idp.KID}, claims, b"x"), "algorithm"),
        "alg NONE": (unsigned({"alg": "NONE", "kid": idp.KID}, claims, b"x"), "algorithm"),
        "alg none, no signature": (unsigned({"alg": "none", "kid": idp.KID}, claims, b""), "Invalid"),
        "HS256 keyed with the public key": (hs256, "could not be verified"),
        "RS384 named, RS256 signed": (idp.sign(claims, header={"alg": "RS384", "kid": idp.KID}),
                                      "could not be verified"),
        "ES256 named, RSA key": (idp.sign(claims, header={"alg": "ES256", "kid": idp.KID}), "could not be verified"),
        "typ not a JWT": (idp.sign(id_token, header={"alg": "RS256", "typ": "JWT", "kid": idp.KID}),
                          "not an access token"),
        "crit": (idp.sign(claims, header={"alg": "RS256", "kid": idp.KID, "crit": ["x-ext"], "x-ext": 1}),
                 "well-formed"),
        "oversized": (idp.sign(huge), "well-formed"),
    }


def test_bad_tokens_are_401_envelopes(stack):
    sub = jwt_user(stack)
    for why, (token, said) in refused_tokens(stack, sub).items():
        with pytest.raises(openai.AuthenticationError) as e:
            try:
                sdk(stack, token).chat.completions.create(**CHAT)
            except openai.AuthenticationError:
                raise
            except Exception as other:
                raise AssertionError(f"{why}: {other!r}")
            raise AssertionError(f"{why}: accepted")
        assert e.value.status_code == 401, why
        assert e.value.code == "invalid_api_key", why
        r = httpx.post(f"{stack.api}/chat/completions", json=CHAT,
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 401, (why, r.text)
        err = envelope(r)
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error", why
        assert said in err["message"], (why, err["message"])
        signature = token.split(".")[2]
        assert token not in r.text and (not signature or signature not in r.text), why
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


def test_exp_and_nbf_have_sixty_seconds_of_leeway(stack):
    sub = jwt_user(stack)
    now = int(time.time())
    late = stack.idp.claims(sub)
    late["exp"] = now - 30
    early = stack.idp.claims(sub)
    early["nbf"] = now + 30
    for claims in (late, early):
        token = stack.idp.sign(claims)
        r = httpx.get(f"{stack.api}/credits", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text


def wait_until(check, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()


def test_a_rotated_key_is_picked_up_by_the_refresh(stack):
    sub = jwt_user(stack)
    idp = stack.idp
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = f"e2e-rsa-{uuid.uuid4().hex[:6]}"
    token = idp.sign(idp.claims(sub), key=new_key, kid=kid)
    status = lambda t: httpx.get(f"{stack.api}/credits", headers={"Authorization": f"Bearer {t}"},
                                 timeout=10).status_code
    assert status(token) == 401, "not published yet"
    idp.extra.append((new_key, kid))
    assert wait_until(lambda: status(token) == 200, JWKS_CACHE_SECS + 10), "the new key was never picked up"
    assert status(idp.token(sub)) == 200, "the old key still works"


def test_a_jwks_outage_keeps_the_last_good_keys(stack):
    sub = jwt_user(stack)
    idp = stack.idp
    before = idp.fetches
    idp.outage = True
    try:
        # Past the cache's lifetime: refreshes have been tried and failed.
        assert wait_until(lambda: idp.fetches > before, JWKS_CACHE_SECS + 10), "no refresh was tried"
        time.sleep(1)
        r = httpx.get(f"{stack.api}/credits", headers={"Authorization": f"Bearer {idp.token(sub)}"}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        idp.outage = False


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
    expired = refused_tokens(stack, sub)["expired"][0]
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
