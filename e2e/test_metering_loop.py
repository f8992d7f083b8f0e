"""A call's hold ends with the call: a plain response leaves only after its settlement is
acknowledged (`settle_wait_ms` in the shipped configs), so back-to-back calls by a user who can
afford one hold but not two all succeed, and `X-Credits-Remaining` is what `/credits` says."""

import re
from concurrent.futures import ThreadPoolExecutor

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


def _settle_counts(stack) -> tuple[int, int]:
    """(settle requests the control plane served, settlements they carried), from /metrics."""
    text = httpx.get(f"http://127.0.0.1:{stack.cp_port}/metrics", timeout=30).text
    requests = sum(int(float(n)) for n in re.findall(
        r'^opsgate_http_request_duration_seconds_count\{[^}]*route="/internal/v1/settle"[^}]*\} (\S+)', text, re.M))
    carried = int(float(re.search(r"^opsgate_settle_batch_size_sum (\S+)", text, re.M).group(1)))
    return requests, carried


def test_calls_ending_together_share_settle_callouts(stack):
    # Each Envoy worker's root context sends the settlements of calls that end while one of
    # its batches is in flight together: fewer settle requests than calls, every settlement
    # carried exactly once, and no hold left when all have returned.
    _, key = new_user(stack, "professional", credits="1000")
    calls = 48
    before = _settle_counts(stack)

    def one(i):
        with httpx.Client(timeout=60) as c:
            r = c.post(f"{stack.api}/chat/completions", headers=auth(key),
                       json={"model": "gpt-4o-mini", "max_tokens": 50,
                             "messages": [{"role": "user", "content": f"together {i}"}]})
            return r.status_code, float(r.headers.get("x-cost-incurred", "0"))

    with ThreadPoolExecutor(max_workers=calls) as pool:
        results = list(pool.map(one, range(calls)))
    assert all(status == 200 for status, _ in results), results
    requests, carried = (a - b for a, b in zip(_settle_counts(stack), before))
    assert carried == calls, "every settlement carried once"
    assert requests < calls, f"{requests} settle requests for {calls} calls: none shared"
    credits = httpx.get(f"{stack.api}/credits", headers=auth(key), timeout=30).json()
    spent = sum(cost for _, cost in results)
    assert abs(credits["credits_remaining"] - (1000 - spent)) < 0.0005, (credits, spent)
