#!/usr/bin/env bash
# Run the README's two commands verbatim on a bare Debian: a fresh debootstrap chroot holding only
# python3, as root, with an empty environment, on a clone of this repository's committed HEAD.
#   sudo bash scripts/check_bare_debian.sh        (needs debootstrap, git, curl and network to Debian and PyPI)
# 1. `bash scripts/install.sh && .venv/bin/twoview app`: passes once the app answers on
#    http://127.0.0.1:8501/_stcore/health (the chroot shares this machine's network); then it is stopped.
# 2. `.venv/bin/python -m pytest`: the whole suite (several minutes on 2 cores; run under nice).
# The summary and each command's full output go to $LOG.
#
# Two things are copied in from this machine, neither a Python or package of its own:
# - torch's CPU wheels from $WHEELS (default /opt/wheels; skipped when there are none), offered to pip by an
#   /etc/pip.conf `find-links`. A real user downloads torch==2.13.0 from PyPI; this takes the same version
#   from disk instead of its multi-GB CUDA build. Everything else comes from PyPI, as it does for a user.
# - pip's CA bundle (`pip config get global.cert`), as /etc/pip-ca.crt, for networks whose proxy re-signs TLS.
# Knobs (environment): ROOT (/tmp/twoview-bare: made afresh, removed afterwards unless KEEP=1)
#   SUITE (bookworm)   MIRROR (http://deb.debian.org/debian)   WHEELS (/opt/wheels)   LOG ($ROOT.log)
#   INSTALL_TIMEOUT (1800 s for command 1 to answer)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${ROOT:-/tmp/twoview-bare}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
log=${LOG:-$root.log}
[ "$(id -u)" = 0 ] || { echo "check_bare_debian: run as root (debootstrap, chroot, mount)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "check_bare_debian: apt-get install debootstrap" >&2; exit 1; }
if curl -sf -o /dev/null --max-time 2 http://127.0.0.1:8501/_stcore/health; then
  echo "check_bare_debian: something already answers on 127.0.0.1:8501; stop it first" >&2
  exit 1
fi

mounted() { grep -q " $root/" /proc/mounts; }
cleanup() {
  for m in dev/shm dev/pts dev sys proc; do
    mountpoint -q "$root/$m" 2>/dev/null && { umount "$root/$m" || umount -l "$root/$m"; }
  done
  # Never delete while anything is mounted inside: /dev is this machine's.
  if [ "${KEEP:-0}" != 1 ] && [ -d "$root" ] && ! mounted; then rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT
# In the chroot as root, with no environment but a system PATH and HOME.
chrooted=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root chroot "$root")
say() { echo "check_bare_debian: $*" | tee -a "$log"; }

: >"$log"
mounted && { echo "check_bare_debian: $root has mounts inside; unmount them first" >&2; exit 1; }
rm -rf --one-file-system "$root"
start=$(date +%s)
say "debootstrap --variant=minbase $suite $root $mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >>"$log" 2>&1
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts"
mount -t tmpfs shm "$root/dev/shm"  # Chromium's shared memory
say "apt-get install python3 (nothing else)"
"${chrooted[@]}" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3' >>"$log" 2>&1

git clone --quiet "$repo" "$root/root/twoview"
git -C "$root/root/twoview" checkout --quiet --detach "$(git -C "$repo" rev-parse HEAD)"
mkdir -p "$root/opt/wheels"
find "${WHEELS:-/opt/wheels}" -maxdepth 1 -name 'torch-*.whl' -exec cp {} "$root/opt/wheels/" \; 2>/dev/null || true
printf '[global]\nfind-links = /opt/wheels\n' >"$root/etc/pip.conf"
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
cert=${cert:-/etc/ssl/certs/ca-certificates.crt}
if [ -n "$cert" ] && [ -f "$cert" ]; then
  cp "$cert" "$root/etc/pip-ca.crt"
  printf 'cert = /etc/pip-ca.crt\n' >>"$root/etc/pip.conf"
fi
say "commit $(git -C "$repo" rev-parse --short HEAD); torch wheels: $(ls "$root/opt/wheels" | tr '\n' ' ')"
say "chroot: $("${chrooted[@]}" sh -c 'python3 --version; command -v python || echo no python' | tr '\n' ' ')"
say "prepared in $(($(date +%s) - start)) s"

# 1. Install and start the app; it runs until stopped, so wait for its health answer.
one='bash scripts/install.sh && .venv/bin/twoview app'
say "1. $one"
t=$(date +%s)
# setsid: the app and everything it starts form one process group, stopped together below.
setsid "${chrooted[@]}" bash -c "cd /root/twoview && $one" >>"$log" 2>&1 &
app=$!
healthy=0
deadline=$(($(date +%s) + ${INSTALL_TIMEOUT:-1800}))
while [ "$(date +%s)" -lt "$deadline" ] && kill -0 "$app" 2>/dev/null; do
  if curl -sf --max-time 2 http://127.0.0.1:8501/_stcore/health >/dev/null; then healthy=1; break; fi
  sleep 2
done
say "1. app healthy: $([ $healthy = 1 ] && echo yes || echo NO) after $(($(date +%s) - t)) s"
kill -TERM -- "-$app" 2>/dev/null || true
wait "$app" 2>/dev/null || true
if curl -sf -o /dev/null --max-time 2 http://127.0.0.1:8501/_stcore/health; then
  say "FAILED: 127.0.0.1:8501 still answers after the app was stopped: not the chroot's app"; exit 1
fi
[ $healthy = 1 ] || { say "FAILED: command 1 (see $log)"; exit 1; }

# 2. The whole test suite.
two='.venv/bin/python -m pytest'
say "2. $two"
t=$(date +%s)
rc=0
nice "${chrooted[@]}" bash -c "cd /root/twoview && $two" >>"$log" 2>&1 || rc=$?
say "torch in .venv: $("${chrooted[@]}" /root/twoview/.venv/bin/python -c 'import torch; print(torch.__version__)')"
say "2. exit $rc after $(($(date +%s) - t)) s: $(grep -E '^=+ .*(passed|failed|error).* =+$' "$log" | tail -n 1)"
say "total $(($(date +%s) - start)) s"
exit "$rc"
