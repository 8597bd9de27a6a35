"""Spectral normalisation as a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``, and a
grouping that runs the power iterations of every such layer of a model as one batched op call."""

import math
import threading

import torch
from torch.nn.utils import parametrize

from .. import _checks, reference
from ..ops.spectral_norm import (
    check_weight_dtype,
    normalize_checked,
    spectral_norm_one_,
    spectral_norm_power_iteration_,
)

# Power-iteration steps at registration, as PyTorch's _SpectralNorm.
WARMUP_ITERATIONS = 15

_CONV_TRANSPOSE = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


class SpectralNorm(torch.nn.Module):
    """The parametrization ``W -> W / sigma(W)`` registered by :func:`spectral_norm`: PyTorch's
    ``_SpectralNorm`` with the same buffers (``_u``, ``_v``), numerics and behaviour, computed by the
    gan_kernels ops. ``sigma`` holds the sigma used by the latest forward (a detached
    scalar tensor, None before the first forward and for 1-D weights)."""

    def __init__(self, weight, n_power_iterations=1, dim=0, eps=1e-12):
        super().__init__()
        _checks.tensor(weight, "weight")
        self.n_power_iterations = _checks.count(n_power_iterations, "n_power_iterations")
        self.eps = _checks.finite(eps, "eps")
        self.dim = _checks.wrap_dim(dim, weight, "dim")
        self.sigma = None
        # Set while the layer belongs to a SpectralNormGroup: the BatchedResults where that group
        # leaves the W / sigma it computed for this layer in the model forward now running.
        self.batched = None
        if weight.ndim > 1:
            rows = weight.shape[self.dim]
            cols = math.prod(size for d, size in enumerate(weight.shape) if d != self.dim)
            # Same draws, in the same order, as PyTorch's, so a seeded registration gives the same u, v.
            u = weight.new_empty(rows).normal_(0, 1)
            v = weight.new_empty(cols).normal_(0, 1)
            self.register_buffer("_u", torch.nn.functional.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", torch.nn.functional.normalize(v, dim=0, eps=self.eps))
            spectral_norm_power_iteration_(
                [weight.detach()], [self._u], [self._v], [self.dim], WARMUP_ITERATIONS, self.eps
            )

    def power_iterations(self):
        """Steps the next forward runs: n_power_iterations in training, none in eval."""
        return self.n_power_iterations if self.training else 0

    def forward(self, weight):
        if weight.ndim == 1:
            # As PyTorch: a vector's spectral norm is its 2-norm, no power iteration needed.
            return torch.nn.functional.normalize(weight, dim=0, eps=self.eps)
        if self.batched is not None:
            found = self.batched.get(self, weight)
            if found is not None:
                normalized, self.sigma = found
                return normalized
            # Used again (or outside the group's forward): iterate from the u, v of its last use.
            self.batched.commit()
        normalized, self.sigma = spectral_norm_one_(
            weight, self._u, self._v, self.dim, self.power_iterations(), self.eps
        )
        return normalized

    def right_inverse(self, value):
        return value

    def extra_repr(self):
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"


def _old_solve_v(weight_orig, weight, u, dim):
    """The ``v`` a checkpoint of torch.nn.utils.spectral_norm before PyTorch 1.1 implies: it saved
    ``weight_orig``, ``u`` and the normalised ``weight`` but no ``v``. As PyTorch's own loader
    (SpectralNormLoadStateDictPreHook), solve ``W_orig x = u`` and scale x so that
    ``u . (W_orig v) = sigma``, the sigma with ``weight = W_orig / sigma``."""
    # In float64 (complex128 for complex): pinv has no fp16/bf16 kernel, and this runs once per load.
    compute = torch.promote_types(weight_orig.dtype, torch.float64)
    matrix = reference.spectral_weight_matrix(weight_orig.to(compute), dim)
    u_c, w_orig, w = u.to(compute), weight_orig.to(compute), weight.to(compute)
    # PyTorch takes mean(weight_orig / weight), which divides by every entry of the normalised
    # weight; the least-squares ratio is the same sigma without dividing by entries that may be 0.
    sigma = torch.vdot(w_orig.flatten(), w_orig.flatten()) / torch.vdot(w.flatten(), w_orig.flatten())
    # pinv(W) instead of PyTorch's pinv(W^T W) W^T: the same least-squares solution, without
    # squaring W's condition number.
    x = torch.linalg.pinv(matrix) @ u_c
    return (x * (sigma / torch.vdot(u_c, matrix @ x))).to(u.dtype)


class _OldFormatLoader:
    """Loads checkpoints of the older torch.nn.utils.spectral_norm: renames its keys (``weight_orig``,
    ``weight_u``, ``weight_v``) to the parametrization's, whose power iteration stores the same u, v.
    A checkpoint from before PyTorch 1.1 has no ``weight_v`` but the normalised ``weight``; v is then
    recomputed from it, as PyTorch's own loader does.

    A class at module level, not a closure: the hook stays on the module after
    ``remove_parametrizations``, and a closure made the plain layer left behind unpicklable
    (``torch.save`` of the whole model failed, where it works after PyTorch's spectral norm)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        name = self.name
        normalisation = _spectral_norm_of(module, name)
        if normalisation is None or prefix + f"{name}_orig" not in state_dict:
            # Once the spectral norm is removed the layer is a plain one again, and loads such a
            # checkpoint as torch's does (its keys unexpected) rather than renaming them.
            return
        normalised_key = prefix + name
        before_1_1 = prefix + f"{name}_v" not in state_dict and prefix + f"{name}_u" in state_dict
        if before_1_1 and normalised_key in state_dict:
            with torch.no_grad():
                state_dict[prefix + f"{name}_v"] = _old_solve_v(
                    state_dict[prefix + f"{name}_orig"],
                    state_dict.pop(normalised_key),
                    state_dict[prefix + f"{name}_u"],
                    normalisation.dim,
                )
        renames = {
            f"{name}_orig": f"parametrizations.{name}.original",
            f"{name}_u": f"parametrizations.{name}.0._u",
            f"{name}_v": f"parametrizations.{name}.0._v",
        }
        for old, new in renames.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)


def _spectral_norm_of(module, name):
    """The gan_kernels spectral norm that is the first parametrization of ``module.<name>``, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    first = module.parametrizations[name][0]
    return first if isinstance(first, SpectralNorm) else None


def spectral_norm(module, name="weight", n_power_iterations=1, eps=1e-12, dim=None):
    """Drop-in for ``torch.nn.utils.parametrizations.spectral_norm``: same arguments, state-dict keys
    (``parametrizations.<name>.original``, ``parametrizations.<name>.0._u`` / ``._v``), numerics and
    behaviour (15 warm-up iterations, power iteration only in training, ``dim=1`` for ConvTranspose,
    ``remove_parametrizations`` works, power iteration in the weight's dtype under autocast, complex
    weights, applying it twice to one weight). Also loads checkpoints of the older
    ``torch.nn.utils.spectral_norm``, including those from before PyTorch 1.1. Returns ``module``."""
    _checks.module(module, "module")
    if hasattr(module, f"{name}_orig") and not parametrize.is_parametrized(module, name):
        # The older spectral_norm's forward hook owns this attribute, so no parametrization can wrap
        # it (PyTorch's raises too, saying the module has no parameter of that name).
        raise ValueError(
            f"{type(module).__name__}.{name} is already normalised by the older torch.nn.utils.spectral_norm; "
            "call torch.nn.utils.remove_spectral_norm first"
        )
    # Read once: on an already parametrized weight each read runs its parametrizations (a power
    # iteration in training), and PyTorch's reads it once too.
    weight = getattr(module, name, None) if isinstance(name, str) else None
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"name={name!r} is not a parameter or buffer of {type(module).__name__}")
    check_weight_dtype(weight, f"{type(module).__name__}.{name}")
    if weight.dim() == 0:  # PyTorch's raises too; ours registered and then failed at forward (no _u)
        raise ValueError(f"{type(module).__name__}.{name} must have at least 1 dimension, got shape []")
    if dim is None:
        dim = 1 if isinstance(module, _CONV_TRANSPOSE) else 0
    first_on_this_weight = not parametrize.is_parametrized(module, name)
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    if first_on_this_weight:  # older checkpoints hold one spectral norm per weight
        module.register_load_state_dict_pre_hook(_OldFormatLoader(name))
    return module


