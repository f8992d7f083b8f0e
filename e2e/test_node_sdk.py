"""The official OpenAI Node SDK (pinned in e2e/node/package.json), unchanged but for baseURL
and apiKey: a completion, a stream, models.retrieve, embeddings and a 401 through Envoy."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SERVICE_KEY

HERE = Path(__file__).parent


def test_the_node_sdk_works_unchanged(stack, tmp_path):
    modules = os.environ.get("OPSGATE_NODE_MODULES")
    if not modules:
        pytest.skip("OPSGATE_NODE_MODULES is not set (scripts/test sets it when node and npm exist)")
    node = shutil.which("node")
    assert node, "node is required when OPSGATE_NODE_MODULES is set"
    (tmp_path / "node_modules").symlink_to(modules)
    shutil.copy(HERE / "node/sdk_check.mjs", tmp_path / "sdk_check.mjs")
    out = subprocess.run([node, str(tmp_path / "sdk_check.mjs"), stack.api, SERVICE_KEY],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    chat = seen["chat"]
    assert chat["content"] == "Fake reply to: Hello from Node"
    assert chat["model"] == "gpt-4o-mini", "the catalogue id the client can send back"
    assert float(chat["cost"]) > 0 and chat["requestId"].startswith("req_")
    assert chat["usage"]["total_tokens"] == chat["usage"]["prompt_tokens"] + chat["usage"]["completion_tokens"]

    stream = seen["stream"]
    assert stream["chunks"] > 1 and stream["text"].startswith("Fake reply to")
    assert stream["usage"]["completion_tokens"] > 0

    assert seen["model"] == {"id": "gpt-4o-mini", "object": "model"}

    emb = seen["embeddings"]
    assert emb["count"] == 2 and emb["dims"] > 0 and emb["isNumbers"], emb
    assert emb["model"] == "text-embedding-3-small" and emb["usage"]["prompt_tokens"] > 0

    assert seen["unauthorized"]["status"] == 401
    assert seen["unauthorized"]["code"] == "invalid_api_key"
