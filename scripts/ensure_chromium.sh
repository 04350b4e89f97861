#!/usr/bin/env bash
# Make sure Debian's chromium and chromium-driver are installed: the web page's tests drive a real browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium: $(chromium --version 2>/dev/null | head -n1)"; exit 0
fi
echo "chromium: installing Debian's chromium and chromium-driver"
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null 2>&1 || { echo "chromium: chromedriver missing after install" >&2; exit 1; }
echo "chromium: $(chromium --version 2>/dev/null | head -n1)"
