"""Large outputs of our CPU ops (csrc/cpu/output_memory.h): they come from a cache of freed blocks,
which keeps at most its limit and tells the profiler what it hands out, and new blocks ask the kernel
for transparent huge pages; small outputs and the inputs are left alone."""

import gc
import math
import mmap
import os
import shutil
import subprocess
import textwrap
import threading

import pytest
import torch
from fresh_imports import ROOT, Case, run_fresh_imports
from helpers import requires_ops

import gan_kernels
from gan_kernels._backend import IMPL, _C

HUGE_PAGE = 2 << 20
MiB = 1 << 20
pytestmark = requires_ops
# What the compiled ops' outputs promise; GAN_KERNELS_IMPL=reference runs torch's ops, whose outputs
# come from torch's allocator.
compiled_outputs = pytest.mark.skipif(IMPL == "reference", reason="GAN_KERNELS_IMPL=reference: torch's outputs")
needs_thp = pytest.mark.skipif(
    not os.path.exists("/sys/kernel/mm/transparent_hugepage"), reason="no transparent huge pages here"
)


@pytest.fixture
def empty_cache():
    """An empty cache that only this test's tensors fill: tensors an earlier test left in reference
    cycles are collected first, and no collection runs during the test to free them into it."""
    gc.collect()
    gan_kernels.empty_cpu_cache()
    gc.disable()
    yield
    gc.enable()


@pytest.fixture
def cache_limit():
    """Sets the cache's limit for one test, and puts the import-time limit back after it."""
    limit = gan_kernels.cpu_cache_info().limit_bytes
    yield _C.set_output_cache_limit
    _C.set_output_cache_limit(limit)


HUGE_PAGES_AT_IMPORT = [("0", False), ("1", True), ("", True)]
CACHE_LIMITS_AT_IMPORT = [("0", 0), ("64", 64 * MiB), ("", 1024 * MiB), (" 8 ", 8 * MiB)]
BAD_CACHE_LIMITS = ["-1", "1.5", "lots"]
PRINT_HUGE_PAGES = "from gan_kernels._backend import _C; print(_C.huge_page_outputs())"
PRINT_CACHE_LIMIT = "import gan_kernels; print(gan_kernels.cpu_cache_info().limit_bytes)"
# A parent that used the ops (two intra-op threads, in-use and cached blocks) forks DataLoader workers
# and a plain child, each calling the ops: the same bits as the parent's, no hang (SIGALRM ends a
# stuck process), and the child's inherited cache works. Prints the parent's limit when all passed.
FORKS_AFTER_USE = textwrap.dedent(
    """
    import os, signal, torch, gan_kernels
    signal.alarm(100)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xs = torch.randn(4, 8, 64, 32, 32)  # 2 MiB per sample: cached outputs
    b = torch.randn(64)

    def ops(x):
        return [gan_kernels.pixel_norm(x), gan_kernels.bias_act(x, b, act="lrelu"), gan_kernels.minibatch_std(x)]

    want = [ops(x) for x in xs]
    del ops(xs[0])[0]
    limit = gan_kernels.cpu_cache_info().limit_bytes
    assert limit == 0 or gan_kernels.cpu_cache_info().cached_bytes > 0

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(xs)

        def __getitem__(self, i):
            return ops(xs[i])

    loader = torch.utils.data.DataLoader(
        Data(), batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60
    )
    for i, got in enumerate(loader):
        assert all(torch.equal(g, w) for g, w in zip(got, want[i])), f"DataLoader sample {i}"
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            signal.alarm(60)
            torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's threads are the parent's
            same = all(torch.equal(g, w) for x, ws in zip(xs, want) for g, w in zip(ops(x), ws))
            in_use = gan_kernels.cpu_cache_info().in_use_bytes
            del want[:]
            info = gan_kernels.cpu_cache_info()
            freed_into_cache = info.in_use_bytes < in_use and info.cached_bytes > 0
            gan_kernels.empty_cpu_cache()
            emptied = gan_kernels.cpu_cache_info().cached_bytes == 0
            status = 0 if same and (freed_into_cache or limit == 0) and emptied else 1
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the forked child"
    print(limit)
    """
)
FORK_LIMITS = [("64", 64 * MiB), ("0", 0)]
# The `python -c` of each test of a variable read at import: (code, variable, value).
IMPORTS = [
    *((PRINT_HUGE_PAGES, "GAN_KERNELS_HUGE_PAGES", value) for value, _ in HUGE_PAGES_AT_IMPORT),
    ("import gan_kernels", "GAN_KERNELS_HUGE_PAGES", "yes"),
    *((PRINT_CACHE_LIMIT, "GAN_KERNELS_CPU_CACHE_MB", value) for value, _ in CACHE_LIMITS_AT_IMPORT),
    *(("import gan_kernels", "GAN_KERNELS_CPU_CACHE_MB", value) for value in BAD_CACHE_LIMITS),
    *((FORKS_AFTER_USE, "GAN_KERNELS_CPU_CACHE_MB", value) for value, _ in FORK_LIMITS),
]
# One worker runs them, once, rather than each worker that gets one of their tests.
in_fresh_python = pytest.mark.xdist_group("test_output_memory fresh pythons")


