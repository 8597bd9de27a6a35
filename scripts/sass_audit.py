"""Machine-code audit of the CUDA kernels, no GPU needed: compiles every csrc/cuda/*.cu for sm_90 with
the flags of CMakeLists.txt's compile check (csrc/cuda/nvcc_flags.txt) and reports, per kernel, what
ptxas allocated (registers, spills, shared and local memory, from `nvcc -Xptxas -v`) and the widths of its
global loads and stores (LDG/STG in `cuobjdump -sass`), so a design can be checked in the machine code
before any GPU runs it.

    python scripts/sass_audit.py [--json PATH] [--build-dir DIR] [SOURCE.cu ...]

Exits 1 when a hot kernel spills or uses local memory (see HOT_KERNELS_RULE) or a kernel designed
for 16-byte accesses lacks them in its loops (WIDE_LOOPS), 2 when a tool is missing, a compile fails or
its output cannot be read, else 0. cuobjdump and the nvdisasm it runs are taken from PATH, else
from the pip packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (CUDA toolkits without them,
like CI's, get them that way: `make cuda-check` installs both).

A source is compiled only when no earlier audit compiled it the same way: the compiles are cached in
build/sass-audit-cache (CACHE_DIR, whatever --build-dir says, so that the tests reuse `make
cuda-check`'s), keyed by the tools' versions, nvcc's command line and environment, and the contents of
the source and of every header `nvcc -M` says it includes (compile_key).

The counts are static (instructions in the code, not executions), for the whole kernel and for its
innermost loops, where a kernel spends its time; a branch a launch never takes still counts, so the
source says which path runs.
"""

import argparse
import concurrent.futures
import dataclasses
import glob
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "sm_90"
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
# nvcc's options, shared with CMakeLists.txt's compile check.
NVCC_FLAGS_FILE = os.path.join(ROOT, "csrc", "cuda", "nvcc_flags.txt")
# The generated headers' folder in the build directory, where nvcc runs: the compile command names it
# relative to there, so that it, part of the cache key, is the same in every build directory.
GENERATED = "generated"

# The compile cache (compile_cached): one folder per compile key. Shared by every --build-dir, so that
# tests/test_sass_audit.py reuses what `make cuda-check` compiled.
CACHE_DIR = os.path.join(ROOT, "build", "sass-audit-cache")
# The most recently used entries kept per source: enough to go back and forth between a few versions
# of it (branches, an edit undone) without filling the disk (an entry is a few MB).
CACHE_ENTRIES_PER_SOURCE = 4
# Part of the key: bumped when what an entry holds changes, so no older entry is read for a newer one.
CACHE_FORMAT = 1
# Environment variables nvcc takes flags and its host compiler from: part of the key.
NVCC_ENVIRONMENT = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN")

# HOT_KERNELS_RULE: every kernel is hot, none is exempt from failing on spills or local memory. The
# small ones (finish_penalty, write_stats, reduce_stat_grad) run on every call of their op, and the
# float64 instances, which only gradcheck and tests use, come from the same source as the fp32 ones:
# local memory there points at register pressure in code the hot instances share.


@dataclasses.dataclass(frozen=True)
class WideLoops:
    """A kernel family designed for 16-byte global accesses in its innermost loops (WIDE_LOOPS)."""

    source: str  # relative to the repository root
    vector_argument: Optional[int]  # the template argument giving the vector width; None: every instance
    stores: bool  # whether its loops store 16 bytes at a time as well as load them


