"""The integration guide's quick start, verbatim, through Envoy and the filter."""

import re
import time

from conftest import PROVIDER_KEY, SERVICE_KEY, auth, quiet

QUICKSTART = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello, world!"}]}
CREDITS = re.compile(r"^\d+\.\d{3}$")


def credits_remaining(client) -> float:
    r = client.get("/credits", headers=auth(SERVICE_KEY))
    assert r.status_code == 200, r.text
    return r.json()["credits_remaining"]


def test_quick_start_returns_a_metered_completion(stack, client):
    before = quiet(lambda: credits_remaining(client))
    stack.clear_provider_requests()
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY), json=QUICKSTART)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Fake reply to: Hello, world!"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert r.headers["x-provider-used"] == "openai"
    assert CREDITS.match(r.headers["x-cost-incurred"]), r.headers["x-cost-incurred"]
    assert CREDITS.match(r.headers["x-credits-remaining"]), r.headers["x-credits-remaining"]
    assert float(r.headers["x-cost-incurred"]) > 0

    # What the provider saw: the platform key, the provider's model id, no extensions.
    [seen] = stack.provider_requests()
    headers = dict(seen["headers"])
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert headers["x-power-level"] == "balanced"
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"]["model"] == "gpt-4o-mini"
    assert "power_level" not in seen["body"]
    assert seen["body"]["max_tokens"] > 0, "the hold's bound is written into the request"

    # The charge lands in the ledger (settlement is asynchronous, batched by the filter).
    cost = float(r.headers["x-cost-incurred"])
    deadline = time.time() + 10
    while time.time() < deadline and round(before - credits_remaining(client), 3) != cost:
        time.sleep(0.2)
    assert round(before - credits_remaining(client), 3) == cost


def test_usage_endpoint_counts_the_calls(stack, client):
    def usage():
        return client.get("/usage", headers=auth(SERVICE_KEY)).json()

    def openai_requests(u):
        return sum(p["requests"] for p in u["providers"] if p["provider"] == "openai")

    before = quiet(usage)
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY), json=QUICKSTART)
    tokens = r.json()["usage"]["total_tokens"]
    deadline = time.time() + 10
    after = before
    while time.time() < deadline and after["total_requests"] == before["total_requests"]:
        time.sleep(0.2)
        after = usage()
    assert after["total_requests"] == before["total_requests"] + 1
    assert after["total_tokens"] == before["total_tokens"] + tokens
    assert openai_requests(after) == openai_requests(before) + 1
    assert round(after["total_cost"] - before["total_cost"], 3) == float(r.headers["x-cost-incurred"])


def test_power_level_header_reaches_the_provider_and_halves_the_cost(stack, client):
    balanced = client.post("/chat/completions", headers=auth(SERVICE_KEY), json=QUICKSTART)
    stack.clear_provider_requests()
    eco = client.post("/chat/completions", headers={**auth(SERVICE_KEY), "X-Power-Level": "eco"}, json=QUICKSTART)
    assert eco.status_code == 200
    assert dict(stack.provider_requests()[0]["headers"])["x-power-level"] == "eco"
    assert float(eco.headers["x-cost-incurred"]) <= float(balanced.headers["x-cost-incurred"]) / 2 + 0.001


def test_reasoning_models_get_max_completion_tokens(stack, client):
    stack.clear_provider_requests()
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY),
                    json={"model": "o3-mini", "max_tokens": 300, "messages": [{"role": "user", "content": "plan"}]})
    assert r.status_code == 200, r.text
    [seen] = stack.provider_requests()
    assert seen["body"]["max_completion_tokens"] == 300
    assert "max_tokens" not in seen["body"]
