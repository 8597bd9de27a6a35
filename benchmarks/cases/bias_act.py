import torch
from cases.end_to_end import ReferenceEqualizedConv2d
from harness import DROP_IN_TARGET, GPU_ELEMENTWISE_COPY_TARGETS, GPU_ELEMENTWISE_EAGER_TARGETS, forward_backward_cases

import gan_kernels
from gan_kernels import reference

# StyleGAN's discriminator epilogue: lrelu, its default gain sqrt(2), conv_clamp 256.
LRELU_GAIN_CLAMP = dict(act="lrelu", gain=2**0.5, clamp=256.0)


def bias_act_fns():
    def eager(x, b):
        return reference.bias_act(x, b, **LRELU_GAIN_CLAMP)

    def ours(x, b):
        return gan_kernels.bias_act(x, b, **LRELU_GAIN_CLAMP)

    return {"eager": eager, "ours": ours}


def conv_layer_fns(in_channels, out_channels, device, dtype):
    torch.manual_seed(0)
    kwargs = dict(activation="lrelu", conv_clamp=256)
    ref = ReferenceEqualizedConv2d(in_channels, out_channels, 3, **kwargs).to(device)
    with torch.no_grad():
        ref.bias.normal_()
    ours = gan_kernels.nn.EqualizedConv2d(in_channels, out_channels, 3, **kwargs).to(device)
    ours.load_state_dict(ref.state_dict())
    x_format = dict(memory_format=torch.channels_last) if device.type == "cuda" else {}
    ref, ours = ref.to(**x_format), ours.to(**x_format)
    return {"eager": ref, "ours": ours}


def cases(device, quick, compile_fn):
    if device.type == "cuda":
        shapes = [(32, 512, 64, 64)]
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
        conv_shapes, conv_dtypes = [(32, 256, 64, 64)], [torch.bfloat16, torch.float32]
        copy_targets, eager_targets = GPU_ELEMENTWISE_COPY_TARGETS, GPU_ELEMENTWISE_EAGER_TARGETS
        compile_target = True
    else:
        shapes = [(32, 256, 32, 32)]
        dtypes = [torch.float32, torch.bfloat16]
        conv_shapes, conv_dtypes = [(8, 64, 32, 32)], [torch.float32]
        copy_targets = eager_targets = None
        compile_target = False
    if quick:
        dtypes, conv_dtypes = dtypes[:1], conv_dtypes[:1]
    out = []
    for shape in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            b = torch.randn(shape[1], device=device, dtype=dtype)
            nbytes = x.nbytes
            # forward: read x, write y; backward (a clamp saves x): read x and dy, write dx
            out += forward_backward_cases(
                "bias_act",
                (x, b),
                torch.randn_like(x),
                bias_act_fns(),
                2 * nbytes,
                3 * nbytes,
                compile_fn,
                copy_targets=copy_targets,
                eager_targets=eager_targets,
                compile_target=compile_target,
            )
    for shape in conv_shapes:
        for dtype in conv_dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            fns = conv_layer_fns(shape[1], shape[1], device, dtype)
            # A layer is compute-bound: no ideal traffic, so no GB/s column.
            out += [
                case
                for case in forward_backward_cases(
                    "equalized_conv2d_lrelu",
                    (x,),
                    torch.randn_like(x),
                    fns,
                    0,
                    0,
                    compile_fn,
                    eager_target=DROP_IN_TARGET,
                )
                if case.mode != "bwd"
            ]
    return out
