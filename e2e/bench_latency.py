"""What latency does opsgate add? Runs the real stack (fake provider, control plane, Envoy
with the filter) plus a baseline listener on the same Envoy that routes straight to the fake
provider with no filter, then sends the same chat completion through both, alternating in
blocks, and reports medians and p99 as ratios against the baseline measured in this run.

Bounded: REQUESTS per path (default 1000), loopback only.  usage: scripts/bench
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

import conftest
from conftest import PROVIDER_KEY, SERVICE_KEY, Stack, free_port

REQUESTS = int(os.environ.get("OPSGATE_BENCH_REQUESTS", "1000"))
BLOCK = 50
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Extract company info from this text: Acme Corp, San Francisco"}]}


def with_baseline_listener(config: str, port: int, fake_port: int) -> str:
    listener = f"""
  - name: baseline
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: baseline
          route_config:
            virtual_hosts:
            - name: baseline
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: fake_provider, timeout: 600s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    return config.replace("\n  clusters:", listener + "\n  clusters:", 1)


class BenchStack(Stack):
    def start(self):
        self.baseline_port = free_port()
        original = conftest.render

        def render(template, values):
            return with_baseline_listener(original(template, values), self.baseline_port, values["FAKE_PORT"])

        conftest.render = render
        try:
            return super().start()
        finally:
            conftest.render = original


def measure(client: httpx.Client, url: str, headers: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.post(url, json=BODY, headers=headers)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
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
            base, gw = [], []
            with httpx.Client(timeout=30) as c:
                measure(c, base_url, base_h, 50)  # warm up both paths (V8, connections)
                measure(c, gw_url, gw_h, 50)
                for _ in range(REQUESTS // BLOCK):
                    base += measure(c, base_url, base_h, BLOCK)
                    gw += measure(c, gw_url, gw_h, BLOCK)
        finally:
            stack.stop()
    b50, g50 = statistics.median(base), statistics.median(gw)
    b99, g99 = pct(base, 0.99), pct(gw, 0.99)
    print(f"requests per path: {len(base)} (sequential, keep-alive, loopback)")
    print(f"baseline  Envoy -> fake provider          p50 {b50 * 1e3:7.3f} ms   p99 {b99 * 1e3:7.3f} ms")
    print(f"opsgate   Envoy + filter + control plane  p50 {g50 * 1e3:7.3f} ms   p99 {g99 * 1e3:7.3f} ms")
    print(f"ratio (opsgate / baseline)                p50 {g50 / b50:7.2f} x    p99 {g99 / b99:7.2f} x")
    print(f"added per call                            p50 {(g50 - b50) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
