"""Prints the CPU capabilities our kernels can run at on this machine other than the one picked by
itself (`ATEN_CPU_CAPABILITY=<name>` selects one), one per line: what `make test` re-runs the
CPU-kernel tests under, since torch's vectorised kernels and ours differ between instruction sets.
Asks the built extension, not torch: ATen reports a capability the CPU lacks when told to
(ATEN_CPU_CAPABILITY=avx512 on an AVX2 CPU), where our kernels run their next lower build."""

import os
import subprocess
import sys

CANDIDATES = ("default", "avx2", "avx512")
PROBE = "from gan_kernels._backend import _C; print(_C.cpu_capability())"


def picked(capability=None):
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip().lower()


def main():
    native = picked()
    for capability in CANDIDATES:
        if capability != native and picked(capability) == capability:
            print(capability)


if __name__ == "__main__":
    main()