def spectral_norm_layers(model):
    """``(qualified name, SpectralNorm)`` for every gan_kernels spectral norm in ``model``."""
    _checks.module(model, "model")
    found = []
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name, parametrizations in module.parametrizations.items():
            for p in parametrizations:
                if isinstance(p, SpectralNorm):
                    found.append((f"{module_name}.{name}" if module_name else name, p))
    return found


def spectral_sigmas(model):
    """The sigma each spectral norm of ``model`` used in its latest forward, by weight name."""
    return {name: p.sigma for name, p in spectral_norm_layers(model)}


def _cached_by_parametrize(module, name):
    """Whether ``module.<name>`` has a value cached by ``torch.nn.utils.parametrize.cached()`` (a
    parametrized tensor read inside it is computed once, at its first access, under this key)."""
    return bool(getattr(parametrize, "_cache_enabled", 0)) and (id(module), name) in getattr(parametrize, "_cache", {})


class BatchedResults:
    """What a SpectralNormGroup computed for its layers, for each layer to read in its forward: per
    thread (several threads may run forwards of one model at once), each layer's ``W / sigma`` and
    sigma, with the weight they were computed from. Filled for one model forward at a time.

    The group iterates copies of u, v; a layer's own u, v take the new values only when the layer is
    used, as PyTorch's iterate at each use: a layer the forward skips keeps its u, v, and a layer used
    a second time in one forward finds its entry consumed and iterates again on the per-layer path."""

    def __init__(self):
        self._thread = threading.local()

    def __reduce__(self):
        # Results live only during one forward, and threading.local cannot be copied:
        # copy.deepcopy (or pickling) of a grouped model starts the copy with none.
        return BatchedResults, ()

    def set(self, by_layer):
        """``by_layer``: {SpectralNorm: (weight, W / sigma, sigma, new u, new v)} of this thread's model
        forward; new u, v are None where the forward does not iterate (eval)."""
        self.commit()
        self._thread.by_layer = by_layer

    def clear(self):
        self.commit()
        self._thread.by_layer = {}

    def has(self, layer):
        """Whether this thread's running model forward has computed ``layer`` and not yet used it."""
        return layer in getattr(self._thread, "by_layer", {})

    def get(self, layer, weight):
        """``(W / sigma, sigma)`` computed for ``layer`` from ``weight`` in this thread's running
        model forward, or None (outside a forward, for a weight the group did not see, or for a layer
        already used in this forward). Consumes the entry: the layer's u, v take its new values."""
        by_layer = getattr(self._thread, "by_layer", {})
        found = by_layer.get(layer)
        if found is None or found[0] is not weight:
            return None
        del by_layer[layer]
        if found[3] is not None:
            self._pending().append((layer._u, layer._v, found[3], found[4]))
        return found[1:3]

    def _pending(self):
        if not hasattr(self._thread, "pending"):
            self._thread.pending = []
        return self._thread.pending

    def commit(self):
        """Writes the new u, v of the layers used so far into their buffers (one call for all)."""
        pending = self._pending()
        if pending:
            self._thread.pending = []
            with torch.no_grad():
                torch._foreach_copy_(
                    [t for entry in pending for t in entry[:2]], [t for entry in pending for t in entry[2:]]
                )


