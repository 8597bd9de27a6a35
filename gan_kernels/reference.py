"""Pure-PyTorch formulas of every op: the spec, the fallback when no compiled kernel fits, and
the oracle the tests compare against. fp16/bf16 inputs are computed in float32 and returned in
their own dtype, as the kernels do."""

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(x):
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def pixel_norm(x, dim=1, eps=1e-8):
    """ProGAN's PixelNorm, StyleGAN's ``normalize_2nd_moment``: ``x * rsqrt(mean(x^2, dim) + eps)``."""
    xc = x.to(_compute_dtype(x))
    return (xc * (xc.square().mean(dim=dim, keepdim=True) + eps).rsqrt()).to(x.dtype)


# Rows are summed in chunks of this many elements (as the CPU kernel does), then over the chunks.
# torch's sum splits one long row across threads, so its last bits would depend on the thread count;
# a chunk is below ATen's parallel grain and each chunk is summed by one thread.
ROW_CHUNK = 16384


def row_sums(rows):
    """Per-row sums of a [n, m] tensor, the same bits whatever the number of threads. Differentiable."""
    n, m = rows.shape
    if m <= ROW_CHUNK:
        return rows.sum(1)
    chunks = -(-m // ROW_CHUNK)
    padded = torch.nn.functional.pad(rows, (0, chunks * ROW_CHUNK - m))
    return padded.reshape(n, chunks, ROW_CHUNK).sum(2).sum(1)


def total_sum(t):
    """The sum of all of ``t``'s elements, the same bits whatever the number of threads (torch's CPU
    sum, and MKL's dot, split a long tensor by the thread count; a GPU's sum has no thread count to
    depend on, and is left one reduction, without row_sums' padded copy). Differentiable."""
    return row_sums(t.reshape(1, -1))[0] if t.device.type == "cpu" else t.sum()


def per_sample_penalty(g, center=1.0):
    """Gradient penalty per sample of ``g`` [N, ...]: ``(||g_i||_2 - center)^2`` over all non-batch
    dims, and exactly ``sum(g_i^2)`` (no sqrt) for ``center == 0``.

    The norm is taken only where ``sum(g_i^2) != 0``; a zero row gets the constant ``center^2``, so
    every derivative there is 0 instead of the NaN that sqrt (or ``torch.linalg.vector_norm``'s double
    backward) gives at 0. A NaN row stays NaN. fp16/bf16 give float32 penalties (their sums).
    """
    compute = _compute_dtype(g)
    rows = g.flatten(1) if g.dim() > 1 else g.unsqueeze(1)
    sum_squares = row_sums(rows.to(compute).square())
    if center == 0:
        return sum_squares
    nonzero = sum_squares != 0
    norm = sum_squares.where(nonzero, 1.0).sqrt()
    return torch.where(nonzero, (norm - center).square(), float(center) ** 2)


def gradient_penalty(outputs, inputs, center=1.0):
    """Per-sample penalty of ``g = d(sum(outputs))/d(inputs)``, differentiable (create_graph)."""
    (g,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return per_sample_penalty(g, center)


# --- spectral norm -------------------------------------------------------------------------------
# torch.nn.utils.parametrizations.spectral_norm, batched over lists of weights. A weight is seen as
# the matrix with `dim` moved first and the other dims flattened, as PyTorch's _SpectralNorm does.


def spectral_weight_matrix(weight, dim):
    """``weight`` as PyTorch's spectral norm sees it: ``dim`` first, the rest flattened."""
    if dim != 0:
        weight = weight.permute(dim, *(d for d in range(weight.dim()) if d != dim))
    return weight.flatten(1)


def spectral_norm_power_iteration_(weights, us, vs, dims, n_power_iterations, eps):
    """Updates every ``us[i]``, ``vs[i]`` in place by ``n_power_iterations`` steps of
    ``u = normalize(W v)``, ``v = normalize(W^T u)`` (``normalize(x) = x / max(||x||, eps)``) and
    returns the sigmas ``u . (W v)`` as one 1-D tensor. Not differentiable: u, v and sigma are
    constants for autograd, as in PyTorch; spectral_norm_normalize carries sigma's derivative."""
    sigmas = []
    for weight, u, v, dim in zip(weights, us, vs, dims):
        with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            compute = _compute_dtype(weight)
            matrix = spectral_weight_matrix(weight, dim).to(compute)
            for _ in range(n_power_iterations):
                # Stored in the buffers' dtype after each half step, as the kernels do.
                u.copy_(torch.nn.functional.normalize(torch.mv(matrix, v.to(compute)), dim=0, eps=eps))
                v.copy_(torch.nn.functional.normalize(torch.mv(matrix.H, u.to(compute)), dim=0, eps=eps))
            sigmas.append(torch.vdot(u.to(compute), torch.mv(matrix, v.to(compute))).to(weight.dtype))
    if not sigmas:
        return torch.empty(0)
    return torch.stack(sigmas)


def spectral_norm_normalize(weights, us, vs, dims):
    """``W / sigma`` with ``sigma = u . (W v)`` for each weight, differentiable in W (u, v constant):
    PyTorch's _SpectralNorm.forward, whose backward is ``(G - <G, W/sigma> u v^T) / sigma``."""
    out = []
    for weight, u, v, dim in zip(weights, us, vs, dims):
        with torch.autocast(weight.device.type, enabled=False):
            compute = _compute_dtype(weight)
            wc = weight.to(compute)
            sigma = torch.vdot(u.to(compute), torch.mv(spectral_weight_matrix(wc, dim), v.to(compute)))
            if compute != weight.dtype:
                # sigma takes the weight's dtype (as the power iteration returns it) in value
                # only: its derivative stays unrounded, as in the kernels.
                sigma = sigma + (sigma.to(weight.dtype).to(compute) - sigma).detach()
            out.append((wc / sigma).to(weight.dtype))
    return out


def minibatch_std(x, group_size=4, num_channels=1):
    """StyleGAN2's ``MinibatchStdLayer``: append F = num_channels channels holding, for each group of
    G = min(group_size, N) samples (sample n is in group n % (N/G)), the mean over each feature's
    C/F channels and all pixels of the group's biased standard deviation sqrt(var + 1e-8)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    f = num_channels
    if x.numel() == 0:  # the reshapes below cannot infer -1 from no elements
        return torch.cat([x, x.new_zeros(n, f, h, w)], dim=1)
    y = x.to(_compute_dtype(x)).reshape(g, -1, f, c // f, h, w)
    y = y - y.mean(dim=0)
    y = y.square().mean(dim=0)
    y = (y + 1e-8).sqrt()
    y = y.mean(dim=[2, 3, 4])
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # channels_last in, channels_last out, as the ops: torch.cat along C gives a contiguous output
        # for y (which it takes as contiguous when F = 1), so join the channels of the NHWC views.
        return torch.cat([x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)], dim=3).permute(0, 3, 1, 2)
    return torch.cat([x, y], dim=1)


# --- minibatch discrimination (Salimans et al. 2016) ------------------------------------------------


def off_diagonal(pairs):
    """[N, N, ...] -> [N, N-1, ...]: row i keeps every column j != i in ascending order. Sliced out,
    not masked: a NaN on the diagonal (a NaN sample compared with itself) would reach the gradient
    through any mask (0 * NaN), and slicing gives its gradient a plain 0."""
    n = pairs.shape[0]
    others = max(n - 1, 0)
    # Flattened, the diagonal is every (N+1)-th element from 0: drop it by a shifted reshape.
    return pairs.flatten(0, 1)[1:].unflatten(0, (others, n + 1))[:, :n].reshape(n, others, *pairs.shape[2:])


def differences_to_others(t):
    """``t[i] - t[j]`` for every sample i and every other sample j: [N, ...] -> [N, N-1, ...]."""
    return off_diagonal(t.unsqueeze(1) - t.unsqueeze(0))


def minibatch_discrimination(m):
    """Minibatch discrimination's pairwise part: ``m`` [N, B, C] -> ``o`` [N, B] with
    ``o[i, b] = sum_{j != i} exp(-sum_c |m[i, b, c] - m[j, b, c]|)``: 0 for a batch of one.
    At a tie the derivative of |d| is sign(0) = 0, as torch.abs's gradient."""
    distances = differences_to_others(m.to(_compute_dtype(m))).abs().sum(dim=3)  # [N, N-1, B]
    return torch.exp(-distances).sum(dim=1).to(m.dtype)


# --- bias_act (StyleGAN's bias_act) --------------------------------------------------------------

from . import _activations  # noqa: E402

# act: its formula, a function of (v, alpha), as StyleGAN's bias_act.activation_funcs.
_ACTIVATION_FORMULAS = {
    "linear": lambda v, alpha: v,
    "relu": lambda v, alpha: torch.nn.functional.relu(v),
    "lrelu": lambda v, alpha: torch.nn.functional.leaky_relu(v, alpha),
    "tanh": lambda v, alpha: torch.tanh(v),
    "sigmoid": lambda v, alpha: torch.sigmoid(v),
    "elu": lambda v, alpha: torch.nn.functional.elu(v),
    "selu": lambda v, alpha: torch.nn.functional.selu(v),
    "softplus": lambda v, alpha: torch.nn.functional.softplus(v, threshold=_activations.SOFTPLUS_THRESHOLD),
    "swish": lambda v, alpha: torch.sigmoid(v) * v,
}
# act: (formula, default alpha, default gain); names, order and defaults from the one table.
BIAS_ACT_ACTIVATIONS = {
    a.name: (_ACTIVATION_FORMULAS[a.name], a.default_alpha, a.default_gain) for a in _activations.ACTIVATIONS
}


def bias_act_defaults(act, alpha=None, gain=None):
    """StyleGAN's defaults: alpha 0.2 for lrelu, gain sqrt(2) for relu, lrelu and swish, else 0 and 1."""
    _, default_alpha, default_gain = BIAS_ACT_ACTIVATIONS[act]
    return float(default_alpha if alpha is None else alpha), float(default_gain if gain is None else gain)


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, scale=1.0):
    """StyleGAN's ``bias_act``: ``clamp(act(x * scale + b) * gain, -clamp, clamp)``, b broadcast along ``dim``."""
    func = BIAS_ACT_ACTIVATIONS[act][0]
    alpha, gain = bias_act_defaults(act, alpha, gain)
    v = x.to(_compute_dtype(x))
    if scale != 1:
        v = v * scale
    if b is not None:
        v = v + b.to(v.dtype).reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    y = func(v, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    if act != "linear" or clamp is not None:
        y = nan_visible(y, v)
    return y.to(x.dtype)


def nan_visible(y, v):
    """``y``, except that every derivative with respect to ``v`` is NaN wherever ``v`` is NaN, whatever
    torch's backward kernels do there on the CPU at hand (relu's and elu's pass the gradient at NaN
    on some instruction sets): a diverged sample must stay visible in a gradient penalty."""
    is_nan = v.isnan()
    only_nan = torch.where(is_nan, v, 0.0)  # 0 elsewhere, so its derivative is exactly 0 there
    # exp: each of its derivatives is exp again, NaN at NaN (a square's second derivative is 2).
    return torch.where(is_nan, only_nan.exp(), y)
