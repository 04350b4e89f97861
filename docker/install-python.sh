#!/bin/sh
# Makes sure the image has Python 3.11 (and, with --venv, the venv module), whatever the base:
#   - a base that already has them (python:3.11-slim, the Debian stand-in the smoke test makes) installs nothing;
#   - Debian bookworm takes python3.11 from its own archive;
#   - Ubuntu 22.04 (the nvidia/cuda runtime images) takes it from the deadsnakes PPA, whose helper packages are
#     purged again so no build tooling stays in the layer.
# Both build stages run it, so the venv built in one stage finds its interpreter at the same path in the other.
set -eu

want_venv=0
[ "${1:-}" = "--venv" ] && want_venv=1

have_python() {
    command -v python3.11 >/dev/null 2>&1 || return 1
    [ "$want_venv" = 0 ] || python3.11 -c "import ensurepip, venv" >/dev/null 2>&1
}

if have_python; then
    echo "install-python: $(python3.11 --version) already present"
    exit 0
fi

packages="python3.11"
[ "$want_venv" = 1 ] && packages="$packages python3.11-venv"
export DEBIAN_FRONTEND=noninteractive
apt-get update
if ! apt-cache show python3.11 >/dev/null 2>&1; then
    # Ubuntu 22.04 ships Python 3.10 only.
    apt-get install -y --no-install-recommends software-properties-common gpg-agent
    add-apt-repository -y ppa:deadsnakes/ppa
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $packages
    apt-get purge -y --auto-remove software-properties-common gpg-agent
else
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $packages
fi
rm -rf /var/lib/apt/lists/*
have_python || { echo "install-python: python3.11 still missing after the install" >&2; exit 1; }
echo "install-python: $(python3.11 --version) installed"
