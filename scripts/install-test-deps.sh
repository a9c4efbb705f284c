#!/usr/bin/env bash
# Install the Debian packages the test suite needs: the PostgreSQL server binaries used by
# tests/support/postgres.py, and Chromium (/usr/bin/chromium) for tests/test_browser.py, which
# drives it with npm's playwright-core (no browser download: Debian's build is used).
#
# Why this shape:
# - Idempotent and fast: `dpkg -s` is checked first, so a second run touches
#   neither apt nor the network and finishes well under a second.
# - Non-interactive: safe under CI=true / no TTY; apt never prompts and never
#   reads stdin.
# - The tests start their own throwaway cluster on a random port, so we stop
#   Debian from creating (and therefore starting) its default "main" cluster
#   on port 5432 via a createcluster.d drop-in.
# - nodejs/npm are provided by the base image and are deliberately not managed
#   here.
set -euo pipefail

PACKAGES=(postgresql chromium)
# tests/test_container.py builds and runs the image with podman (runc: crun fails on
# setrlimit here), from a base image made with debootstrap; ~25 s to install, and the
# first smoke run then takes ~3 min (README, "Container image").
PACKAGES+=(podman runc netavark aardvark-dns iptables debootstrap)
# wrk: the load generator of bench/load.py and of its smoke test (tests/test_bench.py).
PACKAGES+=(wrk)

# The drop-in is read by postgresql-common's pg_createcluster, which the
# postgresql-<ver> postinst runs when it is first installed.
CREATECLUSTER_DROPIN=/etc/postgresql-common/createcluster.d/50-twitch-cds-no-main-cluster.conf

is_installed() {
    local status
    status="$(dpkg -s "$1" 2>/dev/null || true)"
    [[ "$status" == *"Status: install ok installed"* ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! is_installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-test-deps: all present (${PACKAGES[*]})"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    # -n: fail instead of hanging on a password prompt in CI.
    as_root=(sudo -n)
else
    echo "install-test-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-test-deps: not root and sudo is unavailable; run as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "install-test-deps: installing ${missing[*]}"

"${as_root[@]}" mkdir -p "$(dirname "$CREATECLUSTER_DROPIN")"
printf '%s\n' \
    '# Written by twitch-cds scripts/install-test-deps.sh: tests run their own' \
    '# throwaway clusters, so do not create/start the default main cluster.' \
    'create_main_cluster = false' |
    "${as_root[@]}" tee "$CREATECLUSTER_DROPIN" >/dev/null

apt_env=(env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a)
"${as_root[@]}" "${apt_env[@]}" apt-get update -qq </dev/null
"${as_root[@]}" "${apt_env[@]}" apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null

for pkg in "${missing[@]}"; do
    if ! is_installed "$pkg"; then
        echo "install-test-deps: $pkg still not installed after apt-get" >&2
        exit 1
    fi
done
echo "install-test-deps: done"
