"""Large outputs of our CPU ops ask the kernel for transparent huge pages (csrc/cpu/huge_pages.h), so
that their first write is not mostly page faults; small ones and the inputs are left alone."""

import math
import mmap
import os
import subprocess
import sys

import pytest
import torch
from helpers import requires_ops

import gan_kernels

HUGE_PAGE = 2 << 20
pytestmark = [
    requires_ops,
    pytest.mark.skipif(
        not os.path.exists("/sys/kernel/mm/transparent_hugepage"), reason="no transparent huge pages here"
    ),
]


def advised_huge_pages(address):
    """Whether the mapping holding `address` carries MADV_HUGEPAGE ("hg" in /proc/self/smaps)."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return "hg" in line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def interior_page(t):
    """An address inside the first whole 2 MiB page of t's memory."""
    return (t.data_ptr() + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE


@pytest.mark.parametrize(
    "op",
    [
        lambda x: gan_kernels.pixel_norm(x),
        lambda x: gan_kernels.bias_act(x, act="lrelu"),
        lambda x: gan_kernels.minibatch_std(x, group_size=4),
    ],
    ids=["pixel_norm", "bias_act", "minibatch_std"],
)
def test_a_large_output_asks_for_huge_pages(op):
    # The input in a mapping of its own: memory from the allocator may be a freed output of an
    # earlier test, which keeps its advice.
    shape = (16, 256, 32, 32)  # 16 MiB
    x = torch.frombuffer(mmap.mmap(-1, 4 * math.prod(shape)), dtype=torch.float32).view(shape)
    x.copy_(torch.randn(shape))
    y = op(x)
    assert advised_huge_pages(interior_page(y))
    assert not advised_huge_pages(interior_page(x))  # the input is left alone


def test_the_advice_can_be_turned_off():
    from gan_kernels._backend import _C

    x = torch.randn(16, 256, 32, 32)
    _C.set_huge_page_outputs(False)
    try:
        assert not advised_huge_pages(interior_page(gan_kernels.pixel_norm(x)))
    finally:
        _C.set_huge_page_outputs(True)
    assert advised_huge_pages(interior_page(gan_kernels.pixel_norm(x)))


@pytest.mark.parametrize("value, advised", [("0", False), ("1", True), ("", True)])
def test_the_environment_variable_sets_the_advice_at_import(value, advised):
    script = "from gan_kernels._backend import _C; print(_C.huge_page_outputs())"
    env = dict(os.environ, GAN_KERNELS_HUGE_PAGES=value)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(advised)


def test_a_bad_value_of_the_environment_variable_is_an_error_that_names_it():
    env = dict(os.environ, GAN_KERNELS_HUGE_PAGES="yes")
    out = subprocess.run([sys.executable, "-c", "import gan_kernels"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "GAN_KERNELS_HUGE_PAGES='yes' is not 0 or 1" in out.stderr
