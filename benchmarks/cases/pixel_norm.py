import torch
from harness import (
    CPU_NORM_COPY_TARGETS,
    GPU_ELEMENTWISE_COPY_TARGETS,
    GPU_ELEMENTWISE_EAGER_TARGETS,
    forward_backward_cases,
)

import gan_kernels
from gan_kernels import reference


def cases(device, quick, compile_fn):
    if device.type == "cuda":
        shapes = [(32, 512, 64, 64), (32, 512, 16, 16)]
        dtypes = [torch.float32, torch.bfloat16, torch.float16]
        copy_targets = {(shapes[0], dtype): GPU_ELEMENTWISE_COPY_TARGETS for dtype in dtypes}
        eager_targets = {(shapes[0], dtype): GPU_ELEMENTWISE_EAGER_TARGETS for dtype in dtypes}
        compile_targets = {(shapes[0], dtype) for dtype in dtypes}
    else:
        shapes = [(32, 512, 32, 32), (32, 512, 8, 8)]
        dtypes = [torch.float32, torch.bfloat16]
        copy_targets = {(shapes[0], torch.float32): CPU_NORM_COPY_TARGETS}
        eager_targets, compile_targets = {}, set()
    if quick:
        shapes, dtypes = shapes[:1], dtypes[:1]
    fns = {"eager": reference.pixel_norm, "ours": gan_kernels.pixel_norm}
    out = []
    for shape in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            grad_out = torch.randn_like(x)
            nbytes = x.nbytes
            # forward: read x, write y; backward: read x and dy, write dx
            out += forward_backward_cases(
                "pixel_norm",
                (x,),
                grad_out,
                fns,
                2 * nbytes,
                3 * nbytes,
                compile_fn,
                copy_targets=copy_targets.get((shape, dtype)),
                eager_targets=eager_targets.get((shape, dtype)),
                compile_target=(shape, dtype) in compile_targets,
            )
    return out
