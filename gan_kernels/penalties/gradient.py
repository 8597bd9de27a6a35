"""Gradient penalties on a discriminator: the generic ``gradient_penalty(outputs, inputs)`` and
one-line helpers for WGAN-GP, R1, R2, DRAGAN and the zero-centred GP.

Every helper takes plain tensors, detaches them and enables gradients on its own copy, calls
``D(x, *d_args, **d_kwargs)`` (D may return any shape; outputs are summed per sample), and returns
the weighted scalar loss to add to the discriminator loss. ``d_args`` that is not a tuple or list is
one argument (``d_args=labels``), as ``torch.func.functional_call`` takes its ``args``.
"""

from collections.abc import Mapping

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import _checks
from ..ops.gradient_penalty import per_sample_penalty


def gradient_penalty(outputs, inputs, center=1.0, scaler=None):
    """Per-sample penalty ``(||g_i||_2 - center)^2`` of ``g = d(sum(outputs))/d(inputs)`` -> [N];
    ``sum(g_i^2)`` exactly for ``center == 0``. Differentiable (``create_graph=True``), so adding it
    to a loss trains D through the double backward.

    Works on outputs the caller already has (StyleGAN's R1 reuses the real logits): ``inputs`` must
    require grad and ``outputs`` must have been computed from it.

    ``scaler``: a ``torch.amp.GradScaler`` whose scaled loss the caller backpropagates. Following
    PyTorch's AMP gradient-penalty recipe, the gradient is taken of the *scaled* outputs (so fp16
    gradients do not underflow) and unscaled before the penalty.
    """
    _checks.check_floating(outputs, "outputs")
    _checks.check_floating(inputs, "inputs")
    _checks.grad_enabled("the gradient penalty")
    if inputs.dim() == 0:
        raise ValueError("inputs must have a batch dimension, got a 0-dimensional tensor")
    if not inputs.requires_grad:
        raise ValueError("inputs does not require grad: call inputs.requires_grad_() before computing outputs from it")
    if not outputs.requires_grad:
        raise ValueError("outputs does not depend on inputs (outputs.requires_grad is False)")
    # Summed in at least float32: fp16 logits of a large batch can overflow their own sum.
    total = outputs.sum(dtype=torch.promote_types(outputs.dtype, torch.float32))
    g = scaled_input_gradient(total, inputs, scaler)
    if g is None:
        raise ValueError("outputs does not depend on inputs (autograd found no path from inputs to outputs)")
    return per_sample_penalty(g, center)


def scaled_input_gradient(total, inputs, scaler):
    """``d(total)/d(inputs)`` with ``create_graph=True`` (None where total does not depend on inputs);
    with a ``torch.amp.GradScaler``, PyTorch's AMP gradient-penalty recipe: the gradient of the scaled
    total, so that fp16 gradients do not underflow, unscaled in at least float32 (a float16 g comes
    back as float32)."""
    if scaler is None:
        return torch.autograd.grad(total, inputs, create_graph=True, allow_unused=True)[0]
    # Another object failed at its first method call ("'int' object has no attribute 'get_scale'").
    _checks.grad_scaler(scaler)
    # A scale of 0 leaves no gradient to unscale (it divided by zero), and an infinite or NaN one a
    # NaN penalty: refused before the gradient is taken. A disabled scaler's scale is 1.0.
    scale = _checks.finite(scaler.get_scale(), "scaler.get_scale()")
    if scale == 0:
        raise ValueError(f"scaler.get_scale() must be nonzero, got {scale}: the scaled gradient cannot be unscaled")
    (g,) = torch.autograd.grad(scaler.scale(total), inputs, create_graph=True, allow_unused=True)
    if g is None:
        return None
    # Unscaled in at least float32: a float16 g (of float16 inputs) unscaled in float16 underflowed
    # again where the scale had kept it (1e-8 became 0), and the penalty was the unscaled one.
    return g.to(torch.promote_types(g.dtype, torch.float32)) * (1.0 / scale)