@pytest.fixture(scope="module")
def fresh_python():
    """Each of IMPORTS run in a fresh import of gan_kernels, all at once (tests/fresh_imports.py)."""
    return dict(
        zip(IMPORTS, run_fresh_imports([Case(code, env={variable: value}) for code, variable, value in IMPORTS]))
    )


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


@needs_thp
@pytest.mark.parametrize(
    "op",
    [
        lambda x: gan_kernels.pixel_norm(x),
        lambda x: gan_kernels.bias_act(x, act="lrelu"),
        lambda x: gan_kernels.minibatch_std(x, group_size=4),
    ],
    ids=["pixel_norm", "bias_act", "minibatch_std"],
)
@compiled_outputs
def test_a_large_output_asks_for_huge_pages(op):
    # The input in a mapping of its own: memory from the allocator may be a freed output of an
    # earlier test, which keeps its advice.
    shape = (16, 256, 32, 32)  # 16 MiB
    x = torch.frombuffer(mmap.mmap(-1, 4 * math.prod(shape)), dtype=torch.float32).view(shape)
    x.copy_(torch.randn(shape))
    y = op(x)
    assert advised_huge_pages(interior_page(y))
    assert not advised_huge_pages(interior_page(x))  # the input is left alone


@compiled_outputs
@needs_thp
def test_the_advice_can_be_turned_off():
    x = torch.randn(16, 256, 32, 32)
    gan_kernels.pixel_norm(x)  # an advised block in the cache: turning the advice off drops it
    _C.set_huge_page_outputs(False)
    try:
        assert gan_kernels.cpu_cache_info().cached_bytes == 0
        assert not advised_huge_pages(interior_page(gan_kernels.pixel_norm(x)))
    finally:
        _C.set_huge_page_outputs(True)
    assert advised_huge_pages(interior_page(gan_kernels.pixel_norm(x)))


@needs_thp
@in_fresh_python
@pytest.mark.parametrize("value, advised", HUGE_PAGES_AT_IMPORT)
def test_the_environment_variable_sets_the_advice_at_import(value, advised, fresh_python):
    out = fresh_python[PRINT_HUGE_PAGES, "GAN_KERNELS_HUGE_PAGES", value]
    assert out.stdout.strip() == str(advised), out.stderr


@in_fresh_python
def test_a_bad_value_of_the_huge_page_variable_is_an_error_that_names_it(fresh_python):
    out = fresh_python["import gan_kernels", "GAN_KERNELS_HUGE_PAGES", "yes"]
    assert out.returncode != 0
    assert "GAN_KERNELS_HUGE_PAGES='yes' is not 0 or 1" in out.stderr


@compiled_outputs
def test_a_freed_output_block_is_reused_by_the_next_output_of_its_size(empty_cache):
    x = torch.randn(8, 256, 32, 32)  # 8 MiB
    before = gan_kernels.cpu_cache_info()
    y = gan_kernels.pixel_norm(x)
    assert gan_kernels.cpu_cache_info().in_use_bytes == before.in_use_bytes + 8 * MiB
    address = y.data_ptr()
    del y
    assert gan_kernels.cpu_cache_info().cached_bytes == 8 * MiB
    y = gan_kernels.bias_act(x, act="lrelu")  # another op, the same size
    assert y.data_ptr() == address
    assert gan_kernels.cpu_cache_info().cached_bytes == 0
    torch.testing.assert_close(y, gan_kernels.reference.bias_act(x, act="lrelu"), rtol=0, atol=0)


