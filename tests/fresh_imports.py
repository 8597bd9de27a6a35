"""Runs cases that each need gan_kernels imported afresh (it reads its environment variables once, at
import) for about the price of one new interpreter instead of one each: most of a python's start is
`import torch` (2-2.5 s on CI's machine), so a driver python imports torch once and forks a process per
case, which imports gan_kernels itself and runs the case as `python -c CODE` or `python SCRIPT` would
(sys.path, sys.argv, an uncaught exception, sys.exit and the interpreter's exit included), its stdout,
stderr and exit status captured.

A case's environment is set after torch's import: it may set the variables gan_kernels reads, not
those torch reads at import. Forking is safe only with no other thread running: numpy's OpenBLAS,
which torch imports, would start one, so the driver imports it with one thread (which the cases
keep), and checks before each fork that it runs no other.
"""

import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Case:
    """What to run in a fresh import of gan_kernels: it imports from `cwd` (or the script's folder)."""

    code: str = ""  # run as `python -c code`, or
    script: str = ""  # as `python script`
    env: dict = dataclasses.field(default_factory=dict)  # on top of the test's environment
    cwd: str = ROOT


def run_fresh_imports(cases):
    """The subprocess.CompletedProcess of each Case, in order."""
    driver = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps([dataclasses.asdict(case) for case in cases]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert driver.returncode == 0, f"the driver of the fresh imports failed:\n{driver.stderr}"
    return [
        subprocess.CompletedProcess([sys.executable, *([case.script] if case.script else ["-c", case.code])], *result)
        for case, result in zip(cases, json.loads(driver.stdout))
    ]


def fork_per_case():
    """In the driver: one child per case, one after the other; prints each one's (exit status,
    stdout, stderr) as JSON. Returns only in a child, the case it is to run, its output redirected."""
    results = []
    for case in json.load(sys.stdin):
        threads = os.listdir("/proc/self/task")
        assert len(threads) == 1, f"forking with {len(threads)} threads: one could hold a lock forever"
        outputs = [tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")]
        pid = os.fork()
        if pid == 0:
            for fd, output in zip((1, 2), outputs):
                os.dup2(output.fileno(), fd)
            return case
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        results.append([status])
        for output in outputs:
            output.seek(0)
            results[-1].append(output.read())
            output.close()
    print(json.dumps(results))
    sys.exit(0)


if __name__ == "__main__":
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import torch  # noqa: F401 (what the cases would each import)

    if blas_threads is None:
        del os.environ["OPENBLAS_NUM_THREADS"]
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = blas_threads
    # Torch's objects out of the garbage collector's reach: each child's collections, at exit too, would
    # otherwise write to every page they lie on, copying it (half of a child's 0.6 s).
    gc.freeze()
    case = fork_per_case()
    os.chdir(case["cwd"])
    os.environ.update(case["env"])
    # sys.path and sys.argv as python starts them: a script's folder first, or for -c the working one.
    sys.path[0] = os.path.dirname(case["script"]) if case["script"] else ""
    sys.argv = [case["script"] or "-c"]
    if case["script"]:
        with open(case["script"]) as f:
            case["code"] = f.read()
    # At the top level, so that the interpreter ends as after `python -c`: an uncaught exception printed
    # with its exit status 1, sys.exit's status kept, atexit handlers run.
    exec(compile(case["code"], case["script"] or "<string>", "exec"), {"__name__": "__main__"})
