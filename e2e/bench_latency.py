"""What latency and CPU does opsgate add? Runs the real stack (fake provider, control plane,
Envoy with the filter) plus a baseline listener on the same Envoy that routes straight to the
fake provider with no filter, then sends the same chat completion through both, alternating in
blocks, and reports medians and p99 as ratios against the baseline measured in this run — and
the CPU each process spent per call (utime + stime from /proc/PID/stat, counted over each
path's blocks only), which is steadier than throughput on a shared 2-core machine.

Bounded: REQUESTS per path (default 1000), loopback only.  usage: scripts/bench
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

import conftest
from conftest import PROVIDER_KEY, SERVICE_KEY, Stack, free_port

REQUESTS = int(os.environ.get("OPSGATE_BENCH_REQUESTS", "1000"))
BLOCK = 50
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Extract company info from this text: Acme Corp, San Francisco"}]}


FLOOR_WASM = os.environ.get("OPSGATE_FLOOR_WASM", "")


# The exchange-floor filter's shapes (bench/exchange-floor): the path's name, its plugin
# configuration, what it is.
FLOORS = [("floor1", "request", "one empty exchange before each call"),
          ("floor2", "request,response", "the loop's skeleton: an empty exchange before each call and one its response waits for")]


def listener_yaml(name: str, port: int, filters: str = "") -> str:
    """A listener routing everything straight to the fake provider, with `filters` (YAML
    http_filters entries) before the router."""
    return f"""
  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: {name}
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: fake_provider, timeout: 600s }}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def floor_filter_yaml(name: str, shape: str) -> str:
    """The exchange-floor filter in its own VM, in `shape` (its plugin configuration)."""
    return f"""\
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                allow_on_headers_stop_iteration: true
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {FLOOR_WASM} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{shape}"
"""


def with_bench_listeners(config: str, port: int, floors: list[tuple[str, int, str]]) -> str:
    """Adds the baseline listener (Envoy alone: straight to the fake provider, no filter) and
    a listener per floor (name, port, shape): the same route behind the exchange-floor
    filter, which only holds each request (and response) for an empty exchange with the
    control plane."""
    listener = listener_yaml("baseline", port)
    for name, floor_port, shape in floors:
        listener += listener_yaml(name, floor_port, floor_filter_yaml(name, shape))
    return config.replace("\n  clusters:", listener + "\n  clusters:", 1)


