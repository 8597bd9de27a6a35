"""``python -m gan_kernels``: print the build facts and which implementation runs the ops."""
import torch

import gan_kernels
from gan_kernels import _backend


def main():
    print(f"gan_kernels {gan_kernels.__version__}")
    print(f"torch       {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"backend     {gan_kernels.backend()}")
    c = _backend._C
    if c is not None:
        print(f"built with  torch {c.torch_version}, CUDA kernels: {'yes' if c.cuda_compiled else 'no'}")
        print(f"CUDA archs  {', '.join(c.cuda_archs) or '-'}")
        print(f"ops         {', '.join(c.ops())}")
    if torch.cuda.is_available():
        print(f"GPU         {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
