"""What the package's modules share about their own state: a process group that deep copies share,
running averages that a conversion to half precision must not round away, and how a spectral norm's
state is recognised."""

import copy

import torch

HALF_PRECISION = (torch.float16, torch.bfloat16)


class SharesProcessGroup:
    """Mixin for a module with a ``process_group`` attribute: ``copy.deepcopy`` shares the group, a
    handle to the ranks' communicator, which cannot be copied (a snapshot of a model holding the
    module failed with "cannot pickle ProcessGroup")."""

    def __deepcopy__(self, memo):
        if self.process_group is not None:
            memo[id(self.process_group)] = self.process_group
        duplicate = type(self).__new__(type(self))
        memo[id(self)] = duplicate
        duplicate.__setstate__(copy.deepcopy(self.__dict__, memo))
        return duplicate


class KeepsFullPrecision:
    """Mixin for a module whose tensors hold running averages: a conversion to float16 or bfloat16
    (``.half()``, ``.to(device, torch.bfloat16)``) only moves them to its device, as there an update's
    small step would mostly be under half an ulp and the average would stop moving; any other
    conversion (``.double()``, a device) applies."""

    def _apply(self, fn, recurse=True):
        def convert(tensor):
            converted = fn(tensor)
            if converted.dtype in HALF_PRECISION and tensor.dtype not in HALF_PRECISION:
                return tensor.to(converted.device)
            return converted

        return super()._apply(convert, recurse)


def is_spectral_norm(parametrization):
    """Whether ``parametrization`` is a spectral norm with power-iteration vectors: gan_kernels'
    ``SpectralNorm`` or torch's ``_SpectralNorm``, which share these attributes (same buffers and
    numerics), so that code reading the state needs neither class."""
    return all(hasattr(parametrization, attr) for attr in ("_u", "_v", "dim", "n_power_iterations"))
