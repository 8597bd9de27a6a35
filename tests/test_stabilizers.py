"""gan_kernels.stabilizers against plain-PyTorch transcriptions of the papers' formulas (float64):
the unrolled generator loss (values and G's gradients through the unrolled D steps, with D built from
torch layers and from gan_kernels' equalized and spectrally normalised layers), instance noise,
bCR and zCR, PacGAN's packing, WGAN's weight clipping and the generator EMA; bad inputs name the
argument."""

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES, unregistered_autograd_is_an_error

import gan_kernels
from gan_kernels import losses, stabilizers
from gan_kernels.nn import (
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStd,
    batch_spectral_norm,
    spectral_norm,
    spectral_sigmas,
)

# --- unrolled GAN ---------------------------------------------------------------------------------

# The papers' losses as written (-log sigmoid, no softplus), each (D's loss, G's loss) of (r, f) logits.
TEXTBOOK = {
    "non_saturating": (
        lambda r, f: -torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean(),
        lambda r, f: -torch.log(torch.sigmoid(f)).mean(),
    ),
    "hinge": (
        lambda r, f: torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(),
        lambda r, f: -f.mean(),
    ),
    "relativistic_pairing": (
        lambda r, f: -torch.log(torch.sigmoid(r - f)).mean(),
        lambda r, f: -torch.log(torch.sigmoid(f - r)).mean(),
    ),
}


def library_losses(kind):
    return (
        functools.partial(losses.discriminator_loss, kind=kind),
        functools.partial(losses.generator_loss, kind=kind),
    )


def make_generator(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def make_torch_discriminator(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 16),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    ).double()


def torch_discriminator_transcription(theta, x, state, training):
    """make_torch_discriminator's forward written out from its weights (``state`` unused)."""
    h = F.leaky_relu(x @ theta["0.weight"].T + theta["0.bias"], 0.2)
    h = torch.tanh(h @ theta["2.weight"].T + theta["2.bias"])
    return h @ theta["4.weight"].T + theta["4.bias"]


def make_gan_kernels_discriminator(seed=1, batched=False):
    """Equalized layers (lrelu with an lr multiplier, swish: a nonzero second derivative) and two
    spectrally normalised torch layers."""
    torch.manual_seed(seed)
    d = torch.nn.Sequential(
        EqualizedLinear(2, 16, activation="lrelu", lr_multiplier=0.5),
        spectral_norm(torch.nn.Linear(16, 16)),
        torch.nn.Softplus(),
        EqualizedLinear(16, 16, activation="swish"),
        spectral_norm(torch.nn.Linear(16, 1)),
    ).double()
    # Biases start at 0; random ones make every path of the second derivative count.
    with torch.no_grad():
        for module in (d[0], d[3]):
            module.bias.normal_()
    if batched:
        batch_spectral_norm(d)
    return d


def spectral_normalised(weight, uv, training):
    """W / sigma as PyTorch's spectral norm computes it: in training one power-iteration step
    ``u = normalize(W v)``, ``v = normalize(W^T u)`` updates ``uv`` first; sigma = u . (W v) with
    u, v constants."""
    if training:
        with torch.no_grad():
            u = F.normalize(weight.detach() @ uv[1], dim=0, eps=1e-12)
            v = F.normalize(weight.detach().T @ u, dim=0, eps=1e-12)
        uv[:] = [u, v]
    u, v = uv
    return weight / (u @ (weight @ v))


def gan_kernels_discriminator_transcription(theta, x, state, training):
    """make_gan_kernels_discriminator's forward from its weights: StyleGAN's FullyConnectedLayer
    (weight * lr_mul / sqrt(in), bias * lr_mul, activation * gain) and spectral norm. ``state``: the
    [u, v] of each normalised layer, updated in training."""
    w = theta["0.weight"] * 0.5 / math.sqrt(2)
    h = F.leaky_relu(x @ w.T + theta["0.bias"] * 0.5, 0.2) * math.sqrt(2)
    w = spectral_normalised(theta["1.parametrizations.weight.original"], state["1"], training)
    h = F.softplus(h @ w.T + theta["1.bias"])
    pre = h @ (theta["3.weight"] / math.sqrt(16)).T + theta["3.bias"]
    h = pre * torch.sigmoid(pre) * math.sqrt(2)
    w = spectral_normalised(theta["4.parametrizations.weight.original"], state["4"], training)
    return h @ w.T + theta["4.bias"]


def spectral_state(d):
    """Copies of each spectrally normalised layer's [u, v], by layer index."""
    return {
        name: [module.parametrizations.weight[0]._u.clone(), module.parametrizations.weight[0]._v.clone()]
        for name, module in d.named_children()
        if hasattr(module, "parametrizations")
    }


def unrolled_transcription(d, transcription, fake, real, kind, steps, lr):
    """Metz et al.'s unrolled loss on explicit weight tensors: ``steps`` SGD steps of the textbook D
    loss with create_graph, D run on the real then the fake batch in each step, then G's loss."""
    d_loss, g_loss = TEXTBOOK[kind]
    theta = {name: p.detach().clone().requires_grad_() for name, p in d.named_parameters()}
    state = spectral_state(d)

    def logits(theta):
        return (transcription(theta, real.detach(), state, d.training), transcription(theta, fake, state, d.training))

    for _ in range(steps):
        loss = d_loss(*logits(theta))
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {name: p - lr * g for (name, p), g in zip(theta.items(), grads)}
    r, f = logits(theta)
    return g_loss(r, f)


DISCRIMINATORS = {
    "torch": (make_torch_discriminator, torch_discriminator_transcription),
    "gan_kernels": (make_gan_kernels_discriminator, gan_kernels_discriminator_transcription),
    "gan_kernels_batched": (
        functools.partial(make_gan_kernels_discriminator, batched=True),
        gan_kernels_discriminator_transcription,
    ),
}


def batches(seed=2, n=6):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    real = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return z, real


def generator_gradients(loss, g):
    return torch.autograd.grad(loss, list(g.parameters()))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("kind", list(TEXTBOOK))