# WIDE_LOOPS: the design the README's "Machine-code audit" describes, checked rather than only printed.
# An instance that should have 16-byte accesses in its innermost loops (a vector one: vector width
# other than 1) and lacks them fails the audit, and so does a family with no such instance in an
# audited source (renamed, or its vector instances no longer instantiated): either would otherwise
# pass unnoticed.
WIDE_LOOPS = {
    "bias_act_kernel": WideLoops("csrc/cuda/bias_act.cu", 2, stores=True),
    "chunk_sum_squares": WideLoops("csrc/cuda/gradient_penalty.cu", 1, stores=False),
    "scale_samples": WideLoops("csrc/cuda/gradient_penalty.cu", 1, stores=True),
    "group_positions": WideLoops("csrc/cuda/minibatch_std.cu", 3, stores=True),
    "pixel_norm_rows": WideLoops("csrc/cuda/pixel_norm.cu", 1, stores=True),
    "pixel_norm_tiles": WideLoops("csrc/cuda/pixel_norm.cu", 1, stores=True),
    # One instance serves the vector and the scalar path.
    "normalize_kernel": WideLoops("csrc/cuda/spectral_norm.cu", None, stores=True),
    "power_step_kernel": WideLoops("csrc/cuda/spectral_norm.cu", None, stores=False),
    "grad_dot_kernel": WideLoops("csrc/cuda/spectral_norm.cu", None, stores=False),
}

# Bytes moved by one LDG/STG, from its width suffix; no suffix means 32 bits.
ACCESS_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16, "256": 32}
# An instruction line of `cuobjdump -sass`: address comment, optional predicate, opcode with modifiers.
SASS_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")
# Any line holding an instruction: its end and encoding. One that SASS_INSTRUCTION does not read is an
# error rather than skipped, since a skipped STL or LDG would pass unnoticed.
SASS_ENCODED = re.compile(r";\s*/\* 0x[0-9a-f]+ \*/")


@dataclasses.dataclass
class Kernel:
    source: str  # relative to the repository root
    mangled: str
    name: str = ""  # demangled, shortened for the table
    registers: int = 0
    stack_frame_bytes: int = 0  # the thread's local-memory frame: spills, local arrays, call frames
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    shared_bytes: int = 0  # static __shared__ only: dynamic shared memory is sized at launch
    lmem_bytes: int = 0  # local memory outside the stack frame (printed by older ptxas only)
    global_loads: Dict[int, int] = dataclasses.field(default_factory=dict)  # bytes per access -> instructions
    global_stores: Dict[int, int] = dataclasses.field(default_factory=dict)
    loop_loads: Dict[int, int] = dataclasses.field(default_factory=dict)  # the part of them in innermost loops
    loop_stores: Dict[int, int] = dataclasses.field(default_factory=dict)
    local_loads: int = 0  # LDL instructions
    local_stores: int = 0  # STL instructions

    @property
    def family(self) -> str:
        return self.name.split("<")[0]

    @property
    def wide(self) -> bool:
        """Whether WIDE_LOOPS wants 16-byte accesses in this instance's innermost loops."""
        rule = WIDE_LOOPS.get(self.family)
        if rule is None or rule.source != self.source:
            return False
        if rule.vector_argument is None:
            return True
        arguments = self.name[self.name.index("<") + 1 : self.name.rindex(">")].split(", ")
        return arguments[rule.vector_argument] != "1"

    def problems(self) -> List[str]:
        """What makes this kernel fail the audit (every kernel is hot: HOT_KERNELS_RULE; WIDE_LOOPS)."""
        found = []
        if self.wide:
            if not self.loop_loads.get(16):
                found.append("no 16-byte global loads in its innermost loops")
            if WIDE_LOOPS[self.family].stores and not self.loop_stores.get(16):
                found.append("no 16-byte global stores in its innermost loops")
        if self.spill_store_bytes or self.spill_load_bytes:
            found.append(f"spills {self.spill_store_bytes} B stored, {self.spill_load_bytes} B loaded")
        if self.stack_frame_bytes or self.lmem_bytes:
            found.append(f"local memory {self.stack_frame_bytes + self.lmem_bytes} B")
        if self.local_loads or self.local_stores:
            found.append(f"{self.local_loads} LDL, {self.local_stores} STL")
        return found


def missing_wide_families(kernels: List[Kernel], sources: List[str]) -> List[str]:
    """The WIDE_LOOPS families of `sources` (relative to the repository root) without an instance
    that WIDE_LOOPS checks."""
    checked = {k.family for k in kernels if k.wide}
    return [family for family, rule in WIDE_LOOPS.items() if rule.source in sources and family not in checked]


