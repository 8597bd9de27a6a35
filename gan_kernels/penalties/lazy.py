"""Lazy regularisation (StyleGAN2): run the penalty every ``interval`` steps only, scaled by
``interval`` so its average strength is unchanged, and correct Adam for the extra steps."""

import numbers

import torch

from .. import _checks


class LazyRegularizer:
    """``lazy(step, penalty_fn, *args, **kwargs)`` returns ``interval * penalty_fn(*args, **kwargs)``
    on steps where ``step % interval == 0``, else None (and does not call ``penalty_fn``).
    StyleGAN2 runs the penalty as a phase of its own, with its own optimiser step, and builds the
    optimiser with :meth:`adam_hyperparameters` for those ``interval + 1`` steps per ``interval``
    minibatches::

        lazy = LazyRegularizer(16)
        lr, betas = lazy.adam_hyperparameters(0.0025, (0.0, 0.99))  # opt_d = Adam(D.parameters(), lr, betas)
        ...                                                          # D's main step: zero_grad, backward, step
        reg = lazy(step, gan_kernels.penalties.r1, D, real, gamma=10.0)
        if reg is not None:
            opt_d.zero_grad()
            reg.backward()
            opt_d.step()

    A penalty added to the main loss instead takes no optimiser step of its own: keep Adam's own
    ``lr`` and ``betas`` there. A ``reg.backward()`` after ``opt_d.step()`` with no step of its own
    is lost: the next ``zero_grad()`` discards it.
    """

    def __init__(self, interval):
        self.interval = _checks.count(interval, "interval")

    def due(self, step):
        """Whether ``step`` (a training step, an int >= 0) is one of the regularisation steps."""
        # A bool or a float step would pass the modulo: due(True) was silently False for interval > 1.
        step = _checks.count(step, "step", minimum=0)
        return step % self.interval == 0

    def __call__(self, step, penalty_fn, *args, **kwargs):
        # On every step: one that is not due never calls it, and a mistake would wait for the next one that is.
        _checks.function(penalty_fn, "penalty_fn")
        if not self.due(step):
            return None
        penalty = penalty_fn(*args, **kwargs)
        # A tuple (a penalty with its statistics, say) times the interval repeats it: refused.
        if isinstance(penalty, bool) or not isinstance(penalty, (torch.Tensor, numbers.Real)):
            raise TypeError(
                f"penalty_fn must return the penalty as a tensor or a number, to scale by interval="
                f"{self.interval}; got {type(penalty).__name__}"
            )
        return penalty * self.interval

    def adam_hyperparameters(self, lr, betas):
        return lazy_adam_hyperparameters(lr, betas, self.interval)

    def __repr__(self):
        return f"LazyRegularizer(interval={self.interval})"


def lazy_adam_hyperparameters(lr, betas, interval):
    """StyleGAN2's Adam correction for a regularisation step every ``interval`` steps: with
    ``ratio = interval / (interval + 1)``, returns ``(lr * ratio, tuple(beta ** ratio for beta in betas))``.

    It is for the regularisation as its own optimiser step (StyleGAN2's ``Dreg``/``Greg`` phases):
    ``interval + 1`` steps per ``interval`` minibatches, which the correction brings back to the
    learning rate and averaging horizon of ``interval`` steps. A penalty added to the main loss of a
    step adds no step: there Adam's own ``lr`` and ``betas`` are the right ones."""
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