@pytest.mark.parametrize("discriminator", list(DISCRIMINATORS))
def test_unrolled_loss_and_generator_gradients_equal_the_transcription(discriminator, kind, steps, training):
    make, transcription = DISCRIMINATORS[discriminator]
    d, g = make().train(training), make_generator()
    z, real = batches()
    lr = 0.3
    expected = unrolled_transcription(d, transcription, g(z), real, kind, steps, lr)
    expected_grads = generator_gradients(expected, g)
    with unregistered_autograd_is_an_error():
        loss = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses(kind), steps, lr)
        grads = generator_gradients(loss, g)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for grad, grad_expected in zip(grads, expected_grads):
        assert grad_expected.abs().sum() > 0
        torch.testing.assert_close(grad, grad_expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("discriminator", list(DISCRIMINATORS))
def test_zero_steps_is_the_plain_generator_loss_and_more_steps_change_the_gradient(discriminator):
    make, _ = DISCRIMINATORS[discriminator]
    d, g = make().eval(), make_generator()
    z, real = batches()
    kind = "relativistic_pairing"  # G's loss needs the real logits too
    plain = losses.generator_loss(d(g(z)), d(real), kind=kind)
    plain_grads = generator_gradients(plain, g)
    loss = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses(kind), 0, 0.3)
    torch.testing.assert_close(loss, plain, rtol=1e-14, atol=0)
    for grad, grad_plain in zip(generator_gradients(loss, g), plain_grads):
        torch.testing.assert_close(grad, grad_plain, rtol=1e-14, atol=0)
    unrolled = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses(kind), 3, 0.3)
    differences = [(a - b).abs().max() for a, b in zip(generator_gradients(unrolled, g), plain_grads)]
    assert max(differences) > 1e-3


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("discriminator", list(DISCRIMINATORS))
def test_the_real_discriminator_is_untouched(discriminator, training):
    make, _ = DISCRIMINATORS[discriminator]
    d, g = make().train(training), make_generator()
    z, real = batches()
    d(real)  # a forward of D's own: its spectral norms' sigmas
    sigmas = {name: sigma.clone() for name, sigma in spectral_sigmas(d).items()}
    existing = [torch.randn_like(p) for p in d.parameters()]
    for p, grad in zip(d.parameters(), existing):
        p.grad = grad.clone()
    state = {name: t.clone() for name, t in d.state_dict().items()}
    loss = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses("non_saturating"), 3, 0.3)
    loss.backward()
    for name, value in d.state_dict().items():  # parameters and buffers (u, v), bit for bit
        assert torch.equal(value, state[name]), name
    for p, grad in zip(d.parameters(), existing):
        assert torch.equal(p.grad, grad)
    now = spectral_sigmas(d)  # bit for bit (pytest 9.2's approx takes no tensors in a dict)
    assert now.keys() == sigmas.keys() and all(torch.equal(now[name], sigma) for name, sigma in sigmas.items())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def test_unrolled_gradient_through_a_convolutional_minibatch_std_discriminator_matches_finite_differences():
    # G's gradient through the unrolled steps needs second derivatives of every layer of D: checked
    # against finite differences of the loss, for equalized convolutions and minibatch stddev.
    torch.manual_seed(8)
    d = torch.nn.Sequential(
        EqualizedConv2d(3, 4, 3, activation="lrelu"),
        MinibatchStd(group_size=2),
        torch.nn.Flatten(),
        EqualizedLinear(5 * 4 * 4, 1, activation="swish"),
        EqualizedLinear(1, 1),
    ).double()
    z = torch.randn(4, 2, dtype=torch.float64)
    real, base = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)

    def unrolled_loss(weight):  # G(z) = base + a per-channel offset linear in z
        fake = base + (z @ weight)[:, :, None, None]
        return stabilizers.unrolled_generator_loss(d, fake, real, *library_losses("non_saturating"), 2, 0.1)

    weight = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with unregistered_autograd_is_an_error():
        assert torch.autograd.gradcheck(unrolled_loss, (weight,), fast_mode=True)


def test_unrolled_steps_advance_copies_of_the_power_iteration_in_training():
    # The transcription with the power iteration frozen (eval's u, v in every forward) differs from
    # a training-mode D's loss: the unrolled forwards did iterate, on copies.
    d, g = make_gan_kernels_discriminator(), make_generator()
    z, real = batches()
    trained = stabilizers.unrolled_generator_loss(d.train(), g(z), real, *library_losses("hinge"), 3, 0.3)
    frozen = stabilizers.unrolled_generator_loss(d.eval(), g(z), real, *library_losses("hinge"), 3, 0.3)
    assert (trained - frozen).abs() > 1e-8


def test_unrolled_works_with_torch_spectral_norm_and_a_frozen_discriminator():
    # torch's own parametrization (buffers _u, _v updated with out=) on copies as well; D's
    # requires_grad does not matter (a G step often turns it off).
    torch.manual_seed(3)
    d = (
        torch.nn.Sequential(
            torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(2, 8)), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        )
        .double()
        .requires_grad_(False)
    )
    g = make_generator()
    z, real = batches()
    before = {name: t.clone() for name, t in d.state_dict().items()}
    loss = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses("non_saturating"), 2, 0.3)
    loss.backward()
    assert all(torch.equal(t, before[name]) for name, t in d.state_dict().items())
    assert all(p.grad is None for p in d.parameters())