def parse_ptxas(text: str, source: str) -> Dict[str, Kernel]:
    """Entry functions of `nvcc -Xptxas -v` output (stderr), by mangled name. Device functions that
    were not inlined also get "Function properties" lines; only entries are kept. An entry without
    its stack frame or registers line is an error: read as zero, a changed format would hide spills."""
    kernels: Dict[str, Kernel] = {}
    properties: Dict[str, List[int]] = {}
    entry = None
    described = None  # the function the last "Function properties for" line named
    counted = set()  # the entries whose registers line was read
    for line in text.splitlines():
        if match := re.search(r"Compiling entry function '([^']+)'", line):
            entry = kernels.setdefault(match.group(1), Kernel(source, match.group(1)))
        elif match := re.search(r"Function properties for (\S+)", line):
            described = match.group(1)
        elif match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            properties[described] = [int(v) for v in match.groups()]
        elif entry is not None and (match := re.search(r"Used (\d+) registers(.*)", line)):
            entry.registers = int(match.group(1))
            counted.add(entry.mangled)
            # The rest is a comma-separated list of "N bytes <what>" (and "used N barriers").
            for amount, what in re.findall(r"(\d+) bytes (\S+)", match.group(2)):
                if what == "smem":
                    entry.shared_bytes = int(amount)
                elif what == "lmem":
                    entry.lmem_bytes = int(amount)
    for name, kernel in kernels.items():
        if name not in properties or name not in counted:
            raise RuntimeError(f"{source}: the ptxas report gives no stack frame or registers line for {name}")
        kernel.stack_frame_bytes, kernel.spill_store_bytes, kernel.spill_load_bytes = properties[name]
    return kernels


def access_bytes(opcode: str) -> int:
    for modifier in opcode.split(".")[1:]:
        if modifier in ACCESS_BYTES:
            return ACCESS_BYTES[modifier]
    return 4


