"""A call's hold ends with the call: a plain response leaves only after its settlement is
acknowledged (`settle_wait_ms` in the shipped configs), so back-to-back calls by a user who can
afford one hold but not two all succeed, and `X-Credits-Remaining` is what `/credits` says."""

import httpx
from openai import OpenAI

from conftest import auth, new_user


def test_back_to_back_sdk_calls_find_the_previous_hold_gone(stack):
    # gpt-4o-mini's whole output (16,384 tokens) at the professional markup holds ~10.8
    # credits: 12 credits afford one such hold, not two.
    _, key = new_user(stack, "professional", credits="12")
    client = OpenAI(base_url=stack.api, api_key=key, max_retries=0)
    for i in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {i}"}])
        assert raw.http_response.status_code == 200
        assert "x-max-tokens-applied" not in raw.headers, "the whole output was affordable"
        told = raw.headers["x-credits-remaining"]
        credits = httpx.get(f"{stack.api}/credits", headers=auth(key), timeout=30).json()
        assert float(told) == credits["credits_remaining"], (i, told, credits)
        assert float(told) < 12.0


def test_back_to_back_streams_find_the_previous_hold_gone(stack):
    _, key = new_user(stack, "professional", credits="12")
    client = OpenAI(base_url=stack.api, api_key=key, max_retries=0)
    for i in range(4):
        text = "".join(chunk.choices[0].delta.content or ""
                       for chunk in client.chat.completions.create(
                           model="gpt-4o-mini", stream=True,
                           messages=[{"role": "user", "content": f"stream {i}"}])
                       if chunk.choices)
        assert text, i
        # The stream ended only after its settlement: nothing is held any more.
        credits = httpx.get(f"{stack.api}/credits", headers=auth(key), timeout=30).json()
        assert credits["credits_remaining"] > 11.0, (i, credits)
