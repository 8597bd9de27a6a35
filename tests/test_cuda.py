"""Every CUDA code path of every launcher, and the promises the CUDA kernels make (bitwise determinism,
the current stream, CUDA-graph capture), on the GPU only.

Each launcher branch named in csrc/cuda has a case here: vector widths, cached and uncached tiles,
the shared-memory bands of the pixel-norm cache, grid-stride loops past the 2^20-block cap,
multi-block and more-than-32 spectral-norm layers (every power-iteration path, its launch count),
multi-chunk penalties, many-tile minibatch stddev with the group held in registers (G = 2, 4, 8) and
any other G, minibatch discrimination with one and several dim chunks per row. Every test fails if
the pure-PyTorch fallback ran instead of our kernels: the module's fixture asserts that the compiled
CUDA backend is active, and FallbackWarning is an error.
Sizes are the smallest that reach each path; the largest (the grid-stride cases) move under 2 GB.

With GAN_KERNELS_CUDA_EMULATION=1 (tests/cuda_emulation: `make cuda-emulation`) the cases run our CUDA
kernels on the host, on CPU tensors, without a GPU; the ones about the GPU itself (the entry point,
streams, CUDA graphs, launch counts) and the 2 GB grid-stride cases stay GPU-only: the emulation build
caps grids at 8 blocks, so every case above that size loops.
"""

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import CUDA_EMULATION, FLOAT_DTYPES, TOLERANCES, assert_close

import gan_kernels
from gan_kernels import _backend, reference
from gan_kernels.nn import EqualizedConv2d, EqualizedLinear, MinibatchStd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = "cpu" if CUDA_EMULATION else "cuda"
gpu_only = pytest.mark.skipif(CUDA_EMULATION, reason="about the GPU itself, or too large to emulate")
MAX_BLOCKS = 2**20  # the grid cap of every elementwise launcher: larger inputs loop


def dtype_id(dtype):  # "float32", not "dtype0": scripts/gpu_verify.py selects tests by these names
    return str(dtype).replace("torch.", "")


pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available() and not CUDA_EMULATION, reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("error::gan_kernels.FallbackWarning"),
]


@pytest.fixture(autouse=True)
def our_cuda_kernels_are_active():
    if _backend.IMPL == "reference":  # make test's second pass; scripts/gpu_verify.py sets auto
        pytest.skip("GAN_KERNELS_IMPL=reference forces the fallback these tests refuse")
    info = gan_kernels.backend()
    if CUDA_EMULATION:
        assert info.impl == "compiled" and "cuda-emulation" in _backend._C.__file__, _backend._C.__file__
    else:
        assert info.impl == "compiled" and info.cuda, f"these tests would only test the fallback: {info}"