def innermost(loops: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The (first, last) address ranges of `loops` that hold no other one."""
    return [
        outer
        for outer in loops
        if not any(outer[0] <= inner[0] and inner[1] <= outer[1] and inner != outer for inner in loops)
    ]


def parse_sass(text: str) -> Dict[str, Dict[str, Dict[int, int]]]:
    """Per function of `cuobjdump -sass` output (mangled name), instruction counts by bytes per access:
    global loads and stores in the whole function ("LDG", "STG") and in its innermost loops ("loop
    LDG", "loop STG"), local ones ("LDL", "STL") under key 0. An innermost loop is the address range
    of a backward branch that holds no other such range: where a kernel spends its time, and where a
    partly vectorised loop shows (the compiler may give the peeled iterations 16-byte accesses and
    the unrolled body narrower ones). An approximation: a block the compiler placed outside its
    loop's range is counted as outside the loop."""
    accesses: Dict[str, List[Tuple[int, str, int]]] = {}  # per function: (address, opcode, bytes)
    loops: Dict[str, List[Tuple[int, int]]] = {}  # per function: (target, address) of each backward branch
    instructions: Dict[str, int] = {}  # per function: how many
    function = None
    for line in text.splitlines():
        if match := re.match(r"\s*Function : (\S+)", line):
            function = match.group(1)
            accesses[function], loops[function], instructions[function] = [], [], 0
        elif function is not None and (match := SASS_INSTRUCTION.match(line)):
            instructions[function] += 1
            address, opcode = int(match.group(1), 16), match.group(2).split(".")[0]
            if opcode in ("LDG", "STG"):
                accesses[function].append((address, opcode, access_bytes(match.group(2))))
            elif opcode in ("LDL", "STL"):
                accesses[function].append((address, opcode, 0))
            elif opcode == "BRA" and (target := re.search(r"0x([0-9a-f]+)\s*;", line)):
                # Every function ends in a branch to itself, which is no loop.
                if int(target.group(1), 16) < address:
                    loops[function].append((int(target.group(1), 16), address))
        elif function is not None and SASS_ENCODED.search(line):
            raise RuntimeError(f"{function}: an instruction the audit cannot read: {line.strip()}")
    if unread := [function for function, count in instructions.items() if not count]:
        raise RuntimeError(f"no instruction of {', '.join(unread)} could be read in the disassembly")
    functions = {}
    for function, found in accesses.items():
        hot = innermost(loops[function])
        counts: Dict[str, Dict[int, int]] = {key: {} for key in ("LDG", "STG", "loop LDG", "loop STG", "LDL", "STL")}
        for address, opcode, width in found:
            counts[opcode][width] = counts[opcode].get(width, 0) + 1
            if opcode in ("LDG", "STG") and any(first <= address <= last for first, last in hot):
                counts[f"loop {opcode}"][width] = counts[f"loop {opcode}"].get(width, 0) + 1
        functions[function] = counts
    return functions


def enum_names() -> Dict[str, List[str]]:
    """Enumerators of our `enum class`es in declaration order, to print a template argument like
    `(gan_kernels::BiasActMode)1` as `GradFromX`. Enums with explicit values or macro bodies are skipped."""
    enums = {}
    for header in sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*.h"))):
        with open(header) as f:
            for name, body in re.findall(r"enum class (\w+)\s*(?::\s*\w+\s*)?\{([^}]*)\}", f.read()):
                names = [entry.strip() for entry in body.split(",") if entry.strip()]
                if all(re.fullmatch(r"\w+", n) for n in names):
                    enums[name] = names
    return enums


def short_name(demangled: str, enums: Dict[str, List[str]]) -> str:
    """`void gan_kernels::(anonymous namespace)::k<float, (gan_kernels::Mode)1>(gan_kernels::P)` -> `k<float, B>`
    for Mode {A, B}: no return type, namespaces or parameter list."""
    name = demangled.removeprefix("void ")
    if name.endswith(")"):  # the parameter list is the last top-level parenthesis
        depth = 0
        for at in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[at], 0)
            if depth == 0:
                name = name[:at]
                break
    name = name.replace("gan_kernels::(anonymous namespace)::", "").replace("gan_kernels::", "")

    def enumerator(match):
        names = enums.get(match.group(1), [])
        value = int(match.group(2))
        return names[value] if value < len(names) else match.group(0)

    return re.sub(r"\((\w+)\)(\d+)", enumerator, name)


def demangle(names: List[str]) -> List[str]:
    """c++filt, in one call. Required: WIDE_LOOPS finds its families by their demangled names."""
    if not names:
        return names
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def pip_tool(executable: str) -> Optional[str]:
    """The binary a pip package of NVIDIA's puts under site-packages/nvidia/<cuXX>/bin."""
    spec = importlib.util.find_spec("nvidia")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(glob.glob(os.path.join(folder, "*", "bin", executable))):
            return path
    return None


def find_tool(executable: str) -> Optional[str]:
    return shutil.which(executable) or pip_tool(executable)


def host_compiler() -> Optional[str]:
    """The compiler nvcc preprocesses every source with: NVCC_CCBIN's (a folder holding gcc, or the
    compiler itself), else gcc on PATH, nvcc's default on Linux."""
    ccbin = os.environ.get("NVCC_CCBIN")
    if ccbin and os.path.isdir(ccbin):
        return os.path.join(ccbin, "gcc")
    return ccbin or shutil.which("gcc")


def version_output(path: Optional[str]) -> str:
    """What `path --version` prints; empty where it cannot run (nvcc then fails the compile)."""
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True).stdout if path else ""
    except OSError:
        return ""


def release(version: str) -> str:
    """The release of a CUDA tool, from its "Cuda compilation tools, release 13.0, V13.0.88" line."""
    match = re.search(r", V(\S+)", version)
    return match.group(1) if match else "unknown"


def nvcc_flags(path: str = NVCC_FLAGS_FILE) -> List[str]:
    """The options of NVCC_FLAGS_FILE: its lines that start with "-" (the others are comments)."""
    with open(path) as f:
        return [line.strip() for line in f if line.startswith("-")]


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """The audit's tools and nvcc's flags, with the versions that decide what the tools output."""

    paths: Dict[str, str]  # nvcc, cuobjdump, nvdisasm
    versions: Dict[str, str]  # the `--version` output of each, and of nvcc's host compiler
    flags: List[str]  # nvcc's, all but the output and the source


