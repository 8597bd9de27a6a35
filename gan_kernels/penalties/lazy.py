"""Lazy regularisation (StyleGAN2): run the penalty every ``interval`` steps only, scaled by
``interval`` so its average strength is unchanged, and correct Adam for the extra steps."""

from .. import _checks


class LazyRegularizer:
    """``lazy(step, penalty_fn, *args, **kwargs)`` returns ``interval * penalty_fn(*args, **kwargs)``
    on steps where ``step % interval == 0``, else None (and does not call ``penalty_fn``)::

        lazy = LazyRegularizer(16)
        reg = lazy(step, gan_kernels.penalties.r1, D, real, gamma=10.0)
        if reg is not None:
            reg.backward()
    """

    def __init__(self, interval):
        self.interval = _checks.count(interval, "interval")

    def due(self, step):
        """Whether ``step`` (a training step, an int >= 0) is one of the regularisation steps."""
        # A bool or a float step would pass the modulo: due(True) was silently False for interval > 1.
        step = _checks.count(step, "step", minimum=0)
        return step % self.interval == 0

    def __call__(self, step, penalty_fn, *args, **kwargs):
        if not self.due(step):
            return None
        return penalty_fn(*args, **kwargs) * self.interval

    def adam_hyperparameters(self, lr, betas):
        return lazy_adam_hyperparameters(lr, betas, self.interval)

    def __repr__(self):
        return f"LazyRegularizer(interval={self.interval})"


def lazy_adam_hyperparameters(lr, betas, interval):
    """StyleGAN2's Adam correction for a regularisation step every ``interval`` steps: with
    ``ratio = interval / (interval + 1)``, returns ``(lr * ratio, tuple(beta ** ratio for beta in betas))``."""
    interval = _checks.count(interval, "interval")
    lr = _checks.nonnegative(lr, "lr")  # as torch.optim.Adam, which takes lr = 0
    try:
        betas = tuple(betas)
    except TypeError:
        raise TypeError(f"betas must be a pair of numbers, got {type(betas).__name__} {betas!r}") from None
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair of numbers, got {len(betas)} values: {betas!r}")
    # Adam's range: a beta of 1 would never forget (and ** ratio keeps it 1), a negative one is no average.
    betas = tuple(_checks.interval(beta, f"betas[{i}]", 0, 1, high_open=True) for i, beta in enumerate(betas))
    ratio = interval / (interval + 1)
    return lr * ratio, tuple(beta**ratio for beta in betas)