def test_small_outputs_come_from_the_default_allocator(empty_cache):
    before = gan_kernels.cpu_cache_info()
    y = gan_kernels.pixel_norm(torch.randn(4, 64, 16, 16))  # 256 KiB
    assert gan_kernels.cpu_cache_info() == before
    del y
    assert gan_kernels.cpu_cache_info() == before


@compiled_outputs
def test_the_cache_keeps_at_most_its_limit_dropping_the_least_recently_freed(empty_cache, cache_limit):
    cache_limit(10 * MiB)
    small, large = torch.randn(1, 4, MiB // 4), torch.randn(1, 6, MiB // 4)
    a, b = gan_kernels.pixel_norm(small), gan_kernels.pixel_norm(large)  # 4 and 6 MiB
    b_address = b.data_ptr()
    del a, b  # a freed first; both fit in 10 MiB
    assert gan_kernels.cpu_cache_info().cached_bytes == 10 * MiB
    c = gan_kernels.pixel_norm(torch.randn(1, 2, MiB // 4))  # 2 MiB: a new block
    del c  # 12 MiB would pass the limit: a, the least recently freed, goes
    assert gan_kernels.cpu_cache_info().cached_bytes == 8 * MiB
    reused = gan_kernels.pixel_norm(large)
    assert reused.data_ptr() == b_address
    del reused
    too_large = gan_kernels.pixel_norm(torch.randn(1, 12, MiB // 4))
    del too_large  # larger than the limit on its own: never kept
    assert gan_kernels.cpu_cache_info().cached_bytes == 8 * MiB


def test_a_limit_of_zero_keeps_nothing_and_uses_the_default_allocator(empty_cache, cache_limit):
    cache_limit(0)
    y = gan_kernels.pixel_norm(torch.randn(8, 256, 32, 32))
    assert gan_kernels.cpu_cache_info().in_use_bytes == 0
    del y
    assert gan_kernels.cpu_cache_info().cached_bytes == 0


@compiled_outputs
def test_empty_cpu_cache_frees_the_cached_blocks_only(empty_cache):
    x = torch.randn(8, 256, 32, 32)
    kept, freed = gan_kernels.pixel_norm(x), gan_kernels.pixel_norm(x)
    del freed
    gan_kernels.empty_cpu_cache()
    info = gan_kernels.cpu_cache_info()
    assert info.cached_bytes == 0 and info.in_use_bytes >= 8 * MiB
    torch.testing.assert_close(kept, gan_kernels.reference.pixel_norm(x))


@compiled_outputs
def test_cached_outputs_keep_the_layout_empty_like_gives():
    # A non-dense g of 6 MiB: its gradient is allocated as torch.empty_like(g) would be.
    g = torch.randn(16, 3, 256, 128).transpose(2, 3)[:, :, ::2]
    assert not g.is_contiguous() and g.nbytes >= MiB
    leaf = g.detach().requires_grad_()
    (grad,) = torch.autograd.grad(gan_kernels.per_sample_penalty(leaf, 1.0).sum(), leaf)
    assert grad.stride() == torch.empty_like(g).stride()
    x = torch.randn(32, 64, 32, 32).to(memory_format=torch.channels_last)
    y = gan_kernels.minibatch_std(x, group_size=4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, gan_kernels.reference.minibatch_std(x, group_size=4))


def test_a_cached_output_can_be_resized_and_shared():
    x = torch.randn(8, 256, 32, 32)
    y = gan_kernels.pixel_norm(x)
    expected = y.clone()
    y.resize_(16, 256, 32, 32)  # a new block from the same allocator, the old contents copied
    torch.testing.assert_close(y[:8], expected, rtol=0, atol=0)
    z = gan_kernels.pixel_norm(x)
    z.share_memory_()  # moved into shared memory; its block goes back to the cache
    assert z.is_shared()
    torch.testing.assert_close(z, expected, rtol=0, atol=0)


def test_the_profiler_sees_cached_outputs_allocated_and_freed():
    x = torch.randn(8, 256, 32, 32)
    gan_kernels.pixel_norm(x)  # now a cached block of this size exists, which the call below reuses
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        y = gan_kernels.pixel_norm(x)
        del y
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert 8 * MiB in sizes and -8 * MiB in sizes


def test_threads_share_the_cache_safely():
    inputs = [torch.randn(4, 64, 32, 32 + i) for i in range(4)]  # 1-1.1 MiB each: four sizes
    expected = [gan_kernels.reference.pixel_norm(x) for x in inputs]
    errors = []

    def work(i):
        try:
            for _ in range(50):
                torch.testing.assert_close(gan_kernels.pixel_norm(inputs[i]), expected[i])
        except Exception as error:  # reported on the main thread below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@in_fresh_python
@pytest.mark.parametrize("value, limit", CACHE_LIMITS_AT_IMPORT)
def test_the_environment_variable_sets_the_cache_limit_at_import(value, limit, fresh_python):
    out = fresh_python[PRINT_CACHE_LIMIT, "GAN_KERNELS_CPU_CACHE_MB", value]
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(limit)


@in_fresh_python
@pytest.mark.parametrize("value", BAD_CACHE_LIMITS)
def test_a_bad_cache_limit_is_an_error_that_names_the_variable(value, fresh_python):
    out = fresh_python["import gan_kernels", "GAN_KERNELS_CPU_CACHE_MB", value]
    assert out.returncode != 0
    assert f"GAN_KERNELS_CPU_CACHE_MB={value!r} is not a whole number of MiB" in out.stderr


@compiled_outputs
@in_fresh_python
@pytest.mark.parametrize("value, limit", FORK_LIMITS)
def test_forked_dataloader_workers_and_children_use_the_ops_after_the_parent(value, limit, fresh_python):
    out = fresh_python[FORKS_AFTER_USE, "GAN_KERNELS_CPU_CACHE_MB", value]
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(limit)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the system g++")
def test_the_cache_is_safe_under_threads_and_across_fork(tmp_path):
    """tests/cpp/output_memory_check.cpp, torch-free. Before the cache held its lock across fork(), a
    child forked while another thread was taking or giving back a block found the lock taken by a
    thread it did not have, and hung on its first large output (within a few forks in the driver;
    about 1 DataLoader-style fork in 500 with a Python thread running ops)."""
    binary = tmp_path / "output_memory_check"
    sources = [
        os.path.join(ROOT, "tests", "cpp", "output_memory_check.cpp"),
        os.path.join(ROOT, "csrc", "cpu", "output_memory.cpp"),
    ]
    flags = ["-std=c++20", "-O1", "-Wall", "-Werror", "-pthread", f"-I{os.path.join(ROOT, 'csrc')}"]
    subprocess.run(["g++", *flags, *sources, "-o", str(binary)], check=True)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "0 failures", run.stdout + run.stderr


def test_threads_running_mixed_ops_get_the_single_thread_bits():
    """Python threads run our ops at once (torch releases the GIL in them), forward, backward and
    double backward over outputs of several cached sizes, while another empties the cache and reads
    its stats: every result must be the bits one thread alone gets."""
    torch.manual_seed(3)
    calls = []
    for shape in [(8, 64, 32, 32), (4, 32, 33, 31), (8, 128, 16, 16)]:
        b = torch.randn(shape[1])
        calls += [
            (torch.randn(shape), lambda x: gan_kernels.pixel_norm(x)),
            (torch.randn(shape), lambda x, b=b: gan_kernels.bias_act(x, b, act="swish", clamp=2.0)),
            (torch.randn(shape), lambda x: gan_kernels.per_sample_penalty(x, 1.0)),
            (torch.randn(shape), lambda x: gan_kernels.minibatch_std(x, 4, 1)),
        ]
    calls.append((torch.randn(32, 16, 5), gan_kernels.minibatch_discrimination))

    def run(call):
        x0, fn = call
        x = x0.clone().requires_grad_()
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        return [y.detach(), g.detach(), *torch.autograd.grad(g, x, torch.ones_like(g))]

    want = [run(call) for call in calls]
    errors = []
    done = threading.Event()

    def work(k):
        try:
            for i in range(2 * len(calls)):
                j = (3 * k + i) % len(calls)
                assert all(torch.equal(a, b) for a, b in zip(run(calls[j]), want[j])), (k, i)
        except Exception as error:  # reported on the main thread below
            errors.append(error)

    def admin():
        while not done.wait(0.001):
            gan_kernels.cpu_cache_info()
            gan_kernels.empty_cpu_cache()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    emptying = threading.Thread(target=admin)
    emptying.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    emptying.join(timeout=120)
    assert not any(t.is_alive() for t in [*threads, emptying]), "a thread hung"
    assert not errors
