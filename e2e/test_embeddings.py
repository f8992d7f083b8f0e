"""Embeddings through Envoy with the official OpenAI SDK: `client.embeddings.create` works
(the SDK asks for base64 by default and decodes it), and the call is metered by input
tokens — the cost header is the input tokens at the model's price, and the balance drops by
exactly that."""

import math

import openai
import pytest

from conftest import auth, new_user, quiet

# Milli-credits per million input tokens (OpenAI's $0.02 and $0.13), as the catalogue has them.
PRICE_MC = {"text-embedding-3-small": 20_000, "text-embedding-3-large": 130_000}
MARKUP = {"enterprise": 0, "professional": 10, "trial": 0}

# The fake provider counts a word as a token: 2,000 + 1,000 input tokens.
INPUTS = ["alpha " * 2_000, "beta gamma " * 500]
TOKENS = 3_000


def cost_mc(tokens: int, model: str, plan: str) -> int:
    """The catalogue's rule: price × tokens × (1 + markup), rounded up once, in integers."""
    return math.ceil(tokens * PRICE_MC[model] * (100 + MARKUP[plan]) / (1_000_000 * 100))


def credits_mc(client, key) -> int:
    return round(client.get("/credits", headers=auth(key)).json()["credits_remaining"] * 1000)


def sdk(stack, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.api, api_key=key, max_retries=0, timeout=30)


@pytest.mark.parametrize("plan,model", [
    ("enterprise", "text-embedding-3-large"),
    ("professional", "text-embedding-3-large"),
    ("trial", "text-embedding-3-small"),
])
def test_embeddings_are_charged_their_input_tokens(stack, client, plan, model):
    _, key = new_user(stack, plan, credits="100")
    before = quiet(lambda: credits_mc(client, key))
    stack.clear_provider_requests()

    raw = sdk(stack, key).embeddings.with_raw_response.create(model=model, input=INPUTS)
    result = raw.parse()

    # The SDK asked for base64 (its default) and decoded it into floats.
    [seen] = stack.provider_requests()
    assert seen["path"] == "/v1/embeddings"
    assert seen["body"]["encoding_format"] == "base64"
    assert sorted(seen["body"]) == ["encoding_format", "input", "model"]
    assert len(result.data) == 2
    for i, item in enumerate(result.data):
        assert item.index == i
        assert len(item.embedding) == 8 and all(isinstance(x, float) for x in item.embedding)
        assert math.isclose(sum(x * x for x in item.embedding), 1.0, rel_tol=1e-4)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.model == model
    assert result.usage.prompt_tokens == TOKENS

    expected = cost_mc(TOKENS, model, plan)
    assert expected > 0
    assert raw.headers["x-provider-used"] == "openai"
    assert raw.headers["x-cost-incurred"] == f"{expected / 1000:.3f}"
    assert raw.headers["x-credits-remaining"] == f"{(before - expected) / 1000:.3f}"
    assert "x-ratelimit-limit" in raw.headers and "x-ratelimit-remaining" in raw.headers
    after = quiet(lambda: credits_mc(client, key))
    assert before - after == expected


def test_float_and_base64_answers_are_the_same_vectors(stack):
    _, key = new_user(stack, "enterprise", credits="10")
    client = sdk(stack, key)
    decoded = client.embeddings.create(model="text-embedding-3-small", input="the same words")
    floats = client.embeddings.create(model="text-embedding-3-small", input="the same words",
                                      encoding_format="float", dimensions=8)
    assert len(decoded.data[0].embedding) == 8
    for a, b in zip(decoded.data[0].embedding, floats.data[0].embedding):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
    sized = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]], dimensions=4)
    assert len(sized.data[0].embedding) == 4
    assert sized.usage.prompt_tokens == 3


def test_malformed_input_is_a_400_and_costs_nothing(stack, client):
    _, key = new_user(stack, "enterprise", credits="10")
    before = quiet(lambda: credits_mc(client, key))
    stack.clear_provider_requests()
    for bad in ([], "", ["fine", ""], [["not", "tokens"]], [[1, 2], "mixed"]):
        with pytest.raises(openai.BadRequestError) as e:
            sdk(stack, key).embeddings.create(model="text-embedding-3-small", input=bad)
        assert e.value.status_code == 400
        body = e.value.body
        assert body["param"] == "input", body
        assert body["type"] and body["message"], body
    r = client.post("/embeddings", headers=auth(key),
                    json={"model": "text-embedding-3-small", "input": "x", "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    # A chat model embeds nothing.
    with pytest.raises(openai.BadRequestError):
        sdk(stack, key).embeddings.create(model="gpt-4o-mini", input="x")
    assert stack.provider_requests() == []
    assert quiet(lambda: credits_mc(client, key)) == before


def test_embedding_models_are_listed_for_every_plan(stack):
    _, key = new_user(stack, "trial")
    models = {m.id: m for m in sdk(stack, key).models.list()}
    for model in PRICE_MC:
        assert model in models, sorted(models)
        assert models[model].model_extra["kind"] == "embedding"


def test_a_users_own_openai_key_is_used_never_platform_credits(stack, client):
    _, key = new_user(stack, "professional", credits="100")
    own = "sk-proj-e2e-own-openai-key-the-provider-rejects"
    r = client.post("/byok/keys", headers=auth(key), json={"provider": "openai", "api_key": own})
    assert r.status_code == 201, r.text
    before = quiet(lambda: credits_mc(client, key))
    stack.clear_provider_requests()
    with pytest.raises(openai.PermissionDeniedError) as e:
        sdk(stack, key).embeddings.create(model="text-embedding-3-small", input="hello")
    assert e.value.code == "byok_key_rejected"
    [seen] = stack.provider_requests()
    assert seen["path"] == "/v1/embeddings"
    assert dict(seen["headers"])["authorization"] == f"Bearer {own}"
    assert own not in e.value.response.text
    assert quiet(lambda: credits_mc(client, key)) == before


def test_a_batch_too_large_for_one_answer_is_a_400_before_the_provider_is_paid(stack, client):
    # 1,000 vectors of text-embedding-3-large's 3,072 floats would come to ~65 MiB, over the
    # 32 MiB Envoy holds: without the check the provider answered, was paid, and the client
    # got Envoy's bare 500 (which the SDK retries, each one charged).
    _, key = new_user(stack, "enterprise", credits="10")
    before = quiet(lambda: credits_mc(client, key))
    stack.clear_provider_requests()
    texts = [f"text {i}" for i in range(1_000)]
    with pytest.raises(openai.BadRequestError) as e:
        sdk(stack, key).embeddings.create(model="text-embedding-3-large", input=texts, encoding_format="float")
    body = e.value.body
    assert body["param"] == "input", body
    assert "at most 496 inputs" in body["message"], body
    # With its own `dimensions`, refused before the control plane is even asked.
    r = client.post("/embeddings", headers=auth(key),
                    json={"model": "text-embedding-3-large", "input": texts * 2, "dimensions": 3072})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    assert stack.provider_requests() == []
    assert quiet(lambda: credits_mc(client, key)) == before, "nothing charged, no hold left"
    # What fits goes through: base64 is a third of the size.
    ok = sdk(stack, key).embeddings.create(model="text-embedding-3-large", input=texts)
    assert len(ok.data) == 1_000
