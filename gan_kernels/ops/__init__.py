"""Public functional ops: each picks the compiled op or its reference (see gan_kernels.backend())."""
from .. import _backend
from . import bias_act as _bias_act
from . import pixel_norm as _pixel_norm
from .bias_act import bias_act
from .pixel_norm import pixel_norm

if _backend._C is not None:
    # Registered whenever _C is loaded, also under GAN_KERNELS_IMPL=reference, so that direct
    # torch.ops.gan_kernels calls stay differentiable and traceable.
    _pixel_norm.register()
    _bias_act.register()

__all__ = ["bias_act", "pixel_norm"]
