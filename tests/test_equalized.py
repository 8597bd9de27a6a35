"""gan_kernels.nn.EqualizedLinear / EqualizedConv2d against StyleGAN's FullyConnectedLayer / Conv2dLayer."""

import math

import numpy as np
import pytest
import torch
from helpers import (
    DEVICES,
    ReferenceEqualizedConv2d,
    ReferenceEqualizedLinear,
    assert_close,
    assert_compiled_matches_eager,
    unregistered_autograd_is_an_error,
)

from gan_kernels.nn import EqualizedConv2d, EqualizedLinear, MinibatchDiscrimination

# --- StyleGAN2-ADA's layer forwards, transcribed literally (torch_utils/ops/bias_act.py _bias_act_ref,
# training/networks.py FullyConnectedLayer.forward and Conv2dLayer.forward without resampling). ---
STYLEGAN_ACTS = {
    "linear": (lambda x, **_: x, 0, 1),
    "relu": (lambda x, **_: torch.nn.functional.relu(x), 0, np.sqrt(2)),
    "lrelu": (lambda x, alpha, **_: torch.nn.functional.leaky_relu(x, alpha), 0.2, np.sqrt(2)),
    "tanh": (lambda x, **_: torch.tanh(x), 0, 1),
    "sigmoid": (lambda x, **_: torch.sigmoid(x), 0, 1),
    "elu": (lambda x, **_: torch.nn.functional.elu(x), 0, 1),
    "selu": (lambda x, **_: torch.nn.functional.selu(x), 0, 1),
    "softplus": (lambda x, **_: torch.nn.functional.softplus(x), 0, 1),
    "swish": (lambda x, **_: torch.sigmoid(x) * x, 0, np.sqrt(2)),
}


