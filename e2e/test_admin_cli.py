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


def test_guessable_service_keys_are_bound_with_a_warning_and_strong_ones_minted(stack):
    import subprocess

    from conftest import BIN_DIR

    def run(*args):
        return subprocess.run([str(BIN_DIR / "opsgate"), *args, "--database-url", stack.db_url],
                              capture_output=True, text=True, timeout=30)

    stack.cli("org", "create", "org_keys", "--name", "Keys", "--plan", "enterprise", "--credits", "10")
    stack.cli("user", "create", "keys-service", "--org", "org_keys", "--plan", "enterprise", "--kind", "service")
    weak = run("service-key", "add", "sk-keys-service-key-2025", "--user", "keys-service")
    assert weak.returncode == 0, weak.stderr
    assert "WARNING" in weak.stderr and "service-key mint" in weak.stderr
    minted = run("service-key", "mint", "keys")
    strong = minted.stdout.strip()
    assert minted.returncode == 0 and strong.startswith("sk-keys-") and strong.endswith(strong[-4:])
    bound = run("service-key", "add", strong, "--user", "keys-service")
    assert bound.returncode == 0 and "WARNING" not in bound.stderr, bound.stderr
    # A revoked key comes back only with --allow-revoked.
    assert run("service-key", "revoke", strong).returncode == 0
    again = run("service-key", "add", strong, "--user", "keys-service")
    assert again.returncode != 0 and "--allow-revoked" in again.stderr
    assert run("service-key", "add", strong, "--user", "keys-service", "--allow-revoked").returncode == 0


def test_every_envoy_worker_switches_together(stack):
    """One snapshot per Envoy (shared data): once a new key works, it works on every worker;
    once a revoked key is refused, it is refused on every worker — no 200/401 alternation.
    Each request opens its own connection, so Envoy spreads them over its workers."""
    import httpx

    key = "sk-workers-service-key-2025"
    stack.cli("org", "create", "org_workers", "--name", "Workers", "--plan", "enterprise", "--credits", "100")
    stack.cli("user", "create", "workers-service", "--org", "org_workers", "--plan", "enterprise",
              "--kind", "service", "--service-key", key)

    def statuses(until_stable: int) -> list[int]:
        seen, deadline = [], time.time() + 15
        while time.time() < deadline:
            with httpx.Client(base_url=stack.api, timeout=10) as c:  # a new connection each time
                seen.append(c.post("/chat/completions", headers=auth(key), json=CHAT).status_code)
            if len(seen) >= until_stable and len(set(seen[-until_stable:])) == 1 and seen[-1] != seen[0]:
                break
            time.sleep(0.02)
        return seen

    seen = statuses(40)
    first_ok = next(i for i, s in enumerate(seen) if s != 401)
    assert all(s == 200 for s in seen[first_ok:]), seen

    stack.cli("service-key", "revoke", key)
    seen = statuses(40)
    first_refused = next(i for i, s in enumerate(seen) if s == 401)
    assert all(s == 401 for s in seen[first_refused:]), seen
