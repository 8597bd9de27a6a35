import torch

from ..ops.minibatch_std import minibatch_std


class MinibatchStd(torch.nn.Module):
    """StyleGAN2's ``MinibatchStdLayer(group_size, num_channels)`` as a drop-in layer:
    ``[N, C, H, W] -> [N, C + num_channels, H, W]``. ``group_size=None`` groups the whole batch.
    No parameters or buffers, so StyleGAN2 checkpoints load unchanged."""

    def __init__(self, group_size=4, num_channels=1):
        super().__init__()
        for value, arg in ((group_size, "group_size"), (num_channels, "num_channels")):
            if value is None and arg == "group_size":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        return minibatch_std(x, self.group_size, self.num_channels)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