@gpu_only
def test_cuda_entry_point_requires_and_finds_the_cuda_kernels():
    result = subprocess.run(
        [sys.executable, "-m", "gan_kernels", "--require-cuda"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "our kernels ran on the GPU" in result.stdout


def forward_and_grad(fn, x, grad_out):
    x = x.detach().requires_grad_()
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, grad_out)
    return y, dx


def assert_matches_reference(ours, ref, x):
    """Forward and backward of `ours` against `ref` on the same values and dtype."""
    torch.manual_seed(3)
    y_ref = ref(x)
    grad_out = torch.randn(y_ref.shape, dtype=y_ref.dtype, device=y_ref.device)
    for got, want in zip(forward_and_grad(ours, x, grad_out), forward_and_grad(ref, x, grad_out)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert_close(got, want)


# ---- pixel norm --------------------------------------------------------------------------------

# Channels around the limits of the shared-memory tile cache (48 KiB less the reduction's static
# partials) at 64 inner positions, where every dtype takes 16-byte accesses and its tile is 128, 64 or
# 32 bytes per channel, the widest whose cache fits (csrc/cuda/pixel_norm_tiles.h). The cache takes
# that per channel (twice in the backward, which caches the gradient too); the partials take 1 KiB
# (float32) or 2 KiB (float16, bfloat16: 512 float accumulators; float64: 256 doubles), twice that
# in the backward. So the forward's widths end at 368, 736 and 1472 channels in float32 (47 KiB left)
# and 360, 720 and 1440 otherwise (45 KiB); the backward's at 180, 360, 720 (45 KiB) and 176, 352,
# 704 (44 KiB); one channel more takes the next width, or past the last the uncached path.
PIXEL_NORM_BANDS = {
    torch.float32: [368, 369, 736, 737, 1472, 1473, 180, 181, 360, 361, 720, 721],
    torch.float16: [360, 361, 720, 721, 1440, 1441, 176, 177, 352, 353, 704, 705],
    torch.bfloat16: [360, 361, 720, 721, 1440, 1441, 176, 177, 352, 353, 704, 705],
    torch.float64: [360, 361, 720, 721, 1440, 1441, 176, 177, 352, 353, 704, 705],
}


@pytest.mark.parametrize(
    "dtype,channels",
    [(d, c) for d, cs in PIXEL_NORM_BANDS.items() for c in cs],
    ids=[f"{dtype_id(d)}-{c}" for d, cs in PIXEL_NORM_BANDS.items() for c in cs],
)
def test_cuda_pixel_norm_tile_cache_limits(dtype, channels):
    # A cache one byte over what a block may have fails the launch with "invalid argument" (issue 12).
    torch.manual_seed(0)
    x = torch.randn(2, channels, 8, 8, dtype=dtype, device=DEVICE)
    assert_matches_reference(gan_kernels.pixel_norm, reference.pixel_norm, x)


PIXEL_NORM_PATHS = {
    "rows_16byte": ((4, 64, 3, 5), torch.channels_last),  # inner 1, channels a multiple of every width
    "rows_scalar": ((4, 67, 3, 5), torch.channels_last),
    "tiles_cached": ((2, 64, 8, 8), torch.contiguous_format),  # 16-byte accesses, 128-byte tiles
    "tiles_uncached": ((2, 2048, 8, 8), torch.contiguous_format),
    "tiles_scalar_cached": ((2, 64, 5, 7), torch.contiguous_format),  # 35 positions: a partial last tile
    "tiles_scalar_uncached": ((2, 2048, 3, 5), torch.contiguous_format),
    "tiles_few_channels": ((3, 9, 4, 8), torch.contiguous_format),  # several tiles a block, one past the end
    "tiles_small_inner": ((3, 1000, 2, 2), torch.contiguous_format),  # a block's rows span all its warps
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", list(PIXEL_NORM_PATHS))
def test_cuda_pixel_norm_paths(path, dtype):
    shape, memory_format = PIXEL_NORM_PATHS[path]
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype, device=DEVICE).contiguous(memory_format=memory_format)
    assert_matches_reference(gan_kernels.pixel_norm, reference.pixel_norm, x)


@gpu_only
@pytest.mark.parametrize("path", ["rows", "tiles"])
def test_cuda_pixel_norm_grid_stride_past_the_block_cap(path):
    torch.manual_seed(2)
    if path == "rows":  # 8 rows (warps) per block
        x = torch.randn(8 * MAX_BLOCKS + 24, 2, device=DEVICE)
    else:  # one block tile per sample: 33 channels of 3 positions fill a block (4 lanes x 64 rows)
        x = torch.randn(MAX_BLOCKS + 3, 33, 1, 3, dtype=torch.float16, device=DEVICE)
    assert_matches_reference(gan_kernels.pixel_norm, reference.pixel_norm, x)


# ---- bias_act ----------------------------------------------------------------------------------

BIAS_ACT_PATHS = {
    # C and H*W multiples of 8: every dtype's 16-byte groups lie in one channel (NCHW) or span
    # consecutive channels (channels_last).
    "16byte_nchw": ((2, 16, 4, 8), torch.contiguous_format),
    "16byte_channels_last": ((2, 16, 4, 8), torch.channels_last),
    "scalar": ((2, 5, 3, 3), torch.contiguous_format),
    # the 16-byte shape, but x one element into its storage: not 16-byte aligned, so scalar accesses
    "16byte_shape_misaligned": ((2, 16, 4, 8), None),
}
# swish with a clamp: forward, gradient from x and the second derivative; lrelu without a clamp:
# the gradient from the saved output y.
BIAS_ACT_ACTS = {"swish_clamp": dict(act="swish", clamp=1.5), "lrelu": dict(act="lrelu")}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", list(BIAS_ACT_PATHS))
@pytest.mark.parametrize("act", list(BIAS_ACT_ACTS))
def test_cuda_bias_act_paths(path, act, dtype):
    shape, memory_format = BIAS_ACT_PATHS[path]
    kwargs = BIAS_ACT_ACTS[act]
    torch.manual_seed(4)
    if memory_format is None:
        x = torch.randn(math.prod(shape) + 1, dtype=dtype, device=DEVICE)[1:].view(shape)
    else:
        x = torch.randn(shape, dtype=dtype, device=DEVICE).contiguous(memory_format=memory_format)
    b = torch.randn(shape[1], dtype=dtype, device=DEVICE)
    assert_matches_reference(
        lambda t: gan_kernels.bias_act(t, b, **kwargs), lambda t: reference.bias_act(t, b, **kwargs), x
    )
    if act == "swish_clamp":  # the Grad2 kernel: d/dx of the gradient
        grad_out = torch.randn_like(x)
        upstream = torch.randn_like(x)

        def second(fn):
            leaf = x.detach().requires_grad_()
            (dx,) = torch.autograd.grad(fn(leaf, b, **kwargs), leaf, grad_out, create_graph=True)
            return torch.autograd.grad(dx, leaf, upstream)[0]

        assert_close(second(gan_kernels.bias_act), second(reference.bias_act))


@gpu_only
def test_cuda_bias_act_grid_stride_past_the_block_cap():
    # An odd length takes the one-element path: 256 elements per block, so 2^28 + 1 need the loop.
    torch.manual_seed(5)
    x = torch.randn(256 * MAX_BLOCKS + 1, dtype=torch.float16, device=DEVICE)
    y = gan_kernels.bias_act(x, dim=0, act="lrelu")
    tail = slice(256 * MAX_BLOCKS - 1000, None)  # the end of the first round and the loop's second
    assert_close(y[tail], reference.bias_act(x[tail], dim=0, act="lrelu"))
    assert_close(y[:1000], reference.bias_act(x[:1000], dim=0, act="lrelu"))


# ---- gradient penalty --------------------------------------------------------------------------

# 8200 and 14700 elements per sample: two 8192-element chunks; 8195 is no multiple of any vector width.
PENALTY_SHAPES = [(3, 8200), (3, 3, 70, 70), (3, 8195)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", PENALTY_SHAPES, ids=lambda shape: "x".join(map(str, shape[1:])))
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_cuda_penalty_several_chunks_per_sample(shape, center, dtype):
    torch.manual_seed(6)
    g = torch.randn(shape, dtype=dtype, device=DEVICE)
    assert_matches_reference(
        lambda t: gan_kernels.per_sample_penalty(t, center), lambda t: reference.per_sample_penalty(t, center), g
    )


@gpu_only
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_cuda_penalty_grid_stride_past_the_block_cap(center):
    # One element per sample: one chunk task per sample, and 8 samples per block in the final pass.
    torch.manual_seed(7)
    g = torch.randn(8 * MAX_BLOCKS + 24, 1, device=DEVICE)
    assert_matches_reference(
        lambda t: gan_kernels.per_sample_penalty(t, center), lambda t: reference.per_sample_penalty(t, center), g
    )


# ---- minibatch stddev --------------------------------------------------------------------------


def assert_minibatch_std_matches_reference(x, group_size=4, num_channels=1):
    assert_matches_reference(
        lambda t: gan_kernels.minibatch_std(t, group_size, num_channels),
        lambda t: reference.minibatch_std(t, group_size, num_channels),
        x,
    )
    grad_out = torch.randn(x.shape[0], x.shape[1] + num_channels, *x.shape[2:], dtype=x.dtype, device=x.device)
    upstream = torch.randn_like(x)

    def second(fn, dtype=x.dtype):  # the double-backward kernel, as R1 runs it
        leaf = x.detach().to(dtype).requires_grad_()
        dy, u = grad_out.to(dtype), upstream.to(dtype)
        (dx,) = torch.autograd.grad(fn(leaf, group_size, num_channels), leaf, dy, create_graph=True)
        return torch.autograd.grad(dx, leaf, u)[0]

    got, want = second(gan_kernels.minibatch_std), second(reference.minibatch_std)
    if group_size != 2:
        assert_close(got, want)
        return
    # With G = 2 the std is |x1 - x2| / 2, whose second derivative vanishes up to eps: both sides are
    # rounding noise around the float64 value (as the CPU tests note), so ours must be about as close to
    # it as the reference in the same dtype is; a wrong member or sign is off by the first derivative's size.
    exact = second(reference.minibatch_std, torch.float64)
    reference_error = (want.double() - exact).abs().max().item()
    torch.testing.assert_close(
        got.double(), exact, rtol=0, atol=4 * reference_error + TOLERANCES[x.dtype]["atol"], check_dtype=False
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_cuda_minibatch_std_many_tiles(dtype, memory_format):
    # 512 channels x 256 pixels per feature block, 2048 positions per tile: 64 tiles per block.
    torch.manual_seed(8)
    x = torch.randn(8, 512, 16, 16, dtype=dtype, device=DEVICE).contiguous(memory_format=memory_format)
    assert_minibatch_std_matches_reference(x)


# G = 2 and 8 take the kernels with the group in registers, G = 3 the one for any G. "16byte": 16 pixels
# (NCHW) and 8 channels per feature with C + F = 72 (NHWC) let every dtype load 16 bytes at a time;
# "scalar": 9 pixels and 3 channels per feature do not.
MINIBATCH_STD_ACCESSES = {"16byte": ((64, 4, 4), 8), "scalar": ((6, 3, 3), 2)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("access", list(MINIBATCH_STD_ACCESSES))
@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_cuda_minibatch_std_group_sizes(group_size, access, memory_format, dtype):
    (channels, height, width), num_channels = MINIBATCH_STD_ACCESSES[access]
    torch.manual_seed(21)
    x = torch.randn(2 * group_size, channels, height, width, dtype=dtype, device=DEVICE)
    assert_minibatch_std_matches_reference(x.contiguous(memory_format=memory_format), group_size, num_channels)


@gpu_only
def test_cuda_minibatch_std_grid_stride_past_the_block_cap():
    # Groups of 4 one-pixel samples: one tile and one (group, feature) per group, 2^20 + 1 groups.
    # float64: among a million groups of 4 values some have a tiny spread, where the double
    # backward's 1/s^3 turns float32 rounding into visible differences.
    torch.manual_seed(9)
    x = torch.randn(4 * (MAX_BLOCKS + 1), 1, 1, 1, dtype=torch.float64, device=DEVICE)
    assert_minibatch_std_matches_reference(x)


# ---- past 2^31 elements ------------------------------------------------------------------------

# bfloat16 tensors of 2^31 + 2^20 elements: an int32 index of their last elements wraps. The ops are
# local to a row, channel column or group, so their results at the end equal the reference's on the
# end alone. Up to about 20 GB each, one at a time on one xdist worker; the emulation ran the same
# kernels' forwards on such tensors once by hand (16 minutes), too long to repeat.
PAST_INT32 = 2**31 + 2**20


def past_int32_input(*shape):
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs 40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    assert math.prod(shape) == PAST_INT32
    return torch.randn(shape, dtype=torch.bfloat16, device=DEVICE)


def assert_tail_matches_reference(ours, ref, x, tail):
    """Forward and backward of ``ours`` on all of x, at x[tail], against ``ref`` on x[tail] alone."""
    torch.manual_seed(10)
    grad_out = torch.randn_like(x)
    y, dx = forward_and_grad(ours, x, grad_out)
    y_ref, dx_ref = forward_and_grad(ref, x[tail], grad_out[tail])
    assert_close(y[tail], y_ref)
    assert_close(dx[tail], dx_ref)


@gpu_only
@pytest.mark.xdist_group("tensors past 2^31 elements")
@pytest.mark.parametrize("op", ["bias_act", "pixel_norm_rows", "pixel_norm_tiles", "penalty", "minibatch_std"])
def test_cuda_tensors_past_2_31_elements(op):
    torch.manual_seed(11)
    if op == "bias_act":
        x, b = past_int32_input(PAST_INT32 // 64, 64), torch.randn(64, dtype=torch.bfloat16, device=DEVICE)
        tail = slice(-1000, None)
        assert_tail_matches_reference(
            lambda t: gan_kernels.bias_act(t, b, act="lrelu"), lambda t: reference.bias_act(t, b, act="lrelu"), x, tail
        )
    elif op == "pixel_norm_rows":
        tail = slice(-1000, None)
        assert_tail_matches_reference(
            gan_kernels.pixel_norm, reference.pixel_norm, past_int32_input(PAST_INT32 // 64, 64), tail
        )
    elif op == "pixel_norm_tiles":
        x = past_int32_input(PAST_INT32 // (64 * 1024), 64, 1024)
        assert_tail_matches_reference(gan_kernels.pixel_norm, reference.pixel_norm, x, slice(-2, None))
    elif op == "penalty":  # 4 samples of 2^29 + 2^18 elements: their sums of squares in float64
        g = past_int32_input(4, PAST_INT32 // 4)
        norms = torch.stack([g[i].double().square().sum().sqrt() for i in range(4)])
        assert_close(gan_kernels.per_sample_penalty(g), ((norms - 1) ** 2).float())
    else:  # groups of 4 of 8 samples: a group's statistic, in float64 per sample position
        x = past_int32_input(8, 16, PAST_INT32 // (8 * 16 * 1024), 1024)
        y = gan_kernels.minibatch_std(x, group_size=4)
        assert torch.equal(y[:, :16, -3:], x[:, :, -3:])
        members = x.view(4, 2, -1)  # StyleGAN's grouping: sample i is member i // 2 of group i % 2
        stds = torch.stack([(members[:, j].double().var(dim=0, unbiased=False) + 1e-8).sqrt().mean() for j in range(2)])
        want = stds.repeat(4).to(torch.bfloat16)[:, None, None].expand(8, *y.shape[2:])
        assert_close(y[:, 16], want)


# ---- spectral norm -----------------------------------------------------------------------------

# "many": 40 layers (two launches of up to 32). Layer 0 (512 x 4608, a 3x3 conv of 512 channels)
# needs the per-layer cap of 256 normalisation blocks and loops over them; layers 1 and 35 need 2
# and 3 blocks. "small": four one-block layers, cheap enough for the race checker.
SPECTRAL_SHAPES = {
    "many": [(512, 512, 3, 3), (64, 128)] + [(3 + i, 2 + 3 * i) for i in range(33)] + [(96, 100)] + [(5, 4, 3, 3)] * 4,
    "small": [(7, 5), (16, 8, 3, 3), (33, 40), (4, 3, 2, 2)],
}


def spectral_layers(layers, dtype):
    torch.manual_seed(10)
    weights = [torch.randn(shape, dtype=dtype, device=DEVICE) for shape in SPECTRAL_SHAPES[layers]]
    us = [torch.nn.functional.normalize(torch.randn(w.shape[0], dtype=dtype, device=DEVICE), dim=0) for w in weights]
    vs = [torch.nn.functional.normalize(torch.randn(w[0].numel(), dtype=dtype, device=DEVICE), dim=0) for w in weights]
    upstream = [torch.randn_like(w) for w in weights]
    return weights, us, vs, upstream


def spectral_step(weights, us, vs, upstream, ours=True):
    """One power iteration, the normalised weights and their gradients, by our ops or the reference:
    [sigmas, *us, *vs, *outs, *grads]."""
    us, vs, dims = [u.clone() for u in us], [v.clone() for v in vs], [0] * len(weights)
    detached = [w.detach() for w in weights]
    leaves = [w.detach().requires_grad_() for w in weights]
    if ours:
        sigmas = gan_kernels.spectral_norm_power_iteration_(detached, us, vs, dims, 1, 1e-12)
        outs = gan_kernels.spectral_norm_normalize(leaves, us, vs, sigmas, dims)
    else:
        sigmas = reference.spectral_norm_power_iteration_(detached, us, vs, dims, 1, 1e-12)
        outs = reference.spectral_norm_normalize(leaves, us, vs, dims)
    grads = torch.autograd.grad(outs, leaves, upstream)
    return [sigmas, *us, *vs, *outs, *grads]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_spectral_norm_batched_equals_per_layer_bitwise(dtype):
    # Before each layer got its own block count, layers 1 and 35 summed <G, W> over as many blocks
    # as the largest layer of their launch: other bits than alone (issue 12).
    weights, us, vs, upstream = spectral_layers("many", dtype)
    batched = spectral_step(weights, us, vs, upstream)
    count = len(weights)
    for layer in range(count):
        one = slice(layer, layer + 1)
        alone = spectral_step(weights[one], us[one], vs[one], upstream[one])
        assert torch.equal(batched[0][layer], alone[0][0]), f"sigma of layer {layer}"
        for part, got in enumerate(alone[1:]):  # u, v, W / sigma, its gradient
            assert torch.equal(batched[1 + part * count + layer], got), f"layer {layer}, output {part}"


@pytest.mark.parametrize("layers", list(SPECTRAL_SHAPES))
def test_cuda_spectral_norm_matches_reference(layers):
    weights, us, vs, upstream = spectral_layers(layers, torch.float32)
    ours = spectral_step(weights, us, vs, upstream)

    def wide(ts):
        return [t.double() for t in ts]

    want = spectral_step(wide(weights), wide(us), wide(vs), wide(upstream), ours=False)
    for got, expected in zip(ours, want, strict=True):
        assert_close(got, expected.float())


# Layers reaching every path of the power iteration (csrc/common/spectral_norm_partition.h): W v and
# W^T u with 16-byte and with scalar accesses, one and several row segments (dim 1), a misaligned
# weight, rows past a tile of u, several blocks per layer. (shape, dim, weight misaligned)
SPECTRAL_PATHS = [
    ((40, 128), 0, False),  # 16 bytes; 40 rows: three W v blocks, the last one part full
    ((33, 4, 3, 3), 0, False),  # 36 columns: 16 bytes in fp32 and fp64, scalar in fp16 and bf16
    ((17, 99), 0, False),  # an odd column count: scalar
    ((24, 64), 0, True),  # W one element past an aligned address: scalar
    ((6, 5, 3, 3), 1, False),  # ConvTranspose's dim 1: rows of 6 segments of 9, scalar
    ((16, 24, 4, 4), 1, False),  # rows of 16 segments of 16: 16 bytes
    ((1100, 24), 0, False),  # rows past the 1024 of a u tile
    ((256, 2304), 0, False),  # 16 W v blocks; 18 (fp16) to 72 (fp64) W^T u blocks
    ((0, 5), 0, False),  # no rows: one W v block all the same, which finishes the layer without a step
    ((5, 0), 0, False),  # no columns: the W^T u block that writes u and finishes the layer
]


def spectral_path_layers(dtype):
    torch.manual_seed(12)
    weights, us, vs, dims = [], [], [], []
    for shape, dim, misaligned in SPECTRAL_PATHS:
        storage = torch.randn(math.prod(shape) + 1, dtype=dtype, device=DEVICE)
        weights.append((storage[1:] if misaligned else storage[:-1]).view(shape))
        cols = math.prod(size for d, size in enumerate(shape) if d != dim)
        us.append(torch.nn.functional.normalize(torch.randn(shape[dim], dtype=dtype, device=DEVICE), dim=0))
        vs.append(torch.nn.functional.normalize(torch.randn(cols, dtype=dtype, device=DEVICE), dim=0))
        dims.append(dim)
    return weights, us, vs, dims


@pytest.mark.parametrize("n_power_iterations", [0, 1, 3])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_spectral_norm_power_iteration_paths(dtype, n_power_iterations):
    weights, us, vs, dims = spectral_path_layers(dtype)
    assert weights[3].data_ptr() % 16 != 0  # the scalar path of a misaligned weight
    ours_u, ours_v = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, ours_u, ours_v, dims, n_power_iterations, 1e-12)
    ref_u, ref_v = [u.clone() for u in us], [v.clone() for v in vs]
    want = reference.spectral_norm_power_iteration_(weights, ref_u, ref_v, dims, n_power_iterations, 1e-12)
    assert_close(sigmas, want)
    for got, expected in zip(ours_u + ours_v, ref_u + ref_v, strict=True):
        assert_close(got, expected)
    # Each layer alone, through the per-layer op, gives the same bits.
    for layer, (weight, dim) in enumerate(zip(weights, dims)):
        u, v = us[layer].clone(), vs[layer].clone()
        sigma = torch.ops.gan_kernels.spectral_norm_power_iteration_one_(weight, u, v, dim, n_power_iterations, 1e-12)
        assert torch.equal(sigma, sigmas[layer]), f"sigma of layer {layer}"
        assert torch.equal(u, ours_u[layer]) and torch.equal(v, ours_v[layer]), f"u, v of layer {layer}"


# Layers reaching every path of the normalisation and its backward (csrc/cuda/spectral_norm.cu): W / sigma
# and <G, W> move 16 bytes where the weight is a whole number of them, the backward's formula where each
# row segment is, each only with its tensors 16-byte aligned; dim 1 (several segments per row); the
# 256-block cap with several steps per thread, in batches and a tail; empty layers.
# (shape, dim, the tensor stored one element past an aligned address)
SPECTRAL_NORMALIZE_PATHS = [
    ((40, 128), 0, None),  # 16 bytes throughout; two blocks
    ((8, 13), 0, None),  # W / sigma and <G, W> 16 bytes (104 elements), the formula scalar (rows of 13)
    ((7, 5), 0, None),  # 35 elements: scalar throughout
    ((6, 5, 3, 3), 1, None),  # rows of 6 segments of 9: the formula scalar; 270 elements, 16 bytes in fp64 only
    ((16, 24, 4, 4), 1, None),  # rows of 16 segments of 16: 16 bytes throughout
    ((24, 64), 0, "weight"),  # W / sigma and <G, W> scalar, the formula 16 bytes
    ((24, 64), 0, "v"),  # the formula scalar
    ((24, 64), 0, "grad"),  # <G, W> and the formula scalar
    ((512, 4608), 0, None),  # 256 blocks, 2.25 (fp16, bf16) to 9 (fp64) 16-byte steps per thread
    ((1023, 1031), 0, None),  # 256 blocks, 8 or 9 scalar steps per thread: batches of 4 and a tail
    ((0, 5), 0, None),  # no rows
    ((5, 0), 0, None),  # no columns
]


def spectral_normalize_inputs(dtype):
    """weights, us, vs, upstream gradients and dims of SPECTRAL_NORMALIZE_PATHS."""
    torch.manual_seed(14)

    def stored(shape, misaligned):
        storage = torch.randn(math.prod(shape) + 1, dtype=dtype, device=DEVICE)
        return (storage[1:] if misaligned else storage[:-1]).view(shape)

    weights, us, vs, grads, dims = [], [], [], [], []
    for shape, dim, misaligned in SPECTRAL_NORMALIZE_PATHS:
        cols = math.prod(size for d, size in enumerate(shape) if d != dim)
        weights.append(stored(shape, misaligned == "weight"))
        us.append(torch.nn.functional.normalize(torch.randn(shape[dim], dtype=dtype, device=DEVICE), dim=0))
        vs.append(stored((cols,), misaligned == "v"))
        vs[-1].copy_(torch.nn.functional.normalize(vs[-1], dim=0))
        grads.append(stored(shape, misaligned == "grad"))
        dims.append(dim)
    return weights, us, vs, grads, dims


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_spectral_norm_normalize_paths(dtype):
    weights, us, vs, grads, dims = spectral_normalize_inputs(dtype)
    assert all(t.data_ptr() % 16 != 0 for t in (weights[5], vs[6], grads[7]))  # the misaligned paths
    # u and v near the top singular vectors, so that sigma = u . (W v) (computed as the reference's
    # normalisation computes it) is no small number that W / sigma and its gradient would amplify.
    sigmas = reference.spectral_norm_power_iteration_(weights, us, vs, dims, 3, 1e-12)
    ops = torch.ops.gan_kernels
    outs = ops.spectral_norm_normalize(weights, us, vs, sigmas, dims)
    weight_grads = ops.spectral_norm_normalize_backward(grads, weights, us, vs, sigmas, dims)
    leaves = [w.detach().requires_grad_() for w in weights]
    want = reference.spectral_norm_normalize(leaves, us, vs, dims)
    want_grads = torch.autograd.grad(want, leaves, grads)
    for layer in range(len(weights)):
        assert_close(outs[layer], want[layer].detach())
        assert_close(weight_grads[layer], want_grads[layer])
    # Each layer alone gives the same bits, and so does the batched backward run again.
    again = ops.spectral_norm_normalize_backward(grads, weights, us, vs, sigmas, dims)
    for layer, (weight, u, v, grad, dim) in enumerate(zip(weights, us, vs, grads, dims, strict=True)):
        sigma = sigmas[layer]
        assert torch.equal(ops.spectral_norm_normalize_one(weight, u, v, sigma, dim), outs[layer]), f"layer {layer}"
        alone = ops.spectral_norm_normalize_one_backward(grad, weight, u, v, sigma, dim)
        assert torch.equal(alone, weight_grads[layer]), f"gradient of layer {layer}"
        assert torch.equal(again[layer], weight_grads[layer]), f"gradient of layer {layer}, second run"


# Issue 14: a forward's power iteration (a launch per step, or one for W v and sigma without a step,
# after a memset of its counters) and W / sigma of every layer take at most 8 launches for 12 or 24
# layers at n = 1.
@gpu_only
@pytest.mark.parametrize("n_power_iterations, launches", [(0, 2), (1, 2), (2, 3)])
@pytest.mark.parametrize("count", [12, 24])
def test_cuda_spectral_norm_forward_launches(count, n_power_iterations, launches):
    torch.manual_seed(13)
    shapes = [(64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 1, 1)] * (count // 3)
    weights = [torch.randn(shape, device=DEVICE) for shape in shapes]
    us = [torch.nn.functional.normalize(torch.randn(w.shape[0], device=DEVICE), dim=0) for w in weights]
    vs = [torch.nn.functional.normalize(torch.randn(w[0].numel(), device=DEVICE), dim=0) for w in weights]
    dims = [0] * count

    def forward():
        sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims, n_power_iterations, 1e-12)
        return gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, dims)

    forward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    events = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    memsets = [name for name in events if name.startswith("Memset")]
    kernels = [name for name in events if not name.startswith("Memset")]
    assert len(kernels) == launches and all("gan_kernels" in name for name in kernels), events
    assert len(memsets) == 1, events


# ---- minibatch discrimination ------------------------------------------------------------------

# A thread per (row, kernel) keeps up to 8 dims' gradient sums in registers: 5 dims take one thread
# per row, 19 dims three (8, 8 and 3 dims, each recomputing the pairs' distances, only the first
# writing the double backward's dL/dgrad).
MINIBATCH_DISCRIMINATION_DIMS = {"one_chunk": 5, "three_chunks": 19}


def minibatch_discrimination_outputs(fn, m, grad_out, upstream):
    """o, dL/dm, and the double backward's d<dL/dm, upstream>/dm and /dgrad."""
    leaf = m.detach().requires_grad_()
    grad = grad_out.detach().requires_grad_()
    o = fn(leaf)
    (dm,) = torch.autograd.grad(o, leaf, grad, create_graph=True)
    ddm, dgrad = torch.autograd.grad(dm, [leaf, grad], upstream)
    return [o.detach(), dm.detach(), ddm, dgrad]


def assert_minibatch_discrimination_matches_reference(m, grad_out, upstream):
    """Against the reference in m's dtype, or for float32 against the float64 formula: each output
    sums N-1 pair terms made of C-term sums, whose float32 rounding (~1e-7 of the terms' size)
    exceeds atol=1e-6 where terms cancel, for the eager formula in float32 as for ours. float32 is
    then held to being no further from the float64 formula than 4x the float32 eager formula is
    (on the CPU kernel: 1.3x to 1.7x at these shapes)."""
    got = minibatch_discrimination_outputs(gan_kernels.minibatch_discrimination, m, grad_out, upstream)
    want = minibatch_discrimination_outputs(reference.minibatch_discrimination, m, grad_out, upstream)
    exact = minibatch_discrimination_outputs(
        reference.minibatch_discrimination, m.double(), grad_out.double(), upstream.double()
    )
    for index, (a, b, truth) in enumerate(zip(got, want, exact, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {index}"
        if m.dtype == torch.float32:
            ours_error = (a.double() - truth).abs().max()
            eager_error = (b.double() - truth).abs().max()
            assert ours_error <= 4 * eager_error, f"output {index}: {ours_error:.3g} vs eager float32 {eager_error:.3g}"
        else:
            assert_close(a, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dims", list(MINIBATCH_DISCRIMINATION_DIMS))
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_cuda_minibatch_discrimination_paths(layout, dims, dtype):
    # 37 samples: a partial warp of rows per kernel. The kernels read every layout through its strides.
    # Values N(0, 1/C^2) put pairs at L1 distance ~1, where exp(-d) is far from 0.
    torch.manual_seed(19)
    n, kernels, c = 37, 6, MINIBATCH_DISCRIMINATION_DIMS[dims]
    if layout == "contiguous":
        m = torch.randn(n, kernels, c, dtype=dtype, device=DEVICE) / c
    elif layout == "transposed":
        m = (torch.randn(c, n, kernels, dtype=dtype, device=DEVICE) / c).permute(1, 2, 0)
    else:
        m = (torch.randn(n, 2 * kernels, 2 * c, dtype=dtype, device=DEVICE) / c)[:, ::2, ::2]
    grad_out = torch.randn(kernels, n, dtype=dtype, device=DEVICE).t()  # a strided dL/do too
    upstream = torch.randn(n, kernels, c, dtype=dtype, device=DEVICE)
    assert_minibatch_discrimination_matches_reference(m, grad_out, upstream)


@gpu_only
def test_cuda_minibatch_discrimination_grid_stride_past_the_block_cap():
    # 128 threads a block, one per (row, kernel): 2 samples of 2^26 + 3 kernels are 2^27 + 6 tasks,
    # past 2^20 blocks. bfloat16 keeps each tensor at 256 MB; the first blocks and the loop's last
    # are compared (a kernel's outputs depend on its own column of m only).
    torch.manual_seed(20)
    kernels = 64 * MAX_BLOCKS + 3
    m = torch.randn(2, kernels, 1, dtype=torch.bfloat16, device=DEVICE)
    grad_out = torch.randn(2, kernels, dtype=torch.bfloat16, device=DEVICE)
    upstream = torch.randn_like(m)
    got = minibatch_discrimination_outputs(gan_kernels.minibatch_discrimination, m, grad_out, upstream)
    for part in (slice(0, 1000), slice(kernels - 1000, None)):
        want = minibatch_discrimination_outputs(
            reference.minibatch_discrimination, m[:, part], grad_out[:, part], upstream[:, part]
        )
        for a, b in zip(got, want, strict=True):
            assert_close(a[:, part], b)


# ---- every op: determinism, the current stream, CUDA graphs ------------------------------------


def spectral_normalised(shape):
    """W -> W / sigma after one power iteration from the same u, v on every call."""
    torch.manual_seed(11)
    u0 = torch.nn.functional.normalize(torch.randn(shape[0], device=DEVICE), dim=0)
    v0 = torch.nn.functional.normalize(torch.randn(math.prod(shape[1:]), device=DEVICE), dim=0)

    def normalised(w):
        u, v = u0.clone(), v0.clone()
        sigmas = gan_kernels.spectral_norm_power_iteration_([w.detach()], [u], [v], [0], 1, 1e-12)
        return gan_kernels.spectral_norm_normalize([w], [u], [v], sigmas, [0])[0]

    return normalised


# Each op as a function of one input, at shapes that reach its multi-chunk, many-tile or
# multi-block paths: (input shape, maker of the function).
PROGRAMS = {
    "pixel_norm": ((4, 64, 8, 8), lambda shape: gan_kernels.pixel_norm),
    "bias_act": (
        (4, 32, 8, 8),
        lambda shape: functools.partial(
            gan_kernels.bias_act, b=torch.randn(shape[1], device=DEVICE), act="swish", clamp=1.5
        ),
    ),
    "penalty_c1": ((4, 3, 64, 64), lambda shape: functools.partial(gan_kernels.per_sample_penalty, center=1.0)),
    "penalty_c0": ((4, 3, 64, 64), lambda shape: functools.partial(gan_kernels.per_sample_penalty, center=0.0)),
    "minibatch_std": ((8, 512, 16, 16), lambda shape: functools.partial(gan_kernels.minibatch_std, group_size=4)),
    "spectral_norm": ((512, 512, 3, 3), spectral_normalised),
    # N(0, 1/C^2) values: pairs at L1 distance ~1, where the similarities are far from 0
    "minibatch_discrimination": ((64, 20, 19), lambda shape: lambda m: gan_kernels.minibatch_discrimination(m / 19)),
}


def program_inputs(name, seed):
    """The op, an input, and the weights of the backward and double backward."""
    shape, make = PROGRAMS[name]
    torch.manual_seed(seed)
    fn = make(shape)
    x = torch.randn(shape, device=DEVICE)
    y = fn(x)
    return fn, x, torch.randn_like(y), torch.randn_like(x)


def forward_backward_double(fn, x, grad_out, upstream):
    """y = fn(x), dx = dy/dx^T grad_out, and d<dx, upstream>/dx: forward, backward, double backward."""
    leaf = x.detach().requires_grad_()
    y = fn(leaf)
    (dx,) = torch.autograd.grad(y, leaf, grad_out, create_graph=True)
    (ddx,) = torch.autograd.grad(dx, leaf, upstream)
    return [y.detach(), dx.detach(), ddx]


def assert_all_equal(got, want):
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), f"output {index} (forward, backward, double backward) differs"


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_cuda_forward_backward_double_backward_are_bitwise_deterministic(name):
    fn, x, grad_out, upstream = program_inputs(name, 12)
    first = forward_backward_double(fn, x, grad_out, upstream)
    for _ in range(2):
        assert_all_equal(forward_backward_double(fn, x, grad_out, upstream), first)


@pytest.mark.skipif(not CUDA_EMULATION, reason="the order of the threads is the CUDA emulation's")
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_cuda_results_do_not_depend_on_the_order_of_threads_or_blocks(name, monkeypatch):
    # The emulation runs a block's threads from the first to the last between barriers, and the blocks
    # in index order; reversed, a kernel with a race (a thread reads what another writes, with no
    # barrier between) or one that counts on the order its blocks start in would differ.
    fn, x, grad_out, upstream = program_inputs(name, 19)
    first_to_last = forward_backward_double(fn, x, grad_out, upstream)
    monkeypatch.setenv("GAN_KERNELS_EMULATION_ORDER", "reverse")
    assert_all_equal(forward_backward_double(fn, x, grad_out, upstream), first_to_last)


@gpu_only
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_cuda_kernels_run_on_the_current_stream(name):
    fn, x, grad_out, upstream = program_inputs(name, 13)
    expected = forward_backward_double(fn, x, grad_out, upstream)
    late = torch.full_like(x, float("nan"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # The input is written only after a long sleep on this stream: a kernel launched on any
        # other stream would read the NaNs.
        torch.cuda._sleep(200_000_000)
        late.copy_(x)
        got = forward_backward_double(fn, late, grad_out, upstream)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_all_equal(got, expected)


@gpu_only
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_cuda_graph_capture_and_replay_equal_eager(name):
    fn, x, grad_out, upstream = program_inputs(name, 14)
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs recommends
        forward_backward_double(fn, static_x, grad_out, upstream)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward_backward_double(fn, static_x, grad_out, upstream)
    for seed in (15, 16):  # replays on new values must follow them
        torch.manual_seed(seed)
        new_x = torch.randn_like(x)
        static_x.copy_(new_x)
        graph.replay()
        assert_all_equal(static_out, forward_backward_double(fn, new_x, grad_out, upstream))


class SmallD(torch.nn.Module):
    """A StyleGAN2-flavoured D on 16x16 images built from our layers: bias_act in every layer,
    minibatch stddev, and (through R1) the penalty and every op's double backward."""

    def __init__(self):
        super().__init__()
        self.from_rgb = EqualizedConv2d(3, 32, 1, activation="lrelu", conv_clamp=256)
        self.conv0 = EqualizedConv2d(32, 64, 3, activation="lrelu", conv_clamp=256, stride=2)
        self.mbstd = MinibatchStd(4, 1)
        self.conv1 = EqualizedConv2d(65, 64, 3, activation="lrelu", conv_clamp=256)
        self.fc = EqualizedLinear(64 * 8 * 8, 64, activation="lrelu")
        self.out = EqualizedLinear(64, 1)

    def forward(self, x):
        x = self.conv1(self.mbstd(self.conv0(self.from_rgb(x))))
        return self.out(self.fc(gan_kernels.pixel_norm(x).flatten(1)))


def r1_step(d, real):
    """Non-saturating loss on reals with R1 (gamma 10): the regularised D step's gradients."""
    x = real.detach().requires_grad_()
    logits = d(x)
    r1 = gan_kernels.gradient_penalty(logits, x, center=0.0)
    loss = torch.nn.functional.softplus(-logits).mean() + 5.0 * r1.mean()
    return torch.autograd.grad(loss, list(d.parameters()))


@gpu_only
def test_cuda_graph_of_a_whole_r1_discriminator_step():
    # tests/conftest.py's deterministic full-precision convolutions and products: the captured and the
    # eager step differ only by the order of float sums, if cuDNN or cuBLAS pick other algorithms in
    # the capture.
    torch.manual_seed(17)
    d = SmallD().to(DEVICE)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    static_real = torch.randn(8, 3, 16, 16, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            r1_step(d, static_real)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grads = r1_step(d, static_real)
    torch.manual_seed(18)
    real = torch.randn_like(static_real)
    static_real.copy_(real)
    graph.replay()
    eager = r1_step(d, real)
    for got, want in zip(static_grads, eager, strict=True):
        assert want.abs().sum() > 0
        assert_close(got, want)
