#!/usr/bin/env bash
# `make compose-test`: build the images and run the whole stack with `docker compose`, for real, on this machine.
#
#   bash scripts/compose_smoke.sh            # exit 0 = the stack built, served, answered and trained one round
#
# Steps: make sure an engine answers (start Debian's dockerd on its own data root when none does), find Docker
# Compose >= 2.24.4, make stand-ins for the base images when no registry can be reached (Debian rootfs via
# mmdebstrap, cached by a content hash), build Dockerfile.retrieval and Dockerfile.trainer with the CPU override,
# `up`, wait for /readyz on loopback, ask /v1/neighbors from the host, wait for the trainer container to finish
# one short round and read its metrics from the `runs` volume, then `down -v`. Each step prints its duration;
# the first failure prints one line and exits non-zero.
#
# Environment (all optional):
#   SJFT_DOCKER_ROOT       engine data root, tools and caches (default /var/lib/sjft-docker; kept = warm runs)
#   SJFT_CPU_BASE_IMAGE    use this base instead of the Debian stand-in (e.g. python:3.11-slim-bookworm)
#   SJFT_REDIS_IMAGE       use this Redis image instead of the stand-in (e.g. redis:7.4.2-alpine)
#   SJFT_WHEELHOUSE_PORT   loopback port serving this machine's pip wheels to the builds (default 3141)
#   SJFT_SMOKE_TIMEOUT_S   how long to wait for the index build and for the training round (default 1200 each)
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=containers/lib.sh
source scripts/containers/lib.sh

PROJECT=sjft-smoke
RUN_NAME=smoke
TIMEOUT_S="${SJFT_SMOKE_TIMEOUT_S:-1200}"
WHEEL_PORT="${SJFT_WHEELHOUSE_PORT:-3141}"
SJFT_TIMINGS=()
STACK_UP=0
WORK=$(mktemp -d /tmp/sjft-smoke.XXXXXX)
T_START=$(date +%s)

compose() {
    # shellcheck disable=SC2086
    $COMPOSE --project-name "$PROJECT" --env-file "$WORK/empty.env" \
        -f docker-compose.yml -f docker-compose.cpu.yml "$@"
}

