"""The activations of bias_act, one row each: the one table that the kernels, the reference and the
autograd formulas read. The C++ kernels see it as a header generated from this file at build time
(``gan_kernels/_codegen.py``), and ``_C`` exports what it was built with, so a stale build is caught
(tests/test_backend.py).

Plain Python without torch, so that the build can run it before torch is importable.
"""

import math
from typing import NamedTuple


class Activation(NamedTuple):
    name: str
    default_alpha: float
    default_gain: float
    # act'' = 0 wherever it exists: the gradient is linear in dL/dy and has no second-order term,
    # and for alpha >= 0 the sign of the output gives act'(v), so the output can be saved instead of x.
    piecewise_linear: bool


# Order, names and defaults as StyleGAN's bias_act.activation_funcs.
ACTIVATIONS = (
    Activation("linear", 0.0, 1.0, True),
    Activation("relu", 0.0, math.sqrt(2), True),
    Activation("lrelu", 0.2, math.sqrt(2), True),
    Activation("tanh", 0.0, 1.0, False),
    Activation("sigmoid", 0.0, 1.0, False),
    Activation("elu", 0.0, 1.0, False),
    Activation("selu", 0.0, 1.0, False),
    Activation("softplus", 0.0, 1.0, False),
    Activation("swish", 0.0, math.sqrt(2), False),
)
BY_NAME = {a.name: a for a in ACTIVATIONS}

# torch.nn.functional.selu's constants.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
# torch.nn.functional.softplus's default threshold: above it softplus(v) = v exactly.
SOFTPLUS_THRESHOLD = 20.0
CONSTANTS = {"kSeluAlpha": SELU_ALPHA, "kSeluScale": SELU_SCALE, "kSoftplusThreshold": SOFTPLUS_THRESHOLD}


def cpp_header():
    """The table as an X-macro and constexprs; repr() of a float reads back as the same double."""
    rows = "".join(
        f'  X({a.name.capitalize()}, "{a.name}", {a.default_alpha!r}, {a.default_gain!r}, '
        f"{str(a.piecewise_linear).lower()}) \\\n"
        for a in ACTIVATIONS
    )
    constants = "".join(f"  X({name}, {value!r}) \\\n" for name, value in CONSTANTS.items())
    return (
        "// Generated from gan_kernels/_activations.py; edit the table there.\n"
        "#pragma once\n\n"
        "// X(enumerator, name, default alpha, default gain, piecewise linear)\n"
        f"#define GAN_KERNELS_FOR_EACH_ACTIVATION(X) \\\n{rows}\n"
        "// X(name, value)\n"
        f"#define GAN_KERNELS_FOR_EACH_ACTIVATION_CONSTANT(X) \\\n{constants}\n"
        "namespace gan_kernels {\n\n"
        "#define GAN_KERNELS_ACTIVATION_CONSTEXPR(name, value) constexpr double name = value;\n"
        "GAN_KERNELS_FOR_EACH_ACTIVATION_CONSTANT(GAN_KERNELS_ACTIVATION_CONSTEXPR)\n"
        "#undef GAN_KERNELS_ACTIVATION_CONSTEXPR\n\n"
        "}  // namespace gan_kernels\n"
    )
