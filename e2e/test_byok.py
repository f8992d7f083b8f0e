"""Users' own provider keys through Envoy: stored masked, routed, never charged, never leaked,
and a key the provider rejects is reported as such (never replaced by platform credits)."""

import time
from pathlib import Path

from conftest import BYOK_KEY, PROVIDER_KEY, auth, new_user

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "summarise this"}]}


def credits(client, key) -> float:
    return client.get("/credits", headers=auth(key)).json()["credits_remaining"]


def test_byok_call_uses_the_users_key_and_costs_nothing(stack, client):
    _, key = new_user(stack, "professional", credits="100")
    r = client.post("/byok/keys", headers=auth(key),
                    json={"provider": "openrouter", "api_key": BYOK_KEY, "metadata": {"description": "mine"}})
    assert r.status_code == 201, r.text
    assert BYOK_KEY not in r.text
    listed = client.get("/byok/keys", headers=auth(key))
    assert listed.status_code == 200 and BYOK_KEY not in listed.text
    assert "sk-or-v1-" in listed.text and "…" in listed.text

    before = credits(client, key)
    stack.clear_provider_requests()
    # gpt-4o is an enterprise model: a professional user reaches it through their own key.
    r = client.post("/chat/completions", headers=auth(key), json=CHAT)
    assert r.status_code == 200, r.text
    assert r.headers["x-provider-used"] == "openrouter"
    assert r.headers["x-cost-incurred"] == "0.000"
    [seen] = stack.provider_requests()
    assert dict(seen["headers"])["authorization"] == f"Bearer {BYOK_KEY}"
    assert seen["body"]["model"] == "openai/gpt-4o"
    time.sleep(1)  # let the settlement land
    assert credits(client, key) == before

    cat = client.get("/models/categorized", headers=auth(key)).json()
    assert "gpt-4o" in {m["id"] for m in cat["byok"]}


def test_a_key_the_provider_rejects_is_reported_not_replaced(stack, client):
    _, key = new_user(stack, "professional", credits="100")
    bad = "sk-or-v1-rejected-by-the-provider-000000"
    assert client.post("/byok/keys", headers=auth(key),
                       json={"provider": "openrouter", "api_key": bad}).status_code == 201
    before = credits(client, key)
    r = client.post("/chat/completions", headers=auth(key), json=CHAT)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "byok_key_rejected"
    assert "openrouter" in err["message"]
    assert bad not in r.text
    time.sleep(1)
    assert credits(client, key) == before, "never charged to platform credits"


def test_delete_returns_to_platform_credits(stack, client):
    _, key = new_user(stack, "enterprise", credits="100")
    client.post("/byok/keys", headers=auth(key), json={"provider": "openrouter", "api_key": BYOK_KEY})
    assert client.delete("/byok/keys", params={"provider": "openrouter"}, headers=auth(key)).status_code in (200, 204)
    r = client.post("/chat/completions", headers=auth(key), json=CHAT)
    assert r.status_code == 200
    assert r.headers["x-provider-used"] == "openai"
    assert float(r.headers["x-cost-incurred"]) > 0


def test_zz_canaries_never_leak(stack):
    """Runs last in this file: no log line or database file holds a provider key in plaintext."""
    time.sleep(0.5)
    canaries = [BYOK_KEY.encode(), PROVIDER_KEY.encode()]
    files = list(stack.logs.values()) + [p for p in Path(stack.tmp).glob("opsgate.db*")]
    for path in files:
        data = Path(path).read_bytes()
        for c in canaries:
            assert c not in data, f"{c!r} found in {path}"
