#!/usr/bin/env bash
# The GPU check, as the GPU box's first call: bash scripts/gpu_verify.sh first (then `second`).
# scripts/gpu_verify.py says what each stage does; --dry-run checks every command on any machine.
cd "$(dirname "$0")/.." && exec python3 scripts/gpu_verify.py "$@"
