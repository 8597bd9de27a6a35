"""What every benchmark case plugs into: the Case record, timing, and the copy-bandwidth baseline.

A case is one (op, shape, dtype, mode) with a zero-argument closure per implementation:
"eager" (the pure-PyTorch reference), "compile" (torch.compile of the reference, where it can
run) and "ours". Ratios are against "ours"; GB/s use the case's ideal DRAM traffic. A row misses its
target when ours is under ``eager_target`` times eager, slower than torch.compile, or under
``copy_target`` of the copy bandwidth measured in the same run.
"""

import dataclasses
import statistics
import time
from typing import Callable, Dict, Optional

import torch
import torch.utils.benchmark

IMPLS = ("eager", "compile", "ours")

# Written before each call that Timer.kernel_ms profiles: four times the L2 of the largest-cache card
# we time (H200: 60 MB), so that the call reads its inputs from DRAM, as the bandwidth targets (shares
# of the DRAM copy) assume, not from the L2 its previous repetition filled (the penalty's g at
# [32,3,256,256] fp32 is 25 MB).
L2_FLUSH_BYTES = 2**28

# Speedups over eager that ours must reach (issue 15): an op 2x; a drop-in layer or a whole training
# step, where "eager" is what the user replaces, must at least not be slower.
OP_TARGET = 2.0
DROP_IN_TARGET = 1.0

# Shares of the copy bandwidth that ours must reach, per mode, where an issue names the shape: issue
# 15 on the CPU (pixel norm and minibatch stddev, fp32, every mode), issue 14 on a GPU (forward and
# backward each).
CPU_NORM_COPY_TARGETS = {"fwd": 0.40, "bwd": 0.40, "fwd+bwd": 0.40}
GPU_ELEMENTWISE_COPY_TARGETS = {"fwd": 0.85, "bwd": 0.85}
# Issue 14's speedup over eager for the same rows (pixel norm and bias_act at [32,512,64,64], the penalty
# at [32,3,256,256], every dtype): forward+backward at least 3x, above OP_TARGET's 2x.
GPU_ELEMENTWISE_EAGER_TARGETS = {"fwd+bwd": 3.0}
GPU_MINIBATCH_STD_COPY_TARGETS = {"fwd": 0.75, "bwd": 0.75}


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    dtype: str
    mode: str  # fwd, bwd, fwd+bwd, r1, step ...
    impls: Dict[str, Callable[[], object]]
    bytes: Optional[int] = None  # ideal DRAM traffic of one call of "ours"
    # OP_TARGET, DROP_IN_TARGET, or None where "ours" measures an added cost (a monitor), not a replacement.
    eager_target: Optional[float] = OP_TARGET
    copy_target: Optional[float] = None  # the share of the copy bandwidth ours must reach, if any
    # Issue 14 on a GPU: ours never slower than torch.compile of the reference. On such a row a run that
    # times torch.compile and cannot (compile failed) misses it; elsewhere a compile time is optional.
    compile_target: bool = False


@dataclasses.dataclass
class LaunchCase:
    """One (op, shape, dtype, mode) whose device operations (kernels, copies, memsets) per call are
    counted, not timed: ``impls`` holds "eager" and "ours" as zero-argument closures, and ours may
    take at most ``launch_target`` of them (issue 14: the spectral-norm work of a forward)."""

    op: str
    shape: str
    dtype: str
    mode: str
    impls: Dict[str, Callable[[], object]]
    launch_target: int


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def shape_name(shape):
    return "x".join(str(s) for s in shape)