def load_toolchain(paths: Dict[str, str]) -> Toolchain:
    """The toolchain of `paths`, with the flags of NVCC_FLAGS_FILE."""
    versions = {name: version_output(path) for name, path in paths.items()}
    versions["host compiler"] = version_output(host_compiler())
    include = [f"-I{os.path.join(ROOT, 'csrc')}", f"-I{GENERATED}"]
    return Toolchain(paths, versions, ["-cubin", f"-arch={ARCH}", *nvcc_flags(), *include, "-Xptxas", "-v"])


def cubin_name(source: str) -> str:
    return os.path.splitext(os.path.basename(source))[0] + ".cubin"


def compile_command(toolchain: Toolchain, source: str) -> List[str]:
    """nvcc's command line for `source` (an absolute path: nvcc runs in the build directory, GENERATED)."""
    return [toolchain.paths["nvcc"], *toolchain.flags, "-o", cubin_name(source), source]


def parse_dependencies(make_rule: str) -> List[str]:
    """The prerequisites of a make rule as `nvcc -M` prints it: `target : a \\<newline> b`, a space
    in a path escaped as `\\ `."""
    prerequisites = make_rule.split(":", 1)[1].replace("\\\n", " ")
    return [path.replace("\\ ", " ") for path in re.findall(r"(?:\\ |\S)+", prerequisites)]


def compile_key(toolchain: Toolchain, source: str, build_dir: str) -> str:
    """A digest of everything that decides a compile's ptxas report, cubin and disassembly: the
    cache's format, the tools' and host compiler's versions, nvcc's environment variables, the command
    line (arch and flags) and the path and contents of every file the compile reads. Those files are
    listed by `nvcc -M` with the compile's flags, run each time rather than remembered from the last
    compile: a header added, moved or newly included changes the list, and with it the key."""
    listed = subprocess.run(
        [toolchain.paths["nvcc"], "-M", *toolchain.flags, source], cwd=build_dir, capture_output=True, text=True
    )
    if listed.returncode != 0:
        raise RuntimeError(f"nvcc -M failed on {os.path.relpath(source, ROOT)}:\n{listed.stderr}")
    facts = [
        CACHE_FORMAT,
        toolchain.versions,
        {name: os.environ.get(name) for name in NVCC_ENVIRONMENT},
        compile_command(toolchain, source),
    ]
    for path in parse_dependencies(listed.stdout):
        try:  # a relative path is the generated headers', relative to the build directory
            with open(os.path.join(build_dir, path), "rb") as f:
                facts.append([path, hashlib.sha256(f.read()).hexdigest()])
        except OSError as error:
            raise RuntimeError(f"{path}, which nvcc -M lists for {source}, cannot be read: {error}") from error
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def compile_and_disassemble(toolchain: Toolchain, source: str, build_dir: str) -> Tuple[str, str]:
    """Compiles `source` into build_dir: the ptxas report (nvcc's stderr) and `cuobjdump -sass`."""
    relative = os.path.relpath(source, ROOT)
    compiled = subprocess.run(compile_command(toolchain, source), cwd=build_dir, capture_output=True, text=True)
    if compiled.returncode != 0:
        raise RuntimeError(f"nvcc failed on {relative}:\n{compiled.stderr}")
    cubin = os.path.join(build_dir, cubin_name(source))
    # cuobjdump -sass hands the disassembly to nvdisasm, which it looks for on PATH.
    nvdisasm_folder = os.path.dirname(toolchain.paths["nvdisasm"])
    env = dict(os.environ, PATH=nvdisasm_folder + os.pathsep + os.environ.get("PATH", ""))
    sass = subprocess.run([toolchain.paths["cuobjdump"], "-sass", cubin], capture_output=True, text=True, env=env)
    if sass.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed on {cubin}:\n{sass.stderr}")
    return compiled.stderr, sass.stdout


