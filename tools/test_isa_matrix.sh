#!/usr/bin/env bash
# Run the tests under every CPU kernel setting that a user's machine may have, on this one machine.
#
#   bash tools/test_isa_matrix.sh                      # the whole suite, four times
#   bash tools/test_isa_matrix.sh tests/test_parity_dfine.py -k loss   # any pytest arguments
#
# torch picks its vectorised kernels by what the CPU can do (AVX-512, AVX2, none), and oneDNN its
# convolution and matmul code the same way; results differ in the last bits between them. The tests
# must pass on every x86 CPU, so this script emulates the other kinds here:
#   native                      what this CPU does by itself
#   aten=avx2 + onednn=AVX2     an AVX2-only machine (e.g. AMD EPYC before Zen 4)
#   aten=default                no vector kernels in ATen
#   onednn=AVX2                 native ATen, oneDNN limited to AVX2
# Emulation only goes down: on an AVX2-only machine the AVX-512 settings fall back to AVX2.
# It prints one summary line per setting and exits non-zero when any setting failed.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- tests

SETTINGS=(
  "native|"
  "aten=avx2 + onednn=AVX2|ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
  "aten=default|ATEN_CPU_CAPABILITY=default"
  "onednn=AVX2|ONEDNN_MAX_CPU_ISA=AVX2"
)
summary=()
status=0
for setting in "${SETTINGS[@]}"; do
  name="${setting%%|*}"
  vars="${setting#*|}"
  echo "=== $name ${vars:+($vars)}"
  log="$(mktemp)"
  # shellcheck disable=SC2086
  env $vars bash tools/env.sh python tools/cpu_info.py
  # shellcheck disable=SC2086
  env $vars bash tools/env.sh python -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  summary+=("$name: $(grep -E '(passed|failed|error)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//')")
  rm -f "$log"
done
echo "=== ISA matrix summary"
printf '%s\n' "${summary[@]}"
exit $status
