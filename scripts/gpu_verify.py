"""The GPU check, in two stages that each fit one 7-minute call on the lent GPU box (DESIGN.md,
"Working on the GPU box"; the box has torch + CUDA, pytest-xdist and compute-sanitizer, no network):

    bash scripts/gpu_verify.sh first     # environment, CUDA build, require the CUDA kernels, the CUDA
                                         # tests, memcheck on a smoke set, op benchmarks without compile
    bash scripts/gpu_verify.sh second    # rebuild only if needed (or carry first's build back, below),
                                         # racecheck, torch.compile columns of
                                         # the headline rows, the end-to-end D steps, and the CPU op
                                         # tests on the box's CPU (AVX-512 where it has it)
    bash scripts/gpu_verify.sh --dry-run first second   # any machine, seconds: assemble every command
                                         # and check it (what CI runs through `make test`)

Each step has its own time limit, cut to what is left of the stage's budget. Everything a step
prints goes to $OUT/<stage>.log ($OUT defaults to ./gpu-out); the benchmark JSON/PNG and the test
report (JUnit XML) land beside it, at most 8 files a call as the box's tool returns them. The last
lines printed are a table of the steps: result, seconds, what was counted.

`first` also returns the extension it built (`keep-build`): a box that went cold between the calls
(30 idle seconds) would spend 1-2 of the second call's few minutes building it again, so the second
call carries it back (README, "When a GPU is drawn").
"""

import argparse
import concurrent.futures
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable or "python3"
STAGE_BUDGET_S = 400  # of the 7 minutes (420 s) a call may take: the rest is slack for the box's tool
# Every command: unbuffered output, and our kernels wherever they exist (a GAN_KERNELS_IMPL=reference
# left in the caller's environment would make the check test the fallback).
STEP_ENV = {"PYTHONUNBUFFERED": "1", "GAN_KERNELS_IMPL": "auto"}
BUILD_ENV = {"FORCE_CUDA": "1", "MAX_JOBS": "16", "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}

# Our CUDA kernels refuse to be replaced by the fallback in every pytest run below.
NO_FALLBACK = ["-W", "error::gan_kernels.FallbackWarning"]
PYTEST = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *NO_FALLBACK]

# Smoke sets of tests/test_cuda.py for the sanitizers, each small and each reaching every kernel it
# is meant for; the dry run checks that every family named in REACHES is selected.
MEMCHECK_SELECTION = (
    "(pixel_norm_paths or bias_act_paths or several_chunks or many_tiles or minibatch_discrimination_paths)"
    " and (float32 or bfloat16)"
    " or minibatch_std_group_sizes and float32"
    " or tile_cache_limits and (float32-1472 or float32-720 or float64-704)"
    " or grid_stride or spectral_norm_matches_reference or spectral_norm_power_iteration_paths and float32"
    " or spectral_norm_normalize_paths and float32"
)
MEMCHECK_REACHES = [
    "pixel_norm_paths",
    "bias_act_paths",
    "several_chunks",
    "many_tiles",
    "minibatch_std_group_sizes",
    "tile_cache_limits",
    "grid_stride",
    "spectral_norm_matches_reference",
    "spectral_norm_power_iteration_paths",
    "spectral_norm_normalize_paths",
    "minibatch_discrimination_paths",
]
# Only the kernels with shared memory (bias_act has none), at small sizes: racecheck is slow.
RACECHECK_SELECTION = (
    "pixel_norm_paths and tiles and float32 or tile_cache_limits and float32-1472"
    " or several_chunks and float32 and 8200 or many_tiles and float32"
    " or spectral_norm_matches_reference and small or spectral_norm_power_iteration_paths and float32-1"
)
RACECHECK_REACHES = [
    "pixel_norm_paths[tiles_cached",
    "pixel_norm_paths[tiles_uncached",
    "several_chunks",
    "many_tiles",
    "spectral_norm_matches_reference[small",
    "spectral_norm_power_iteration_paths[float32-1",
]

