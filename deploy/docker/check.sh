#!/usr/bin/env bash
# Runs the Docker Compose deployment as deploy/README.md tells an operator to, on a copy of this
# directory: the FROM-scratch image of a statically linked binary, make-config.sh, compose up,
# status until every shard has a leader, a write and a read through the CLI, compose stop (every
# node must exit 0), compose up again (the write must still be there), compose down -v.
#
#   deploy/docker/check.sh PLEXUS_STATIC_BINARY
#
# The binary must be statically linked (the image has nothing else); .ci/run builds one. It also
# runs on the host as the CLI. Uses the Compose file's own subnet, 172.28.0.0/24, so it fails if
# a network on this machine already has it (a Compose cluster of yours, say). Removes its
# containers, network, volumes, image and files on exit, failure included.
set -euo pipefail

if [[ $# -ne 1 || ! -x "$1" ]]; then
  echo "usage: $0 PLEXUS_STATIC_BINARY" >&2
  exit 2
fi
plexus="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
if ldd "$plexus" 2>&1 | grep -q "=>"; then
  echo "$plexus is dynamically linked; the scratch image needs a static binary" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
project="plexus-check-$$"
image="plexus:check-$$"

if command -v docker-compose >/dev/null 2>&1; then
  compose() { docker-compose --project-name "$project" -f "$work/compose.yaml" "$@"; }
else
  compose() { docker compose --project-name "$project" -f "$work/compose.yaml" "$@"; }
fi
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "deploy/docker/check.sh failed; node logs:" >&2
    compose logs --tail 30 >&2 2>/dev/null || true
  fi
  compose down --volumes --remove-orphans >/dev/null 2>&1 || true
  docker image rm --force "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cp "$here/Dockerfile" "$here/compose.yaml" "$here/make-config.sh" "$work/"
cp "$plexus" "$work/plexus"
if ! built="$(docker build --quiet -t "$image" "$work" 2>&1)"; then
  echo "docker build: $built" >&2
  exit 1
fi
sed -i "s|image: plexus:local|image: $image|" "$work/compose.yaml"
grep -q "image: $image" "$work/compose.yaml"
PLEXUS="$plexus" "$work/make-config.sh" >/dev/null
client=(--config "$work/conf/client.toml")

# Waits (at most 120 s) until every shard has a leader.
wait_ready() {
  local deadline=$((SECONDS + 120)) status=""
  while ((SECONDS < deadline)); do
    if status="$("$plexus" status "${client[@]}" --json 2>/dev/null)" &&
      python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["shards"] and all(s["leader"] is not None for s in d["shards"]) else 1)' <<<"$status"; then
      return 0
    fi
    sleep 1
  done
  echo "the Compose cluster did not get a leader for every shard within 120 s: $status" >&2
  return 1
}

compose up --detach >/dev/null 2>&1
wait_ready
echo "compose up: every shard has a leader after ${SECONDS}s"
"$plexus" timeline append "${client[@]}" 7 "written-before-the-stop" >/dev/null
"$plexus" timeline read "${client[@]}" 7 --json | grep -q "written-before-the-stop"

compose stop >/dev/null 2>&1
for c in $(compose ps --quiet); do
  code="$(docker inspect --format '{{.State.ExitCode}}' "$c")"
  if [[ "$code" != 0 ]]; then
    echo "container $c exited with $code on compose stop (SIGTERM), not 0" >&2
    exit 1
  fi
done
echo "compose stop: every node exited 0"

compose up --detach >/dev/null 2>&1
wait_ready
"$plexus" timeline read "${client[@]}" 7 --json | grep -q "written-before-the-stop"
echo "compose up again: the write is still there; deploy/docker works as documented"