def test_unrolled_bad_arguments_name_the_argument():
    d, g = make_torch_discriminator(), make_generator()
    z, real = batches()
    fake = g(z)
    d_loss, g_loss = library_losses("hinge")
    call = stabilizers.unrolled_generator_loss
    with pytest.raises(TypeError, match="D must be a torch.nn.Module, got function"):
        call(lambda x: x.sum(1), fake, real, d_loss, g_loss, 1, 0.1)
    with pytest.raises(TypeError, match="fake must be float64, float32, float16 or bfloat16, got torch.int64"):
        call(d, torch.ones(6, 2, dtype=torch.int64), real, d_loss, g_loss, 1, 0.1)
    with pytest.raises(ValueError, match="real must have a batch dimension"):
        call(d, fake, torch.tensor(1.0), d_loss, g_loss, 1, 0.1)
    with pytest.raises(TypeError, match="d_loss must be callable, got str"):
        call(d, fake, real, "hinge", g_loss, 1, 0.1)
    with pytest.raises(TypeError, match="g_loss must be callable, got NoneType"):
        call(d, fake, real, d_loss, None, 1, 0.1)
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        call(d, fake, real, d_loss, g_loss, -1, 0.1)
    with pytest.raises(TypeError, match="steps must be an int, got float"):
        call(d, fake, real, d_loss, g_loss, 1.5, 0.1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0.0"):
        call(d, fake, real, d_loss, g_loss, 1, 0)
    with pytest.raises(ValueError, match=r"d_loss must return a scalar \(0-d\) tensor, got \[6, 1\]"):
        call(d, fake, real, lambda r, f: r - f, g_loss, 1, 0.1)
    with pytest.raises(ValueError, match=r"g_loss must return a scalar \(0-d\) tensor, got float"):
        call(d, fake, real, d_loss, lambda f, r: 1.0, 1, 0.1)
    with pytest.raises(ValueError, match="D \\(Tanh\\) has no parameters to unroll"):
        call(torch.nn.Tanh(), fake, real, d_loss, g_loss, 1, 0.1)


def test_unrolled_refuses_a_fake_without_graph_to_g():
    # Real and fake swapped (the penalties and losses take real first) or a detached fake: the loss
    # still required grad through the copies of D's parameters, and G silently got no gradient.
    d, g = make_torch_discriminator(), make_generator()
    z, real = batches()
    d_loss, g_loss = library_losses("non_saturating")
    call = stabilizers.unrolled_generator_loss
    for steps in (0, 2):
        with pytest.raises(ValueError, match="fake does not require grad, so the loss cannot train G"):
            call(d, real, g(z), d_loss, g_loss, steps, 0.1)
        with pytest.raises(ValueError, match="fake does not require grad"):
            call(d, g(z).detach(), real, d_loss, g_loss, steps, 0.1)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"the unrolled generator loss .* called under torch.no_grad\(\)"):
            call(d, g(z), real, d_loss, g_loss, 2, 0.1)
        # No step takes a gradient: the plain generator loss, as without no_grad.
        plain = call(d, g(z), real, d_loss, g_loss, 0, 0.1)
    torch.testing.assert_close(plain, g_loss(d(g(z)), d(real)), rtol=0, atol=0)


def test_unrolled_takes_numpy_and_tensor_scalars():
    d, g = make_torch_discriminator(), make_generator()
    z, real = batches()
    expected = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses("hinge"), 2, 0.25)
    for steps, lr in ((np.int64(2), np.float32(0.25)), (torch.tensor(2), torch.tensor(0.25))):
        loss = stabilizers.unrolled_generator_loss(d, g(z), real, *library_losses("hinge"), steps, lr)
        torch.testing.assert_close(loss, expected, rtol=0, atol=0)


# --- instance noise -------------------------------------------------------------------------------


