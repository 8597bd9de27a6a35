"""Spectral normalisation as a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``, and a
grouping that runs the power iterations of every such layer of a model as one batched op call."""
import threading

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm

from .. import _checks
from ..ops.spectral_norm import (
    check_n_power_iterations,
    check_positive_eps,
    spectral_norm_normalize,
    spectral_norm_power_iteration_,
)

# Power-iteration steps at registration, as PyTorch's _SpectralNorm.
WARMUP_ITERATIONS = 15

_CONV_TRANSPOSE = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


class SpectralNorm(torch.nn.Module):
    """The parametrization ``W -> W / sigma(W)`` registered by :func:`spectral_norm`: PyTorch's
    ``_SpectralNorm`` with the same buffers (``_u``, ``_v``), numerics and behaviour, computed by the
    batched gan_kernels ops. ``sigma`` holds the sigma used by the latest forward (a detached
    scalar tensor, None before the first forward and for 1-D weights)."""

    def __init__(self, weight, n_power_iterations=1, dim=0, eps=1e-12):
        super().__init__()
        check_n_power_iterations(n_power_iterations)
        check_positive_eps(eps)
        self.dim = _checks.wrap_dim(dim, weight, "dim")
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        self.sigma = None
        # The SpectralNormGroup this layer belongs to, if any: it holds the W / sigma it computed
        # for the model forward running on the current thread.
        self._group = None
        if weight.ndim > 1:
            rows = weight.shape[self.dim]
            cols = weight.numel() // rows if rows else 0
            # Same draws, in the same order, as PyTorch's, so a seeded registration gives the same u, v.
            u = weight.new_empty(rows).normal_(0, 1)
            v = weight.new_empty(cols).normal_(0, 1)
            self.register_buffer("_u", torch.nn.functional.normalize(u, dim=0, eps=eps))
            self.register_buffer("_v", torch.nn.functional.normalize(v, dim=0, eps=eps))
            spectral_norm_power_iteration_(
                [weight.detach()], [self._u], [self._v], [self.dim], WARMUP_ITERATIONS, eps
            )

    def power_iterations(self):
        """Steps the next forward runs: n_power_iterations in training, none in eval."""
        return self.n_power_iterations if self.training else 0

    def forward(self, weight):
        if weight.ndim == 1:
            # As PyTorch: a vector's spectral norm is its 2-norm, no power iteration needed.
            return torch.nn.functional.normalize(weight, dim=0, eps=self.eps)
        if self._group is not None:
            normalized = self._group.normalized_weight(self, weight)
            if normalized is not None:
                return normalized
        sigmas = spectral_norm_power_iteration_(
            [weight], [self._u], [self._v], [self.dim], self.power_iterations(), self.eps
        )
        # Clones, as PyTorch's: the next forward updates _u, _v in place, and this forward's
        # graph (D(real) - D(fake)) must keep the values it used.
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        self.sigma = sigmas[0]
        return spectral_norm_normalize([weight], [u], [v], sigmas, [self.dim])[0]

    def right_inverse(self, value):
        return value

    def extra_repr(self):
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"


def _is_spectrally_normalised(module, name):
    if hasattr(module, name + "_orig"):  # the older torch.nn.utils.spectral_norm
        return True
    if not parametrize.is_parametrized(module, name):
        return False
    return any(
        isinstance(p, (SpectralNorm, _TorchSpectralNorm)) for p in module.parametrizations[name]
    )


def _old_format_loader(name):
    """Renames the keys of the older torch.nn.utils.spectral_norm (``weight_orig``, ``weight_u``,
    ``weight_v``) to the parametrization's; the older power iteration stores the same u, v."""
    renames = {
        f"{name}_orig": f"parametrizations.{name}.original",
        f"{name}_u": f"parametrizations.{name}.0._u",
        f"{name}_v": f"parametrizations.{name}.0._v",
    }

    def hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if prefix + f"{name}_orig" not in state_dict:
            return
        for old, new in renames.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)

    return hook


