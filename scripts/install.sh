#!/usr/bin/env bash
# Install twoview and everything its tests use into .venv in the repository. Run from anywhere; safe to re-run.
# Needs only python3 (3.10 or newer); activates nothing and never touches the system Python. Afterwards:
#   .venv/bin/twoview app        .venv/bin/python -m pytest        (or `source .venv/bin/activate` first)
# As root on Debian it apt-installs what is missing: python3-venv (for .venv) and the tools the tests use.
#   TWOVIEW_TORCH   the torch requirement to install first (default: torch==2.13.0, the CPU wheel on
#                   our machines; for a CUDA build elsewhere, e.g.
#                   TWOVIEW_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
#   TWOVIEW_PYTHON  the interpreter .venv is made from (default: python3)
#   TWOVIEW_NO_SYSTEM=1   skip the Debian packages the tests use (dicom3tools, chromium, libatomic1,
#                   orthanc, orthanc-dicomweb); tests that need one skip and say which
set -euo pipefail
cd "$(dirname "$0")/.."
python=${TWOVIEW_PYTHON:-python3}
venv=.venv

command -v "$python" >/dev/null || { echo "install: $python not found; install Python 3.10 or newer" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  { echo "install: twoview needs Python 3.10 or newer; $python is $("$python" --version 2>&1)" >&2; exit 1; }

# A venv is usable once its pip runs; Debian's python3 makes one only with ensurepip (package python3-venv).
has_venv() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; }
can_make_venv() { "$python" -c 'import ensurepip, venv' 2>/dev/null; }

packages=()
has_venv || can_make_venv || packages+=(python3-venv)
tools=()  # what the tests use; each test that needs one skips without it
if [ "${TWOVIEW_NO_SYSTEM:-0}" != 1 ]; then
  command -v dciodvfy >/dev/null || tools+=(dicom3tools)
  [ -x /usr/bin/chromium ] || tools+=(chromium)  # the browser tests drive the app in it
  command -v Orthanc >/dev/null || tools+=(orthanc)  # a real PACS for the DICOMweb tests
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || tools+=(orthanc-dicomweb)
  # ... through Playwright's bundled node, which needs libatomic.so.1: a minimal Debian lacks it.
  if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' libatomic1 2>/dev/null | grep -q 'ok installed'; then
    tools+=(libatomic1)
  fi
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  packages+=("${tools[@]}")
  if [ ${#packages[@]} -gt 0 ]; then
    echo "install: apt-get install ${packages[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
elif [ ${#tools[@]} -gt 0 ]; then
  echo "install: not installing ${tools[*]} (Debian packages; needs root and apt-get); the tests that need them skip" >&2
fi

if ! has_venv; then
  if ! can_make_venv; then
    echo "install: $python cannot make a virtual environment (no ensurepip). On Debian or Ubuntu install" \
      "the package python3-venv (sudo apt-get install python3-venv), or run this script as root, then re-run it." >&2
    exit 1
  fi
  echo "install: making $venv with $("$python" --version 2>&1)"
  "$python" -m venv --clear "$venv"  # --clear: a half-made .venv (no pip) is replaced, never reused
fi

# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet ${TWOVIEW_TORCH:-torch==2.13.0}
"$venv/bin/python" -m pip install --quiet -e ".[dev]"
# twoview runs from this checkout (an editable install): compile its modules now, once. Where
# PYTHONDONTWRITEBYTECODE is set (Docker images, CI runners), every process would otherwise compile them
# again: about 0.1 s of each `twoview predict` start (29 modules), more on a busy machine.
"$venv/bin/python" -m compileall -q -j 0 app models pipeline sample_data >/dev/null
echo "install: $("$venv/bin/twoview" --version) in $venv; start the app with: $venv/bin/twoview app"