def test_instance_noise_anneals_linearly_to_zero_with_the_drawn_noise():
    x = torch.randn(5, 3, dtype=torch.float64)
    noise = stabilizers.InstanceNoise(std=0.8, anneal_steps=4, generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    for t, expected_std in enumerate([0.8, 0.6, 0.4, 0.2]):
        assert noise.current_std == pytest.approx(expected_std, rel=1e-15)
        expected = x + expected_std * torch.randn(5, 3, generator=draws, dtype=torch.float64)
        torch.testing.assert_close(noise(x), expected, rtol=1e-15, atol=1e-15)
        noise.step()
    for _ in range(3):  # at anneal_steps and after: no noise, no draw
        assert noise.current_std == 0
        assert noise(x) is x
        noise.step()


def test_instance_noise_in_a_compiled_step_does_not_recompile_it_every_step():
    # Its std changes with every step(): traced into the caller, each step recompiled the whole
    # function (a guard on steps_taken) until dynamo's recompile limit (8), after which the function
    # ran eagerly for good, or failed under fullgraph=True. The noise must be the eager noise.
    torch._dynamo.reset()
    x = torch.randn(6, 3)
    D = torch.nn.Linear(3, 1)
    noise = stabilizers.InstanceNoise(std=0.5, anneal_steps=4, generator=torch.Generator().manual_seed(3))
    eager_noise = stabilizers.InstanceNoise(std=0.5, anneal_steps=4, generator=torch.Generator().manual_seed(3))

    def d_step(noise, x):
        return D(noise(x))

    compiled = torch.compile(d_step, backend="eager")
    for step in range(5):  # the last one at std 0
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            got = compiled(noise, x)
        torch.testing.assert_close(got, d_step(eager_noise, x), rtol=0, atol=0)
        noise.step()
        eager_noise.step()
    torch._dynamo.reset()


def test_instance_noise_passes_the_gradient_to_the_samples_unchanged():
    fake = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    noisy = stabilizers.InstanceNoise(0.5, 10)(fake)
    assert torch.all(noisy != fake)
    upstream = torch.randn(4, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad(noisy, fake, upstream)
    assert torch.equal(grad, upstream)


def test_instance_noise_state_dict_round_trips():
    noise = stabilizers.InstanceNoise(np.float32(1.0), np.int64(10))
    for _ in range(6):
        noise.step()
    state = noise.state_dict()
    assert state == {"steps_taken": 6}
    restored = stabilizers.InstanceNoise(torch.tensor(1.0), 10)
    restored.load_state_dict(state)
    assert restored.steps_taken == 6 and restored.current_std == pytest.approx(0.4)
    restored.step()
    assert restored.current_std == pytest.approx(0.3)


def test_instance_noise_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="std must be a finite number >= 0, got -0.1"):
        stabilizers.InstanceNoise(-0.1, 10)
    with pytest.raises(ValueError, match="anneal_steps must be >= 1, got 0"):
        stabilizers.InstanceNoise(0.1, 0)
    with pytest.raises(TypeError, match="anneal_steps must be an int, got float"):
        stabilizers.InstanceNoise(0.1, 10.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        stabilizers.InstanceNoise(0.1, 10, generator=0)
    noise = stabilizers.InstanceNoise(0.1, 10)
    with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16, got torch.uint8"):
        noise(torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="state_dict must be a dict with the key 'steps_taken', got \\{'step': 3\\}"):
        noise.load_state_dict({"step": 3})
    with pytest.raises(ValueError, match=r"state_dict\['steps_taken'\] must be >= 0, got -2"):
        noise.load_state_dict({"steps_taken": -2})


# --- consistency regularisation -------------------------------------------------------------------


def make_patch_discriminator(seed=4):
    """Returns a [N, 1, 2, 2] map, so the squared distance is summed per sample over 4 elements."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Conv2d(4, 1, 2, stride=2)
    ).double()


def flip(x):
    return x.flip(-1)


def consistency_transcription(d, x, augment, weight):
    """weight * mean_i ||D(x)_i - D(T(x))_i||^2, sample by sample; both outputs keep their graph."""
    per_sample = [((d(x[i : i + 1]) - d(augment(x[i : i + 1]))) ** 2).sum() for i in range(len(x))]
    return weight * sum(per_sample) / len(x)


@pytest.mark.parametrize("reuse_outputs", [False, True])
def test_consistency_penalty_and_its_gradients_equal_the_transcription(reuse_outputs):
    d = make_patch_discriminator()
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    outputs = d(x) if reuse_outputs else None
    penalty = stabilizers.consistency_penalty(d, x, flip, 10.0, outputs=outputs)
    expected = consistency_transcription(d, x, flip, 10.0)
    torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=0)
    inputs = [x, *d.parameters()]
    # The output layer's bias cancels in the difference of two outputs: its gradient is 0.
    names = ["x"] + [name for name, _ in d.named_parameters()]
    for name, grad, grad_expected in zip(
        names, torch.autograd.grad(penalty, inputs), torch.autograd.grad(expected, inputs)
    ):
        assert (grad_expected.abs().sum() > 0) == (name != "2.bias")
        torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-14)


def test_consistency_penalty_is_twice_differentiable():
    d = make_torch_discriminator()
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: stabilizers.consistency_penalty(d, x, flip, 2.0), (x,))


def test_consistency_penalty_bad_arguments_name_the_argument():
    d = make_patch_discriminator()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="augment must be callable, got str"):
        stabilizers.consistency_penalty(d, x, "flip", 1.0)
    with pytest.raises(TypeError, match="D must be callable, got int"):
        stabilizers.consistency_penalty(3, x, flip, 1.0)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0, got -1.0"):
        stabilizers.consistency_penalty(d, x, flip, -1)
    with pytest.raises(ValueError, match=r"augment must return a tensor of x's shape \[2, 3, 4, 4\], got \[2, 3, 2"):
        stabilizers.consistency_penalty(d, x, lambda x: x[..., ::2, ::2], 1.0)
    with pytest.raises(ValueError, match=r"D\(augment\(x\)\) has shape \[2, 1, 2, 2\] but D\(x\) has shape \[2\]"):
        stabilizers.consistency_penalty(d, x, flip, 1.0, outputs=torch.randn(2, dtype=torch.float64))
    # A mean over no samples: was a reshape error that named nothing.
    with pytest.raises(ValueError, match=r"x has no samples \(shape \[0, 3, 4, 4\]\)"):
        stabilizers.consistency_penalty(d, x[:0], flip, 1.0)


def test_latent_consistency_terms_and_their_gradients_equal_the_transcription():
    g, d = make_generator(), make_torch_discriminator()
    z = torch.randn(6, 3, dtype=torch.float64)
    sigma, weight_d, weight_g = 0.03, 5.0, 0.5
    d_term, g_term = stabilizers.latent_consistency_penalty(
        g, d, z, sigma, weight_d, weight_g, generator=torch.Generator().manual_seed(11)
    )
    delta = sigma * torch.randn(6, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    fake, perturbed = g(z), g(z + delta)
    expected_d = weight_d * sum(((d(fake[i].detach()) - d(perturbed[i].detach())) ** 2).sum() for i in range(6)) / 6
    expected_g = -weight_g * sum(((fake[i] - perturbed[i]) ** 2).sum() for i in range(6)) / 6
    torch.testing.assert_close(d_term, expected_d, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_term, expected_g, rtol=1e-12, atol=0)
    # d_term trains D only, g_term G only.
    d_params, g_params = list(d.parameters()), list(g.parameters())
    grads = torch.autograd.grad(d_term, d_params + g_params, allow_unused=True)
    assert all(grad is None for grad in grads[len(d_params) :])
    d_names = [name for name, _ in d.named_parameters()]
    for name, grad, grad_expected in zip(d_names, grads, torch.autograd.grad(expected_d, d_params)):
        assert (grad_expected.abs().sum() > 0) == (name != "4.bias")  # the output bias cancels
        torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-16)
    grads = torch.autograd.grad(g_term, d_params + g_params, allow_unused=True)
    assert all(grad is None for grad in grads[: len(d_params)])
    g_names = [name for name, _ in g.named_parameters()]
    for name, grad, grad_expected in zip(g_names, grads[len(d_params) :], torch.autograd.grad(expected_g, g_params)):
        assert (grad_expected.abs().sum() > 0) == (name != "2.bias")  # G's output bias cancels
        torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_consistency_terms_of_half_precision_samples_are_the_float64_terms_rounded_once(dtype):
    """The squares were taken in the samples' dtype: G(z) and G(z + delta) a float16 ulp or two apart
    (2^-14 near 0.1) gave squares of 0, and a g_term of 0 where the float64 term is -0.004."""
    generator = torch.Generator().manual_seed(0)
    ulps = torch.randint(-2, 3, (2, 8, 256, 256), generator=generator).double()
    fake = torch.full(ulps.shape, 0.1, dtype=torch.float64) + ulps * 2**-14
    perturbed = torch.full_like(fake, 0.1)
    samples = iter((fake.to(dtype), perturbed.to(dtype)))  # G(z), then G(z + delta)
    _, g_term = stabilizers.latent_consistency_penalty(
        lambda z: next(samples), lambda x: x.flatten(1).sum(1), torch.zeros(2, 1, dtype=dtype), 0.03, 5, 1
    )
    expected = -(fake.to(dtype).double() - perturbed.to(dtype).double()).square().flatten(1).sum(1).mean()
    assert g_term.dtype == dtype
    torch.testing.assert_close(g_term, expected.to(dtype), **TOLERANCES[dtype])


def test_latent_consistency_bad_arguments_name_the_argument():
    g, d = make_generator(), make_torch_discriminator()
    z = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got inf"):
        stabilizers.latent_consistency_penalty(g, d, z, math.inf, 1.0, 1.0)
    with pytest.raises(ValueError, match="weight_g must be a finite number >= 0, got -0.5"):
        stabilizers.latent_consistency_penalty(g, d, z, 0.03, 1.0, -0.5)
    with pytest.raises(TypeError, match="z must be float64, float32, float16 or bfloat16, got torch.int64"):
        stabilizers.latent_consistency_penalty(g, d, torch.ones(4, 3, dtype=torch.int64), 0.03, 1.0, 1.0)
    with pytest.raises(TypeError, match="G must be callable, got NoneType"):
        stabilizers.latent_consistency_penalty(None, d, z, 0.03, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"z has no samples \(shape \[0, 3\]\)"):
        stabilizers.latent_consistency_penalty(g, d, z[:0], 0.03, 1.0, 1.0)


# --- PacGAN ---------------------------------------------------------------------------------------


def pack_transcription(x, k):
    """Pack m: samples m*k ... m*k + k - 1 concatenated along the channels."""
    return torch.stack([torch.cat([x[m * k + j] for j in range(k)], dim=0) for m in range(len(x) // k)])


@pytest.mark.parametrize("shape", [(6, 2), (6, 3, 4, 5), (12, 1, 2)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_pack_groups_consecutive_samples_and_unpack_inverts_it(shape, k):
    x = torch.randn(shape, dtype=torch.float64)
    packed = stabilizers.pack(x, k)
    assert packed.shape == (shape[0] // k, k * shape[1], *shape[2:])
    assert torch.equal(packed, pack_transcription(x, k))
    assert torch.equal(stabilizers.unpack(packed, k), x)


def test_pack_of_a_channels_last_batch_and_its_gradient():
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    packed = stabilizers.pack(x, np.int64(2))
    assert torch.equal(packed, pack_transcription(x.detach(), 2))
    upstream = torch.randn_like(packed)
    (grad,) = torch.autograd.grad(packed, x, upstream)
    assert torch.equal(grad, stabilizers.unpack(upstream, 2))


def test_pack_and_unpack_errors_name_k_and_the_sizes():
    with pytest.raises(ValueError, match="k=3 does not divide the batch size N=8 of x"):
        stabilizers.pack(torch.randn(8, 2), 3)
    with pytest.raises(ValueError, match=r"k=4 does not divide dim 1 \(size 6\) of x"):
        stabilizers.unpack(torch.randn(2, 6), 4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, C, ...\], got shape \[8\]"):
        stabilizers.pack(torch.randn(8), 2)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        stabilizers.pack(torch.randn(8, 2), 0)
    with pytest.raises(TypeError, match="k must be an int, got float"):
        stabilizers.unpack(torch.randn(8, 2), 2.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        stabilizers.pack([[1.0]], 1)


# --- WGAN weight clipping -------------------------------------------------------------------------


def test_clip_weights_clamps_every_parameter_and_no_buffer():
    torch.manual_seed(5)
    d = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.05)
        d[1].running_mean.fill_(3.0)
    before = {name: p.detach().clone() for name, p in d.named_parameters()}
    stabilizers.clip_weights_(d, np.float32(0.01))
    for name, p in d.named_parameters():
        expected = torch.where(before[name] > 0.01, 0.01, torch.where(before[name] < -0.01, -0.01, before[name]))
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0)
        assert p.grad_fn is None and p.is_leaf
    assert torch.equal(d[1].running_mean, torch.full((4,), 3.0))
    assert (before["0.bias"].abs() > 0.01).any()  # biases were clamped too


def test_clip_weights_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="c must be a finite number > 0, got 0.0"):
        stabilizers.clip_weights_(torch.nn.Linear(2, 2), 0)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got Tensor"):
        stabilizers.clip_weights_(torch.randn(3), 0.01)


# --- generator EMA --------------------------------------------------------------------------------


def make_batchnorm_generator(seed=6):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    ).double()


def train_a_little(g, seed):
    """Changes every parameter and BatchNorm's running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    g.train()(torch.randn(8, 3, generator=generator, dtype=torch.float64))


def floating_state(module):
    return {name: t.detach().clone() for name, t in module.state_dict().items() if t.is_floating_point()}


@pytest.mark.parametrize("decay", [0.9, np.float64(0.75), torch.tensor(0.5)])
def test_ema_is_the_textbook_average_of_parameters_and_floating_buffers(decay):
    g = make_batchnorm_generator()
    ema = stabilizers.GeneratorEMA(g, decay)
    beta = float(decay)
    train_a_little(g, 0)
    ema.update(g)  # the first update copies G
    expected = floating_state(g)
    for seed in (1, 2, 3):
        train_a_little(g, seed)
        ema.update(g)
        current = floating_state(g)
        expected = {name: beta * expected[name] + (1 - beta) * current[name] for name in expected}
    averaged = floating_state(ema.module)
    assert set(averaged) == set(expected) and "1.running_mean" in expected
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-14, atol=1e-15)


def test_ema_module_evaluates_with_the_averaged_weights_and_has_no_gradients():
    g = make_batchnorm_generator()
    ema = stabilizers.GeneratorEMA(g, 0.9)
    train_a_little(g, 0)
    ema.update(g)
    train_a_little(g, 1)
    ema.update(g)
    copy = make_batchnorm_generator()
    copy.load_state_dict(ema.module.state_dict())
    z = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(ema.module.eval()(z), copy.eval()(z), rtol=0, atol=0)
    torch.testing.assert_close(ema(z), copy(z), rtol=0, atol=0)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_dict_round_trips():
    g = make_batchnorm_generator()
    ema = stabilizers.GeneratorEMA(g, 0.9)
    for seed in range(3):
        train_a_little(g, seed)
        ema.update(g)
    restored = stabilizers.GeneratorEMA(make_batchnorm_generator(seed=9), 0.9)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.n_averaged) == 3
    train_a_little(g, 5)  # both continue the same way
    ema.update(g)
    restored.update(g)
    for name, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name


