"""The guide's Appendix B organisation setup as three CLI commands; the new service key
works through Envoy without a restart (the filter's snapshot refreshes)."""

import time

from conftest import auth

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "summarise"}]}


def test_appendix_b_in_three_commands(stack, client):
    key = "sk-centerdeep-service-key-2025"
    assert client.post("/chat/completions", headers=auth(key), json=CHAT).status_code == 401

    stack.cli("org", "create", "org_center_deep", "--name", "Center-Deep Pro", "--plan", "enterprise",
              "--credits", "5000")
    stack.cli("user", "create", "centerdeep-service", "--org", "org_center_deep", "--plan", "enterprise",
              "--kind", "service", "--service-key", key)
    stack.cli("user", "allocate", "centerdeep-service", "5000")

    deadline = time.time() + 10
    r = None
    while time.time() < deadline:
        r = client.post("/chat/completions", headers=auth(key), json=CHAT)
        if r.status_code != 401:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    credits = client.get("/credits", headers=auth(key)).json()
    assert credits["user_id"] == "centerdeep-service"
    assert credits["tier"] == "enterprise"
    assert credits["credits_remaining"] <= 5000.0

    # Revoking it stops it at the edge on the next snapshot.
    stack.cli("service-key", "revoke", key)
    deadline = time.time() + 10
    while time.time() < deadline:
        r = client.post("/chat/completions", headers=auth(key), json=CHAT)
        if r.status_code == 401:
            break
        time.sleep(0.2)
    assert r.status_code == 401
