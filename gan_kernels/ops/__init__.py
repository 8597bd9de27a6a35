"""Public functional ops: each picks the compiled op or its reference (see gan_kernels.backend())."""
from .. import _backend
from . import minibatch_std as _minibatch_std
from . import pixel_norm as _pixel_norm
from .minibatch_std import minibatch_std
from .pixel_norm import pixel_norm

if _backend._C is not None:
    # Registered whenever _C is loaded, also under GAN_KERNELS_IMPL=reference, so that direct
    # torch.ops.gan_kernels calls stay differentiable and traceable.
    _pixel_norm.register()
    _minibatch_std.register()

__all__ = ["minibatch_std", "pixel_norm"]
