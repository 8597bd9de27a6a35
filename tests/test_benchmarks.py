"""The benchmark report's verdicts (benchmarks/run.py): which rows it marks as missing a target."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

import run  # noqa: E402


@pytest.mark.parametrize(
    "eager_target, speedup_eager, speedup_compile, expected",
    [
        (2.0, 2.5, 1.1, []),
        (2.0, 1.9, 1.1, ["eager<2"]),
        (2.0, 2.5, 0.9, ["compile<1"]),
        (2.0, 1.0, 0.5, ["eager<2", "compile<1"]),
        (1.0, 0.99, None, ["eager<1"]),  # a drop-in layer slower than PyTorch's; compile not run
        (1.5, 1.4, None, ["eager<1.5"]),
        (None, 0.5, None, []),  # an added cost (a monitor): no eager target
        (2.0, None, None, []),  # ours or eager failed: nothing to compare
    ],
)
def test_a_row_misses_the_targets_it_is_under(eager_target, speedup_eager, speedup_compile, expected):
    row = {"eager_target": eager_target, "speedup_eager": speedup_eager, "speedup_compile": speedup_compile}
    assert run.misses(row) == expected
