"""Anti-collapse toolbox: stabilisers from the GAN literature that wrap an existing training step.

    unrolled_generator_loss      G's loss against D unrolled k SGD steps ahead (Metz et al. 2017)
    InstanceNoise                annealed Gaussian noise on everything D sees (Sonderby et al. 2017)
    consistency_penalty          CR/bCR: D's output unchanged by augmentation (Zhang et al. 2020;
                                 Zhao et al. 2021)
    latent_consistency_penalty   zCR: consistency under small latent perturbations (Zhao et al. 2021)
    pack, unpack                 PacGAN: D judges k samples at once (Lin et al. 2018)
    clip_weights_                the original WGAN's weight clipping (Arjovsky et al. 2017)
    GeneratorEMA                 an exponential moving average of G's weights for evaluation
                                 (Karras et al. 2018, ProGAN/StyleGAN; Yazici et al. 2019)

Every squared distance between two batches below is ``mean_i ||a_i - b_i||^2``: each sample's
squared L2 distance summed over all its non-batch elements, averaged over the batch (for fp16/bf16
in float32, returned in their dtype). For D outputs
of shape [N] or [N, 1] that is the mean squared error; reimplementations that take the mean over all
elements of images (StudioGAN's ``MSELoss``) use a weight smaller by the number of elements per sample.
"""

import itertools

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import _checks
from ._module_state import HALF_PRECISION, KeepsFullPrecision, is_spectral_norm
from .nn import spectral_norm_layers
from .reference import _compute_dtype


def _check_samples(x, arg):
    _checks.check_floating(x, arg)
    if x.dim() == 0:
        raise ValueError(f"{arg} must have a batch dimension, got a 0-dimensional tensor")


def _check_scalar(loss, arg):
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{arg} must return a scalar (0-d) tensor, got {shape}")
    return loss


