"""Prints the CPU capabilities ATen can run on this machine other than the one it picks by itself
(`ATEN_CPU_CAPABILITY=<name>` selects one), one per line: what `make test` re-runs the CPU-kernel
tests under, since torch's vectorised kernels and ours differ between instruction sets."""

import os
import subprocess
import sys

CANDIDATES = ("default", "avx2", "avx512")
PROBE = "import torch; print(torch.backends.cpu.get_cpu_capability())"


def picked(capability=None):
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip().lower()


def main():
    native = picked()
    # ATen falls back to a lower capability when the CPU lacks the requested one.
    for capability in CANDIDATES:
        if capability != native and picked(capability) == capability:
            print(capability)


if __name__ == "__main__":
    main()
