import torch

from .. import _checks
from .._module_state import SharesProcessGroup
from ..distributed import all_gather_batch
from ..ops.minibatch_std import minibatch_std


class MinibatchStd(SharesProcessGroup, torch.nn.Module):
    """StyleGAN2's ``MinibatchStdLayer(group_size, num_channels)`` as a drop-in layer:
    ``[N, C, H, W] -> [N, C + num_channels, H, W]``. ``group_size=None`` groups the whole batch.
    No parameters or buffers, so StyleGAN2 checkpoints load unchanged.

    Under data parallelism each rank groups its own batch, as StyleGAN's training does. With
    ``process_group`` (a ``torch.distributed`` group; ``torch.distributed.group.WORLD`` for all
    ranks), the layer groups the concatenated batch of the group's ranks instead: each rank gathers
    every rank's input (:func:`gan_kernels.distributed.all_gather_batch`, differentiable to any
    order, so gradients and penalties reach every rank's samples), computes the statistics as one
    process would on the whole batch, and keeps its own rows. Every rank must then pass the same
    batch size and run each forward and backward in step with the others (as DDP training does);
    ``group_size=None`` means the whole concatenated batch. ``copy.deepcopy`` of the layer (a D
    snapshot) shares the process group; pickling it fails, as the group cannot be pickled."""

    def __init__(self, group_size=4, num_channels=1, process_group=None):
        super().__init__()
        # Checked here too, so a bad layer fails where it is built, not at its first batch.
        if group_size is not None:
            group_size = _checks.count(group_size, "group_size")
        num_channels = _checks.count(num_channels, "num_channels")
        self.group_size = group_size
        self.num_channels = num_channels
        self.process_group = process_group

    def forward(self, x):
        if self.process_group is None:
            return minibatch_std(x, self.group_size, self.num_channels)
        # Checked before the collective, so a bad input fails on its own rank with this message.
        _checks.check_floating(x, "x")
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got shape {list(x.shape)}")
        rank = _checks.process_group_rank(self.process_group, "process_group")
        y = minibatch_std(all_gather_batch(x, self.process_group), self.group_size, self.num_channels)
        rows = x.shape[0]
        return y[rank * rows : (rank + 1) * rows]

    def extra_repr(self):
        cross_rank = ", process_group=<across ranks>" if self.process_group is not None else ""
        return f"group_size={self.group_size}, num_channels={self.num_channels}{cross_rank}"