OPS = "bias_act,gradient_penalty,minibatch_discrimination,minibatch_std,pixel_norm,spectral_norm"
COMPILE_TARGET_OPS = "bias_act,gradient_penalty,pixel_norm"
# The largest file the box's tool returns from $OUT.
RETURNED_FILE_LIMIT_BYTES = 16 << 20
KEEP_BUILD = """
import os, shutil, sys
from gan_kernels import _backend
out, limit = sys.argv[1], int(sys.argv[2])
if _backend._C is None:
    sys.exit(f"no extension to keep: {_backend.C_ERROR}")
path = _backend._C.__file__
name, size = os.path.basename(path), os.path.getsize(path)
if size > limit:
    sys.exit(f"{name} is {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB a returned file may have")
shutil.copy(path, out)
print(f"kept {name} ({size / 2**20:.1f} MiB) for the second call to carry")
"""
ENVIRONMENT = r"""
for tool in nvidia-smi nvcc compute-sanitizer; do command -v $tool >/dev/null || echo "$tool: not found"; done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
command -v nvcc >/dev/null && nvcc --version | tail -n 2
command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -n 1
nproc; grep -m1 'model name' /proc/cpuinfo || true
python3 -c "import torch; print('ATen CPU capability', torch.backends.cpu.get_cpu_capability())" || true
git log -1 --format='commit %h %s' 2>/dev/null || echo "commit ${GAN_KERNELS_COMMIT:-unknown}"
"""


def makefile_list(name):
    """The files of a list variable of the Makefile (`NAME = a b \\ c`), where make test names them."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    found = re.search(rf"^{name} = (.*)$", text, re.MULTILINE)
    if not found:
        raise RuntimeError(f"the Makefile no longer defines {name}")
    return found.group(1).split()


# The CPU op tests that make test reruns under each CPU capability: on the box's CPU they run the
# build ATen picks there, AVX512 where it has AVX-512, which no machine of ours has.
CAPABILITY_TESTS = makefile_list("CAPABILITY_TESTS")


@dataclasses.dataclass
class Step:
    name: str
    argv: List[str]
    limit_s: int
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    required: bool = False  # the stage stops when this step fails
    run_unless: Optional[List[str]] = None  # skip the step when this command succeeds
    dry: Optional[Callable[["Step"], str]] = None  # the CPU check: returns what it found, raises on a problem
    detail: Optional[Callable[[str], str]] = None  # what to report from the step's output


def shell(script):
    return ["bash", "-c", script]


# ---- what a step's output says --------------------------------------------------------------------


def junit_counts(path):
    def read(_output):
        if not os.path.exists(path):
            return "no report"
        suite = ElementTree.parse(path).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        return f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped"

    return read


def last_match(pattern, fallback="-"):
    def read(output):
        found = re.findall(pattern, output)
        return found[-1] if found else fallback

    return read


def pytest_and_sanitizer(output):
    tests = last_match(r"=+ (.*(?:passed|failed|error).*?) in [\d.]+s")(output)
    sanitizer = last_match(r"(?:ERROR|RACECHECK) SUMMARY: .*")(output)
    return f"{tests}; {sanitizer}"


# ---- dry-run checks (CPU machine, seconds) ---------------------------------------------------------


def run_quietly(argv, env=None, timeout=300):
    return subprocess.run(
        argv, cwd=ROOT, env={**os.environ, **STEP_ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def check_files(*paths):
    def check(step):
        missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}")
        return f"{', '.join(paths)} present; command not run here"

    return check


def check_by_running(step):
    result = run_quietly(step.argv, step.env)
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-500:]}")
    return f"ran: {result.stdout.strip().splitlines()[-1] if result.stdout.strip() else 'no output'}"


def check_require_cuda(step):
    probe = "import torch, gan_kernels; print(torch.cuda.is_available() and gan_kernels.backend().cuda)"
    gpu_here = run_quietly([PY, "-c", probe]).stdout.strip() == "True"
    result = run_quietly(step.argv, step.env)
    if gpu_here and result.returncode != 0:
        raise RuntimeError(f"CUDA kernels are here but the check failed: {result.stderr.strip()[-500:]}")
    if not gpu_here and result.returncode == 0:
        raise RuntimeError("exit 0 without CUDA kernels: the GPU check would go on to test the fallback")
    return f"exit {result.returncode}, as it must {'with' if gpu_here else 'without'} CUDA kernels here"


def check_pytest_selection(reaches=()):
    """Collects the step's selection (without xdist, the report, the sanitizer) and checks that every
    named test family is in it."""

    def check(step):
        start = step.argv.index(PY)
        argv = [a for a in step.argv[start:] if not a.startswith("--junitxml") and a not in ("-x",)]
        if "-n" in argv:
            del argv[argv.index("-n") : argv.index("-n") + 2]
        if "tests" in argv:  # the whole suite's CUDA cases: collecting every file takes a minute on CI's
            argv[argv.index("tests")] = "tests/test_cuda.py"  # two cores; the CUDA file stands in for it
        result = run_quietly([*argv, "--collect-only"], step.env)
        ids = [line for line in result.stdout.splitlines() if "::" in line]
        if result.returncode != 0 or not ids:
            raise RuntimeError(
                f"collection failed (exit {result.returncode}): {result.stdout[-800:]}{result.stderr[-800:]}"
            )
        missing = [r for r in reaches if not any(r in i for i in ids)]
        if missing:
            raise RuntimeError(f"the selection no longer reaches {', '.join(missing)}")
        return f"{len(ids)} tests selected in tests/test_cuda.py"

    return check


def check_benchmark(step):
    # --compile-targets selects GPU rows only: the CPU lists every case of the ops instead (the selection
    # itself is checked by tests/test_benchmarks.py).
    argv = [a for a in step.argv if a not in ("--plot", "--compile-targets")]
    if "--out" in argv:
        del argv[argv.index("--out") : argv.index("--out") + 2]
    result = run_quietly([*argv, "--list", "--device", "cpu"])
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-800:]}")
    found = f"{len(result.stdout.splitlines())} cases build (listed on the CPU, not timed)"
    return found + ("; on a GPU --compile-targets keeps issue 14's" if "--compile-targets" in step.argv else "")


# ---- the stages ---------------------------------------------------------------------------------


def build_step(**kwargs):
    return Step(
        "build",
        [PY, "setup.py", "build_ext", "--inplace"],
        240,
        env=BUILD_ENV,
        required=True,
        dry=check_files("setup.py", "csrc/cuda", "csrc/ops"),
        detail=last_match(r"(error: .*|Error .*)", "built"),
        **kwargs,
    )


def require_cuda_step():
    return Step(
        "require-cuda",
        [PY, "-m", "gan_kernels", "--require-cuda"],
        60,
        required=True,
        dry=check_require_cuda,
        detail=last_match(r"(GPU .*|error: .*)"),
    )


def model_tag(gpu_name):
    """The GPU's model as the results' file names carry it: `h100` for 'NVIDIA H100 80GB HBM3', so
    that a run on whichever card the box lends cannot be read as another card's."""
    model = re.search(r"\b([A-Z]+\d{2,4}[A-Za-z]?)\b", gpu_name)
    return (model.group(1) if model else re.sub(r"[^0-9A-Za-z]+", "-", gpu_name).strip("-") or "gpu").lower()


