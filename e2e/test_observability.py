"""Operability: one call followed by its id through Envoy's access log, the control plane's
JSON log and the provider's request; the control plane's histograms; the CLI's own help."""

import json
import subprocess
import time

import httpx

from conftest import BIN_DIR, INTERNAL_TOKEN, SERVICE_KEY, auth

QUICKSTART = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Trace me"}]}


def json_lines(path):
    out = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def test_one_request_id_names_the_call_everywhere(stack, client):
    stack.clear_provider_requests()
    r = client.post("/chat/completions", headers={**auth(SERVICE_KEY), "x-request-id": "client-chosen"},
                    json=QUICKSTART)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert rid.startswith("req_") and rid != "client-chosen", rid

    # The provider's request carries it.
    [seen] = stack.provider_requests()
    assert dict(seen["headers"])["x-request-id"] == rid

    # The control plane's JSON line for the authorize names it, with who called.
    lines = [l for l in json_lines(stack.logs["control-plane"]) if l.get("request_id") == rid]
    assert lines, "no control-plane log line carries the request id"
    authorize = next(l for l in lines if l.get("route") == "/internal/v1/authorize")
    assert authorize["status"] == 200 and authorize["method"] == "POST"
    assert authorize["caller_kind"] == "service" and authorize["caller_id"] == "loopnet-service"
    assert authorize["org"] == "org_demo"
    assert isinstance(authorize["latency_ms"], float)
    assert authorize["level"] == "INFO"

    # Envoy's access log (flushed about once a second) names it too.
    deadline = time.time() + 10
    while True:
        entries = [l for l in json_lines(stack.logs["envoy"]) if l.get("request_id") == rid]
        if entries or time.time() > deadline:
            break
        time.sleep(0.25)
    assert entries, "Envoy's access log has no line with the request id"
    assert entries[0]["status"] == 200 and entries[0]["path"] == "/api/v1/llm/chat/completions"
    assert entries[0]["upstream_path"] == "/v1/chat/completions"


def test_a_settlement_batch_names_each_of_its_calls(stack):
    """A batch of several settlements (calls that ended together share one) has no single
    x-request-id, so the control plane's request line for it names every call it carried; an
    id that could forge a log line is logged as "-"."""
    ids = ["req_e2e_batch_a", "req_e2e_batch_b", "req bad\nid"]
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    batch = {"settlements": [{"hold_id": i, "outcome": "failed", "usage": usage, "upstream_status": 0,
                              "latency_ms": 1} for i in ids]}
    r = httpx.post(f"http://127.0.0.1:{stack.cp_port}/internal/v1/settle", json=batch,
                   headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"})
    assert r.status_code == 200, r.text
    # No such holds: failed calls whose authorize never landed, released with nothing charged.
    assert all(x["charged_mc"] == 0 for x in r.json()["results"]), r.text
    deadline = time.time() + 5
    while True:
        lines = [l for l in json_lines(stack.logs["control-plane"])
                 if "req_e2e_batch_a" in str(l.get("request_ids", ""))]
        if lines or time.time() > deadline:
            break
        time.sleep(0.1)
    assert lines, "no control-plane line names the batch's calls"
    [line] = lines
    assert line["request_ids"] == "req_e2e_batch_a,req_e2e_batch_b,-"
    assert line["settlements"] == 3 and line["level"] == "INFO"
    assert line["route"] == "/internal/v1/settle" and line["status"] == 200


def test_control_plane_metrics_have_latency_histograms(stack, client):
    r = client.post("/chat/completions", headers=auth(SERVICE_KEY), json=QUICKSTART)
    assert r.status_code == 200, r.text
    m = httpx.get(f"http://127.0.0.1:{stack.cp_port}/metrics")
    assert m.status_code == 200
    assert m.headers["content-type"].startswith("application/openmetrics-text")
    text = m.text
    for name in ["opsgate_authorize_duration_seconds_bucket{",
                 "opsgate_settle_duration_seconds_bucket{",
                 "opsgate_http_request_duration_seconds_bucket{",
                 "opsgate_ledger_transaction_duration_seconds_bucket{",
                 'opsgate_charged_millicredits_total{provider="openai",model="gpt-4o-mini"}',
                 "opsgate_holds_open "]:
        assert name in text, name


def run_cli(*args):
    return subprocess.run([str(BIN_DIR / "opsgate"), *args], capture_output=True, text=True, timeout=30)


def test_each_command_has_its_own_help_and_errors_name_the_flag(tmp_path):
    h = run_cli("org", "create", "--help")
    assert h.returncode == 0, h.stderr
    assert "Create an organisation" in h.stdout and "--plan" in h.stdout
    assert "rotate-master-key" not in h.stdout, "the whole usage instead of the command's help"
    bad = run_cli("org", "create", "o1", "--name", "x", "--plan", "gold",
                  "--database-url", f"sqlite://{tmp_path}/x.db")
    assert bad.returncode == 2 and "--plan" in bad.stderr and "unknown plan 'gold'" in bad.stderr
    comp = run_cli("completions", "bash")
    assert comp.returncode == 0 and "opsgate" in comp.stdout and "service-key" in comp.stdout


def test_openapi_document_validates_and_lists_every_admin_route(stack):
    from openapi_spec_validator import validate

    doc = httpx.get(f"http://127.0.0.1:{stack.cp_port}/openapi.json").json()
    validate(doc)  # raises on anything that is not valid OpenAPI 3
    admin = {(p, m) for p, item in doc["paths"].items() if p.startswith("/admin/v1/") for m in item}
    assert ("/admin/v1/orgs", "post") in admin and ("/admin/v1/audit", "get") in admin
    assert len(admin) >= 20, sorted(admin)
    page = httpx.get(f"http://127.0.0.1:{stack.cp_port}/docs")
    assert page.status_code == 200 and "/admin/v1/orgs" in page.text