def store_entry(entry: str, ptxas: str, sass: str, cubin: str) -> None:
    """Writes a cache entry whole or not at all (another audit may look the key up meanwhile), then
    drops its source's least recently used entries beyond CACHE_ENTRIES_PER_SOURCE."""
    entries = os.path.dirname(entry)
    os.makedirs(entries, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=entries)  # a dot: not an entry to the glob below
    with open(os.path.join(staging, "ptxas.txt"), "w") as f:
        f.write(ptxas)
    # The disassembly is 3-23 MB of text a source; compressed, about a tenth.
    with gzip.open(os.path.join(staging, "sass.txt.gz"), "wt", compresslevel=1) as f:
        f.write(sass)
    shutil.copyfile(cubin, os.path.join(staging, "kernels.cubin"))
    try:
        os.rename(staging, entry)
    except OSError:  # another audit stored the same key first
        shutil.rmtree(staging)
    newest_first = sorted(glob.glob(os.path.join(entries, "*")), key=os.path.getmtime, reverse=True)
    for stale in newest_first[CACHE_ENTRIES_PER_SOURCE:]:
        shutil.rmtree(stale, ignore_errors=True)


def compile_cached(toolchain: Toolchain, source: str, build_dir: str, cache_dir: str) -> Tuple[str, str]:
    """compile_and_disassemble's report and disassembly of `source`, and its cubin in build_dir: from
    cache_dir where a compile with the same compile_key ran before, else compiled and stored there."""
    entry = os.path.join(cache_dir, os.path.basename(source), compile_key(toolchain, source, build_dir))
    if not os.path.isdir(entry):
        ptxas, sass = compile_and_disassemble(toolchain, source, build_dir)
        store_entry(entry, ptxas, sass, os.path.join(build_dir, cubin_name(source)))
        return ptxas, sass
    os.utime(entry)  # used now: the last to be pruned
    shutil.copyfile(os.path.join(entry, "kernels.cubin"), os.path.join(build_dir, cubin_name(source)))
    with open(os.path.join(entry, "ptxas.txt")) as f:
        ptxas = f.read()
    with gzip.open(os.path.join(entry, "sass.txt.gz"), "rt") as f:
        return ptxas, f.read()


def audit_source(source: str, toolchain: Toolchain, build_dir: str, cache_dir: str = CACHE_DIR) -> List[Kernel]:
    relative = os.path.relpath(source, ROOT)
    ptxas, sass = compile_cached(toolchain, source, build_dir, cache_dir)
    kernels = parse_ptxas(ptxas, relative)
    if not kernels:  # every source holds kernels: none found means none was read
        raise RuntimeError(f"{relative}: the ptxas report names no kernel")
    counts = parse_sass(sass)
    if set(counts) != set(kernels):
        raise RuntimeError(
            f"{relative}: ptxas and cuobjdump list different kernels: {sorted(set(counts) ^ set(kernels))}"
        )
    for name, kernel in kernels.items():
        kernel.global_loads, kernel.global_stores = counts[name]["LDG"], counts[name]["STG"]
        kernel.loop_loads, kernel.loop_stores = counts[name]["loop LDG"], counts[name]["loop STG"]
        kernel.local_loads, kernel.local_stores = counts[name]["LDL"].get(0, 0), counts[name]["STL"].get(0, 0)
    return list(kernels.values())


def widths(counts: Dict[int, int]) -> str:
    """`16:4 4:2`: 4 instructions moving 16 bytes each, 2 moving 4 (static counts, not executions)."""
    return " ".join(f"{width}:{counts[width]}" for width in sorted(counts, reverse=True)) or "-"


def table(kernels: List[Kernel]) -> str:
    header = ["kernel", "regs", "spill st/ld", "smem", "local", "LDL/STL", "LDG", "STG", "loop LDG", "loop STG"]
    rows = [
        [
            k.name,
            str(k.registers),
            f"{k.spill_store_bytes}/{k.spill_load_bytes}",
            str(k.shared_bytes),
            str(k.stack_frame_bytes + k.lmem_bytes),
            f"{k.local_loads}/{k.local_stores}",
            widths(k.global_loads),
            widths(k.global_stores),
            widths(k.loop_loads),
            widths(k.loop_stores),
        ]
        for k in kernels
    ]
    sizes = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    source = None
    for kernel, row in zip([None, *kernels], [header, *rows]):
        if kernel is not None and kernel.source != source:
            source = kernel.source
            lines.append(f"-- {source}")
        lines.append(
            "  ".join(
                cell.ljust(size) if i == 0 else cell.rjust(size) for i, (cell, size) in enumerate(zip(row, sizes))
            ).rstrip()
        )
    return "\n".join(lines)