def gpu_tag():
    """`model_tag` of the first GPU nvidia-smi lists; `gpu` where it lists none (the dry run)."""
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        return model_tag(subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.splitlines()[0])
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "gpu"


def stages(out, tag):
    first = [
        Step("environment", shell(ENVIRONMENT), 30, dry=check_by_running, detail=last_match(r"NVIDIA .*", "no GPU")),
        build_step(),
        require_cuda_step(),
        Step(
            "keep-build",
            [PY, "-c", KEEP_BUILD, out, str(RETURNED_FILE_LIMIT_BYTES)],
            30,
            dry=check_by_running,
            detail=last_match(r"(kept .*|.* MiB.*)"),
        ),
        Step(
            "cuda-tests",
            # loadgroup: the tests of an xdist_group (the 20 GB ones past 2^31 elements) one at a time.
            [
                *PYTEST,
                "-n",
                "8",
                "--dist",
                "loadgroup",
                "--maxfail",
                "25",
                f"--junitxml={out}/cuda-tests.xml",
                "-k",
                "cuda",
                "tests",
            ],
            180,
            dry=check_pytest_selection(),
            detail=junit_counts(f"{out}/cuda-tests.xml"),
        ),
        Step(
            "memcheck",
            [
                "compute-sanitizer",
                "--tool",
                "memcheck",
                "--error-exitcode",
                "1",
                "--print-limit",
                "20",
                *PYTEST,
                "-x",
                "-k",
                MEMCHECK_SELECTION,
                "tests/test_cuda.py",
            ],
            150,
            # Every allocation its own cudaMalloc, so an overrun past a tensor into the caching
            # allocator's pool is an error, not a write into a neighbour.
            env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
            dry=check_pytest_selection(MEMCHECK_REACHES),
            detail=pytest_and_sanitizer,
        ),
        Step(
            "bench-ops",
            [PY, "benchmarks/run.py", "--no-compile", "--ops", OPS, "--plot", "--out", f"{out}/cuda-{tag}.json"],
            120,
            dry=check_benchmark,
            detail=last_match(r"device copy bandwidth.*"),
        ),
    ]
    second = [
        # A fresh box has no build left from `first`: only then build again.
        build_step(run_unless=[PY, "-m", "gan_kernels", "--require-cuda"]),
        require_cuda_step(),
        Step(
            "racecheck",
            [
                "compute-sanitizer",
                "--tool",
                "racecheck",
                "--racecheck-report",
                "hazard",
                "--error-exitcode",
                "1",
                "--print-limit",
                "20",
                *PYTEST,
                "-x",
                "-k",
                RACECHECK_SELECTION,
                "tests/test_cuda.py",
            ],
            150,
            dry=check_pytest_selection(RACECHECK_REACHES),
            detail=pytest_and_sanitizer,
        ),
        # Issue 14's 'never slower than torch.compile' cells, each with its own compiled function: pixel
        # norm, bias_act and the penalty (both centers) at the shapes, fp32, fp16 and bf16, fwd,
        # bwd and fwd+bwd (36 rows; bench-ops has every row without torch.compile).
        Step(
            "bench-compile",
            [
                PY,
                "benchmarks/run.py",
                "--compile-targets",
                "--ops",
                COMPILE_TARGET_OPS,
                "--plot",
                "--out",
                f"{out}/cuda-{tag}-compile.json",
            ],
            200,
            dry=check_benchmark,
            detail=last_match(r"json: .*"),
        ),
        Step(
            "bench-e2e",
            [
                PY,
                "benchmarks/run.py",
                "--no-compile",
                "--ops",
                "end_to_end",
                "--plot",
                "--out",
                f"{out}/cuda-{tag}-e2e.json",
            ],
            120,
            dry=check_benchmark,
            detail=last_match(r"json: .*"),
        ),
        # Last: not a GPU check. Our AVX512 CPU kernels on AVX-512 hardware, where the box's CPU has it
        # (the environment step prints ATen's capability there), which the development machines only
        # sometimes have.
        Step(
            "cpu-ops",
            [
                *PYTEST,
                "-n",
                "8",
                f"--junitxml={out}/cpu-ops.xml",
                "-k",
                "not cuda and not compile and not opcheck",
                *CAPABILITY_TESTS,
            ],
            90,
            # make test runs these files with this selection on every CPU capability it has.
            dry=check_files(*CAPABILITY_TESTS),
            detail=junit_counts(f"{out}/cpu-ops.xml"),
        ),
    ]
    return {"first": first, "second": second}