def test_half_life_decay_halves_a_weight_after_the_half_life():
    assert stabilizers.half_life_decay(10, 32) == pytest.approx(0.5 ** (32 / 10_000), rel=1e-15)
    decay = stabilizers.half_life_decay(np.float32(2.5), np.int64(50))
    assert decay ** (2500 / 50) == pytest.approx(0.5, rel=1e-12)


def test_half_life_decay_ramps_up_as_stylegan2_ada():
    """StyleGAN2-ADA's training loop: ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup), then
    ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))."""

    def stylegan2_ada(ema_kimg, batch_size, cur_nimg, ema_rampup):
        ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup)
        return 0.5 ** (batch_size / max(ema_nimg, 1e-8))

    for cur_nimg in (0, 32, 640, 6400, 199_968, 200_000, 10**7):
        want = stylegan2_ada(10, 32, cur_nimg, 0.05)
        assert stabilizers.half_life_decay(10, 32, images_seen=cur_nimg, rampup=0.05) == pytest.approx(want, rel=1e-15)
    # Past rampup * images_seen = the half-life, the ramp is over.
    assert stabilizers.half_life_decay(10, 32, images_seen=200_000, rampup=0.05) == stabilizers.half_life_decay(10, 32)
    assert stabilizers.half_life_decay(10, 32, images_seen=0, rampup=0.05) == 0.0
    assert stabilizers.half_life_decay(10, 32, images_seen=np.int64(640), rampup=np.float32(0.5)) == pytest.approx(
        0.5 ** (32 / 320), rel=1e-15
    )
    with pytest.raises(ValueError, match="rampup is given but images_seen is not"):
        stabilizers.half_life_decay(10, 32, rampup=0.05)
    with pytest.raises(ValueError, match="images_seen is given but rampup is not"):
        stabilizers.half_life_decay(10, 32, images_seen=100)
    with pytest.raises(ValueError, match="images_seen must be >= 0, got -1"):
        stabilizers.half_life_decay(10, 32, images_seen=-1, rampup=0.05)
    with pytest.raises(ValueError, match="rampup must be a finite number > 0, got 0.0"):
        stabilizers.half_life_decay(10, 32, images_seen=100, rampup=0)