cleanup() {
    local rc=$?
    if [ "$STACK_UP" = 1 ]; then
        [ "$rc" -eq 0 ] || { log "last lines of the stack's logs:"; compose logs --no-color --tail 30 2>&1 | sed 's/^/    /'; }
        compose down -v --remove-orphans >/dev/null 2>&1 && log "stack down, volumes removed"
    fi
    stop_wheelhouse
    stop_engine
    rm -rf "$WORK"
    log "timings:"
    printf '    %s\n' "${SJFT_TIMINGS[@]}"
    log "total $(($(date +%s) - T_START)) s, exit $rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

base_images() {
    if [ -n "${SJFT_CPU_BASE_IMAGE:-}" ]; then
        CPU_BASE_IMAGE="$SJFT_CPU_BASE_IMAGE"
    else
        CPU_BASE_IMAGE=$(python_base_image "$WHEEL_PORT") || return 1
        # The stand-in's pip reads the wheelhouse; the torch wheels then come from this machine's disk.
        USE_WHEELHOUSE=1
    fi
    REDIS_IMAGE="${SJFT_REDIS_IMAGE:-}"
    [ -n "$REDIS_IMAGE" ] || REDIS_IMAGE=$(redis_base_image) || return 1
    export CPU_BASE_IMAGE REDIS_IMAGE
    log "bases: $CPU_BASE_IMAGE, $REDIS_IMAGE"
}

configure() {
    mkdir -p "$WORK/corpus" "$WORK/target" "$WORK/weights"
    : >"$WORK/empty.env"
    PUBLISH_PORT=$(free_port)
    export SJFT_PUBLISH_ADDR=127.0.0.1 SJFT_PUBLISH_PORT="$PUBLISH_PORT" SJFT_REDIS_PREFIX="smoke$$"
    export CORPUS_DIR="$WORK/corpus" TARGET_HOST_DIR="$WORK/target" WEIGHTS_DIR="$WORK/weights"
    export RUN_NAME TRAIN_ROUNDS=1 TRAIN_SOURCE_PASSES=1 TRAIN_INPUT_SIZE=32 BUILD_WORKERS=2
    export RETRIEVAL_START_PERIOD="${TIMEOUT_S}s"
    # Builds run on the host's network (this engine has no bridge) and the classic builder (no buildx here).
    export BUILD_NETWORK=host DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
    # Empty = the base image's pip configuration decides where torch comes from.
    export CPU_TORCH_INDEX_URL="${SJFT_CPU_TORCH_INDEX_URL-}"
}

build_images() {
    if [ "${USE_WHEELHOUSE:-0}" = 1 ]; then start_wheelhouse "$WHEEL_PORT" || return 1; fi
    local service rc=0
    # One after the other: the second build then finds the shared interpreter and torch layers in the cache
    # (in parallel, both would install the multi-GB torch layer on a cold run).
    for service in retrieval trainer; do
        compose build "$service" 2>&1 \
            | grep -E --line-buffered '^(Step [0-9]+/|Successfully|#[0-9]+ (DONE|ERROR)|ERROR|error)' \
            | sed -u 's/^/    /'
        rc=${PIPESTATUS[0]}
        [ "$rc" -eq 0 ] || break
    done
    stop_wheelhouse
    return "$rc"
}

# up SERVICE: start it and what it depends on (compose waits for their healthchecks), not what depends on it.
up() {
    STACK_UP=1
    compose up -d "$1" 2>&1 | sed -u 's/^/    /'
    return "${PIPESTATUS[0]}"
}

# wait_ready: /readyz answers 200 through the published port (the first start builds the demo index first).
wait_ready() {
    local deadline=$((SECONDS + TIMEOUT_S)) url="http://127.0.0.1:$PUBLISH_PORT/readyz" state
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        state=$(docker inspect -f '{{.State.Status}}' "$(compose ps -a -q retrieval)" 2>/dev/null)
        [ "$state" = running ] || [ "$state" = created ] || { log "retrieval container is $state"; return 1; }
        [ "$SECONDS" -lt "$deadline" ] || { log "/readyz not 200 after ${TIMEOUT_S} s"; return 1; }
        sleep 3
    done
    log "ready: $(curl -fsS "$url")"
    log "first start, from \`docker compose logs retrieval\`:"
    compose logs --no-color retrieval 2>&1 | grep -E 'entrypoint:|build|index|Uvicorn running' | head -n 12 | sed -u 's/^/    /'
}

query_neighbors() {
    python3 - "$PUBLISH_PORT" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
index = json.load(urllib.request.urlopen(f"{base}/v1/index", timeout=30))
body = json.dumps({"queries": [{"id": "first", "source_id": 0}], "k": 5}).encode()
req = urllib.request.Request(f"{base}/v1/neighbors", data=body, headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(req, timeout=60))
neighbors = answer["results"][0]["neighbors"]
assert len(neighbors) == 5, answer
assert neighbors[0]["source_id"] == 0 and neighbors[0]["distance"] <= 1e-6, neighbors[0]
assert all(a["distance"] <= b["distance"] for a, b in zip(neighbors, neighbors[1:])), neighbors
print(f"compose-smoke: /v1/neighbors from the host: index of {index['size']} sources ({index['bank']} bank), "
      f"source 0's 5 neighbours {[n['source_id'] for n in neighbors]} in {answer['took_ms']:.1f} ms")
PY
}

wait_trainer() {
    local id code
    id=$(compose ps -a -q trainer)
    [ -n "$id" ] || { log "no trainer container"; return 1; }
    code=$(timeout "$TIMEOUT_S" docker wait "$id") || { log "trainer still running after ${TIMEOUT_S} s"; return 1; }
    compose logs --no-color trainer 2>&1 | grep -vE '^\s*$' | tail -n 8 | sed -u 's/^/    /'
    [ "$code" = 0 ] || { log "trainer exited $code"; return 1; }
    compose cp "trainer:/data/runs/$RUN_NAME/metrics.jsonl" "$WORK/metrics.jsonl" >/dev/null || return 1
    python3 - "$WORK/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert rows, "metrics.jsonl is empty"
last = rows[-1]
acc = last.get("mean_class_acc")  # the trainer's metric (trainer/run.py)
assert acc is not None and 0.0 <= acc <= 1.0, f"no mean_class_acc in the last metrics row: {sorted(last)}"
print(f"compose-smoke: trainer finished {len(rows)} round(s); the runs volume has metrics.jsonl, last row {acc=:.3f}")
PY
}

image_sizes() {
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
        | grep -E '^(sjft-(retrieval|trainer):cpu|sjft-local/)' | sed -u 's/^/    /'
}

step "engine" ensure_engine
step "compose" ensure_compose
step "base images" base_images
configure
step "build images" build_images
step "image sizes" image_sizes
step "compose up redis + retrieval" up retrieval
step "wait for /readyz (first-start build)" wait_ready
step "query /v1/neighbors" query_neighbors
step "compose up trainer" up trainer
step "trainer round + metrics" wait_trainer
log "PASSED"
