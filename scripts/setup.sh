#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 host (run as root): Debian packages, the .venv,
# the guest kernel + initramfs + agent, the builtin template nullspace/base. Each step is skipped when its
# output is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA_DIR=${AMBER_DATA_DIR:-$ROOT/.amber}
STAMP_DIR=$DATA_DIR/setup
mkdir -p "$STAMP_DIR"

DEBIAN_PACKAGES=(
  qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio lz4 kmod file binutils socat
  docker-registry apache2-utils skopeo umoci debootstrap attr
  nftables
  docker.io
  postgresql
  gcc make libc6-dev
  chromium  # preview URLs are checked in a real (headless) browser
)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  # No daemons may start from package scripts (there is no init system here).
  [ -e /usr/sbin/policy-rc.d ] || { printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Python environment: reinstalled only when pyproject.toml changed.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat .venv/.pyproject.sha256 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the Python environment"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > .venv/.pyproject.sha256
fi

# Guest kernel, initramfs and agent: built once into the data directory.
.venv/bin/amber setup-guest --data-dir "$DATA_DIR"

# The builtin template nullspace/base (Debian 12 + python3): built once, rebuilt when its definition changes.
.venv/bin/amber setup-base --data-dir "$DATA_DIR"