def test_ema_bad_arguments_name_the_argument():
    g = make_batchnorm_generator()
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\], got 1.5"):
        stabilizers.GeneratorEMA(g, 1.5)
    with pytest.raises(TypeError, match="decay must be a real number, got str"):
        stabilizers.GeneratorEMA(g, "0.999")
    with pytest.raises(TypeError, match="G must be a torch.nn.Module, got function"):
        stabilizers.GeneratorEMA(lambda z: z, 0.9)
    ema = stabilizers.GeneratorEMA(g, 0.9)
    with pytest.raises(ValueError, match=r"G \(Linear\) does not match the averaged generator: tensor 0 .* \[2, 3\]"):
        ema.update(torch.nn.Linear(3, 2).double())
    with pytest.raises(ValueError, match="half_life_kimg must be a finite number > 0, got 0.0"):
        stabilizers.half_life_decay(0, 32)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        stabilizers.half_life_decay(10, 0)


def test_the_module_is_exported():
    assert gan_kernels.stabilizers is stabilizers


def test_ema_decay_set_between_updates_is_the_one_the_next_update_uses():
    # A ramp of the decay (StyleGAN2-ADA's ema_rampup) sets it between updates; it used to be frozen
    # into the averaging function at construction, so the new value was silently ignored.
    g = make_batchnorm_generator()
    ema = stabilizers.GeneratorEMA(g, 0.9)
    train_a_little(g, 0)
    ema.update(g)  # the first update copies G
    expected = floating_state(g)
    for seed, decay in ((1, 0.5), (2, 0.0), (3, 0.25)):
        ema.decay = decay
        train_a_little(g, seed)
        ema.update(g)
        current = floating_state(g)
        expected = {name: decay * expected[name] + (1 - decay) * current[name] for name in expected}
    for name, value in expected.items():
        torch.testing.assert_close(floating_state(ema.module)[name], value, rtol=1e-14, atol=1e-15)
    # A copy averages with its own decay, not the original's.
    duplicate = copy.deepcopy(ema)
    duplicate.decay = 1.0
    before = floating_state(duplicate.module)
    train_a_little(g, 4)
    duplicate.update(g)
    for name, value in before.items():
        assert torch.equal(floating_state(duplicate.module)[name], value), name
    assert ema.decay == 0.25
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\], got -0.5"):
        ema.decay = -0.5
    assert ema.decay == 0.25


# --- generator EMA of a half-precision generator --------------------------------------------------
# With StyleGAN's decay 0.998 an update moves the average by 0.002 * (p - p_ema), below half an ulp of
# bfloat16 (2^-9 relative or less) unless p is two ulps away or more: kept in bfloat16, the average
# stalls at its first copy.

HALF_PRECISION = [torch.bfloat16, torch.float16]


def make_half_precision_generator(dtype, seed=6):
    """A Linear layer with equalized-LR weights (randn, scaled at run time) and BatchNorm's buffers."""
    torch.manual_seed(seed)
    g = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
    with torch.no_grad():
        for name, tensor in g.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.randn_like(tensor).abs() if name.endswith("running_var") else torch.randn_like(tensor)
                )
    return g.to(dtype)


def random_step(g, generator, std=2e-3):
    """An optimiser step's worth of change (Adam's lr) to every floating tensor: parameters and buffers."""
    with torch.no_grad():
        for tensor in g.state_dict().values():
            if tensor.is_floating_point():
                step = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * std
                tensor.copy_(tensor.double() + step)


def float64_state(module):
    return {name: value.double() for name, value in floating_state(module).items()}


@pytest.mark.parametrize("dtype", HALF_PRECISION)
def test_ema_of_a_half_precision_generator_moves_by_less_than_an_ulp_per_update(dtype):
    g = torch.nn.Linear(1, 1, bias=False).to(dtype)
    with torch.no_grad():
        g.weight.fill_(1.0)
    ema = stabilizers.GeneratorEMA(g, 0.998)
    ema.update(g)
    with torch.no_grad():
        g.weight.fill_(1.5)  # each update moves the average by 0.001 at most, under half an ulp of 1
    for _ in range(100):
        ema.update(g)
    expected = 1.5 - 0.5 * 0.998**100  # 1.0909, not the 1.0 an average kept in bfloat16 stays at
    assert ema.module.weight.dtype == dtype
    assert ema.module.weight.item() == torch.tensor(expected, dtype=dtype).item()