def family_summary(kernels: List[Kernel]) -> str:
    """Per kernel family: how many of its instances load and store 16 bytes at a time in their
    innermost loops."""
    families: Dict[str, List[Kernel]] = {}
    for kernel in kernels:
        families.setdefault(kernel.family, []).append(kernel)
    width = max(len(name) for name in families)
    lines = ["instances whose innermost loops have 16-byte global loads / 16-byte global stores / all instances:"]
    for name, members in families.items():
        loads = sum(1 for k in members if k.loop_loads.get(16))
        stores = sum(1 for k in members if k.loop_stores.get(16))
        lines.append(f"  {name.ljust(width)}  {loads:3d} / {stores:3d} / {len(members):3d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="the .cu files to audit (default: csrc/cuda/*.cu)")
    parser.add_argument("--json", metavar="PATH", help="also write the per-kernel results as JSON")
    parser.add_argument(
        "--build-dir",
        default=os.path.join(ROOT, "build", "sass-audit"),
        help="where nvcc runs, the cubins and the generated activation and dtype tables go",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    sources = [os.path.abspath(s) for s in args.sources] or CUDA_SOURCES
    tools = {name: find_tool(name) for name in ("nvcc", "cuobjdump", "nvdisasm")}
    missing = [name for name, path in tools.items() if path is None]
    missing += ["c++filt"] if shutil.which("c++filt") is None else []
    if missing:
        print(
            f"not found on PATH or in a pip package: {', '.join(missing)} (a CUDA toolkit gives nvcc, "
            "binutils c++filt; pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm the others)",
            file=sys.stderr,
        )
        return 2
    try:
        toolchain = load_toolchain(tools)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    build_dir = os.path.abspath(args.build_dir)
    generated = os.path.join(build_dir, GENERATED)
    os.makedirs(generated, exist_ok=True)
    # The headers CMakeLists.txt and setup.py generate from the activation and dtype tables.
    subprocess.run([sys.executable, os.path.join(ROOT, "gan_kernels", "_codegen.py"), generated], check=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            per_source = list(pool.map(lambda s: audit_source(s, toolchain, build_dir), sources))
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    kernels = [kernel for found in per_source for kernel in found]
    enums = enum_names()
    for kernel, demangled in zip(kernels, demangle([k.mangled for k in kernels])):
        kernel.name = short_name(demangled, enums)
    kernels.sort(key=lambda k: (k.source, k.name))
    failing = [k for k in kernels if k.problems()]
    missing = missing_wide_families(kernels, [os.path.relpath(s, ROOT) for s in sources])
    seconds = time.monotonic() - started
    versions = {name: release(toolchain.versions[name]) for name in ("nvcc", "cuobjdump")}

    print(table(kernels))
    print()
    print(family_summary(kernels))
    print()
    print(
        f"{len(kernels)} kernels in {len(sources)} files for {ARCH} in {seconds:.0f} s "
        f"(nvcc: {versions['nvcc']}; cuobjdump: {versions['cuobjdump']})"
    )
    if failing or missing:
        print(f"FAIL: {len(failing)} kernel(s) with spills, local memory or lost 16-byte accesses:")
        for kernel in failing:
            print(f"  {kernel.source}: {kernel.name}: {'; '.join(kernel.problems())}")
        for family in missing:
            print(f"  {WIDE_LOOPS[family].source}: no instance of {family} that WIDE_LOOPS checks")
    else:
        print("ok: no kernel spills or uses local memory; the loops of WIDE_LOOPS have 16-byte accesses")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "arch": ARCH,
                    "tools": versions,
                    "seconds": round(seconds, 1),
                    "kernels": [dict(dataclasses.asdict(k), problems=k.problems()) for k in kernels],
                },
                f,
                indent=1,
            )
    return 1 if failing or missing else 0


if __name__ == "__main__":
    sys.exit(main())
