#!/usr/bin/env bash
# Fetch the MindSpore Lite C++ SDK (headers + runtime libraries) from PyPI for compile-checking
# ascend310_infer/ on a machine without the Ascend toolkit.
#
#   scripts/fetch_mslite_sdk.sh [DEST]        # DEST defaults to ascend310_infer/.mslite (git-ignored)
#   export "$(scripts/fetch_mslite_sdk.sh)"   # stdout is exactly one line: MS_LITE_HOME=<path>
#
# PyPI carries a single mindspore-lite release, 2.0.0, built for CPython 3.7 only; its Python bindings are
# irrelevant here, only include/api/*.h and lib/*.so are used, so the wheel is downloaded for python 3.7
# whatever the local interpreter. The C++ API lives in lib/libmindspore-extendrt_python.so (the release
# tarball calls it libmindspore-lite.so); its dependencies are all inside lib/, so CPU inference runs too.
# Deploying on Ascend 310 needs the Lite release matching the MindSpore version that exported the MINDIR.
# Environment: PYTHON (interpreter whose pip downloads, default python3), MSLITE_VERSION (default 2.0.0).
# Idempotent: an existing complete copy is reused.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${REPO_ROOT}/ascend310_infer/.mslite}"
VERSION="${MSLITE_VERSION:-2.0.0}"
PYTHON="${PYTHON:-python3}"

mkdir -p "${DEST}"
DEST="$(cd "${DEST}" && pwd)"
PACKAGE_DIR="${DEST}/mindspore_lite"
STAMP="${DEST}/.complete-mindspore-lite-${VERSION}"

log() { echo "fetch_mslite_sdk: $*" >&2; }

if [[ -f "${STAMP}" && -f "${PACKAGE_DIR}/include/api/model.h" ]]; then
  log "mindspore-lite ${VERSION} already in ${DEST}"
else
  TMP_DIR="$(mktemp -d "${DEST}/.download.XXXXXX")"
  trap 'rm -rf "${TMP_DIR}"' EXIT
  log "downloading mindspore-lite==${VERSION} wheel from the package index ..."
  "${PYTHON}" -m pip download --no-deps --only-binary=:all: --python-version 3.7 \
    "mindspore-lite==${VERSION}" -d "${TMP_DIR}/wheel" >&2
  shopt -s nullglob
  wheels=("${TMP_DIR}"/wheel/mindspore_lite-*.whl)
  shopt -u nullglob
  if [[ ${#wheels[@]} -ne 1 ]]; then
    log "error: expected one mindspore_lite wheel, found ${#wheels[@]}"
    exit 1
  fi
  log "unpacking $(basename "${wheels[0]}") ..."
  # A wheel is a zip archive; Python's zipfile avoids depending on `unzip`.
  "${PYTHON}" - "${wheels[0]}" "${TMP_DIR}/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    members = [name for name in archive.namelist() if name.startswith("mindspore_lite/")]
    archive.extractall(sys.argv[2], members=members)
PY
  [[ -f "${TMP_DIR}/unpacked/mindspore_lite/include/api/model.h" ]] || {
    log "error: the wheel has no mindspore_lite/include/api/model.h"
    exit 1
  }
  rm -rf "${PACKAGE_DIR}" "${DEST}"/.complete-mindspore-lite-*
  mv "${TMP_DIR}/unpacked/mindspore_lite" "${PACKAGE_DIR}"
  touch "${STAMP}"
  log "unpacked into ${PACKAGE_DIR}"
fi
echo "MS_LITE_HOME=${PACKAGE_DIR}"