def forward_backward_cases(
    op,
    inputs,
    grad_out,
    fns,
    bytes_fwd,
    bytes_bwd,
    compile_fn,
    eager_target=OP_TARGET,
    copy_targets=None,
    eager_targets=None,
    compile_target=False,
):
    """fwd, bwd and fwd+bwd cases for a function of one differentiable tensor inputs[0].

    fns holds "eager" and "ours"; each case's "compile" is compile_fn(fns["eager"]), a torch.compile
    made for that case alone (see run.make_compile_fn). fwd runs under no_grad; bwd replays the
    backward of a graph its first call builds (retain_graph): building the cases compiles nothing, so
    that a run selecting some of them (run.py --compile-targets) compiles only those; fwd+bwd builds
    the graph and runs the backward, as a training step does. eager_target: OP_TARGET for an op,
    DROP_IN_TARGET for a whole layer.
    copy_targets: None, or one of the *_COPY_TARGETS above (modes it leaves out have no such target).
    eager_targets: None, or per mode a speedup over eager that replaces eager_target for that mode
    (GPU_ELEMENTWISE_EAGER_TARGETS). compile_target: Case.compile_target of every mode.
    """
    x = inputs[0]
    shape, dtype = shape_name(x.shape), dtype_name(x.dtype)
    leaf = x.detach().requires_grad_()
    rest = inputs[1:]

    def fwd(fn):
        def run():
            with torch.no_grad():
                return fn(x, *rest)

        return run

    def bwd(fn):
        graph = []

        def run():
            if not graph:
                graph.append(fn(leaf, *rest))
            return torch.autograd.grad(graph[0], leaf, grad_out, retain_graph=True)

        return run

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(leaf, *rest), leaf, grad_out)

    cases = []
    for mode, make, traffic in (
        ("fwd", fwd, bytes_fwd),
        ("bwd", bwd, bytes_bwd),
        ("fwd+bwd", fwd_bwd, bytes_fwd + bytes_bwd),
    ):
        # An implementation that cannot run here is the reason; one that fails (torch.compile building
        # its graph at the first call) raises where the Timer catches it.
        impls = {
            name: fn if isinstance(fn, Exception) else make(fn)
            for name, fn in (("eager", fns["eager"]), ("compile", compile_fn(fns["eager"])), ("ours", fns["ours"]))
        }
        copy_target = (copy_targets or {}).get(mode)
        mode_eager_target = (eager_targets or {}).get(mode, eager_target)
        cases.append(
            Case(
                op,
                shape,
                dtype,
                mode,
                impls,
                traffic,
                eager_target=mode_eager_target,
                copy_target=copy_target,
                compile_target=compile_target,
            )
        )
    return cases