def _normalize_by_requires_grad(weights, us, vs, sigmas, dims):
    """spectral_norm_normalize of the lists of the power iteration just run, one call for the weights
    that need a gradient and one for the rest: the outputs of one call share one autograd node, so a
    frozen layer's W / sigma (FreezeD's ``requires_grad_(False)``) normalised with trainable ones
    required grad, unlike PyTorch's, and each backward computed its weight gradient only to drop it."""
    needs_grad = [torch.is_grad_enabled() and weight.requires_grad for weight in weights]
    if all(needs_grad) or not any(needs_grad):
        return normalize_checked(weights, us, vs, sigmas, dims)
    normalized = [None] * len(weights)
    for wanted in (True, False):
        part = [index for index, needs in enumerate(needs_grad) if needs is wanted]
        outputs = normalize_checked(
            [weights[i] for i in part],
            [us[i] for i in part],
            [vs[i] for i in part],
            sigmas[part],
            [dims[i] for i in part],
        )
        for index, output in zip(part, outputs):
            normalized[index] = output
    return normalized


def _joined_copy(vectors):
    """A copy of ``vectors`` in one block, as views of it (each buffer read once: a Python call)."""
    return torch.cat(vectors).split([v.numel() for v in vectors])


class SpectralNormGroup:
    """Runs the power iterations and normalisations of every spectral norm in a model as one call
    of each batched op per model forward, before the layers run; each layer then only returns its
    precomputed ``W / sigma``, read from the group's ``results``. Results equal the per-layer path
    (same u, v, sigma, outputs and gradients), also when the model is called several times per
    step, when a forward uses a layer twice (its second use iterates again) or skips it (its u, v
    stay put and its weight gets no gradient, as with PyTorch's; zeros under torch.compile), and
    when several threads run forwards at once: each forward's results are kept for the thread
    running it. ``remove()`` undoes it."""

    def __init__(self, model):
        self.model = model
        self.results = BatchedResults()
        self._pre = model.register_forward_pre_hook(self._before_forward)
        # always_call: a forward that raises must not leave its results to the next call of a layer.
        self._post = model.register_forward_hook(self._after_forward, always_call=True)

    def _members(self, model=None):
        # Found again each forward, so layers added or removed later are handled. Only a spectral
        # norm that is the first parametrization sees the original parameter itself.
        members = []
        for module in (self.model if model is None else model).modules():
            # register_parametrization keeps them among the submodules: most modules are ruled out
            # here, without is_parametrized's failing Module.__getattr__ (a raised AttributeError).
            if "parametrizations" not in module._modules or not parametrize.is_parametrized(module):
                continue
            for name, parametrizations in module.parametrizations.items():
                first = parametrizations[0]
                if isinstance(first, SpectralNorm):
                    original = parametrizations.original
                    if original.ndim > 1:
                        members.append((first, original, module, name))
        return members

    def _before_forward(self, model, args):
        # The layers of the module being called, which is not always self.model: the replicas that
        # DataParallel (torch.nn.parallel.replicate) makes each forward share self.model's hooks but
        # have their own layers, weights and u, v.
        groups = {}
        for sn, weight, module, name in self._members(model):
            if sn.batched is not None and sn.batched is not self.results:
                if sn.batched.has(sn):
                    # Another group computed this layer for the model forward now running on this
                    # thread: an enclosing model's group, or a second batch_spectral_norm of this
                    # model. Its result serves the layer; iterating again would run two steps.
                    continue
                sn.batched.commit()  # u, v of a use in that group's forward, before iterating on
            if sn.batched is not self.results:  # Module.__setattr__ is slow, and this is every forward
                sn.batched = self.results
            if _cached_by_parametrize(module, name):
                # Inside parametrize.cached() the layer returns the W / sigma cached at its first
                # access: PyTorch's then neither iterates nor normalises again, so neither do we.
                continue
            key = (weight.device, weight.dtype, sn.power_iterations(), sn.eps)
            groups.setdefault(key, []).append((sn, weight))
        by_layer = {}
        for (_, _, steps, eps), members in groups.items():
            layers = [sn for sn, _ in members]
            weights = [w for _, w in members]
            dims = [sn.dim for sn in layers]
            # Iterated on one copy of all u, v, which is also the snapshot this forward's graph keeps
            # (the clones PyTorch takes per layer); each layer's buffers take their values at its use.
            us = _joined_copy([sn._u for sn in layers])
            vs = _joined_copy([sn._v for sn in layers])
            sigmas = spectral_norm_power_iteration_(weights, us, vs, dims, steps, eps)
            normalized = _normalize_by_requires_grad(weights, us, vs, sigmas, dims)
            for index, (sn, weight, w_sn) in enumerate(zip(layers, weights, normalized)):
                new_u, new_v = (us[index], vs[index]) if steps else (None, None)
                by_layer[sn] = (weight, w_sn, sigmas[index], new_u, new_v)
        self.results.set(by_layer)

    def _after_forward(self, model, args, output):
        self.results.clear()

    def remove(self):
        self._pre.remove()
        self._post.remove()
        self.results.clear()
        for sn, *_ in self._members():
            if sn.batched is self.results:
                sn.batched = None


def batch_spectral_norm(model):
    """Groups every gan_kernels spectral norm of ``model`` so that each model forward runs one
    batched power iteration and normalisation for all of them. Returns the SpectralNormGroup
    (``.remove()`` to undo)."""
    _checks.module(model, "model")
    return SpectralNormGroup(model)