def _check_samples(x, arg):
    _checks.check_floating(x, arg)
    if x.dim() == 0:
        raise ValueError(f"{arg} must have a batch dimension, got a 0-dimensional tensor")


def _check_pair(real, fake):
    _check_samples(real, "real")
    _check_samples(fake, "fake")
    if fake.device != real.device:
        raise ValueError(f"fake is on {fake.device} but real is on {real.device}")
    if fake.dtype != real.dtype:
        raise TypeError(f"fake has dtype {fake.dtype} but real has dtype {real.dtype}")
    if fake.shape != real.shape:
        raise ValueError(f"fake has shape {list(fake.shape)} but real has shape {list(real.shape)}")


def _per_sample_uniform(x, generator):
    """U(0,1) per sample, broadcastable against x."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return torch.rand(shape, dtype=x.dtype, device=x.device, generator=_checks.generator(generator))


def _check_data_parallel(D):
    if isinstance(D, DistributedDataParallel) and D.static_graph:
        raise ValueError(
            "D is a DistributedDataParallel with static_graph=True: it all-reduces when the penalty takes "
            "its input gradient with torch.autograd.grad, before the parameter gradients exist, so every rank "
            "keeps different gradients; wrap D with static_graph=False (the default)"
        )


def _weighted_penalty_at(D, x, samples_arg, center, weight, d_args, d_kwargs, scaler):
    """``weight * mean_i penalty_i`` at ``x``, plus ``0 * outputs`` (StyleGAN2's ``real_logits * 0 +
    loss_Dr1``). A penalty on the input gradient does not depend on every parameter (not on D's last
    bias); DDP's backward waits for a gradient of every parameter of the forward, so a penalty
    backpropagated on its own (lazy regularisation) would leave gradients unreduced and fail at the
    next forward. Added in one process too, so that those parameters get zeros there as under DDP
    (momentum and Adam's state then move them in both, as in StyleGAN2), not None in one and zeros in
    the other."""
    if not callable(D):
        raise TypeError(f"D must be callable (a module or function), got {type(D).__name__}")
    _check_data_parallel(D)
    _checks.has_samples(x, samples_arg)  # x has the batch of the user's samples_arg
    # As torch.func.functional_call's args: anything but a tuple or list is one argument. A tensor of
    # labels was unpacked into one argument per sample.
    if not isinstance(d_args, (tuple, list)):
        d_args = (d_args,)
    if d_kwargs is not None and not isinstance(d_kwargs, Mapping):
        raise TypeError(f"d_kwargs must be a mapping of D's keyword arguments, got {type(d_kwargs).__name__}")
    # An inference tensor (samples made under torch.inference_mode) cannot require grad: a copy can.
    x = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
    outputs = D(x, *d_args, **(d_kwargs or {}))
    # A D that also returns its features ((logits, features), a dict) was refused as "outputs must be
    # a torch.Tensor", naming an argument the caller never passed; which element holds the logits is
    # the caller's to say.
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"D must return its outputs (the logits) as a tensor, got {type(outputs).__name__}: for a D "
            "that returns more, pass a function (or module) that returns the logits alone"
        )
    penalty = weight * gradient_penalty(outputs, x, center, scaler).mean()
    return penalty + (outputs * 0).sum(dtype=penalty.dtype)


def interpolates(real, fake, generator=None):
    """``eps * real + (1 - eps) * fake`` with ``eps ~ U(0,1)`` per sample, detached."""
    _check_pair(real, fake)
    eps = _per_sample_uniform(real, generator)
    return (eps * real.detach() + (1 - eps) * fake.detach()).detach()


def wgan_gp(D, real, fake, weight=10.0, *, d_args=(), d_kwargs=None, scaler=None, generator=None):
    """WGAN-GP (Gulrajani et al. 2017): ``weight * mean_i (||g_i|| - 1)^2`` on per-sample
    interpolates ``eps * real + (1 - eps) * fake``, ``eps ~ U(0,1)``."""
    weight = _checks.nonnegative(weight, "weight")
    x = interpolates(real, fake, generator)
    return _weighted_penalty_at(D, x, "real", 1.0, weight, d_args, d_kwargs, scaler)


def r1(D, real, gamma, *, d_args=(), d_kwargs=None, scaler=None):
    """R1 (Mescheder et al. 2018, StyleGAN2): ``gamma / 2 * mean_i sum(g_i^2)`` on real samples."""
    gamma = _checks.nonnegative(gamma, "gamma")
    _check_samples(real, "real")
    return _weighted_penalty_at(D, real, "real", 0.0, gamma / 2, d_args, d_kwargs, scaler)


def r2(D, fake, gamma, *, d_args=(), d_kwargs=None, scaler=None):
    """R2: R1's ``gamma / 2 * mean_i sum(g_i^2)`` on generated samples."""
    gamma = _checks.nonnegative(gamma, "gamma")
    _check_samples(fake, "fake")
    return _weighted_penalty_at(D, fake, "fake", 0.0, gamma / 2, d_args, d_kwargs, scaler)


def dragan_points(real, perturbation=0.5, std=None, generator=None):
    """DRAGAN's points around the real data, detached:

        x = real + alpha * perturbation * std * U,   alpha ~ U(0,1) per sample, U ~ U(0,1) per element,

    the perturbation of the authors' code (``X + 0.5 * X.std() * np.random.random(X.shape)``, then a
    per-sample interpolation between X and the perturbed X). ``std=None``: the population std of
    ``real`` over the whole batch. Under data parallelism each rank holds a slice of the batch: pass
    ``std=gan_kernels.distributed.global_std(real)`` to perturb by the whole batch's std, as one
    process would. A tensor ``std`` is used as it is, without reading its value (no device sync)."""
    perturbation = _checks.nonnegative(perturbation, "perturbation")
    _check_samples(real, "real")
    r = real.detach()
    if std is None:
        std = r.std(correction=0)
    elif not isinstance(std, torch.Tensor):
        std = _checks.nonnegative(std, "std")
    elif std.numel() != 1:
        raise ValueError(f"std must be a number or a one-element tensor, got a tensor of shape {list(std.shape)}")
    elif std.dtype == torch.bool or std.is_complex():
        raise TypeError(f"std must be a real number or a one-element real tensor, got dtype {std.dtype}")
    else:
        # 0-d, so that it neither broadcasts the points to more dims ([1, 1, 1, 1, 1]) nor promotes them
        # to its dtype (a float64 [1] against float32 samples), and detached, as the points are.
        std = std.detach().reshape(())
    noise = torch.rand(r.shape, dtype=r.dtype, device=r.device, generator=_checks.generator(generator))
    alpha = _per_sample_uniform(r, generator)
    return r + alpha * (perturbation * std * noise)


def dragan(D, real, weight=10.0, *, perturbation=0.5, std=None, d_args=(), d_kwargs=None, scaler=None, generator=None):
    """DRAGAN (Kodali et al. 2017): ``weight * mean_i (||g_i|| - 1)^2`` at :func:`dragan_points`
    ``(real, perturbation, std, generator)``: ``real + alpha * perturbation * std * U``,
    ``alpha ~ U(0,1)`` per sample, ``U ~ U(0,1)`` per element, std the population std of ``real``
    over the whole batch unless given."""
    weight = _checks.nonnegative(weight, "weight")
    x = dragan_points(real, perturbation, std, generator)
    return _weighted_penalty_at(D, x, "real", 1.0, weight, d_args, d_kwargs, scaler)


def zero_centered_gp(D, real, fake, weight, *, d_args=(), d_kwargs=None, scaler=None, generator=None):
    """Zero-centred GP (Thanh-Tung et al. 2019): ``weight * mean_i sum(g_i^2)`` on per-sample
    interpolates ``eps * real + (1 - eps) * fake``, ``eps ~ U(0,1)``."""
    weight = _checks.nonnegative(weight, "weight")
    x = interpolates(real, fake, generator)
    return _weighted_penalty_at(D, x, "real", 0.0, weight, d_args, d_kwargs, scaler)
