#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh [pytest arguments]
#
# Works from a fresh Debian/Ubuntu machine with only python3 (>= 3.10): it makes .venv, installs
# the package with its test extras, and (as root) installs redis-server, which the integration
# tests start on their own free ports, and Graphviz, whose dot the graph tests run. Then: ruff,
# mypy, pytest. Any failure fails the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

can_apt_install() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "python3 >= 3.10 is required (found $(python3 --version 2>&1))"
    # Checking pip, not python: an interrupted or ensurepip-less venv has python but no pip.
    [[ -x .venv/bin/pip ]] && return
    rm -rf .venv
    if ! python3 -m venv .venv; then
        # Debian ships venv's ensurepip separately.
        can_apt_install || die "python3 -m venv failed; install python3-venv and rerun"
        rm -rf .venv
        apt_install python3-venv
        python3 -m venv .venv
    fi
}

# Tests start their own redis-server on free ports; a system service is never used, so the one
# the Debian package starts is stopped again rather than left running for nothing.
stop_system_redis() {
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service redis-server stop >/dev/null 2>&1 || true
    fi
}

ensure_redis_server() {
    command -v redis-server >/dev/null 2>&1 && return
    can_apt_install || die "redis-server is not on PATH. The integration tests start their own;
install it (Debian/Ubuntu: sudo apt-get install redis-server, macOS: brew install redis) and rerun."
    echo "installing redis-server with apt-get"
    apt_install redis-server
    stop_system_redis
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get"
}

# The graph tests draw SVG with Graphviz's dot, as `gleitzeit graph --format svg` does.
ensure_graphviz() {
    command -v dot >/dev/null 2>&1 && return
    can_apt_install || die "Graphviz's dot is not on PATH. The graph tests draw SVG with it;
install it (Debian/Ubuntu: sudo apt-get install graphviz, macOS: brew install graphviz) and rerun."
    echo "installing graphviz with apt-get"
    apt_install graphviz
    command -v dot >/dev/null 2>&1 || die "dot still not on PATH after apt-get install graphviz"
}

section "Python environment (.venv)"
ensure_venv
.venv/bin/pip install -q -e '.[test]'

section "redis-server"
ensure_redis_server
redis-server --version

section "graphviz"
ensure_graphviz
dot -V

section "ruff"
.venv/bin/ruff check gleitzeit tests scripts examples

section "mypy"
.venv/bin/mypy
# The test services are typed as strictly as the package; pyproject's mypy config covers only it.
.venv/bin/mypy tests/services.py

section "pytest"
.venv/bin/python -m pytest "$@"
