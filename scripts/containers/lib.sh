# Shell functions for running the project's containers on a machine with no image registry (sourced by
# scripts/compose_smoke.sh). Each function does one thing and says what it did; a failure calls `die`, which
# prints one line and exits non-zero. State the caller needs later (what to stop) goes in SJFT_* variables.
#
# Where things live (kept between runs, so a second run is warm):
#   $SJFT_DOCKER_ROOT/engine   the engine's data root when this script starts dockerd itself
#   $SJFT_DOCKER_ROOT/tools    a Docker Compose v2 binary when the machine has none
# Nothing here names a registry or mirror host: packages come through the host's own apt and pip configuration.

SJFT_DOCKER_ROOT="${SJFT_DOCKER_ROOT:-/var/lib/sjft-docker}"
SJFT_COMPOSE_MIN="2.24.4" # `!reset` and `!override` in docker-compose.cpu.yml
SJFT_STARTED_ENGINE=0
SJFT_WHEELHOUSE_PID=""

die() {
    echo "compose-smoke: FAILED: $*" >&2
    exit 1
}

log() { echo "compose-smoke: $*"; }

# skip REASON: this machine cannot run an engine at all (not a failure of the project's files): exit 77, the
# code .ci/run reads as "skipped, with this reason".
skip() {
    echo "compose-smoke: SKIPPED: $*" >&2
    exit 77
}

# step NAME COMMAND...: runs the command, prints how long it took, stops everything on failure.
step() {
    local name="$1" t0 rc
    shift
    log "== $name"
    t0=$(date +%s)
    "$@"
    rc=$?
    SJFT_TIMINGS+=("$(printf '%-34s %5ss' "$name" "$(($(date +%s) - t0))")")
    [ "$rc" -eq 0 ] || die "step '$name' exited $rc (see the lines above)"
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || skip "need $* and cannot apt-get install it here (not root / no apt)"
    log "installing Debian's $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } \
        || die "apt-get install $* failed"
}

# An engine that answers, else Debian's dockerd started on its own data root and socket (stopped by stop_engine).
ensure_engine() {
    if docker info >/dev/null 2>&1; then
        log "engine answers: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
        return 0
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    local run=/run/sjft-docker
    mkdir -p "$SJFT_DOCKER_ROOT/engine" "$run"
    export DOCKER_HOST="unix://$run/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        # No bridge and no iptables: this machine allows neither; builds and the stack use the host's network.
        dockerd --data-root="$SJFT_DOCKER_ROOT/engine" --exec-root="$run" --pidfile="$run/dockerd.pid" \
            --host="$DOCKER_HOST" --storage-driver=overlay2 --iptables=false --ip-masq=false --bridge=none \
            >"$SJFT_DOCKER_ROOT/dockerd.log" 2>&1 &
        SJFT_STARTED_ENGINE=1
        local deadline=$((SECONDS + 90))
        until docker info >/dev/null 2>&1; do
            kill -0 "$!" 2>/dev/null || skip "dockerd cannot run here: $(tail -n1 "$SJFT_DOCKER_ROOT/dockerd.log")"
            [ "$SECONDS" -lt "$deadline" ] || die "dockerd did not answer within 90 s ($(tail -n1 "$SJFT_DOCKER_ROOT/dockerd.log"))"
            sleep 1
        done
        log "started dockerd $(docker version --format '{{.Server.Version}}') on $DOCKER_HOST (log: $SJFT_DOCKER_ROOT/dockerd.log)"
    fi
}

