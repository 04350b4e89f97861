#!/usr/bin/env bash
# Make sure a Redis server answers on $1 (default redis://127.0.0.1:6379/0): start one when none does,
# installing Debian's redis-server package when the binary is missing.
set -euo pipefail
url="${1:-redis://127.0.0.1:6379/0}"
hostport="${url#redis://}"; hostport="${hostport%%/*}"; hostport="${hostport##*@}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=6379

ping() { (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ping; then echo "redis: answering on $host:$port"; exit 0; fi
case "$host" in 127.*|localhost) ;; *) echo "redis: $host:$port does not answer and is not local; start it or set REDIS_URL" >&2; exit 1;; esac
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: installing Debian's redis-server"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
echo "redis: starting redis-server on $host:$port"
redis-server --bind "$host" --port "$port" --save '' --appendonly no --daemonize yes >/dev/null
for _ in $(seq 1 50); do ping && { echo "redis: up"; exit 0; }; sleep 0.1; done
echo "redis: redis-server did not come up on $host:$port" >&2
exit 1