def _mean_squared_distance(a, b, arg_a, arg_b):
    """``mean_i ||a_i - b_i||^2`` over the batch (dim 0), the squared norm over every other dim."""
    # What D or G returned: a scalar, a tuple or integers failed below, naming neither ("len() of a
    # 0-d tensor", "'tuple' object has no attribute 'shape'").
    _check_samples(a, arg_a)
    _check_samples(b, arg_b)
    _checks.same_device(b, a, arg_b, arg_a)
    if a.shape != b.shape:
        raise ValueError(f"{arg_b} has shape {list(b.shape)} but {arg_a} has shape {list(a.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    # In float16 the square of a difference under 1.7e-4 (zCR's G(z) against G(z + delta)) is 0.
    a, b = (t.to(_compute_dtype(t)) for t in (a, b))
    return (a - b).square().reshape(len(a), -1).sum(1).mean().to(dtype)


# --- unrolled GAN ---------------------------------------------------------------------------------


def unrolled_generator_loss(D, fake, real, d_loss, g_loss, steps, lr):
    """The generator's loss against D unrolled ``steps`` SGD steps ahead (Metz et al. 2017):

        theta_0 = D's parameters,  theta_{j+1} = theta_j - lr * d/dtheta d_loss(D_theta_j(real), D_theta_j(fake))
        loss    = g_loss(D_theta_steps(fake), D_theta_steps(real))

    Each step's gradient is taken with ``create_graph=True`` and ``fake`` is not detached, so G's
    gradient flows through the unrolled updates: G is rewarded for fakes that D's next updates will
    not easily reject, which discourages it from hopping between modes. ``steps=0`` is the plain
    generator loss; a few steps suffice on a mixture of Gaussians (examples/mixture_of_gaussians.py
    unrolls 5).

    ``D``: a ``torch.nn.Module``, run on copies of its parameters with ``torch.func.functional_call``;
    every parameter is updated (also one the real D's optimiser would leave frozen), and its
    ``requires_grad`` does not matter. D's own parameters, their ``.grad`` and its buffers are
    untouched: the buffers are cloned once per call and the unrolled forwards update the clones. So in
    training mode each forward advances the power iteration of a spectrally normalised layer on copies
    of its ``u``, ``v`` (as the real D's steps would), and in eval mode all forwards use the real D's
    ``u``, ``v``; the ``sigma`` that ``gan_kernels.nn.spectral_sigmas`` reports stays that of D's own
    latest forward. Every step runs D on ``real``, then on ``fake``, in separate forwards (so that
    batch statistics such as minibatch stddev never mix real and fake samples).

    ``fake``: G's samples, with their graph to G (one that does not require grad, detached or a real
    batch passed in its place, is a ValueError while grad mode is on: G would get no gradient).
    ``real``: a real batch (detached here). The order is fake before real, as in
    :func:`gan_kernels.losses.generator_loss` (the penalties and ``discriminator_loss`` take real first).
    ``d_loss(real_logits, fake_logits)`` -> scalar, D's loss for the unrolled steps, e.g.
    ``functools.partial(losses.discriminator_loss, kind="non_saturating")``; it sees logits only, so
    the unrolled steps carry no gradient penalty. ``g_loss(fake_logits, real_logits)`` -> scalar,
    always called with both, e.g. ``functools.partial(losses.generator_loss, kind="non_saturating")``,
    whose non-relativistic kinds ignore ``real_logits``. ``steps``: an int >= 0. ``lr``: the step size
    of the unrolled SGD updates, > 0. Plain SGD keeps the unrolled graph free of optimiser state; for a
    D trained with Adam it is not D's own learning rate (Adam's steps are normalised), so choose it for
    how far the unrolled D should move (examples/mixture_of_gaussians.py measures a few).

    Cost: each step runs D twice forward and once backward with ``create_graph=True``, and G's
    backward then differentiates through all of it (second derivatives of D's layers, which the
    gan_kernels ops and layers provide).
    """
    _checks.module(D, "D")
    _check_samples(fake, "fake")
    _check_samples(real, "real")
    _checks.function(d_loss, "d_loss")
    _checks.function(g_loss, "g_loss")
    steps = _checks.count(steps, "steps", minimum=0)
    lr = _checks.positive(lr, "lr")
    if steps:
        _checks.grad_enabled("the unrolled generator loss")
    # Without G's graph the loss still requires grad (through the copies of D's parameters), so a
    # detached fake, or real and fake swapped (real comes first in the penalties and losses), left
    # G without a gradient and nothing said so.
    if torch.is_grad_enabled() and not fake.requires_grad:
        raise ValueError(
            "fake does not require grad, so the loss cannot train G: pass G's samples with their graph "
            "(unrolled_generator_loss(D, G(z), real, ...): fake before real, not detached)"
        )
    real = real.detach()
    named = list(D.named_parameters())
    if steps and not named:
        raise ValueError(f"D ({type(D).__name__}) has no parameters to unroll; use steps=0")
    names = [name for name, _ in named]
    # Leaves of their own: G's backward must end here, not in D's parameters (their .grad).
    params = [p.detach().requires_grad_() for _, p in named]
    buffers = {name: b.clone() for name, b in D.named_buffers()}
    kept_sigmas = [(layer, layer.sigma) for _, layer in spectral_norm_layers(D)]

    def logits(params):
        state = {**dict(zip(names, params)), **buffers}
        return torch.func.functional_call(D, state, (real,)), torch.func.functional_call(D, state, (fake,))

    try:
        for _ in range(steps):
            loss = _check_scalar(d_loss(*logits(params)), "d_loss")
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            params = [p if g is None else p - lr * g for p, g in zip(params, grads)]
        real_logits, fake_logits = logits(params)
        return _check_scalar(g_loss(fake_logits, real_logits), "g_loss")
    finally:
        for layer, sigma in kept_sigmas:
            layer.sigma = sigma


# --- instance noise -------------------------------------------------------------------------------


class InstanceNoise:
    """Instance noise (Sonderby et al. 2017; Arjovsky & Bottou 2017): ``x + std_t * N(0, I)`` on every
    batch D sees, real and fake alike (in D's step and in G's loss), so that the two distributions
    overlap early in training and D cannot separate them perfectly. ``std_t`` falls linearly from
    ``std`` to 0 over ``anneal_steps`` calls of :meth:`step`:

        std_t = std * max(0, 1 - t / anneal_steps),   t = the number of step() calls so far

    Call :meth:`step` once per training iteration, after that iteration's D and G steps, so that
    both see the same ``std_t``. Once ``std_t`` is 0 the input is returned unchanged, without a draw.
    ``generator``: a ``torch.Generator`` on the inputs' device for reproducible noise (its state is
    the caller's to save; :meth:`state_dict` holds the step count only). Inside a ``torch.compile``d
    function it runs eagerly (a graph break), so that the changing ``std_t`` does not recompile it.

        noise = InstanceNoise(std=0.1, anneal_steps=10_000)
        loss_d = losses.discriminator_loss(D(noise(real)), D(noise(fake.detach())), kind)
        loss_g = losses.generator_loss(D(noise(fake)), kind=kind)
        noise.step()
    """

    def __init__(self, std, anneal_steps, generator=None):
        self.std = _checks.nonnegative(std, "std")
        self.anneal_steps = _checks.count(anneal_steps, "anneal_steps", minimum=1)
        self.generator = _checks.generator(generator)
        self.steps_taken = 0

    @property
    def current_std(self):
        """The noise's standard deviation now, ``std_t``."""
        return self.std * max(0.0, 1.0 - self.steps_taken / self.anneal_steps)

    # Runs eagerly inside a compiled function (a graph break): its std changes with every step(), and
    # traced, every step recompiled the caller (a guard on steps_taken) until dynamo's recompile
    # limit, after which the caller ran eagerly for good (or failed under fullgraph=True).
    @torch.compiler.disable
    def __call__(self, x):
        _checks.check_floating(x, "x")
        std = self.current_std
        if std == 0:
            return x
        return x + std * torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def step(self):
        self.steps_taken += 1

    def state_dict(self):
        return {"steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict):
        if not isinstance(state_dict, dict) or "steps_taken" not in state_dict:
            raise ValueError(f"state_dict must be a dict with the key 'steps_taken', got {state_dict!r}")
        self.steps_taken = _checks.count(state_dict["steps_taken"], "state_dict['steps_taken']", minimum=0)

    def __repr__(self):
        return (
            f"InstanceNoise(std={self.std}, anneal_steps={self.anneal_steps}, steps_taken={self.steps_taken}, "
            f"current_std={self.current_std:.4g})"
        )


# --- consistency regularisation -------------------------------------------------------------------


def consistency_penalty(D, x, augment, weight, *, outputs=None):
    """Consistency regularisation of D (CR, Zhang et al. 2020), the term added to D's loss:

        weight * mean_i ||D(x)_i - D(augment(x))_i||^2

    ``augment``: a callable mapping a batch to an augmented batch of the same shape (flips,
    translations, ...; the paper's are flipping and shifting images). ``D(x)`` is not detached: the
    gradient flows through both outputs, as the paper's algorithm writes it and as reimplementations
    that reproduce its results (StudioGAN) train it. CR-GAN applies it to the real batch; balanced
    CR (bCR, Zhao et al. 2021) to the real and the generated batch of D's step, with weight 10 each:

        loss_d = loss_d + consistency_penalty(D, real, augment, 10) + consistency_penalty(D, fake.detach(), augment, 10)

    ``outputs``: ``D(x)`` when the caller already has it (the adversarial loss's logits), saving a
    forward. D's outputs may have any shape [N, ...] (the squared distance is summed per sample)."""
    _checks.function(D, "D")
    _check_samples(x, "x")
    _checks.function(augment, "augment")
    _checks.has_samples(x, "x")
    weight = _checks.nonnegative(weight, "weight")
    if outputs is None:
        outputs = D(x)
    else:
        _check_samples(outputs, "outputs")
    augmented = augment(x)
    if not isinstance(augmented, torch.Tensor) or augmented.shape != x.shape:
        got = list(augmented.shape) if isinstance(augmented, torch.Tensor) else type(augmented).__name__
        raise ValueError(f"augment must return a tensor of x's shape {list(x.shape)}, got {got}")
    return weight * _mean_squared_distance(outputs, D(augmented), "D(x)", "D(augment(x))")


def latent_consistency_penalty(G, D, z, sigma, weight_d, weight_g, *, generator=None):
    """Latent consistency regularisation (zCR, Zhao et al. 2021): with ``delta ~ N(0, sigma^2 I)``,

        d_term =  weight_d * mean_i ||D(G(z))_i - D(G(z + delta))_i||^2    (to D's loss and optimiser)
        g_term = -weight_g * mean_i ||G(z)_i - G(z + delta)_i||^2          (to G's loss and optimiser)

    Returns ``(d_term, g_term)``. D is made insensitive to small latent changes, while G is pushed to
    make them visible in its samples (against collapse onto few outputs). G runs once on ``z`` and once
    on ``z + delta``; ``d_term`` sees G's samples detached, so its gradient reaches only D, and
    ``g_term`` runs no D, so its gradient reaches only G. The paper's settings: ``sigma`` 0.03,
    ``weight_d`` 5, ``weight_g`` 0.5 (with its squared norms; see the module docstring for
    reimplementations that average over elements). ``generator``: a ``torch.Generator`` for delta."""
    _checks.function(G, "G")
    _checks.function(D, "D")
    _check_samples(z, "z")
    _checks.has_samples(z, "z")
    sigma = _checks.nonnegative(sigma, "sigma")
    weight_d = _checks.nonnegative(weight_d, "weight_d")
    weight_g = _checks.nonnegative(weight_g, "weight_g")
    delta = sigma * torch.randn(z.shape, generator=_checks.generator(generator), dtype=z.dtype, device=z.device)
    fake, perturbed = G(z), G(z + delta)
    # First, so that what G returned is checked before D is called on it.
    g_term = -weight_g * _mean_squared_distance(fake, perturbed, "G(z)", "G(z + delta)")
    d_term = weight_d * _mean_squared_distance(D(fake.detach()), D(perturbed.detach()), "D(G(z))", "D(G(z + delta))")
    return d_term, g_term


# --- PacGAN ---------------------------------------------------------------------------------------


def pack(x, k):
    """PacGAN's packing (Lin et al. 2018): ``[N, C, ...] -> [N/k, k*C, ...]``, so that D judges k
    samples jointly and a generator that repeats itself is easy to spot. Consecutive samples form a
    pack: pack m holds samples ``m*k, ..., m*k + k - 1``, sample ``m*k + j`` in channels
    ``j*C, ..., (j+1)*C - 1``. Pack real and fake batches alike (never mix them in one pack) and build
    D with ``k*C`` input channels; the losses then see N/k logits. k must divide N.
    :func:`unpack` is the inverse."""
    k = _checks.count(k, "k")
    _checks.tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have shape [N, C, ...], got shape {list(x.shape)}")
    n = x.shape[0]
    if n % k:
        raise ValueError(f"k={k} does not divide the batch size N={n} of x; use a batch size that is a multiple of k")
    return x.reshape(n // k, k * x.shape[1], *x.shape[2:])


def unpack(x, k):
    """The inverse of :func:`pack`: ``[M, k*C, ...] -> [M*k, C, ...]``; k must divide dim 1."""
    k = _checks.count(k, "k")
    _checks.tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have shape [M, k*C, ...], got shape {list(x.shape)}")
    channels = x.shape[1]
    if channels % k:
        raise ValueError(f"k={k} does not divide dim 1 (size {channels}) of x, which holds k samples' channels")
    return x.reshape(x.shape[0] * k, channels // k, *x.shape[2:])


# --- WGAN weight clipping -------------------------------------------------------------------------


def clip_weights_(module, c):
    """The original WGAN's Lipschitz constraint (Arjovsky et al. 2017): clamps every parameter of
    ``module`` to ``[-c, c]`` in place, without autograd, after each critic step (the paper's c is
    0.01). Every parameter means biases and normalisation scales too, as the WGAN code clamps
    ``netD.parameters()``; buffers (BatchNorm running statistics, spectral norm's u, v) are not
    parameters and are left alone."""
    _checks.module(module, "module")
    c = _checks.positive(c, "c")
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.clamp_(-c, c)


# --- generator EMA --------------------------------------------------------------------------------


def half_life_decay(half_life_kimg, batch_size, images_seen=None, rampup=None):
    """The EMA decay per update for StyleGAN's convention of a half-life in thousands of images:
    after ``half_life_kimg * 1000`` images (that many / ``batch_size`` updates) an old weight's share
    has halved, ``decay = 0.5 ** (batch_size / (1000 * half_life_kimg))``. StyleGAN2-ADA's default
    ``ema_kimg = 10`` at batch 32 gives 0.99778.

    With ``rampup`` and ``images_seen`` (StyleGAN2-ADA's ``ema_rampup``, 0.05 in its paper
    configurations, and ``cur_nimg``: the images G trained on before this update), the half-life is
    at most ``rampup * images_seen`` images, so that early in training the average does not hold on
    to the first, useless weights; the decay is then recomputed before each update::

        ema.decay = half_life_decay(10, batch_size, images_seen=step * batch_size, rampup=0.05)
        ema.update(G)

    At ``images_seen = 0`` the decay is 0 (the update copies G)."""
    half_life_kimg = _checks.positive(half_life_kimg, "half_life_kimg")
    batch_size = _checks.count(batch_size, "batch_size")
    if (images_seen is None) != (rampup is None):
        given, missing = ("images_seen", "rampup") if rampup is None else ("rampup", "images_seen")
        raise ValueError(f"{given} is given but {missing} is not: the ramp needs both")
    half_life_images = 1000 * half_life_kimg
    if rampup is not None:
        rampup = _checks.positive(rampup, "rampup")
        images_seen = _checks.count(images_seen, "images_seen", minimum=0)
        half_life_images = min(half_life_images, rampup * images_seen)
    return 0.5 ** (batch_size / half_life_images) if half_life_images > 0 else 0.0


class _Float32Averages(KeepsFullPrecision, torch.nn.Module):
    """Holds GeneratorEMA's float32 averages: ``ema.half()`` or ``ema.to(device, torch.bfloat16)``
    moves them but does not bring back the stall they prevent."""


class GeneratorEMA(AveragedModel):
    """An exponential moving average of a generator's weights, the generator to evaluate and sample
    from (ProGAN, StyleGAN's ``G_ema``, BigGAN; Yazici et al. 2019 on why it helps). A
    ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)`` and
    ``use_buffers=True``:

        ema = GeneratorEMA(G, decay=half_life_decay(10, batch_size))
        ...                                   # after every optimiser step of G:
        ema.update(G)
        samples = ema.module(z)               # or ema(z); ema.module.eval() for BatchNorm's running stats

    The copy is made at construction (``copy.deepcopy``, with ``requires_grad`` off). The first
    :meth:`update` copies G (AveragedModel's rule); every later one is

        p_ema = decay * p_ema + (1 - decay) * p

    for every parameter and every floating-point buffer (BatchNorm's running statistics, spectral
    norm's u, v), as BigGAN averages its whole state dict; a spectral norm's averaged u and v are
    then scaled back to unit length (its eval mode divides by u . (W v) as stored, and an average of
    unit vectors is shorter: W / sigma would come out too large). Integer buffers (BatchNorm's
    ``num_batches_tracked``) go through the same formula and are stored back in their integer dtype,
    as AveragedModel does. ``decay`` in [0, 1]; :func:`half_life_decay` converts StyleGAN's
    half-life, and its ramp (StyleGAN2-ADA's ``ema_rampup``) when the attribute ``decay`` is set
    between updates; the next :meth:`update` uses the new value. The state dict (``module.*`` and
    ``n_averaged``) saves and restores the average, not ``decay``.

    The average of a bfloat16 or float16 tensor is kept in float32 (``float32_average.*`` in the
    state dict), updated in float32 and rounded once into ``ema.module``, which keeps G's dtypes: in
    the tensor's own dtype, ``(1 - decay) * (p - p_ema)`` is mostly below half an ulp for decays such
    as 0.998, and the average would silently stay at its first copy. Converting the EMA
    (``ema.half()``, ``ema.to(device, dtype)``) moves these averages to the new device but keeps them
    float32 (``ema.double()`` makes them float64); a tensor it converts to half precision gets its
    float32 average then, from its value before the conversion (one converted through ``ema.module``
    gets it at the next :meth:`update` or state-dict load, from its rounded value). A state dict
    without the float32 average (saved before it existed, or from an EMA of a float32 G) loads, and
    the average continues from ``module.*``; one with it loads into an EMA that keeps those tensors in
    float32 or float64 (a half-precision run resumed or evaluated in full precision), whose module then
    takes the float32 averages, not their rounding. G's tensors are moved to the average's device;
    their dtypes must be the average's (``ema.module``'s): another is a TypeError naming the tensor.

    Under ``DistributedDataParallel`` build it from the wrapped module (``GeneratorEMA(G_ddp.module,
    decay)``), so that the average is a plain module any rank can sample from alone; a DDP ``G`` is a
    ``ValueError``. ``update`` takes the DDP module or the wrapped one (the same tensors)."""

    def __init__(self, G, decay, device=None):
        _checks.module(G, "G")
        if isinstance(G, DistributedDataParallel):
            # The copy would be a DDP module too: every forward of the average would broadcast buffers
            # with the other ranks, so sampling on one rank hung until the process group's timeout.
            raise ValueError(
                "G is a DistributedDataParallel: build the average from the module it wraps, "
                "GeneratorEMA(G.module, decay); update() takes either"
            )
        decay = _checks.interval(decay, "decay", 0, 1)
        # A bound method, so that the update reads the decay set now (a copy of the module, too).
        super().__init__(G, device=device, multi_avg_fn=self._average, use_buffers=True)
        self.decay = decay
        self.module.requires_grad_(False)
        # Buffers of this wrapper, not of the module: they follow .to(device) and the state dict, are
        # not averaged by AveragedModel (which walks self.module), and ema.module.state_dict() loads into G.
        self.float32_average = _Float32Averages()
        self._add_float32_averages()

    def _add_float32_averages(self, full_precision=None):
        """A float32 average for every half-precision tensor of the module that has none yet: at
        construction, and after the module became half precision (``ema.to(torch.bfloat16)``, or
        ``ema.module.half()``, seen at the next update or load), where the average had silently stalled.
        ``full_precision``: the tensors before that conversion, the values to keep."""
        averages = dict(self.float32_average.named_buffers())
        for name, tensor in self._named_averaged_tensors():
            if tensor.dtype not in HALF_PRECISION or name in averages:
                continue
            source = (full_precision or {}).get(name)
            if source is None or source.dtype in HALF_PRECISION:
                source = tensor
            *path, leaf = name.split(".")
            holder = self.float32_average
            for part in path:  # nested as in the module, so that the names match module.*
                if not hasattr(holder, part):
                    holder.add_module(part, torch.nn.Module())
                holder = getattr(holder, part)
            holder.register_buffer(leaf, source.detach().to(tensor.device, torch.float32))

    def _apply(self, fn, recurse=True):
        # Detached aliases keep the storage of the tensors before conversion (parameters get new .data).
        before = {name: tensor.detach() for name, tensor in self._named_averaged_tensors()}
        converted = super()._apply(fn, recurse)
        self._add_float32_averages(before)
        return converted

    def _named_averaged_tensors(self):
        """The module's tensors in the order AveragedModel pairs them with G's."""
        return itertools.chain(self.module.named_parameters(), self.module.named_buffers())

    @property
    def decay(self):
        """The weight of the old average in each update, in [0, 1]."""
        return self._decay

    @decay.setter
    def decay(self, value):
        self._decay = _checks.interval(value, "decay", 0, 1)

    def _average(self, averaged, current, n_averaged):
        get_ema_multi_avg_fn(self._decay)(averaged, current, n_averaged)

    @torch.no_grad()
    def _update_float32_averages(self, G, first_update):
        float32_averages = dict(self.float32_average.named_buffers())
        for (name, averaged), current in zip(self._named_averaged_tensors(), (*G.parameters(), *G.buffers())):
            if name in float32_averages:
                average = float32_averages[name]
                current = current.detach().to(average.device, average.dtype)  # float32, or float64 after .double()
                if first_update:
                    average.copy_(current)
                else:
                    average.lerp_(current, 1 - self._decay)
                averaged.copy_(average)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict saved before the float32 averages existed, or from an EMA of a float32 G, has
        # none: they start from the module's tensors, as at construction (BatchNorm's way with a
        # missing num_batches_tracked).
        self._add_float32_averages()
        averages = dict(self.float32_average.named_buffers())
        for name, _ in self._named_averaged_tensors():
            module_key, average_key = f"{prefix}module.{name}", f"{prefix}float32_average.{name}"
            if name in averages:
                if average_key not in state_dict and module_key in state_dict:
                    state_dict[average_key] = state_dict[module_key].to(torch.float32)
            elif average_key in state_dict:
                # Saved where this tensor was half precision (a bf16 G, ema.half()), loaded where it is
                # not: the float32 average is the average, module.* only its rounding. Left in, the
                # strict load failed on it as an unexpected key (a half-precision run resumed or
                # evaluated in float32).
                state_dict[module_key] = state_dict.pop(average_key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update(self, G):
        """Moves the average towards ``G``'s current parameters and buffers (see the class docstring)."""
        _checks.module(G, "G")
        # AveragedModel pairs the tensors by position and stops at the shorter list, and torch's
        # grouping of the pairs (2.11) or its lerp (2.13) fails on two dtypes: check they match.
        ours = [(t.shape, t.dtype) for _, t in self._named_averaged_tensors()]
        theirs = [(t.shape, t.dtype) for t in (*G.parameters(), *G.buffers())]

        def describe(tensor):
            return "none" if tensor is None else f"shape {list(tensor[0])} and dtype {tensor[1]}"

        for index, (mine, other) in enumerate(itertools.zip_longest(ours, theirs)):
            if mine != other:
                error = TypeError if mine is not None and other is not None and mine[0] == other[0] else ValueError
                raise error(
                    f"G ({type(G).__name__}) does not match the averaged generator: tensor {index} of its "
                    f"parameters and buffers has {describe(other)}, the average's has {describe(mine)}"
                )
        self._add_float32_averages()
        first_update = bool(self.n_averaged == 0)
        # Also averages the half-precision tensors in their own dtype; their float32 averages replace that.
        self.update_parameters(G)
        self._update_float32_averages(G, first_update)
        if not first_update:  # a copy of G's unit vectors stays as it is
            self._normalise_spectral_vectors()

    @torch.no_grad()
    def _normalise_spectral_vectors(self):
        """Back to unit length, the averaged u, v of every spectral norm of the module: an average of
        unit vectors is shorter, and a spectral norm in eval mode divides by u . (W v) with its u, v
        as stored, so the average's W / sigma came out too large (a spectral norm of 1.03 after 2000
        Adam steps at decay 0.999). Their direction is what the average keeps. Foreach ops over all
        of them: one F.normalize per vector took a third of an update of a G with 50 of them."""
        float32_averages = dict(self.float32_average.named_buffers())
        averaged, eps, rounded = [], [], []  # the averages to normalise; where one is float32, its module copy
        for name, owner in self.module.named_modules():
            if not is_spectral_norm(owner):
                continue
            for leaf in ("_u", "_v"):
                vector = getattr(owner, leaf)
                average = float32_averages.get(f"{name}.{leaf}")
                averaged.append(vector if average is None else average)
                eps.append(owner.eps)
                if average is not None:
                    rounded.append((vector, average))
        if not averaged:
            return
        # As F.normalize: v / max(||v||, eps).
        norms = torch._foreach_norm(averaged)
        torch._foreach_clamp_min_(norms, eps)
        torch._foreach_div_(averaged, norms)
        if rounded:
            torch._foreach_copy_([vector for vector, _ in rounded], [average for _, average in rounded])

    def extra_repr(self):
        return f"decay={self.decay}"
