"""The integration guide, to the letter where clients depend on it: its retry example waits
until `X-RateLimit-Reset` on a 429; every metered response carries the rate-limit headers
(unlimited windows as a large integer); BYOK calls and service keys take no call quota;
`GET /` is the health check; the OpenAI SDK's `models.retrieve` works."""

import time

import httpx
import openai
import pytest
import requests

from conftest import BYOK_KEY, SERVICE_KEY, auth, new_user

UNLIMITED = "2147483647"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


class OpsLLMClient:
    """The guide's client, as its examples use it."""

    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def chat_completion(self, messages, **kw):
        r = requests.post(f"{self.base_url}/chat/completions", headers=self.headers,
                          json={"messages": messages, **kw}, timeout=30)
        r.raise_for_status()
        return r.json()


def chat_with_retry(client, messages, sleep, max_retries: int = 3, backoff_factor: float = 2.0):
    """The guide's retry example (its missing `requests` import added), with `time.sleep`
    handed in so the test sees how long it would wait."""
    for attempt in range(max_retries):
        try:
            return client.chat_completion(messages)
        except requests.exceptions.HTTPError as e:
            if e.response.status_code == 429:
                reset_time = int(e.response.headers.get('X-RateLimit-Reset', 0))
                if reset_time:
                    wait_seconds = reset_time - int(time.time())
                    sleep(wait_seconds + 1)
                    continue
            elif e.response.status_code in [500, 503]:
                sleep(backoff_factor ** attempt)
                continue
            else:
                raise
    raise Exception(f"Failed after {max_retries} retries")


def test_the_guides_retry_example_waits_until_the_reset(stack):
    # The e2e catalogue cuts the starter plan to 2 calls a day.
    _, key = new_user(stack, "starter", credits="100")
    client = OpsLLMClient(stack.api, key)
    for _ in range(2):
        client.chat_completion([{"role": "user", "content": "hi"}], model="llama3-8b-local")
    r = httpx.post(f"{stack.api}/chat/completions", headers=auth(key), timeout=30,
                   json={"model": "llama3-8b-local", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429, r.text
    reset = int(r.headers["x-ratelimit-reset"])
    assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == "0"
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert reset == midnight, (reset, midnight)
    assert int(r.headers["retry-after"]) == pytest.approx(midnight - time.time(), abs=5)

    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) >= 3:
            raise RuntimeError("stop")

    class Starter(OpsLLMClient):
        def chat_completion(self, messages, **kw):
            return super().chat_completion(messages, model="llama3-8b-local", **kw)

    with pytest.raises(RuntimeError, match="stop"):
        chat_with_retry(Starter(stack.api, key), [{"role": "user", "content": "hi"}], sleep)
    # It waited until the reset each time — never an immediate retry.
    assert all(abs(w - (midnight - time.time() + 1)) < 5 for w in waits), waits


def test_every_metered_response_carries_rate_limit_headers(stack, client):
    # A plan with windows: the guide's three headers (and the day's).
    _, key = new_user(stack, "professional", credits="100")
    r = client.post("/chat/completions", headers=auth(key), json=CHAT)
    assert r.status_code == 200, r.text
    for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-limit-day"):
        assert r.headers[h].isdigit(), (h, r.headers.get(h))
    # An unlimited plan and a service key (no call quota): the same headers, as integers.
    _, key = new_user(stack, "enterprise", credits="100")
    for credential in (key, SERVICE_KEY):
        r = client.post("/chat/completions", headers=auth(credential), json=CHAT)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit"] == UNLIMITED == r.headers["x-ratelimit-remaining"]
        assert int(r.headers["x-ratelimit-reset"]) > time.time()


def test_a_byok_call_leaves_the_call_quota_untouched(stack, client):
    _, key = new_user(stack, "starter", credits="100")
    r = client.post("/byok/keys", headers=auth(key), json={"provider": "openrouter", "api_key": BYOK_KEY})
    assert r.status_code == 201, r.text
    # More BYOK calls than the starter plan's 2 a day: none is refused, none counted.
    for _ in range(4):
        r = client.post("/chat/completions", headers=auth(key),
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-remaining"] == UNLIMITED
    # The plan's own calls still have both of theirs.
    r = client.post("/chat/completions", headers=auth(key),
                    json={"model": "llama3-8b-local", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-remaining-day"] == "1"


def test_get_root_is_the_health_check(stack):
    r = httpx.get(f"{stack.base}/", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["control_plane"] == "reachable"


def test_models_retrieve_with_the_sdk(stack):
    client = openai.OpenAI(base_url=stack.api, api_key=SERVICE_KEY, max_retries=0)
    m = client.models.retrieve("gpt-4o-mini")
    assert m.id == "gpt-4o-mini" and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_the_response_names_the_catalogue_model(stack):
    """The provider knows the model by its own id (here `llama3:8b`); the client sees the
    catalogue id it sent, in the body and in every chunk of a stream."""
    client = openai.OpenAI(base_url=stack.api, api_key=SERVICE_KEY, max_retries=0)
    stack.clear_provider_requests()
    reply = client.chat.completions.create(model="llama3-8b-local",
                                           messages=[{"role": "user", "content": "hi"}])
    [seen] = stack.provider_requests()
    assert seen["body"]["model"] != "llama3-8b-local", "the provider's own id went upstream"
    assert reply.model == "llama3-8b-local"
    chunks = list(client.chat.completions.create(model="llama3-8b-local", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert chunks and all(c.model == "llama3-8b-local" for c in chunks), [c.model for c in chunks]


def test_temperature_defaults_to_the_guides_for_models_that_take_one(stack, client):
    stack.clear_provider_requests()
    for model in ("gpt-4o-mini", "o1-preview"):
        r = client.post("/chat/completions", headers=auth(SERVICE_KEY),
                        json={"model": model, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200, r.text
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY),
                    json={"model": "gpt-4o-mini", "temperature": 0.1, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text
    mini, o1, chosen = (req["body"] for req in stack.provider_requests())
    assert mini["temperature"] == 0.7
    assert "temperature" not in o1, "a reasoning model takes none"
    assert chosen["temperature"] == 0.1, "the client's own is kept"
