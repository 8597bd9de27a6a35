"""Benchmarks of every op against eager PyTorch and torch.compile, on any device.

    python benchmarks/run.py [--device cpu|cuda] [--ops pixel_norm,...] [--quick] [--no-compile | --compile-targets]
                             [--plot] [--list]

Prints a table, writes JSON (and with --plot a PNG of the speedups) under benchmarks/results/.
Performance targets are read off here, never asserted in timed tests.
"""

import argparse
import collections
import datetime
import importlib
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
import types

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from harness import IMPLS, LaunchCase, Timer, copy_bandwidth_gbs  # noqa: E402

import gan_kernels  # noqa: E402


def available_ops():
    return sorted(p.stem for p in (HERE / "cases").glob("*.py") if not p.stem.startswith("_"))


def device_label(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit():
    """The commit of the code measured, +dirty where it differs. Where git cannot tell (the GPU box gets
    a copy of the working tree without .git), GAN_KERNELS_COMMIT, which the call that sends the tree
    sets (README, "When a GPU is drawn")."""
    unknown = os.environ.get("GAN_KERNELS_COMMIT", "unknown")
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        # Results of earlier runs (benchmarks/results/) are not the code: they do not make it dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)benchmarks/results"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else unknown
    except OSError:
        return unknown


def make_compile_fn(enabled):
    """The cases' torch.compile: call it once per case, never share its result between cases.

    Dynamo keeps a function's compiled graphs on its code object, whatever torch.compile wrapper
    calls it, and past the recompile limit (8 graphs) it runs the function eagerly without a word:
    the compile column would time eager. So a plain function is compiled as a copy with a code
    object of its own, one per case; a module's graphs are counted per instance, and each case
    builds its own. main() also makes hitting the limit an error, which the table reports.
    """

    def compile_fn(fn):
        if not enabled:
            return RuntimeError("torch.compile disabled (--no-compile)")
        if isinstance(fn, types.FunctionType):
            copy = types.FunctionType(
                fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
            )
            copy.__kwdefaults__ = fn.__kwdefaults__
            fn = copy
        return torch.compile(fn, dynamic=False)

    return compile_fn


def measure(case, timer, compiled=True):
    """A row of the case's timings; ``compiled``: whether this run times torch.compile (not --no-compile),
    which only then must measure the case's compile target."""
    row = {
        "op": case.op,
        "shape": case.shape,
        "dtype": case.dtype,
        "mode": case.mode,
        "bytes": case.bytes,
        "eager_target": case.eager_target,
        "copy_target": case.copy_target,
        "compile_target": case.compile_target and compiled,
    }
    runnable = {name: fn for name, fn in case.impls.items() if name in IMPLS and callable(fn)}
    times = timer.many(runnable)
    for name in IMPLS:
        fn = case.impls.get(name)
        result = times.get(name, fn)  # an implementation that cannot run holds the reason
        if result is None or isinstance(result, Exception):
            row[f"{name}_ms"] = None
            row[f"{name}_error"] = None if result is None else error_text(result)
            continue
        row[f"{name}_ms"] = result
        if case.mode in ("fwd+bwd", "r1") or "step" in case.mode:
            try:
                row[f"{name}_peak_mb"] = timer.peak_memory_mb(fn)
            except Exception as error:
                row[f"{name}_error"] = error_text(error)
    return row


def error_text(error):
    """An exception as one line of the table's notes (torch.compile can fail late, e.g. on double backward)."""
    return f"{type(error).__name__}: {error}".splitlines()[0][:200]


def measure_kernels(case, row, timer):
    """The GPU time of ours' kernels in a row with a bandwidth target (Timer.kernel_ms)."""
    try:
        row["ours_kernel_ms"] = timer.kernel_ms(case.impls["ours"])
    except Exception as error:  # a profiler that cannot see the GPU: the row keeps its event timing
        row["ours_kernel_error"] = error_text(error)


def count_launches(case, timer):
    """A row of the device operations per call of each implementation of a LaunchCase (Timer.launches)."""
    row = {"op": case.op, "shape": case.shape, "dtype": case.dtype, "mode": case.mode}
    row["launch_target"] = case.launch_target
    for name, fn in case.impls.items():
        try:
            row[f"{name}_launches"] = timer.launches(fn)
        except Exception as error:  # a profiler that cannot see the GPU: the row says so, and misses
            row[f"{name}_launches"] = None
            row[f"{name}_launches_error"] = error_text(error)
    row["misses"] = misses(row)
    return row


def describe(case):
    return f"{case.op} {case.shape} {case.dtype} {case.mode}"


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def misses(row):
    """The targets a measured row misses: "eager<2" when ours is under the case's eager target
    (see harness.Case), "compile<1" when torch.compile of the reference is faster than ours, "copy<40%"
    when ours moves its ideal traffic at under the case's share of the copy bandwidth, "launches>8"
    when ours takes more device operations per call than a LaunchCase's target. A target the row
    cannot be checked against (ours or eager failed, a time of None or NaN) is missed as
    "eager<2 unmeasured", "copy<85% unmeasured", "compile<1 unmeasured" or "launches>8 unmeasured": a
    verdict needs a measurement. torch.compile is optional (--no-compile, or where it cannot run), so
    its absence misses nothing, except on a row whose compile_target the run was to measure."""
    out = []
    launch_target = row.get("launch_target")
    if launch_target is not None:
        launches = row.get("ours_launches")
        if launches is None:
            out.append(f"launches>{launch_target} unmeasured")
        elif launches > launch_target:
            out.append(f"launches>{launch_target}")
    target = row.get("eager_target")
    if target is not None:
        speedup = row.get("speedup_eager")
        if not measured(speedup):
            out.append(f"eager<{target:g} unmeasured")
        elif speedup < target:
            out.append(f"eager<{target:g}")
    if measured(row.get("speedup_compile")):
        if row["speedup_compile"] < 1.0:
            out.append("compile<1")
    elif row.get("compile_target"):
        out.append("compile<1 unmeasured")
    share, pct = row.get("copy_target"), copy_share(row)
    if share is not None:
        if not measured(pct):
            out.append(f"copy<{100 * share:g}% unmeasured")
        elif pct < 100 * share:
            out.append(f"copy<{100 * share:g}%")
    return out


def measured(value):
    """A number a verdict can rest on: not None, not NaN or infinite."""
    return value is not None and math.isfinite(value)


def copy_share(row):
    """Ours as % of the copy bandwidth. On a GPU (the row holds ours_kernel_ms, None until
    Timer.kernel_ms measured it) only the time of its kernels: a call's CUDA-event time holds the
    host's dispatch where that is longer than the kernels, and where the inputs fit the L2, reads from
    the L2 the previous call filled, so it can fall on either side of the DRAM share the target is
    about. Elsewhere (the CPU) the call's time."""
    if "ours_kernel_ms" in row:
        return row.get("ours_kernel_pct_copy")
    return row.get("ours_pct_copy")


def derive(row, copy_gbs, clone_gbs):
    """The row's bandwidths, shares and speedups, and the targets it misses."""
    ours = row["ours_ms"]
    gbs = row["bytes"] / (ours * 1e-3) / 1e9 if ours and row["bytes"] else None
    row["ours_gbs"] = gbs
    row["ours_pct_copy"] = 100 * gbs / copy_gbs if gbs else None
    row["ours_pct_clone"] = 100 * gbs / clone_gbs if gbs else None
    kernel_ms = row.get("ours_kernel_ms")
    if kernel_ms and row["bytes"]:
        row["ours_kernel_pct_copy"] = 100 * row["bytes"] / (kernel_ms * 1e-3) / 1e9 / copy_gbs
    row["speedup_eager"] = row["eager_ms"] / ours if ours and row["eager_ms"] else None
    row["speedup_compile"] = row["compile_ms"] / ours if ours and row["compile_ms"] else None
    row["misses"] = misses(row)
    return row


def print_columns(lines):
    """lines[0] is the header; the first four columns (op, shape, dtype, mode) left-aligned, numbers right."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print(
            "  ".join(
                str(cell).ljust(w) if j < 4 else str(cell).rjust(w) for j, (cell, w) in enumerate(zip(line, widths))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_table(rows):
    launch_rows = [r for r in rows if "launch_target" in r]
    rows = [r for r in rows if "launch_target" not in r]
    kernels = any(r.get("ours_kernel_ms") is not None for r in rows)
    header = [
        "op",
        "shape",
        "dtype",
        "mode",
        "eager ms",
        "compile ms",
        "ours ms",
        "ours GB/s",
        "% copy",
        "% clone",
        *(["% copy (kernels)"] if kernels else []),
        "x eager",
        "x compile",
        "misses",
    ]
    lines = [header]
    for r in rows:
        lines.append(
            [
                r["op"],
                r["shape"],
                r["dtype"],
                r["mode"],
                fmt(r["eager_ms"], ".3f"),
                fmt(r["compile_ms"], ".3f"),
                fmt(r["ours_ms"], ".3f"),
                fmt(r["ours_gbs"], ".1f"),
                fmt(r["ours_pct_copy"], ".0f"),
                fmt(r["ours_pct_clone"], ".0f"),
                *([fmt(r.get("ours_kernel_pct_copy"), ".0f")] if kernels else []),
                fmt(r["speedup_eager"], ".2f"),
                fmt(r["speedup_compile"], ".2f"),
                ", ".join(r["misses"]) or "-",
            ]
        )
    print_columns(lines)
    missed = sum(1 for r in rows if r["misses"])
    print(
        f"\n{missed} of {len(rows)} rows miss a target (x eager or % copy under the row's target, or x compile under 1)"
    )
    print_launch_table(launch_rows)
    print_memory_table(rows)
    errors = {
        (r["op"], r["mode"], label): r[key]
        for r in rows
        for label, key in [*((name, f"{name}_error") for name in IMPLS), ("ours kernel time", "ours_kernel_error")]
        if r.get(key)
    }
    for (op, mode, name), error in sorted(errors.items()):
        print(f"note: {op} {mode} {name}: {error}")


def print_launch_table(rows):
    """The LaunchCase rows: device operations (kernels, copies, memsets) per call."""
    if not rows:
        return
    print("\ndevice operations (kernels, copies, memsets) per call")
    header = ["op", "shape", "dtype", "mode", "eager", "ours", "ours at most", "misses"]
    print_columns(
        [header]
        + [
            [r["op"], r["shape"], r["dtype"], r["mode"], fmt(r.get("eager_launches"), "d")]
            + [fmt(r.get("ours_launches"), "d"), r["launch_target"], ", ".join(r["misses"]) or "-"]
            for r in rows
        ]
    )
    for r in rows:
        for name in ("eager", "ours"):
            if r.get(f"{name}_launches_error"):
                print(f"note: {r['op']} {r['shape']} {name} launches: {r[f'{name}_launches_error']}")


def print_memory_table(rows):
    """Peak memory of the rows that measured it (fwd+bwd, r1 and steps): MB allocated above the inputs."""
    rows = [r for r in rows if any(r.get(f"{name}_peak_mb") is not None for name in IMPLS)]
    if not rows:
        return
    print("\npeak memory allocated during one call, MB above what was allocated before it")
    header = ["op", "shape", "dtype", "mode", *[f"{name} MB" for name in IMPLS]]
    print_columns(
        [header]
        + [
            [r["op"], r["shape"], r["dtype"], r["mode"], *[fmt(r.get(f"{name}_peak_mb"), ".2f") for name in IMPLS]]
            for r in rows
        ]
    )


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); no plot written")
        return
    rows = [r for r in rows if r.get("speedup_eager")]
    labels = [f"{r['op']} {r['shape']} {r['dtype']} {r['mode']}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["speedup_eager"] for r in rows], height=0.4, label="vs eager")
    ax.barh(
        [i - 0.2 for i in y], [r["speedup_compile"] or float("nan") for r in rows], height=0.4, label="vs torch.compile"
    )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")  # ratios from 0.5x to 30x+ side by side
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xlabel("speedup of gan_kernels, log scale (higher is better; no bar: not measurable)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--ops", default=",".join(available_ops()), help="comma-separated, from: " + ", ".join(available_ops())
    )
    parser.add_argument("--quick", action="store_true", help="one shape and dtype per op, short timings")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument(
        "--compile-targets",
        action="store_true",
        help="only the rows held to issue 14's 'never slower than torch.compile' (a GPU's; none on a CPU)",
    )
    parser.add_argument("--plot", action="store_true", help="also write a PNG bar chart of the speedups")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>.json)")
    parser.add_argument("--list", action="store_true", help="build the cases and list them, time nothing")
    args = parser.parse_args()
    unknown = set(args.ops.split(",")) - set(available_ops())
    if unknown:
        parser.error(f"unknown ops {', '.join(sorted(unknown))}; choose from {', '.join(available_ops())}")
    if args.compile_targets and (args.no_compile or args.quick):
        parser.error("--compile-targets times torch.compile on every dtype and mode: not with --no-compile or --quick")

    def selected(case):
        return getattr(case, "compile_target", False) or not args.compile_targets

    device = torch.device(args.device)
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never time eager under the compile column
    if args.list:  # what scripts/gpu_verify.py --dry-run checks: the cases build, nothing is timed
        for op in args.ops.split(","):
            for case in importlib.import_module(f"cases.{op}").cases(device, args.quick, make_compile_fn(False)):
                if selected(case):
                    print(f"{case.op}  {case.shape}  {case.dtype}  {case.mode}")
        return
    timer = Timer(device, quick=args.quick)
    copy_gbs = copy_bandwidth_gbs(device, timer)
    clone_gbs = copy_bandwidth_gbs(device, timer, allocate=True)
    meta = {
        "device": device_label(device),
        "torch": torch.__version__,
        "gan_kernels": gan_kernels.__version__,
        "backend": str(gan_kernels.backend()),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_compile": not args.no_compile,
        "copy_gbs": copy_gbs,
        "clone_gbs": clone_gbs,
        # The kernels ATen (and ours) picked: default, avx2, avx512 (ATEN_CPU_CAPABILITY can lower it).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(
        f"device {meta['device']} ({meta['cpu_capability']}) | torch {meta['torch']} | backend {meta['backend']} "
        f"| commit {meta['commit']}"
    )
    print(
        f"device copy bandwidth (measured now): {copy_gbs:.1f} GB/s; into a new tensor (clone): {clone_gbs:.1f} GB/s\n"
    )

    slug = "cuda-" + meta["device"].replace(" ", "_") if device.type == "cuda" else "cpu"
    if args.ops != parser.get_default("ops"):  # a subset must not overwrite the full run's results
        slug += "-" + args.ops.replace(",", "+")
    out = pathlib.Path(args.out) if args.out else HERE / "results" / f"{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    # Every case is built first, so that the JSON can name what a run cut short left unmeasured; each
    # leaves these queues as it is measured (and is freed, unless its kernels are timed later).
    queue = collections.deque(
        case
        for op in args.ops.split(",")
        for case in importlib.import_module(f"cases.{op}").cases(
            device, args.quick, make_compile_fn(not args.no_compile)
        )
        if selected(case)
    )
    rows, targeted, counted = [], collections.deque(), collections.deque()

    def save():
        # After every row: a run cut short (the GPU box's time limit) still leaves what it measured,
        # and names what it did not.
        pending = [describe(case) for case in (*queue, *counted)]
        pending += [f"{describe(case)}: ours' kernel time" for case, _ in targeted]
        result = {"meta": {**meta, "complete": not pending, "pending": pending}, "rows": rows}
        out.write_text(json.dumps(result, indent=1) + "\n")

    while queue:
        case = queue.popleft()
        if isinstance(case, LaunchCase):  # counted by the profiler, after every event timing
            counted.append(case)
            continue
        start = time.perf_counter()
        row = measure(case, timer, compiled=not args.no_compile)
        if device.type == "cuda" and case.copy_target is not None and callable(case.impls.get("ours")):
            row["ours_kernel_ms"] = None  # what decides the copy target (copy_share), measured below
            targeted.append((case, row))
        rows.append(derive(row, copy_gbs, clone_gbs))
        # What the row cost, torch.compile's compilation included: what the GPU check's budget rests on.
        row["wall_s"] = round(time.perf_counter() - start, 1)
        save()
        print(f"  measured {describe(case)} in {row['wall_s']} s", file=sys.stderr, flush=True)
    while targeted:  # after every event timing (Timer.kernel_ms says why)
        case, row = targeted.popleft()
        measure_kernels(case, row, timer)
        derive(row, copy_gbs, clone_gbs)
        save()
    while counted:
        rows.append(count_launches(counted.popleft(), timer))
        save()
    print()
    print_table(rows)
    print(f"\njson: {out}")
    if args.plot:
        plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
