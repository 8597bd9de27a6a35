"""``python -m gan_kernels [--require-cuda]``: print the build facts and which implementation runs the ops.

Exits 1 when the compiled extension could not be loaded (the ops would silently run their
references), and with ``--require-cuda`` also unless the CUDA kernels are compiled in, a GPU is
visible and one of our kernels runs on it without falling back: what a GPU check must establish
before its tests can mean anything.
"""

import argparse
import sys
import warnings

import torch

import gan_kernels
from gan_kernels import _backend


def print_facts():
    print(f"gan_kernels {gan_kernels.__version__}")
    print(f"torch       {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"backend     {gan_kernels.backend()}")
    c = _backend._C
    if c is not None:
        print(f"built with  torch {c.torch_version}, CUDA kernels: {'yes' if c.cuda_compiled else 'no'}")
        print(f"CUDA archs  {', '.join(c.cuda_archs) or '-'}")
        print(f"ops         {', '.join(c.ops())}")
    if torch.cuda.is_available():
        print(f"GPU         {torch.cuda.get_device_name()} (compute capability {torch.cuda.get_device_capability()})")


def cuda_problem():
    """Why our CUDA kernels cannot run here, or None when one just ran."""
    info = gan_kernels.backend()
    if info.impl != "compiled":
        return f"the ops run the reference: {info.reason}"
    if not info.cuda:
        return f"gan_kernels._C has no CUDA kernels: {info.reason}"
    if not torch.cuda.is_available():
        return "no GPU is visible to torch (torch.cuda.is_available() is False)"
    # A launch proves the kernels were built for this GPU's architecture ("no kernel image" otherwise).
    x = torch.randn(4, 8, 3, 3, device="cuda")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", gan_kernels.FallbackWarning)
            y = gan_kernels.pixel_norm(x)
        torch.cuda.synchronize()
        torch.testing.assert_close(y, gan_kernels.reference.pixel_norm(x))
    except (RuntimeError, AssertionError, gan_kernels.FallbackWarning) as error:
        return f"pixel_norm on the GPU failed: {type(error).__name__}: {error}"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gan_kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--require-cuda",
        action="store_true",
        help="exit 1 unless our CUDA kernels are compiled in and run on a visible GPU",
    )
    args = parser.parse_args(argv)
    print_facts()
    if _backend._C is None:
        print(
            f"error: gan_kernels._C could not be loaded ({_backend.C_ERROR}); every op would run its reference",
            file=sys.stderr,
        )
        return 1
    if args.require_cuda:
        problem = cuda_problem()
        if problem is not None:
            print(f"error: --require-cuda: {problem}", file=sys.stderr)
            return 1
        print("CUDA        our kernels ran on the GPU (pixel_norm checked against the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
