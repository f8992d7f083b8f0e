"""The official OpenAI Python SDK works unchanged against the gateway."""

import openai
import pytest

from conftest import SERVICE_KEY, new_user


@pytest.fixture
def sdk(stack):
    return openai.OpenAI(base_url=stack.api, api_key=SERVICE_KEY, max_retries=0, timeout=30)


def test_chat_completion(sdk):
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Extract company info"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Fake reply to: Extract company info"
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-provider-used"] == "openai"
    assert float(raw.headers["x-cost-incurred"]) > 0


def test_streaming(sdk, stack):
    stack.clear_provider_requests()
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Write a haiku about unicorns"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Fake reply to: Write a haiku about unicorns"
    [seen] = stack.provider_requests()
    assert seen["body"]["stream_options"] == {"include_usage": True}


def test_streaming_with_usage_requested(sdk):
    chunks = list(sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True},
    ))
    usage = [c for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].usage.completion_tokens > 0
    # The gateway's cost rides on the usage chunk as an extra field the SDK keeps.
    cost = usage[0].model_extra["opsgate"]
    assert float(cost["cost"]) > 0 and cost["provider"] == "openai"


def test_models_list_is_filtered_by_plan(sdk, stack):
    ids = {m.id for m in sdk.models.list()}
    assert {"gpt-4o-mini", "o1-preview", "llama3-8b-local"} <= ids
    user_sdk = openai.OpenAI(base_url=stack.api, api_key=stack.user_key, max_retries=0)
    user_ids = {m.id for m in user_sdk.models.list()}
    assert "gpt-4o-mini" in user_ids and "o1-preview" not in user_ids


def test_sdk_errors_map_to_the_right_exceptions(stack):
    bad = openai.OpenAI(base_url=stack.api, api_key="sk-wrong-service-key-2025", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "invalid_api_key"

    user = openai.OpenAI(base_url=stack.api, api_key=stack.user_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        user.chat.completions.create(model="o1-preview", messages=[{"role": "user", "content": "hi"}])

    _, poor = new_user(stack, "enterprise", credits="0.001")
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=stack.api, api_key=poor, max_retries=0).chat.completions.create(
            model="o1-preview", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 402

    _, starter = new_user(stack, "starter")
    limited = openai.OpenAI(base_url=stack.api, api_key=starter, max_retries=0)
    for _ in range(2):
        limited.chat.completions.create(model="llama3-70b-deepinfra", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as e:
        limited.chat.completions.create(model="llama3-70b-deepinfra", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "quota_exceeded"
