"""Public functional ops: each picks the compiled op or its reference (see gan_kernels.backend())."""

from .. import _backend
from . import bias_act as _bias_act
from . import gradient_penalty as _gradient_penalty
from . import minibatch_discrimination as _minibatch_discrimination
from . import minibatch_std as _minibatch_std
from . import pixel_norm as _pixel_norm
from . import spectral_norm as _spectral_norm
from .bias_act import bias_act
from .gradient_penalty import per_sample_penalty
from .minibatch_discrimination import minibatch_discrimination
from .minibatch_std import minibatch_std
from .pixel_norm import pixel_norm
from .spectral_norm import spectral_norm_normalize, spectral_norm_power_iteration_

if _backend._C is not None:
    # Registered whenever _C is loaded, also under GAN_KERNELS_IMPL=reference, so that direct
    # torch.ops.gan_kernels calls stay differentiable and traceable.
    for _op in (_pixel_norm, _bias_act, _minibatch_std, _gradient_penalty, _spectral_norm, _minibatch_discrimination):
        _op.register()

__all__ = [
    "bias_act",
    "minibatch_discrimination",
    "minibatch_std",
    "per_sample_penalty",
    "pixel_norm",
    "spectral_norm_normalize",
    "spectral_norm_power_iteration_",
]