@pytest.mark.parametrize("dtype", HALF_PRECISION)
@pytest.mark.parametrize(
    "convert",
    [
        lambda ema, dtype: ema.to(dtype),
        lambda ema, dtype: ema.to("cpu", dtype),
        lambda ema, dtype: ema.half().to(dtype),
    ],
    ids=["to-dtype", "to-device-dtype", "half-then-dtype"],
)
def test_ema_converted_to_half_precision_keeps_its_float32_average(dtype, convert):
    """``.to``/``.half()`` converted the float32 averages too (floating buffers), and the stall came back:
    the weight stayed at its first copy, 1.0."""
    g = torch.nn.Linear(1, 1, bias=False).to(dtype)
    with torch.no_grad():
        g.weight.fill_(1.0)
    ema = convert(stabilizers.GeneratorEMA(g, 0.998), dtype)
    assert ema.module.weight.dtype == dtype
    assert ema.float32_average.weight.dtype == torch.float32
    ema.update(g)
    with torch.no_grad():
        g.weight.fill_(1.5)
    for _ in range(100):
        ema.update(g)
    assert ema.module.weight.item() == torch.tensor(1.5 - 0.5 * 0.998**100, dtype=dtype).item()


@pytest.mark.parametrize("dtype", HALF_PRECISION)
@pytest.mark.parametrize(
    "convert",
    [lambda ema, dtype: ema.to(dtype), lambda ema, dtype: ema.module.to(dtype)],
    ids=["ema", "ema.module"],
)
def test_ema_of_a_float32_generator_converted_to_half_precision_averages_in_float32(dtype, convert):
    """An EMA made of a float32 G had no float32 averages; after G and the EMA were converted to half
    precision the average was kept in half precision and stayed at its first copy, 1.0."""
    g = torch.nn.Linear(1, 1, bias=False)
    ema = stabilizers.GeneratorEMA(g, 0.998)
    convert(ema, dtype)
    g.to(dtype)
    with torch.no_grad():
        g.weight.fill_(1.0)
    ema.update(g)
    with torch.no_grad():
        g.weight.fill_(1.5)
    for _ in range(100):
        ema.update(g)
    assert ema.module.weight.dtype == dtype
    assert ema.module.weight.item() == torch.tensor(1.5 - 0.5 * 0.998**100, dtype=dtype).item()
    restored = stabilizers.GeneratorEMA(g, 0.998)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.float32_average.weight, ema.float32_average.weight)


def test_ema_converted_to_half_precision_keeps_the_values_before_the_conversion():
    g = torch.nn.Linear(3, 2)
    ema = stabilizers.GeneratorEMA(g, 0.5).to(torch.bfloat16)
    for name, value in g.named_parameters():
        assert torch.equal(ema.float32_average.get_buffer(name), value.detach()), name


def test_ema_and_generator_converted_to_float64_average_in_float64():
    g = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    ema = stabilizers.GeneratorEMA(g, 0.5).double()
    g.double()
    with torch.no_grad():
        g.weight.fill_(1.0)
    ema.update(g)
    with torch.no_grad():
        g.weight.fill_(1.0 + 2**-40)  # lost in float32
    ema.update(g)
    assert ema.float32_average.weight.dtype == torch.float64
    assert ema.module.weight.item() == 1.0 + 2**-41


def test_ema_float32_average_follows_a_device_conversion():
    ema = stabilizers.GeneratorEMA(torch.nn.Linear(2, 2).to(torch.bfloat16), 0.99).to("meta", torch.float16)
    averages = dict(ema.float32_average.named_buffers())
    assert sorted(averages) == ["bias", "weight"]  # a conversion that dropped them passed the loop below
    for name, average in averages.items():
        assert (average.device.type, average.dtype) == ("meta", torch.float32), name
    assert ema.module.weight.device.type == "meta"


@pytest.mark.parametrize("dtype", HALF_PRECISION)
def test_ema_of_a_half_precision_generator_is_the_float64_average_rounded_once(dtype):
    g = make_half_precision_generator(dtype)
    ema = stabilizers.GeneratorEMA(g, 0.998)
    generator = torch.Generator().manual_seed(0)
    ema.update(g)
    expected = float64_state(g)
    for _ in range(300):
        random_step(g, generator)
        ema.update(g)
        expected = {name: 0.998 * value + 0.002 * float64_state(g)[name] for name, value in expected.items()}
    averaged = floating_state(ema.module)
    assert set(averaged) == set(expected) and "1.running_var" in expected
    half_ulp = torch.finfo(dtype).eps / 2  # relative, at most
    for name, value in expected.items():
        assert averaged[name].dtype == dtype, name
        # Rounded once from a float32 average: equal to the float64 average rounded, but where that
        # is within float32's error of a tie, and never further than half an ulp.
        assert (averaged[name] == value.to(dtype)).double().mean() > 0.95, name
        torch.testing.assert_close(averaged[name].double(), value, rtol=half_ulp * 1.001, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ema_of_a_float32_or_float64_generator_is_averaged_model_bitwise(dtype):
    g = make_batchnorm_generator().to(dtype)
    ema = stabilizers.GeneratorEMA(g, 0.998)
    plain = torch.optim.swa_utils.AveragedModel(
        g, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.998), use_buffers=True
    )
    for seed in range(4):
        train_a_little(g.double(), seed)
        g.to(dtype)
        ema.update(g)
        plain.update_parameters(g)
    assert list(ema.state_dict()) == list(plain.state_dict())  # no float32 copy of a float32 tensor
    for name, value in plain.state_dict().items():
        assert ema.state_dict()[name].dtype == value.dtype and torch.equal(ema.state_dict()[name], value), name


@pytest.mark.parametrize("dtype", HALF_PRECISION)
def test_ema_module_of_a_half_precision_generator_keeps_its_dtypes_and_loads_into_g(dtype):
    g = make_half_precision_generator(dtype)
    ema = stabilizers.GeneratorEMA(g, 0.998, device="cpu")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        random_step(g, generator)
        ema.update(g)
    assert {name: t.dtype for name, t in ema.module.state_dict().items()} == {
        name: t.dtype for name, t in g.state_dict().items()
    }
    g.load_state_dict(ema.module.state_dict())  # the module's state dict holds no float32 average
    z = torch.randn(5, 16).to(dtype)
    assert ema.module.eval()(z).dtype == dtype and ema(z).dtype == dtype
    # The float32 averages are buffers of the EMA: they follow it to another device.
    ema.to("meta")
    assert {t.device.type for t in ema.state_dict().values()} == {"meta"}