class Timer:
    """Median milliseconds of a closure: CUDA events on GPU, torch.utils.benchmark on CPU."""

    def __init__(self, device, quick=False):
        self.device = device
        self.quick = quick

    def __call__(self, fn):
        return self.many({"fn": fn})["fn"]

    def many(self, fns):
        """Median milliseconds of each closure in ``fns`` (name -> closure), or the exception it raised.

        On the CPU, slow calls (over 50 ms: whole training steps) give blocked_autorange one or two
        samples, so they are timed one call at a time; and as the machine drifts over seconds (the
        conv of a D step moved by 10% between runs), the slow closures of a case take turns, one call
        each per round, in reversed order every other round, so that the drift weighs on each alike.
        """
        results, slow = {}, {}
        for name, fn in fns.items():
            try:
                if self.device.type == "cuda":
                    results[name] = self._cuda(fn)
                    continue
                fn()  # first call: compilation, allocator warm-up
                if self._one_call(fn) > 0.05:
                    slow[name] = fn
                else:
                    timer = self._cpu_timer(fn)
                    results[name] = timer.blocked_autorange(min_run_time=0.2 if self.quick else 1.0).median * 1e3
            except Exception as error:  # reported in the row; the other closures still run
                results[name] = error
        samples = {name: [] for name in slow}
        for turn in range(3 if self.quick else 9):
            for name in list(slow)[:: 1 if turn % 2 == 0 else -1]:
                try:
                    samples[name].append(self._one_call(slow[name]))
                except Exception as error:
                    results[name] = error
                    del slow[name]
        for name in slow:
            results[name] = statistics.median(samples[name]) * 1e3
        return {name: results[name] for name in fns}

    @staticmethod
    def _cpu_timer(fn):
        return torch.utils.benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())

    @staticmethod
    def _one_call(fn):
        # Not torch's Timer.timeit(number=1), which first makes two more calls to warm up.
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def _cuda(self, fn):
        # Not shortened by --quick (which picks fewer cases): GPU calls take micro- to milliseconds, and the
        # compile column, timed only in the GPU check's --quick run, decides "never slower than torch.compile".
        warmup, reps = 10, 50
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)

    def kernel_ms(self, fn, reps=10):
        """Mean GPU time of the kernels (and device copies) one call of ``fn`` runs, from the
        profiler's CUDA activity: what the call costs the GPU, without the host's dispatch, which
        the CUDA events of ``__call__`` include whenever a call's kernels take less time than its
        launch (small tensors: the penalty at [32,3,256,256] has a floor of 6 us). Each call follows
        a write of L2_FLUSH_BYTES, whose kernels (named by profiling one such write alone) are not
        counted. Run after every event timing: a profiler session may leave its callbacks slowing
        later launches."""
        from torch.profiler import ProfilerActivity, profile

        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=self.device)
        fn()
        with profile(activities=[ProfilerActivity.CUDA]) as flush_profile:
            flush.zero_()
            torch.cuda.synchronize()
        flush_kernels = {e.key for e in flush_profile.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA}
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                flush.zero_()
                fn()
            torch.cuda.synchronize()
        total_us = device_time_us(prof.key_averages(), exclude=flush_kernels)
        if not total_us > 0:
            # A profiler that records no GPU activity (CUPTI failing to start, as it can in a VM) gives
            # an empty profile, not an error: 0 ms would read as no kernel time at all.
            raise RuntimeError(f"the profiler recorded no GPU time for the call (device time {total_us} us)")
        return total_us / reps * 1e-3

    def launches(self, fn):
        """Device operations (kernels, copies, memsets) of one call of ``fn`` after a first call, from
        the profiler's CUDA activity. Like ``kernel_ms``, run after every event timing."""
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        count = launch_count(prof.key_averages())
        if count == 0:
            # As in kernel_ms: a profiler that records nothing on the GPU would read as a call that
            # launches nothing, under any target.
            raise RuntimeError("the profiler recorded no GPU activity for the call")
        return count

    def peak_memory_mb(self, fn):
        """Peak memory allocated during one call, above what was allocated before it: CUDA's allocator
        statistics, or on the CPU the running sum of the allocations and frees the profiler records
        (every tensor of c10's CPU allocator; not memory a kernel takes outside tensors)."""
        if self.device.type != "cuda":
            return cpu_peak_memory_mb(fn)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def device_events(averages, exclude=()):
    """The events of a profile grouped by name (``prof.key_averages()``) that ran on the GPU (kernels,
    copies, memsets), less those named in ``exclude``. Host-side events (an op, or the runtime call
    that launched a kernel) may carry their kernels' time too, and are left out; so are GPU user
    annotations (``gpu_user_annotation``: a record_function range projected onto the GPU timeline,
    device type CUDA, spanning kernels that are events of their own), as torch's own table leaves
    them out of its device time total (pytorch#130730)."""
    return [
        e
        for e in averages
        if e.device_type == torch.autograd.DeviceType.CUDA
        and not getattr(e, "is_user_annotation", False)
        and e.key not in exclude
    ]


def device_time_us(averages, exclude=()):
    """The device time, in us, of a profile's events grouped by name (``prof.key_averages()``): the
    self time of each of its ``device_events``, counted once."""
    return sum(
        getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        for e in device_events(averages, exclude)
    )


def launch_count(averages):
    """Kernels (and device copies and memsets) in a profile's events grouped by name, each call once."""
    return sum(e.count for e in device_events(averages))


def cpu_peak_bytes(fn):
    """Peak of the bytes held by tensors that ``fn`` allocates, above what was held before: the
    running sum of every CPU allocation and free the profiler records (c10's allocator reports each
    one) during the call. Memory outside tensors (a kernel's std::vector scratch) is not seen."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    held, peak = 0, 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def cpu_peak_memory_mb(fn):
    return cpu_peak_bytes(fn) / 2**20


def copy_bandwidth_gbs(device, timer, allocate=False):
    """Device-to-device copy bandwidth measured now: the ceiling for a memory-bound op. With
    ``allocate``, the copy goes to a freshly allocated tensor (``clone``), as an op's output does:
    on the CPU, PyTorch's allocator returns large blocks to the OS, so every call pays the page
    faults of its output, and this is the ceiling for an out-of-place op at large sizes."""
    numel = 2**26 if device.type == "cuda" else 2**24
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = timer(src.clone if allocate else lambda: dst.copy_(src))
    return 2 * src.nbytes / (ms * 1e-3) / 1e9
