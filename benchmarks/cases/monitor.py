"""StabilityMonitor overhead (issue 16): a small discriminator step (the StyleGAN2-like D of
cases/end_to_end.py, non-saturating loss) without and with the monitor at every=50.

* "d step + monitor": eager = the step alone, ours = the step plus the monitor's calls
  (observe_gradients after the backward, observe of logits and loss); x eager = 1 / (1 + overhead).
  The difference of two step timings is within this machine's run-to-run noise, so also:
* "monitor calls": eager = the step alone, ours = the monitor's calls alone on that step's logits,
  loss and gradients; x eager = step time / monitor time, so the overhead is 1 / (x eager).

Timed calls repeat the step, so every 50th call runs the monitor's check (its host syncs, one batched
power iteration over D's layers): its cost is amortised as in training. No torch.compile column:
the monitor is bookkeeping around a step, not a kernel.
"""

import torch
from cases.end_to_end import OUR_LAYERS, StyleGAN2LikeD
from harness import Case, dtype_name, shape_name

from gan_kernels import losses
from gan_kernels.monitor import StabilityMonitor

EVERY = 50
NOT_COMPILED = RuntimeError("not applicable: the monitor is bookkeeping around a step")


def d_step(D, real, fake):
    D.zero_grad(set_to_none=True)
    real_logits, fake_logits = D(real), D(fake)
    loss = losses.discriminator_loss(real_logits, fake_logits, "non_saturating")
    loss.backward()
    return real_logits, fake_logits, loss


def monitor_calls(monitor, D, real_logits, fake_logits, loss):
    monitor.observe_gradients("D", D)
    monitor.observe(real_logits=real_logits, fake_logits=fake_logits, d_loss=loss)


def cases(device, quick, compile_fn):
    shape, max_channels = ((32, 3, 64, 64), 512) if device.type == "cuda" else ((8, 3, 32, 32), 64)
    if quick and device.type != "cuda":
        shape, max_channels = (4, 3, 16, 16), 32
    torch.manual_seed(0)
    D = StyleGAN2LikeD(OUR_LAYERS, shape[-1], max_channels).to(device)
    real = torch.randn(shape, device=device)
    fake = torch.randn(shape, device=device)
    monitor = StabilityMonitor(D, every=EVERY)
    step_outputs = d_step(D, real, fake)

    def step_with_monitor():
        monitor_calls(monitor, D, *d_step(D, real, fake))

    op = f"monitor every={EVERY}, stylegan2 D c<={max_channels}"
    name, dtype = shape_name(shape), dtype_name(torch.float32)
    return [
        Case(
            op,
            name,
            dtype,
            "d step + monitor",
            {"eager": lambda: d_step(D, real, fake), "compile": NOT_COMPILED, "ours": step_with_monitor},
            eager_target=None,  # the monitor's added cost, not a replacement
        ),
        Case(
            op,
            name,
            dtype,
            "monitor calls",
            {
                "eager": lambda: d_step(D, real, fake),
                "compile": NOT_COMPILED,
                "ours": lambda: monitor_calls(monitor, D, *step_outputs),
            },
            eager_target=None,
        ),
    ]