@pytest.mark.parametrize("dtype", HALF_PRECISION)
def test_ema_of_a_half_precision_generator_continues_exactly_from_its_state_dict(dtype):
    g = make_half_precision_generator(dtype)
    ema = stabilizers.GeneratorEMA(g, 0.998)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        random_step(g, generator)
        ema.update(g)
    restored = stabilizers.GeneratorEMA(make_half_precision_generator(dtype, seed=9), 0.998)
    restored.load_state_dict(ema.state_dict())
    for _ in range(50):  # under half an ulp per update: the module's values alone would drift
        random_step(g, generator)
        ema.update(g)
        restored.update(g)
    averages = {name for name in ema.state_dict() if name.startswith("float32_average.")}
    assert averages == {f"float32_average.{name}" for name in floating_state(g)}
    for name, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name


@pytest.mark.parametrize("source", ["without float32 average", "float32 G"])
def test_ema_of_a_half_precision_generator_loads_a_state_dict_without_float32_average(source):
    g = make_half_precision_generator(torch.bfloat16)
    ema = stabilizers.GeneratorEMA(g, 0.998)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        random_step(g, generator)
        ema.update(g)
    if source == "float32 G":
        old = stabilizers.GeneratorEMA(g.float(), 0.998)
        old.update(g.float())
        g.bfloat16()
    else:  # as saved before the float32 average existed
        old = ema
    state = {name: t for name, t in old.state_dict().items() if name.startswith("module.") or name == "n_averaged"}
    restored = stabilizers.GeneratorEMA(make_half_precision_generator(torch.bfloat16, seed=9), 0.998)
    restored.load_state_dict(state)
    # The average continues from the saved module's values, in float32.
    expected = {name: t.float() for name, t in floating_state(old.module).items()}
    random_step(g, generator)
    restored.update(g)
    for name, value in floating_state(restored.module).items():
        assert value.dtype == torch.bfloat16, name
        current = g.state_dict()[name].float()
        assert torch.equal(value, expected[name].lerp(current, 1 - 0.998).bfloat16()), name


@pytest.mark.parametrize("converted", ["half-precision G", "ema.half()"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ema_state_of_half_precision_tensors_loads_into_a_full_precision_average(converted, dtype):
    # A half-precision run resumed or evaluated in full precision: the strict load failed on every
    # float32_average.* key as unexpected.
    generator = torch.Generator().manual_seed(0)
    if converted == "half-precision G":
        g = make_half_precision_generator(torch.bfloat16)
        ema = stabilizers.GeneratorEMA(g, 0.998)
    else:
        g = make_half_precision_generator(torch.float32)
        ema = stabilizers.GeneratorEMA(g, 0.998).half()
        g.half()
    for _ in range(5):
        random_step(g, generator)
        ema.update(g)
    state = ema.state_dict()
    restored = stabilizers.GeneratorEMA(make_half_precision_generator(dtype, seed=9), 0.998)
    restored.load_state_dict(state)
    assert not [name for name in restored.state_dict() if name.startswith("float32_average.")]
    assert int(restored.n_averaged) == 5
    loaded = floating_state(restored.module)
    assert set(loaded) == set(floating_state(ema.module))
    rounded_differently = 0
    for name, value in loaded.items():
        average = state[f"float32_average.{name}"]
        # The float32 average itself, not module.*'s half-precision rounding of it.
        assert value.dtype == dtype and torch.equal(value, average.to(dtype)), name
        rounded_differently += not torch.equal(state[f"module.{name}"].to(dtype), value)
    assert rounded_differently  # else the test could not tell the average from its rounding
    assert torch.equal(restored.module[1].num_batches_tracked, ema.module[1].num_batches_tracked)


def test_g_in_another_dtype_than_the_average_is_an_error_that_names_the_tensor():
    # It failed inside torch: in its lerp (2.13: "expected dtype float for `end` but got dtype
    # c10::BFloat16") or its grouping of the pairs (2.11: "Tensors of the same index must be on the
    # same device and the same dtype").
    g = make_half_precision_generator(torch.float32)
    ema = stabilizers.GeneratorEMA(g, 0.9)
    ema.update(g)
    state = {name: t.clone() for name, t in ema.state_dict().items()}
    match = (
        r"tensor 0 of its parameters and buffers has shape \[.*\] and dtype torch.bfloat16, "
        r"the average's has shape \[.*\] and dtype torch.float32"
    )
    with pytest.raises(TypeError, match=match):
        ema.update(copy.deepcopy(g).bfloat16())
    for name, value in ema.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("spectral_norm", ["ours", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_keeps_the_spectral_norms_vectors_of_unit_length(spectral_norm, dtype):
    """An average of two unit vectors is shorter than 1; a spectral norm in eval mode divides by
    u . (W v) with u, v as stored, so the EMA's W / sigma had a spectral norm above 1. The average
    keeps their direction, at unit length."""
    normalise = (
        gan_kernels.nn.spectral_norm if spectral_norm == "ours" else torch.nn.utils.parametrizations.spectral_norm
    )
    torch.manual_seed(0)
    g = torch.nn.Sequential(normalise(torch.nn.Linear(6, 5)), torch.nn.Tanh()).to(dtype)
    ema = stabilizers.GeneratorEMA(g, decay=0.5)
    ema.update(g)
    sn = g[0].parametrizations.weight[0]
    first = (sn._u.float().clone(), sn._v.float().clone())
    with torch.no_grad():
        for vector in (sn._u, sn._v):  # G's power iteration moved on to other unit vectors
            vector.copy_(torch.nn.functional.normalize(torch.randn_like(vector, dtype=torch.float32), dim=0))
    ema.update(g)
    averaged = ema.module[0].parametrizations.weight[0]
    for got, old, new in zip((averaged._u, averaged._v), first, (sn._u, sn._v)):
        want = torch.nn.functional.normalize(0.5 * old + 0.5 * new.float(), dim=0)
        torch.testing.assert_close(got, want.to(dtype))  # the dtype's own tolerance: lerp rounds differently
    if dtype == torch.bfloat16:  # the float32 average is the normalised one, which the module rounds
        average = dict(ema.float32_average.named_buffers())["0.parametrizations.weight.0._u"]
        torch.testing.assert_close(torch.linalg.vector_norm(average), torch.tensor(1.0))
