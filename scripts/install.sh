#!/usr/bin/env bash
# Install twoview and everything its tests use. Run from anywhere; safe to re-run.
#   TWOVIEW_TORCH   the torch requirement to install first (default: torch==2.13.0, the CPU wheel on
#                   our machines; for a CUDA build elsewhere, e.g.
#                   TWOVIEW_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
#   TWOVIEW_NO_SYSTEM=1   skip the Debian packages the tests use (dicom3tools, chromium, orthanc,
#                   orthanc-dicomweb); tests that need one skip and say which
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086
python -m pip install --quiet ${TWOVIEW_TORCH:-torch==2.13.0}
python -m pip install --quiet -e ".[dev]"
if [ "${TWOVIEW_NO_SYSTEM:-0}" != 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  command -v dciodvfy >/dev/null || missing+=(dicom3tools)
  [ -x /usr/bin/chromium ] || missing+=(chromium)  # the browser tests drive the app in it
  command -v Orthanc >/dev/null || missing+=(orthanc)  # a real PACS for the DICOMweb tests
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "twoview installed: $(twoview --version)"
