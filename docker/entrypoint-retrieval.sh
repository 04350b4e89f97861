#!/usr/bin/env bash
# Entrypoint of the retrieval image: make sure an index exists at $SJFT_INDEX_DIR, then exec the command
# (default: python -m retrieval_service serve, which reads SJFT_* and REDIS_URL from the environment).
#
# First start with an empty index volume:
#   SOURCE_DIR set   -> index that corpus (ImageFolder tree or tar shards) at BUILD_SIZE px (default 224)
#   SOURCE_DIR unset -> generate the synthetic demo corpus under DEMO_DIR and index it at 64 px
# The build is resumable: a container restarted mid-build continues from its finished shards.
set -euo pipefail

index_dir="${SJFT_INDEX_DIR:-/data/index/current}"
device="${SJFT_DEVICE:-cpu}"
bank="${BUILD_BANK:-gabor}"
bins="${BUILD_BINS:-16}"
workers="${BUILD_WORKERS:-4}"
batch="${BUILD_BATCH_SIZE:-64}"

if [ -f "$index_dir/index.json" ]; then
  echo "entrypoint: serving the existing index at $index_dir"
elif [ "${SKIP_INDEX_BUILD:-0}" = "1" ]; then
  echo "entrypoint: no index at $index_dir and SKIP_INDEX_BUILD=1: the service will report not ready" >&2
else
  if [ -n "${SOURCE_DIR:-}" ]; then
    source_dir="$SOURCE_DIR"
    size="${BUILD_SIZE:-224}"
    echo "entrypoint: no index at $index_dir: indexing the corpus at $source_dir ($size px, $bank bank)"
  else
    demo_dir="${DEMO_DIR:-/data/demo}"
    source_dir="$demo_dir/source"
    size="${BUILD_SIZE:-64}"
    echo "entrypoint: no index and no SOURCE_DIR: generating the demo corpus under $demo_dir"
    python -m sjft.demo.data --out "$demo_dir" --size "$size"
  fi
  args=(--source "$source_dir" --out "$index_dir" --bank "$bank" --bins "$bins" --size "$size"
        --device "$device" --workers "$workers" --batch-size "$batch" --no-progress)
  if [ "$bank" = "conv" ]; then
    : "${BUILD_CONV_WEIGHTS:?BUILD_CONV_WEIGHTS must name a local torchvision state dict for the conv bank}"
    args+=(--conv-weights "$BUILD_CONV_WEIGHTS")
  fi
  mkdir -p "$(dirname "$index_dir")"
  python -m retrieval_service build "${args[@]}"
fi

exec "$@"
