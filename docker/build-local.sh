#!/usr/bin/env bash
# Build the twoview image where no image registry can be reached: a Debian base made with debootstrap
# (imported, not pulled), this machine's torch wheel and CA bundle in a staged build context.
#   sudo bash docker/build-local.sh                 -> image twoview:local (needs root for debootstrap)
# Knobs (environment):
#   IMAGE (twoview:local)   BASE_IMAGE (twoview-base:bookworm; made when missing)   SUITE (bookworm)
#   MIRROR (http://deb.debian.org/debian)   ENGINE (docker, else podman)   WORK (/tmp/twoview-image)
#   WHEELS (/opt/wheels: a torch-*-cp311-*.whl there is used instead of downloading torch)
#   CA_BUNDLE (pip's cert, else /etc/ssl/certs/ca-certificates.crt: given to pip inside the build)
# Docker needs a running daemon; with one started as `dockerd --bridge=none`, builds use --network host.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
image=${IMAGE:-twoview:local}
base=${BASE_IMAGE:-twoview-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
work=${WORK:-/tmp/twoview-image}
engine=${ENGINE:-}
if [ -z "$engine" ]; then
  if docker info >/dev/null 2>&1; then engine=docker; elif command -v podman >/dev/null; then engine=podman; else
    echo "build-local: neither a running Docker daemon nor podman; start dockerd or install podman" >&2
    exit 1
  fi
fi
build_flags=(--network host)
[ "$engine" = podman ] && build_flags+=(--isolation chroot)

# 1. The base: Debian minbase with Python 3 and venv, imported as an image.
if ! "$engine" image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "build-local: apt-get install debootstrap" >&2; exit 1; }
  rootfs="$work/rootfs"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  echo "build-local: debootstrap $suite into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
fi

# 2. The build context: the working tree (git's files and untracked, not ignored ones), a torch wheel, the CA bundle.
context="$work/context"
rm -rf "$context" && mkdir -p "$context/docker/wheels"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -c 2>/dev/null | tar -x -C "$context")
args=(--build-arg "BASE=$base")
wheel=$(find "${WHEELS:-/opt/wheels}" -maxdepth 1 -name 'torch-*-cp311-cp311-*linux*_x86_64.whl' 2>/dev/null | sort | tail -n 1)
if [ -n "$wheel" ]; then
  cp "$wheel" "$context/docker/wheels/"
  version=$(basename "$wheel" | cut -d- -f2)
  args+=(--build-arg "TORCH_SPEC=torch==$version" --build-arg "TORCH_INDEX=")
  echo "build-local: torch from $wheel"
fi
cert=${CA_BUNDLE:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
cert=${cert:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$cert" ]; then
  cp "$cert" "$context/docker/ca-bundle.crt"
  args+=(--build-arg "PIP_CERT=/tmp/docker/ca-bundle.crt")
fi

# 3. Build, then report the time and size.
start=$(date +%s)
"$engine" build "${build_flags[@]}" "${args[@]}" -t "$image" "$context"
seconds=$(( $(date +%s) - start ))
size=$("$engine" image inspect --format '{{.Size}}' "$image")
echo "build-local: $image built in ${seconds} s; $(( size / 1024 / 1024 )) MiB"
rm -rf "$context"
