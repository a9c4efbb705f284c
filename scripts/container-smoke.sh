#!/usr/bin/env bash
# Builds the container image without a Docker engine or a registry, runs it, calls
# discovery and one hook, and stops it (tests/support/container_checks.py does the calls).
#
#   bash scripts/container-smoke.sh               # one container, as the image runs by default
#   bash scripts/container-smoke.sh --scale-out   # also: compose.yaml's two replicas + proxy
#                                                 # on a shared PostgreSQL
#   bash scripts/container-smoke.sh --kubernetes  # the production overlay's pod as podman
#                                                 # runs it (read-only, no capabilities...)
#
# Needs podman (Debian: apt-get install podman debootstrap); run as root. How it works here:
# - crun fails on setrlimit in this kind of sandbox: podman is pointed at a containers.conf
#   with runtime "runc" and lowered default ulimits (CONTAINERS_CONF, left alone if set).
# - No registry: the base image the Dockerfiles name (BASE_IMAGE) is made once with
#   debootstrap (--variant=minbase, python3 and the CA certificates; ~1 min) and imported
#   under that name. A base image already present (pulled, or made before) is used as is.
# - The build runs on the host network with the host's CA bundle mounted over the image's,
#   so pip and apt inside the build get through a TLS-inspecting proxy.
# Layers are cached: a second run rebuilds only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE_IMAGE="${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}"
IMAGE="${TWITCH_CDS_IMAGE:-localhost/twitch-cds:smoke}"
PROXY_IMAGE="${TWITCH_CDS_PROXY_IMAGE:-localhost/twitch-cds-proxy:smoke}"
WORK_DIR="${TWITCH_CDS_SMOKE_DIR:-/var/tmp/twitch-cds-smoke}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
mode=single
case "${1:-}" in
  "") ;;
  --scale-out) mode=scale-out ;;
  --kubernetes) mode=kubernetes ;;
  *) echo "usage: $0 [--scale-out | --kubernetes]" >&2; exit 2 ;;
esac

command -v podman >/dev/null || { echo "container-smoke: podman is not installed" >&2; exit 1; }
mkdir -p "$WORK_DIR"
if [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF="$WORK_DIR/containers.conf"
  cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
fi

step() { printf '%s container-smoke: %s\n' "$(date -u +%T)" "$*"; }
started=$SECONDS

if ! podman image exists "$BASE_IMAGE"; then
  command -v debootstrap >/dev/null ||
    { echo "container-smoke: debootstrap is needed to make $BASE_IMAGE" >&2; exit 1; }
  step "making $BASE_IMAGE with debootstrap"
  rootfs="$WORK_DIR/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$WORK_DIR/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK_DIR/debootstrap.log" >&2; exit 1; }
  tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

build() {  # build TAG CONTEXT
  step "building $1"
  podman build --format docker --layers --network host --pull=never \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --volume "$HOST_CA:$HOST_CA:ro" \
    --tag "$1" "$2" >"$WORK_DIR/build-$(basename "$1" | tr ':/' '--').log" 2>&1 ||
    { tail -30 "$WORK_DIR/build-$(basename "$1" | tr ':/' '--').log" >&2; exit 1; }
}
build "$IMAGE" .
[ "$mode" = scale-out ] && build "$PROXY_IMAGE" deploy/proxy
step "built in $((SECONDS - started)) s"

bash scripts/bootstrap.sh test >"$WORK_DIR/bootstrap.log" 2>&1
if [ "$mode" = single ] || [ "$mode" = kubernetes ]; then
  .venv/bin/python -m tests.support.container_checks "$mode" "$IMAGE"
else
  .venv/bin/python -m tests.support.container_checks scale-out "$IMAGE" "$PROXY_IMAGE"
fi
step "passed in $((SECONDS - started)) s"