stop_engine() {
    [ "$SJFT_STARTED_ENGINE" = 1 ] || return 0
    local pid
    pid=$(cat /run/sjft-docker/dockerd.pid 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    log "stopped the dockerd this run started"
}

_compose_version() { "$@" version --short 2>/dev/null | sed 's/^v//'; }

# COMPOSE: a Docker Compose >= 2.24.4 command line (the plugin, a v2 docker-compose, or the one in tools/).
ensure_compose() {
    local v tool="$SJFT_DOCKER_ROOT/tools/docker-compose"
    for cmd in "docker compose" "docker-compose" "$tool"; do
        # shellcheck disable=SC2086
        v=$(_compose_version $cmd) || continue
        if [ -n "$v" ] && version_ge "$v" "$SJFT_COMPOSE_MIN"; then
            COMPOSE="$cmd"
            log "compose: $cmd $v"
            return 0
        fi
    done
    fetch_compose "$tool"
    v=$(_compose_version "$tool")
    version_ge "${v:-0}" "$SJFT_COMPOSE_MIN" || die "no Docker Compose >= $SJFT_COMPOSE_MIN could be had (got '${v:-none}')"
    COMPOSE="$tool"
    log "compose: $tool $v"
}

# Debian stable's docker-compose is v1 (no `!reset`); the next release's package is the Go v2 binary, needing
# only libc. It is fetched with apt from the host's own mirror and unpacked into tools/, not installed with
# dpkg, so the host's packages stay as they were.
fetch_compose() {
    local dest="$1" work="$SJFT_DOCKER_ROOT/tools/apt" mirror suite="${SJFT_COMPOSE_SUITE:-trixie}"
    mirror=$(grep -hoE '^(URIs:|deb) +[a-z]+://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v security | head -n1 | awk '{print $2}')
    [ -n "$mirror" ] || die "no Debian mirror in the host's apt sources to fetch docker-compose v2 from"
    log "fetching Debian $suite's docker-compose (v2) from the host's mirror into $SJFT_DOCKER_ROOT/tools"
    rm -rf "$work" && mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/root"
    echo "deb $mirror $suite main" >"$work/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
        -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
    apt-get "${opts[@]}" update -qq >/dev/null || die "apt-get update of $suite failed"
    (cd "$work" && apt-get "${opts[@]}" download docker-compose >/dev/null) || die "apt-get download docker-compose failed"
    dpkg-deb -x "$work"/docker-compose_*.deb "$work/root" || die "could not unpack the docker-compose package"
    install -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$dest"
    rm -rf "$work"
}

# Trimmed like the official slim images: no docs, man pages or translations in a base layer.
_MMDEBSTRAP_TRIM=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*')

# make_base_image TAG_PREFIX SUITE PACKAGES CUSTOMIZE_SCRIPT [docker import --change ...]: a minimal Debian
# rootfs from the host's apt sources, imported as TAG_PREFIX-<hash>. The hash covers everything that goes into
# it, so a second run finds the image and a changed recipe makes a new one. Prints the tag.
make_base_image() {
    local prefix="$1" suite="$2" packages="$3" script="$4" hash tag
    shift 4
    hash=$(printf '%s\n' "$suite" "$packages" "$script" "$*" "${_MMDEBSTRAP_TRIM[*]}" | sha256sum | cut -c1-12)
    tag="$prefix-$hash"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        echo "$tag"
        return 0
    fi
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap
    local changes=() c
    for c in "$@"; do changes+=(--change "$c"); done
    log "making base image $tag (Debian $suite: $packages)" >&2
    local tarball
    tarball=$(mktemp "$SJFT_DOCKER_ROOT/base-$hash.XXXXXX.tar")
    mmdebstrap --quiet --variant=minbase --include="$packages" "${_MMDEBSTRAP_TRIM[@]}" \
        --customize-hook="$script" "$suite" "$tarball" >&2 || { rm -f "$tarball"; die "mmdebstrap of $tag failed"; }
    docker import "${changes[@]}" "$tarball" "$tag" >/dev/null || { rm -f "$tarball"; die "docker import of $tag failed"; }
    rm -f "$tarball"
    echo "$tag"
}

# The stand-in for python:3.11-slim-bookworm: Debian's Python 3.11, the host's CA certificates (its TLS
# interception proxy, if any) and a pip.conf whose find-links is the wheelhouse on loopback. Builds run on the
# host's network, so pip inside an image build sees what pip on the host sees.
python_base_image() {
    local port="$1" certs="" crt
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] && certs+="$(base64 -w0 "$crt") "
    done
    local script
    script="set -e; root=\"\$1\"; for c in $certs; do echo \"\$c\" | base64 -d > \"\$root/usr/local/share/ca-certificates/host-\$(echo \"\$c\" | sha256sum | cut -c1-8).crt\"; done
chroot \"\$root\" update-ca-certificates >/dev/null
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\nfind-links = http://127.0.0.1:$port/\n' > \"\$root/etc/pip.conf\""
    make_base_image sjft-local/python:3.11-bookworm bookworm python3.11,python3.11-venv,ca-certificates "$script" \
        'ENV LANG=C.UTF-8' 'CMD ["python3.11"]'
}

# The stand-in for redis:7.4.2-alpine: Debian's redis-server and redis-cli, running as the redis user in /data.
redis_base_image() {
    local script='set -e; mkdir -p "$1/data"; chroot "$1" chown redis:redis /data'
    make_base_image sjft-local/redis:bookworm bookworm redis-server "$script" \
        'WORKDIR /data' 'USER redis' 'EXPOSE 6379' 'CMD ["redis-server"]'
}

start_wheelhouse() {
    local port="$1"
    python3 "$(dirname "${BASH_SOURCE[0]}")/wheelhouse.py" --port "$port" >"$SJFT_DOCKER_ROOT/wheelhouse.log" 2>&1 &
    SJFT_WHEELHOUSE_PID=$!
    local deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; do
        kill -0 "$SJFT_WHEELHOUSE_PID" 2>/dev/null || die "the wheelhouse did not start ($(tail -n1 "$SJFT_DOCKER_ROOT/wheelhouse.log"))"
        [ "$SECONDS" -lt "$deadline" ] || die "the wheelhouse did not answer on 127.0.0.1:$port within 30 s"
        sleep 0.5
    done
    log "$(head -n1 "$SJFT_DOCKER_ROOT/wheelhouse.log")"
}

stop_wheelhouse() {
    [ -n "$SJFT_WHEELHOUSE_PID" ] && kill "$SJFT_WHEELHOUSE_PID" 2>/dev/null
    SJFT_WHEELHOUSE_PID=""
}
