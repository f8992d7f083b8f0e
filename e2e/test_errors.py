"""Every refusal comes back in the OpenAI error envelope with the guide's status."""

import httpx

from conftest import SERVICE_KEY, auth, new_user

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def envelope(r: httpx.Response) -> dict:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}, err
    return err


def test_missing_and_wrong_keys_are_401(client):
    for headers in [{}, auth("sk-unknown-service-key-2025"), auth("not-a-key"), {"Authorization": "Basic eDp5"},
                    auth("uc_" + "0" * 64)]:
        r = client.post("/chat/completions", headers=headers, json=CHAT)
        assert r.status_code == 401, (headers, r.text)
        err = envelope(r)
        assert err["code"] == "invalid_api_key"
        for v in headers.values():
            assert v.split()[-1] not in err["message"]


def test_non_metered_routes_check_the_key_too(client):
    assert client.get("/credits", headers=auth("sk-unknown-service-key-2025")).status_code == 401
    assert client.get("/models").status_code == 401


def test_bad_request_names_the_field(client):
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY), json={**CHAT, "power_level": "turbo"})
    assert r.status_code == 400
    assert envelope(r)["param"] == "power_level"


def test_model_outside_the_plan_is_403(stack, client):
    r = client.post("/chat/completions", headers=auth(stack.user_key), json={**CHAT, "model": "o1-preview"})
    assert r.status_code == 403, r.text
    assert "professional" in envelope(r)["message"]


def test_unaffordable_call_is_402(stack, client):
    _, key = new_user(stack, "enterprise", credits="0.001")
    r = client.post("/chat/completions", headers=auth(key), json={**CHAT, "model": "o1-preview"})
    assert r.status_code == 402, r.text
    err = envelope(r)
    assert err["type"] == "insufficient_credits" and err["code"] == "payment_required"
    assert "Available: 0.001" in err["message"]


def test_quota_exhausted_is_429_with_retry_after(stack, client):
    _, key = new_user(stack, "starter", credits="1000")
    model = {**CHAT, "model": "llama3-70b-deepinfra"}
    for _ in range(2):
        ok = client.post("/chat/completions", headers=auth(key), json=model)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit-day"] == "2"
    r = client.post("/chat/completions", headers=auth(key), json=model)
    assert r.status_code == 429, r.text
    err = envelope(r)
    assert err["type"] == "rate_limit_error" and err["code"] == "quota_exceeded"
    assert "Daily limit: 2 calls" in err["message"]
    assert int(r.headers["retry-after"]) > 0


def test_unknown_route_is_404_envelope(client):
    r = client.get("/nothing-here", headers=auth(SERVICE_KEY))
    assert r.status_code == 404
    envelope(r)


def test_unknown_model_is_404_at_the_edge(client):
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY), json={**CHAT, "model": "gpt-9-turbo"})
    assert r.status_code == 404, r.text
    assert "gpt-9-turbo" in envelope(r)["message"]
