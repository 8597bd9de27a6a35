#!/usr/bin/env bash
# GPU verification in one call on the lent GPU box (see DESIGN.md "Working on the GPU box"):
#   bash scripts/gpu_verify.sh [all|build|test|bench|sanitize ...]
# builds with CUDA for sm_90, runs the whole suite on CUDA, the benchmarks, and the CUDA tests
# once under compute-sanitizer. Logs, the benchmark JSON and plot go to $OUT (default ./gpu-out);
# summary.txt ends with one line per stage. The box has torch + CUDA and no network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
[ "${stages[0]}" = all ] && stages=(build test bench sanitize)

run_stage() {
  local name=$1
  shift
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
  return $rc
}

build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  FORCE_CUDA=1 python3 setup.py build_ext --inplace && python3 -m gan_kernels
}

tests() {
  python3 -m pytest -q -rs -p no:cacheprovider
}

bench() {
  python3 benchmarks/run.py --plot --out "$OUT/bench.json"
}

sanitize() {
  # Every CUDA case once under memcheck (torch.compile cases excluded: they only re-run our kernels).
  compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 \
    python3 -m pytest -q -x -p no:cacheprovider -k "cuda and not compile" tests
}

status=0
for stage in "${stages[@]}"; do
  case $stage in
    build) run_stage build build || { status=1; break; } ;;
    test) run_stage test tests || status=1 ;;
    bench) run_stage bench bench || status=1 ;;
    sanitize) run_stage sanitize sanitize || status=1 ;;
    *) echo "unknown stage $stage (all, build, test, bench, sanitize)"; exit 2 ;;
  esac
done
cat "$OUT/summary.txt"
exit $status
