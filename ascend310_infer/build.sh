#!/usr/bin/env bash
# Build the CoupAlign C++ inference program against a MindSpore Lite SDK.
#
#   MS_LITE_HOME=/path/to/mindspore-lite-X.Y.Z-linux-x64 bash ascend310_infer/build.sh
#
# MS_LITE_HOME: an unpacked mindspore-lite release tarball (runtime/include, runtime/lib) or the
#               mindspore_lite folder of the pip wheel (see scripts/fetch_mslite_sdk.sh).
# BUILD_DIR:    CMake build folder (default ascend310_infer/build).
# OUT_DIR:      folder receiving the `main` binary (default ascend310_infer/out).
# JOBS:         parallel compile jobs (default: number of cores).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="${BUILD_DIR:-${SCRIPT_DIR}/build}"
OUT_DIR="${OUT_DIR:-${SCRIPT_DIR}/out}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

die() {
  echo "build.sh: error: $*" >&2
  exit 1
}

if [[ -z "${MS_LITE_HOME:-}" ]]; then
  die "MS_LITE_HOME is not set. Point it at an unpacked mindspore-lite tarball (containing runtime/include and
runtime/lib/libmindspore-lite.so) or at the mindspore_lite folder of the mindspore-lite wheel; for a
compile check, 'scripts/fetch_mslite_sdk.sh' downloads the wheel and prints the MS_LITE_HOME to use."
fi
if [[ ! -d "${MS_LITE_HOME}" ]]; then
  die "MS_LITE_HOME=${MS_LITE_HOME} is not a directory."
fi
if [[ ! -f "${MS_LITE_HOME}/runtime/include/api/model.h" && ! -f "${MS_LITE_HOME}/include/api/model.h" \
      && ! -f "${MS_LITE_HOME}/mindspore_lite/include/api/model.h" ]]; then
  die "MS_LITE_HOME=${MS_LITE_HOME} is not a MindSpore Lite SDK: found none of runtime/include/api/model.h
(release tarball), include/api/model.h or mindspore_lite/include/api/model.h (pip wheel)."
fi
for tool in cmake c++; do
  command -v "${tool}" >/dev/null 2>&1 || die "'${tool}' not found; install CMake >= 3.14 and a C++17 compiler."
done

cmake -S "${SCRIPT_DIR}" -B "${BUILD_DIR}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DMS_LITE_HOME="${MS_LITE_HOME}" \
  -DINFER_OUTPUT_DIR="${OUT_DIR}"
cmake --build "${BUILD_DIR}" --parallel "${JOBS}"
echo "build.sh: built ${OUT_DIR}/main"