def spectral_norm(module, name="weight", n_power_iterations=1, eps=1e-12, dim=None):
    """Drop-in for ``torch.nn.utils.parametrizations.spectral_norm``: same arguments, state-dict keys
    (``parametrizations.<name>.original``, ``parametrizations.<name>.0._u`` / ``._v``), numerics and
    behaviour (15 warm-up iterations, power iteration only in training, ``dim=1`` for ConvTranspose,
    ``remove_parametrizations`` works, power iteration in the weight's dtype under autocast). Also
    loads checkpoints of the older ``torch.nn.utils.spectral_norm``. Returns ``module``."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str) or not isinstance(getattr(module, name, None), torch.Tensor):
        raise ValueError(f"name={name!r} is not a parameter or buffer of {type(module).__name__}")
    if _is_spectrally_normalised(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already spectrally normalised")
    weight = getattr(module, name)
    _checks.check_floating(weight, f"{type(module).__name__}.{name}")
    if dim is None:
        dim = 1 if isinstance(module, _CONV_TRANSPOSE) else 0
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    module.register_load_state_dict_pre_hook(_old_format_loader(name))
    return module


def spectral_norm_layers(model):
    """``(qualified name, SpectralNorm)`` for every gan_kernels spectral norm in ``model``."""
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


class SpectralNormGroup:
    """Runs the power iterations and normalisations of every spectral norm in a model as one call
    of each batched op per model forward, before the layers run; each layer then only returns its
    precomputed ``W / sigma``. Results equal the per-layer path (same u, v, sigma, outputs and
    gradients), also when the model is called several times per step, and when several threads run
    forwards at once: each forward's results are kept for the thread running it. ``remove()`` undoes
    it."""

    def __init__(self, model):
        self.model = model
        # {SpectralNorm: (original weight, W / sigma)} of the model forward running on this thread.
        self._results = threading.local()
        self._pre = model.register_forward_pre_hook(self._before_forward)
        self._post = model.register_forward_hook(self._after_forward, always_call=True)

    def __getstate__(self):
        # A thread's results live only during one forward, and threading.local cannot be copied:
        # copy.deepcopy of a grouped model starts the copy's group with none.
        state = self.__dict__.copy()
        del state["_results"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._results = threading.local()

    def normalized_weight(self, layer, weight):
        """The ``W / sigma`` this thread's running model forward computed for ``layer`` from
        ``weight``, or None (outside a forward, or for a weight the group did not see)."""
        found = getattr(self._results, "by_layer", {}).get(layer)
        if found is None or found[0] is not weight:
            return None
        return found[1]

    def _members(self):
        # Found again each forward, so layers added or removed later are handled. Only a spectral
        # norm that is the first parametrization sees the original parameter itself.
        members = []
        for module in self.model.modules():
            if not parametrize.is_parametrized(module):
                continue
            for parametrizations in module.parametrizations.values():
                first = parametrizations[0]
                if isinstance(first, SpectralNorm) and parametrizations.original.ndim > 1:
                    members.append((first, parametrizations.original))
        return members

    def _before_forward(self, model, args):
        groups = {}
        for sn, weight in self._members():
            key = (weight.device, weight.dtype, sn.power_iterations(), sn.eps)
            groups.setdefault(key, []).append((sn, weight))
        by_layer = {}
        for (_, _, steps, eps), members in groups.items():
            layers = [sn for sn, _ in members]
            weights = [w for _, w in members]
            dims = [sn.dim for sn in layers]
            us = [sn._u for sn in layers]
            vs = [sn._v for sn in layers]
            sigmas = spectral_norm_power_iteration_(weights, us, vs, dims, steps, eps)
            # One snapshot of all u, v (the clones PyTorch takes per layer), kept by this forward's graph.
            u_snapshot = torch.cat(us).split([u.numel() for u in us])
            v_snapshot = torch.cat(vs).split([v.numel() for v in vs])
            normalized = spectral_norm_normalize(weights, u_snapshot, v_snapshot, sigmas, dims)
            for index, (sn, weight, w_sn) in enumerate(zip(layers, weights, normalized)):
                sn._group = self
                by_layer[sn] = (weight, w_sn)
                sn.sigma = sigmas[index]
        self._results.by_layer = by_layer

    def _after_forward(self, model, args, output):
        self._results.by_layer = {}

    def remove(self):
        self._pre.remove()
        self._post.remove()
        self._results.by_layer = {}
        for sn, _ in self._members():
            if sn._group is self:
                sn._group = None


def batch_spectral_norm(model):
    """Groups every gan_kernels spectral norm of ``model`` so that each model forward runs one
    batched power iteration and normalisation for all of them. Returns the SpectralNormGroup
    (``.remove()`` to undo)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return SpectralNormGroup(model)