def stylegan_bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    func, def_alpha, def_gain = STYLEGAN_ACTS[act]
    alpha = float(alpha if alpha is not None else def_alpha)
    gain = float(gain if gain is not None else def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    alpha = float(alpha)
    x = func(x=x, alpha=alpha)
    gain = float(gain)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def stylegan_fully_connected_forward(layer, x):
    w = layer.weight.to(x.dtype) * layer.weight_gain
    b = layer.bias
    if b is not None:
        b = b.to(x.dtype)
        if layer.bias_gain != 1:
            b = b * layer.bias_gain
    if layer.activation == "linear" and b is not None:
        x = torch.addmm(b.unsqueeze(0), x, w.t())
    else:
        x = x.matmul(w.t())
        x = stylegan_bias_act_ref(x, b, act=layer.activation)
    return x


def stylegan_conv2d_forward(layer, x, gain=1):
    w = layer.weight * layer.weight_gain
    b = layer.bias.to(x.dtype) if layer.bias is not None else None
    x = torch.nn.functional.conv2d(x, w.to(x.dtype), padding=layer.kernel_size // 2)
    act_gain = STYLEGAN_ACTS[layer.activation][2] * gain
    act_clamp = layer.conv_clamp * gain if layer.conv_clamp is not None else None
    return stylegan_bias_act_ref(x, b, act=layer.activation, gain=act_gain, clamp=act_clamp)


def randomise_bias(layer):
    with torch.no_grad():
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["linear", "lrelu", "swish"])
@pytest.mark.parametrize("lr_multiplier", [1, 0.01])
def test_linear_matches_stylegan(device, activation, lr_multiplier):
    torch.manual_seed(0)
    layer = randomise_bias(EqualizedLinear(12, 7, activation=activation, lr_multiplier=lr_multiplier)).to(device)
    assert layer.weight_gain == lr_multiplier / math.sqrt(12) and layer.bias_gain == lr_multiplier
    x = torch.randn(5, 12, device=device)
    torch.testing.assert_close(layer(x), stylegan_fully_connected_forward(layer, x), rtol=1e-6, atol=1e-6)


def test_linear_initialisation_and_state_dict():
    torch.manual_seed(1)
    layer = EqualizedLinear(512, 256, lr_multiplier=0.01, bias_init=1.5)
    assert sorted(layer.state_dict()) == ["bias", "weight"]
    assert layer.weight.shape == (256, 512)
    assert abs(layer.weight.std().item() - 100) < 2  # randn / lr_multiplier
    assert torch.equal(layer.bias, torch.full([256], 1.5))
    assert EqualizedLinear(4, 3, bias=False).bias is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "activation, conv_clamp, gain", [("lrelu", None, 1), ("lrelu", 0.5, 0.7), ("linear", 1.0, 1), ("tanh", None, 2.0)]
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv2d_matches_stylegan(device, activation, conv_clamp, gain, layout):
    torch.manual_seed(2)
    layer = randomise_bias(EqualizedConv2d(6, 5, 3, activation=activation, conv_clamp=conv_clamp)).to(device)
    assert layer.weight_gain == 1 / math.sqrt(6 * 9) and layer.padding == 1
    x = torch.randn(2, 6, 7, 7, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(x, gain), stylegan_conv2d_forward(layer, x, gain), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_in_bfloat16_keeps_its_dtype(device):
    torch.manual_seed(3)
    layer = randomise_bias(EqualizedConv2d(4, 6, 3, activation="lrelu", conv_clamp=256)).to(device)
    x = torch.randn(2, 4, 5, 5, device=device, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    # StyleGAN's lrelu epilogue rounds after each step in bfloat16, bias_act once from float32.
    assert_close(y, stylegan_conv2d_forward(layer, x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_conv2d_scales_the_weight_before_casting_it_as_stylegan_does(device, dtype):
    # Conv2dLayer computes (weight * weight_gain).to(x.dtype): casting first rounds the weight twice for
    # fp16/bf16 activations (and scales in float64 for float64 ones), so the outputs differed from
    # StyleGAN's. With the linear activation the epilogue is one exact add, so the bits must agree.
    torch.manual_seed(3)
    layer = randomise_bias(EqualizedConv2d(16, 8, 3)).to(device)
    x = torch.randn(2, 16, 6, 6, device=device, dtype=dtype)
    assert torch.equal(layer(x), stylegan_conv2d_forward(layer, x))
    x = x.requires_grad_()
    layer(x).float().square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    for t in (x, layer.weight, layer.bias):
        t.grad = None
    stylegan_conv2d_forward(layer, x).float().square().sum().backward()
    for grad, t in zip(grads, (x, layer.weight, layer.bias)):
        assert torch.equal(grad, t.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kind, args, kwargs",
    [
        ("Conv2d", (4, 6, 3), dict(activation="lrelu", conv_clamp=256)),
        ("Linear", (4, 6), dict(activation="lrelu")),
        ("Linear", (4, 6), {}),
    ],
    ids=["conv2d", "linear_lrelu", "linear"],
)
def test_layers_under_autocast_match_reference(device, kind, args, kwargs):
    # Autocast lowers the conv/matmul output but not the float32 bias: the layers cast it to the output.
    torch.manual_seed(4)
    layer = randomise_bias({"Conv2d": EqualizedConv2d, "Linear": EqualizedLinear}[kind](*args, **kwargs)).to(device)
    twin = copy_of(
        layer, {"Conv2d": ReferenceEqualizedConv2d, "Linear": ReferenceEqualizedLinear}[kind], *args, **kwargs
    ).to(device)
    x = torch.randn((2, 4, 5, 5) if kind == "Conv2d" else (3, 4), device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y, y_ref = layer(x), twin(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y, y_ref)
    y.float().square().sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad.dtype == torch.float32


def test_conv2d_state_dict_loads_from_stylegan_names():
    src = EqualizedConv2d(3, 4, 3, activation="lrelu")
    dst = EqualizedConv2d(3, 4, 3, activation="lrelu")
    dst.load_state_dict({"weight": src.weight.detach().clone(), "bias": src.bias.detach().clone()})
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(dst(x), src(x))
    assert EqualizedConv2d(3, 4, 5, padding=0, stride=2)(torch.randn(1, 3, 9, 9)).shape == (1, 4, 3, 3)


def test_conv2d_loads_a_stylegan2_ada_state_dict_strictly():
    # StyleGAN2-ADA's Conv2dLayer registers resample_filter = setup_filter([1, 3, 3, 1]) (a normalised
    # 4x4 outer product) and saves it; without up/downsampling its forward never reads it.
    src = randomise_bias(EqualizedConv2d(3, 4, 3, activation="lrelu"))
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    state = {
        "weight": src.weight.detach().clone(),
        "bias": src.bias.detach().clone(),
        "resample_filter": torch.outer(taps, taps) / torch.outer(taps, taps).sum(),
    }
    dst = EqualizedConv2d(3, 4, 3, activation="lrelu")
    dst.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(dst(x), stylegan_conv2d_forward(src, x))
    assert "resample_filter" in state  # the caller's dict is left as it was
    with pytest.raises(RuntimeError, match="Unexpected key"):
        dst.load_state_dict({**state, "noise_strength": torch.zeros([])}, strict=True)


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_takes_unbatched_input_as_conv2d_does(device):
    # H equal to out_channels: a bias broadcast along the wrong dim would pass silently.
    torch.manual_seed(6)
    layer = randomise_bias(EqualizedConv2d(3, 5, 3, activation="lrelu", conv_clamp=0.5)).to(device)
    x = torch.randn(3, 5, 7, device=device)
    y = layer(x)
    assert y.shape == (5, 5, 7)
    assert_close(y, layer(x.unsqueeze(0))[0])
    assert_close(y, stylegan_conv2d_forward(layer, x.unsqueeze(0))[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["linear", "lrelu"])
@pytest.mark.parametrize("shape", [(5,), (2, 7, 5), (2, 3, 7, 5)], ids=lambda s: f"{len(s)}d")
def test_linear_takes_any_leading_dims_as_linear_does(device, activation, shape):
    # A dim next to the features of size out_features (7): a bias along dim 1 instead of the last
    # would pass silently.
    torch.manual_seed(7)
    layer = randomise_bias(EqualizedLinear(5, 7, activation=activation, lr_multiplier=0.5)).to(device)
    x = torch.randn(shape, device=device)
    y = layer(x)
    assert y.shape == (*shape[:-1], 7)
    assert_close(y, layer(x.reshape(-1, 5)).reshape(y.shape))
    w, b = layer.weight * layer.weight_gain, layer.bias * layer.bias_gain
    assert_close(y, stylegan_bias_act_ref(torch.nn.functional.linear(x, w, b), act=activation))


def copy_of(layer, cls, *args, **kwargs):
    twin = cls(*args, **kwargs)
    twin.load_state_dict(layer.state_dict())
    return twin


@pytest.mark.parametrize("device", DEVICES)
def test_r1_through_an_equalized_conv_stack_matches_reference(device):
    torch.manual_seed(4)
    specs = [((3, 8, 3), dict(activation="lrelu")), ((8, 8, 3), dict(activation="lrelu", conv_clamp=1.0))]
    ours = [randomise_bias(EqualizedConv2d(*a, **k)) for a, k in specs]
    refs = [copy_of(layer, ReferenceEqualizedConv2d, *a, **k) for layer, (a, k) in zip(ours, specs)]
    head = EqualizedLinear(8 * 4 * 4, 1)
    head_ref = copy_of(head, ReferenceEqualizedLinear, 8 * 4 * 4, 1)
    x0 = torch.randn(4, 3, 4, 4, dtype=torch.float64, device=device)

    def r1_and_grads(convs, fc):
        modules = torch.nn.ModuleList([*convs, fc]).double().to(device)
        x = x0.clone().requires_grad_()
        h = x
        for conv in convs:
            h = conv(h)
        logits = fc(h.flatten(1))
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        r1 = g.square().sum(dim=[1, 2, 3]).mean()
        # Biases before lrelu only move the kinks: like the head's bias, they do not reach the input gradient.
        params = [p for name, p in modules.named_parameters() if name.endswith("weight")]
        return r1, torch.autograd.grad(r1, params)

    with unregistered_autograd_is_an_error():
        r1, grads = r1_and_grads(ours, head)
    r1_ref, grads_ref = r1_and_grads(refs, head_ref)
    assert_close(r1, r1_ref)
    for got, want in zip(grads, grads_ref):
        assert want.abs().sum() > 0
        assert_close(got, want)


def test_torch_compile_fullgraph():
    torch.manual_seed(5)
    model = EqualizedConv2d(3, 8, 3, activation="lrelu", conv_clamp=256)
    assert_compiled_matches_eager(model, torch.randn(2, 3, 8, 8))


def test_bad_layer_arguments_name_the_argument():
    with pytest.raises(ValueError, match="activation must be one of linear, relu, .*, got 'gelu'"):
        EqualizedConv2d(3, 4, 3, activation="gelu")
    with pytest.raises(ValueError, match="activation must be one of linear, relu, .*, got 'gelu'"):
        EqualizedLinear(3, 4, activation="gelu")
    with pytest.raises(ValueError, match="conv_clamp must be a finite number >= 0, got -1"):
        EqualizedConv2d(3, 4, 3, conv_clamp=-1)
    # float(bias_init) named neither the argument nor the value ("only 0-dimensional arrays can be
    # converted to Python scalars"); StyleGAN3's per-feature bias_init arrays are not taken.
    with pytest.raises(TypeError, match=r"bias_init must be a real number, got list \[1, 0, 0, 0\]"):
        EqualizedLinear(3, 4, bias_init=[1, 0, 0, 0])
    with pytest.raises(TypeError, match="bias_init must be a real number or a 0-d real tensor, got a tensor of shape"):
        EqualizedLinear(3, 4, bias_init=torch.ones(4))
    with pytest.raises(TypeError, match="bias_init must be a real number, got ndarray"):
        EqualizedLinear(3, 4, bias_init=np.ones(4, dtype=np.float32))
    assert EqualizedLinear(3, 4, bias_init=np.float32(0.5)).bias.eq(0.5).all()
    # The clamp bound is conv_clamp * gain: the error names gain, which the caller passed.
    layer = EqualizedConv2d(3, 4, 3, activation="lrelu", conv_clamp=256)
    with pytest.raises(ValueError, match="gain must be >= 0 for a layer with conv_clamp=256.0, got -1"):
        layer(torch.randn(2, 3, 4, 4), gain=-1)
    assert layer(torch.randn(2, 3, 4, 4), gain=0).abs().max() == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        # Stored unchecked, these failed only at forward, inside conv2d, or not at all.
        (dict(stride=0), ValueError, "stride must be >= 1, got 0"),
        (dict(stride=(1, 0)), ValueError, r"stride\[1\] must be >= 1, got 0"),
        (dict(stride=1.5), TypeError, "stride must be an int, got float 1.5"),
        (dict(stride=True), TypeError, "stride must be an int, got bool True"),
        (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair of ints, got 3 values: \(1, 2, 3\)"),
        (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
        (dict(padding=(1, -1)), ValueError, r"padding\[1\] must be >= 0, got -1"),
        (dict(padding=0.5), TypeError, "padding must be an int, got float 0.5"),
        (dict(padding="full"), ValueError, "padding must be an int, a pair of ints, 'same' or 'valid', got 'full'"),
        (dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1, got stride=2"),
        (dict(padding="same", stride=(1, 2)), ValueError, r"padding='same' needs stride 1, got stride=\(1, 2\)"),
    ],
)
def test_conv2d_stride_and_padding_are_checked_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        EqualizedConv2d(3, 4, 3, **kwargs)


@pytest.mark.parametrize(
    "stride, padding, plain",
    [
        (np.int64(2), torch.tensor(0), (2, 0)),
        ([2, 1], (0, np.int32(1)), ((2, 1), (0, 1))),
        (1, "same", (1, "same")),
        ((1, 1), "same", ((1, 1), "same")),
        (2, "valid", (2, "valid")),
    ],
    ids=["numpy_and_tensor", "pairs", "same", "same_pair", "valid"],
)
def test_conv2d_takes_stride_and_padding_as_conv2d_does(stride, padding, plain):
    torch.manual_seed(0)
    layer = EqualizedConv2d(3, 4, 3, activation="lrelu", stride=stride, padding=padding)
    # Kept as plain ints, tuples of ints or the string, as torch.nn.Conv2d keeps them.
    assert (layer.stride, layer.padding) == plain
    for value in (layer.stride, layer.padding):
        assert type(value) in (int, str) or (type(value) is tuple and all(type(v) is int for v in value))
    conv = torch.nn.Conv2d(3, 4, 3, stride=plain[0], padding=plain[1], bias=False)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        conv.weight.copy_(layer.weight * layer.weight_gain)
    expected = torch.nn.functional.leaky_relu(conv(x), 0.2) * math.sqrt(2)
    assert_close(layer(x), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EqualizedLinear(6, 4, lr_multiplier=0.01, bias_init=0.5),
        lambda: EqualizedLinear(6, 4, bias=False),
        lambda: EqualizedConv2d(3, 5, 3, lr_multiplier=0.5),
        lambda: MinibatchDiscrimination(6, 4, 3),
    ],
    ids=["linear", "linear-no-bias", "conv", "minibatch_discrimination"],
)
def test_built_on_the_meta_device_then_reset_as_built_directly(make):
    """Layers without reset_parameters kept to_empty's uninitialised memory after a meta-device build."""
    torch.manual_seed(5)
    direct = make()
    with torch.device("meta"):
        deferred = make()
    deferred.to_empty(device="cpu")
    torch.manual_seed(5)
    deferred.reset_parameters()
    assert direct.state_dict().keys() == deferred.state_dict().keys()
    for name, value in direct.state_dict().items():
        assert torch.equal(deferred.state_dict()[name], value), name


@pytest.mark.parametrize(
    "make",
    [
        lambda **kwargs: EqualizedLinear(4, 3, **kwargs),
        lambda **kwargs: EqualizedConv2d(4, 3, 3, **kwargs),
    ],
)
def test_repr_tells_layers_of_another_bias_or_learning_rate_apart(make):
    """A StyleGAN mapping network's layers (lr_multiplier=0.01) printed as its synthesis layers did,
    and a layer without bias as one with; torch.nn.Linear and Conv2d print bias=."""
    plain, other = repr(make()), [repr(make(bias=False)), repr(make(lr_multiplier=0.01))]
    assert "bias=True" in plain and "lr_multiplier=1" in plain
    assert "bias=False" in other[0] and "lr_multiplier=0.01" in other[1]
