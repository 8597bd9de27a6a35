import torch

from .. import _checks
from ..ops.minibatch_std import minibatch_std


class MinibatchStd(torch.nn.Module):
    """StyleGAN2's ``MinibatchStdLayer(group_size, num_channels)`` as a drop-in layer:
    ``[N, C, H, W] -> [N, C + num_channels, H, W]``. ``group_size=None`` groups the whole batch.
    No parameters or buffers, so StyleGAN2 checkpoints load unchanged."""

    def __init__(self, group_size=4, num_channels=1):
        super().__init__()
        # Checked here too, so a bad layer fails where it is built, not at its first batch.
        if group_size is not None:
            group_size = _checks.count(group_size, "group_size")
        num_channels = _checks.count(num_channels, "num_channels")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        return minibatch_std(x, self.group_size, self.num_channels)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