# ---- running ------------------------------------------------------------------------------------


# Seconds a step stopped at its limit has for each signal before the next: SIGINT first, which pytest
# answers as a KeyboardInterrupt by printing its summary of failures and writing its JUnit report
# (SIGTERM ends Python at once: the report of a step cut short was lost), then SIGTERM, then SIGKILL.
STOP_GRACE_S = (15, 10)


def stop(process):
    for sig, grace in zip((signal.SIGINT, signal.SIGTERM), STOP_GRACE_S):
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_step(step, limit_s, log_path):
    """Runs the step in its own process group (killed whole at the limit), its output going straight
    to the stage log, so a call cut short still leaves it there; returns (result, output)."""
    with open(log_path, "ab") as log:
        header = f"\n===== {step.name}: {' '.join(f'{k}={v}' for k, v in step.env.items())} {shlex.join(step.argv)}"
        log.write(f"{header} (limit {limit_s} s)\n".encode())
        log.flush()
        begin = log.tell()
        try:
            process = subprocess.Popen(
                step.argv,
                cwd=ROOT,
                env={**os.environ, **STEP_ENV, **step.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:  # e.g. compute-sanitizer missing on the box
            log.write(f"{error}\n".encode())
            return f"FAIL ({type(error).__name__})", str(error)
        try:
            process.wait(timeout=limit_s)
            result = "pass" if process.returncode == 0 else f"FAIL ({process.returncode})"
        except subprocess.TimeoutExpired:
            stop(process)
            result = f"TIMEOUT ({limit_s} s)"
    with open(log_path, "rb") as log:
        log.seek(begin)
        return result, log.read().decode(errors="replace")


def table(title, rows, width=14):
    lines = [title, f"{'step':<{width}} {'result':<18} {'seconds':>7}  detail"]
    lines += [f"{name:<{width}} {result:<18} {seconds:>7}  {detail}" for name, result, seconds, detail in rows]
    return "\n".join(lines)


def print_table(title, rows, width=14):
    print("\n" + table(title, rows, width), flush=True)


def run_stage(name, steps, out, budget_s):
    rows = []
    aborted = False
    start = time.monotonic()
    log_path = os.path.join(out, f"{name}.log")
    open(log_path, "w").close()  # each step appends to it

    def title(state):
        seconds = round(time.monotonic() - start)
        return f"== gpu_verify {name}{state}: {seconds} s of a {budget_s} s budget; logs in {out}/{name}.log"

    def write_summary(text):
        with open(os.path.join(out, f"{name}-summary.txt"), "w") as f:
            f.write(text + "\n")

    for step in steps:
        # Before every step: a call the box's tool ends before the stage does (its device time spent)
        # still brings back the table of the steps that finished.
        write_summary(table(title(f" (ended during {step.name})"), rows))
        left = int(budget_s - (time.monotonic() - start))
        if aborted:
            rows.append((step.name, "not run", 0, "a required step failed"))
            continue
        if left < 15:
            rows.append((step.name, "not run", 0, f"stage budget of {budget_s} s spent"))
            continue
        if step.run_unless and run_quietly(step.run_unless, timeout=120).returncode == 0:
            rows.append((step.name, "skipped", 0, "not needed: " + shlex.join(step.run_unless[1:]) + " passed"))
            continue
        print(f"[{time.monotonic() - start:5.0f} s] {step.name} (limit {min(step.limit_s, left)} s) ...", flush=True)
        step_start = time.monotonic()
        result, output = run_step(step, min(step.limit_s, left), log_path)
        rows.append(
            (step.name, result, round(time.monotonic() - step_start), step.detail(output) if step.detail else "")
        )
        if result != "pass":
            print("\n".join(output.splitlines()[-25:]), flush=True)
            if step.required:
                print(
                    f"ABORT: {step.name} failed, so nothing after it would test our CUDA kernels "
                    f"(see {out}/{name}.log)",
                    flush=True,
                )
                aborted = True
    write_summary(table(title(""), rows))
    print_table(title(""), rows)
    return all(r[1] in ("pass", "skipped") for r in rows)


def dry_run(stage_steps):
    """Checks every step of the given stages, in parallel (each check is a subprocess); a step that
    recurs unchanged in a later stage is checked once."""
    checks = {}
    for name, steps in stage_steps.items():
        for step in steps:
            command = f"{' '.join(f'{k}={v}' for k, v in step.env.items())} {shlex.join(step.argv)}".strip()
            print(f"{name}/{step.name}: {command.replace(chr(10), '; ')[:400]}", flush=True)
            checks.setdefault(command, (step, []))[1].append(name)

    def check(step):
        start = time.monotonic()
        try:
            found = step.dry(step) if step.dry else "no check"
            if shutil.which(step.argv[0]) is None:  # compute-sanitizer is on the GPU box only
                found = f"{step.argv[0]} not on this machine; {found}"
            return "ok", round(time.monotonic() - start), found
        except Exception as error:  # report every broken step, not only the first
            return "BROKEN", round(time.monotonic() - start), f"{type(error).__name__}: {error}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda item: check(item[0]), checks.values()))
    rows = [("+".join(names) + "/" + step.name, *result) for (step, names), result in zip(checks.values(), results)]
    budgets = "; ".join(
        f"{name}: " + ", ".join(f"{s.name} {s.limit_s}" for s in steps) for name, steps in stage_steps.items()
    )
    print_table(
        f"== gpu_verify --dry-run (step limits in s: {budgets}; stage budget {STAGE_BUDGET_S} s)", rows, width=24
    )
    return all(r[1] == "ok" for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", choices=["first", "second"])
    parser.add_argument("--dry-run", action="store_true", help="assemble and check every command; run no GPU step")
    parser.add_argument("--budget", type=int, default=STAGE_BUDGET_S, help="seconds per stage (default %(default)s)")
    args = parser.parse_args()
    out = os.path.abspath(os.environ.get("OUT") or os.path.join(ROOT, "gpu-out"))
    os.makedirs(out, exist_ok=True)
    all_stages = stages(out, gpu_tag())
    if args.dry_run:
        return 0 if dry_run({name: all_stages[name] for name in args.stages}) else 1
    ok = True
    for name in args.stages:
        ok &= run_stage(name, all_stages[name], out, args.budget)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