class BenchStack(Stack):
    def start(self):
        self.baseline_port = free_port()
        self.floors = [(name, free_port(), shape) for name, shape, _ in FLOORS] if FLOOR_WASM else []
        original = conftest.e2e_envoy_config

        def e2e_envoy_config(config, idp):
            return with_bench_listeners(original(config, idp), self.baseline_port, self.floors)

        conftest.e2e_envoy_config = e2e_envoy_config
        try:
            return super().start()
        finally:
            conftest.e2e_envoy_config = original


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """utime + stime of every PostgreSQL server process on this machine (the backends serving
    the control plane; 0 when PostgreSQL runs elsewhere)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


ON_POSTGRES = os.environ.get("OPSGATE_DATABASE_URL", "").startswith("postgres")


def measure(client: httpx.Client, url: str, headers: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.post(url, json=BODY, headers=headers)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return out


WRK_SECONDS = int(os.environ.get("OPSGATE_BENCH_WRK_SECONDS", "5"))
WRK_CONNECTIONS = 8
WRK_ROUNDS = int(os.environ.get("OPSGATE_BENCH_WRK_ROUNDS", "3"))


def wrk(url: str, headers: dict, tmp: Path) -> tuple[float, int]:
    """Requests per second at c8 for WRK_SECONDS (wrk; every non-2xx counted and reported)."""
    script = tmp / "post.lua"
    body = json.dumps(BODY).replace("\\", "\\\\").replace('"', '\\"')
    lines = ['wrk.method = "POST"', f'wrk.body = "{body}"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "-s", str(script), url],
                         capture_output=True, text=True, timeout=WRK_SECONDS + 30).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise AssertionError(f"wrk saw {bad.group(1)} failed responses:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), int(re.search(r"(\d+) requests in", out).group(1))


def ledger_batches(cp_port: int) -> tuple[int, int, int, int, int]:
    """The control plane's ledger writer and callers, from /metrics: (batches run, jobs they
    carried, batches decided on the writer's mirror, authorizes whose caller was kept,
    authorizes whose kept caller was stale)."""
    text = httpx.get(f"http://127.0.0.1:{cp_port}/metrics").text
    value = lambda name: int(re.search(rf"^{name} (\d+)", text, re.M).group(1))
    return (value("opsgate_ledger_batches_total"), value("opsgate_ledger_jobs_total"),
            value("opsgate_ledger_mirrored_batches_total"), value("opsgate_callers_kept_total"),
            value("opsgate_callers_stale_total"))


JWT_REQUESTS = int(os.environ.get("OPSGATE_BENCH_JWT_REQUESTS", "400"))


def jwt_costs(stack, envoy: int) -> dict[str, float]:
    """Envoy CPU per request (µs) for requests refused or answered at the edge, by
    credential: a service key, one valid RS256 JWT repeated, a new valid one each request, a
    forged one each request (right `alg` and `kid`, random signature). The body is invalid,
    so each is answered by the filter (400 or 401) without the control plane: what differs
    is what verifying the credential costs (Envoy's jwt_authn for JWTs)."""
    idp = stack.idp
    url = f"{stack.api}/chat/completions"
    sub = "bench-jwt-user"
    fresh = [idp.token(sub) for _ in range(JWT_REQUESTS)]
    head, payload, _ = fresh[0].split(".")
    forged = [f"{head}.{payload}.{conftest.b64url(os.urandom(256))}" for _ in range(JWT_REQUESTS)]
    kinds = {
        "service key": [SERVICE_KEY] * JWT_REQUESTS,
        "RS256 JWT, the same each time": [fresh[0]] * JWT_REQUESTS,
        "RS256 JWT, new each time": fresh,
        "forged RS256 JWT, new each time": forged,
    }
    out = {}
    with httpx.Client(timeout=30) as c:
        for kind, tokens in kinds.items():
            for t in tokens[:20]:  # warm up
                c.post(url, content=b"{}", headers={"Authorization": f"Bearer {t}", "content-type": "application/json"})
            e0 = cpu_seconds(envoy)
            for t in tokens:
                r = c.post(url, content=b"{}", headers={"Authorization": f"Bearer {t}", "content-type": "application/json"})
                assert r.status_code in (400, 401), (kind, r.status_code, r.text)
            out[kind] = (cpu_seconds(envoy) - e0) / len(tokens) * 1e6
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main():
    with tempfile.TemporaryDirectory(prefix="opsgate-bench-") as tmp:
        stack = BenchStack(Path(tmp))
        try:
            stack.start()
            base_url = f"http://127.0.0.1:{stack.baseline_port}/v1/chat/completions"
            gw_url = f"{stack.api}/chat/completions"
            base_h = {"Authorization": f"Bearer {PROVIDER_KEY}"}
            gw_h = {"Authorization": f"Bearer {SERVICE_KEY}"}
            floor_urls = {name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port, _ in stack.floors}
            base, gw = [], []
            floor = {name: [] for name in floor_urls}
            envoy = next(p.pid for p in stack.procs if "envoy" in str(p.args[0]))
            cp = next(p.pid for p in stack.procs if str(p.args[0]).endswith("opsgate"))
            cpu = {f"{k}_{p}": 0.0 for k in ("base", "gw", *floor_urls) for p in ("envoy", "cp", "pg")}
            pg_cpu = postgres_cpu_seconds if ON_POSTGRES else (lambda: 0.0)

            def block(kind, url, headers):
                e0, c0, p0 = cpu_seconds(envoy), cpu_seconds(cp), pg_cpu()
                out = measure(c, url, headers, BLOCK)
                time.sleep(0.3)  # the last settlements of the block are sent on the next tick
                cpu[f"{kind}_envoy"] += cpu_seconds(envoy) - e0
                cpu[f"{kind}_cp"] += cpu_seconds(cp) - c0
                cpu[f"{kind}_pg"] += pg_cpu() - p0
                return out

            with httpx.Client(timeout=30) as c:
                measure(c, base_url, base_h, 50)  # warm up both paths (V8, connections)
                measure(c, gw_url, gw_h, 50)
                for url in floor_urls.values():
                    measure(c, url, base_h, 50)
                for _ in range(REQUESTS // BLOCK):
                    base += block("base", base_url, base_h)
                    gw += block("gw", gw_url, gw_h)
                    for name, url in floor_urls.items():
                        floor[name] += block(name, url, base_h)
            jwt = jwt_costs(stack, envoy)
            thr = {}
            rounds = {"base": [], "gw": [], **{name: [] for name in floor_urls}}
            paths = [("base", base_url, base_h), ("gw", gw_url, gw_h)] + [(name, url, base_h) for name, url in floor_urls.items()]
            if shutil.which("wrk") and WRK_ROUNDS > 0:
                # Alternating rounds, each path measured WRK_ROUNDS times: the median of each
                # figure, and the spread of the throughput ratio, are reported (a shared 2-core
                # machine moves single runs by a quarter).
                for _ in range(WRK_ROUNDS):
                    for kind, url, headers in paths:
                        e0, c0, l0, p0 = cpu_seconds(envoy), cpu_seconds(cp), ledger_batches(stack.cp_port), pg_cpu()
                        rps, n_req = wrk(url, headers, Path(tmp))
                        time.sleep(0.5)
                        l1 = ledger_batches(stack.cp_port)
                        rounds[kind].append((rps, (cpu_seconds(envoy) - e0) / n_req * 1e6, (cpu_seconds(cp) - c0) / n_req * 1e6,
                                             (l1[1] - l0[1]) / max(1, l1[0] - l0[0]), (pg_cpu() - p0) / n_req * 1e6,
                                             (l1[2] - l0[2]) / max(1, l1[0] - l0[0]), (l1[3] - l0[3]) / n_req,
                                             (l1[4] - l0[4]) / n_req))
                for kind, runs in rounds.items():
                    if runs:
                        thr[kind] = tuple(statistics.median(r[i] for r in runs) for i in range(8))
        finally:
            stack.stop()
    b50, g50 = statistics.median(base), statistics.median(gw)
    b99, g99 = pct(base, 0.99), pct(gw, 0.99)
    print(f"requests per path: {len(base)} (sequential, keep-alive, loopback)")
    print(f"baseline  Envoy -> fake provider          p50 {b50 * 1e3:7.3f} ms   p99 {b99 * 1e3:7.3f} ms")
    print(f"opsgate   Envoy + filter + control plane  p50 {g50 * 1e3:7.3f} ms   p99 {g99 * 1e3:7.3f} ms")
    print(f"ratio (opsgate / baseline)                p50 {g50 / b50:7.2f} x    p99 {g99 / b99:7.2f} x")
    print(f"added per call                            p50 {(g50 - b50) * 1e3:7.3f} ms")
    n = len(base)
    be, ge = cpu["base_envoy"] / n * 1e6, cpu["gw_envoy"] / n * 1e6
    print(f"CPU per call, Envoy                       baseline {be:7.0f} µs   opsgate {ge:7.0f} µs   ({ge / be:.2f}x)")
    backend = "PostgreSQL" if ON_POSTGRES else "SQLite"
    print(f"CPU per call, control plane ({backend:10}) opsgate {cpu['gw_cp'] / n * 1e6:7.0f} µs "
          f"(idle while the baseline ran: {cpu['base_cp'] / n * 1e6:.0f} µs)")
    if ON_POSTGRES:
        print(f"CPU per call, PostgreSQL backends         opsgate {cpu['gw_pg'] / n * 1e6:7.0f} µs "
              f"(control plane + backends: {(cpu['gw_cp'] + cpu['gw_pg']) / n * 1e6:.0f} µs)")
    for name, _, what in FLOORS:
        if floor.get(name):
            f50, fe = statistics.median(floor[name]), cpu[f"{name}_envoy"] / n * 1e6
            print(f"{name} ({what}): p50 {f50 * 1e3:.3f} ms ({f50 / b50:.2f}x); "
                  f"Envoy CPU per call {fe:.0f} µs ({fe / be:.2f}x the baseline)")
    base_key = jwt["service key"] or 1.0  # a short run can measure 0 ticks
    print(f"Envoy CPU per request answered at the edge ({JWT_REQUESTS} each; jwt_authn verifies JWTs):")
    for kind, us in jwt.items():
        print(f"  {kind:34} {us:7.0f} µs   ({us / base_key:.2f}x a service key)")
    if thr:
        (brps, be8, *_), (grps, ge8, gc8, per_batch, gp8, mirrored, kept, stale) = thr["base"], thr["gw"]
        ratios = sorted(g[0] / b[0] for b, g in zip(rounds["base"], rounds["gw"]))
        print(f"wrk at c{WRK_CONNECTIONS}: {WRK_ROUNDS} alternating rounds of {WRK_SECONDS} s per path; medians below "
              f"(throughput ratio per round: {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")
        print(f"throughput at c{WRK_CONNECTIONS} ({WRK_SECONDS} s, wrk)             baseline {brps:7.0f} req/s   opsgate {grps:7.0f} req/s   ({grps / brps:.2f}x)")
        print(f"CPU per call at c{WRK_CONNECTIONS}, Envoy                 baseline {be8:7.0f} µs   opsgate {ge8:7.0f} µs   ({ge8 / be8:.2f}x)")
        print(f"CPU per call at c{WRK_CONNECTIONS}, control plane ({backend:10}) {gc8:7.0f} µs")
        if ON_POSTGRES:
            print(f"CPU per call at c{WRK_CONNECTIONS}, PostgreSQL backends   {gp8:7.0f} µs   "
                  f"(control plane + backends: {gc8 + gp8:.0f} µs)")
        print(f"ledger jobs per transaction at c{WRK_CONNECTIONS}          {per_batch:7.2f} (authorizes and settlements committed together)")
        if not ON_POSTGRES:
            print(f"SQLite at c{WRK_CONNECTIONS}: batches decided on the writer's mirror {mirrored:6.1%}; "
                  f"calls whose caller was kept {min(kept, 1.0):6.1%} (read again as stale: {stale:.2%})")
        for name, _, what in FLOORS:
            if name in thr:
                frps, fe8, fc8 = thr[name][:3]
                fratios = sorted(f[0] / b[0] for b, f in zip(rounds["base"], rounds[name]))
                print(f"{name} at c{WRK_CONNECTIONS} ({what}; bench/exchange-floor): "
                      f"{frps:.0f} req/s ({frps / brps:.2f}x; rounds {fratios[0]:.2f}x to {fratios[-1]:.2f}x); "
                      f"Envoy {fe8:.0f} µs per call ({fe8 / be8:.2f}x the baseline); control plane {fc8:.0f} µs")
    else:
        print("throughput: skipped (wrk not installed: apt-get install wrk; or OPSGATE_BENCH_WRK_ROUNDS=0)")


if __name__ == "__main__":
    main()
