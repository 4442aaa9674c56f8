#!/usr/bin/env bash
# Optional offline conversion of an exported MINDIR for Ascend with MindSpore Lite's converter, cached:
#   bash scripts/convert_mindir_ascend.sh MINDIR [PRECISION_MODE=preferred_fp32]
# Prints one line, the path of the converted model (stdout); everything else goes to stderr.
#
# Runs `converter_lite --fmk=MINDIR --optimize=ascend_oriented` with an [ascend_context] precision_mode,
# which compiles the graph for the Ascend device once, ahead of time, instead of at every Model::Build of
# ascend310_infer/ (the program loads either file). The converter needs the Ascend toolkit (CANN, set_env.sh)
# of the machine that will run the model, so this is a step for the 310 host, not for a CPU machine.
# The result is cached under CACHE_DIR as <sha256 of the MINDIR, 16 digits>-<sha256 of the converter, 8
# digits>-<precision mode>.mindir: a re-export with other weights, another Lite release or another precision
# mode converts again, the same inputs reuse the file.
# Environment:
#   CONVERTER_LITE  the converter (default: $MS_LITE_HOME/tools/converter/converter/converter_lite, else the
#                   converter_lite on PATH)
#   CACHE_DIR       default outputs/converted of the repository
set -euo pipefail
if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
  echo "usage: bash $0 MINDIR [PRECISION_MODE=preferred_fp32]" >&2
  exit 2
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINDIR="$(realpath -m -- "$1")"
PRECISION_MODE="${2:-preferred_fp32}"
CACHE_DIR="$(realpath -m -- "${CACHE_DIR:-$REPO_ROOT/outputs/converted}")"

case "$PRECISION_MODE" in
  preferred_fp32|enforce_fp32|enforce_fp16|enforce_origin|preferred_optimal) ;;
  *) echo "PRECISION_MODE must be one of preferred_fp32, enforce_fp32, enforce_fp16, enforce_origin," \
          "preferred_optimal; got '$PRECISION_MODE'" >&2; exit 2 ;;
esac
[ -f "$MINDIR" ] || { echo "MINDIR not found: $MINDIR" >&2; exit 2; }

CONVERTER="${CONVERTER_LITE:-}"
if [ -z "$CONVERTER" ] && [ -n "${MS_LITE_HOME:-}" ] \
    && [ -x "$MS_LITE_HOME/tools/converter/converter/converter_lite" ]; then
  CONVERTER="$MS_LITE_HOME/tools/converter/converter/converter_lite"
fi
[ -n "$CONVERTER" ] || CONVERTER="$(command -v converter_lite || true)"
if [ -z "$CONVERTER" ] || [ ! -x "$CONVERTER" ]; then
  echo "converter_lite not found (CONVERTER_LITE='${CONVERTER_LITE:-}', MS_LITE_HOME='${MS_LITE_HOME:-}'):" \
       "it is in the MindSpore Lite release tarball, tools/converter/converter/converter_lite;" \
       "its libraries need LD_LIBRARY_PATH=\$MS_LITE_HOME/tools/converter/lib" >&2
  exit 2
fi

mindir_sum="$(sha256sum "$MINDIR" | cut -c1-16)"
converter_sum="$(sha256sum "$CONVERTER" | cut -c1-8)"
stem="$CACHE_DIR/${mindir_sum}-${converter_sum}-${PRECISION_MODE}"
if [ -f "$stem.mindir" ]; then
  echo "convert_mindir_ascend: reusing $stem.mindir (same MINDIR, converter and precision mode)" >&2
  echo "$stem.mindir"
  exit 0
fi

mkdir -p "$CACHE_DIR"
work="$(mktemp -d "$CACHE_DIR/.convert.XXXXXX")"
trap 'rm -rf "$work"' EXIT
printf '[ascend_context]\nprecision_mode=%s\n' "$PRECISION_MODE" > "$work/ascend.cfg"
echo "convert_mindir_ascend: $CONVERTER --optimize=ascend_oriented, precision_mode=$PRECISION_MODE" \
     "(log: $stem.log)" >&2
status=0
"$CONVERTER" --fmk=MINDIR --modelFile="$MINDIR" --outputFile="$work/model" --optimize=ascend_oriented \
  --configFile="$work/ascend.cfg" > "$work/convert.log" 2>&1 || status=$?
cp "$work/convert.log" "$stem.log"
if [ "$status" -ne 0 ] || [ ! -f "$work/model.mindir" ]; then
  echo "converter_lite failed (exit status $status, no $work/model.mindir); the end of $stem.log:" >&2
  tail -n 20 "$stem.log" >&2
  exit 1
fi
# Renamed into place only when complete, so an interrupted conversion is never taken for a cached one.
mv "$work/model.mindir" "$stem.mindir"
echo "$stem.mindir"
