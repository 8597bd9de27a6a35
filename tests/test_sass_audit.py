"""scripts/sass_audit.py: its parsers on canned ptxas, cuobjdump, nvcc -M and CMake text (no CUDA
toolkit needed), and where nvcc, cuobjdump and nvdisasm are found, its compile cache on a small kernel
and one real audit of a kernel file."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "sass_audit.py")
_spec = importlib.util.spec_from_file_location("sass_audit", SCRIPT)
sass_audit = importlib.util.module_from_spec(_spec)
sys.modules["sass_audit"] = sass_audit  # dataclasses look their module up there
_spec.loader.exec_module(sass_audit)

# `nvcc -Xptxas -v` of CUDA 13.0 (names shortened): a clean kernel with static shared memory, a
# device function that was not inlined (its properties must not be taken for a kernel), and a
# kernel that spills.
PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z5tilesv' for 'sm_90'
ptxas info    : Function properties for _Z5tilesv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem
ptxas info    : Compile time = 112.170 ms
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z4rowsv' for 'sm_90'
ptxas info    : Function properties for _Z4rowsv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 8 bytes cumulative stack size
ptxas info    : Compile time = 71.375 ms
"""

# `cuobjdump -sass` (hex encodings and most instructions left out): `rows` loads 16 bytes in a peeled
# iteration and in its loop, stores 16 bytes only in the peeled iteration and 4 x 4 bytes in the loop,
# and spills; `tiles` has no loop, 2-byte loads (one predicated, one read-only) and an 8-byte store.
SASS = """\

\tcode for sm_90
\t\tFunction : _Z4rowsv
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                     /* 0x00000a00ff017b82 */
                                                                              /* 0x000e220000000800 */
        /*0010*/                   STL [R1], R6 ;                             /* 0x0000000601007387 */
        /*0020*/                   LDG.E.128 R4, desc[UR4][R28.64] ;          /* 0x000000041c047981 */
        /*0030*/                   STG.E.128 desc[UR4][R2.64], R4 ;           /* 0x0000000402007986 */
        /*0040*/               @!P0 BRA 0x100 ;                               /* 0x0000000000b08947 */
        /*0050*/                   LDG.E.128 R8, desc[UR4][R10.64] ;          /* 0x000000040a087981 */
        /*0060*/                   STG.E desc[UR4][R2.64], R8 ;               /* 0x0000000802007986 */
        /*0070*/                   STG.E desc[UR4][R2.64+0x4], R9 ;           /* 0x0000040902007986 */
        /*0080*/                   STG.E desc[UR4][R2.64+0x8], R10 ;          /* 0x0000080a02007986 */
        /*0090*/                   STG.E desc[UR4][R2.64+0xc], R11 ;          /* 0x00000c0b02007986 */
        /*00a0*/               @!P1 BRA 0x50 ;                                /* 0xfffffffc00a89947 */
        /*00b0*/                   LDL R6, [R1] ;                             /* 0x0000000001067983 */
        /*00c0*/               @P2 BRA 0x20 ;                                 /* 0xfffffff400d42947 */
        /*0100*/                   EXIT ;                                     /* 0x000000000000794d */
        /*0110*/                   BRA 0x110;                                 /* 0xfffffffc00fc7947 */
\t\t..........



\t\tFunction : _Z5tilesv
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                     /* 0x00000a00ff017b82 */
        /*0010*/               @P0 LDG.E.U16 R0, desc[UR6][R10.64] ;          /* 0x000000060a000981 */
        /*0020*/                   LDG.E.U16.CONSTANT R2, desc[UR6][R14.64] ; /* 0x000000060e027981 */
        /*0030*/                   STG.E.64 desc[UR6][R16.64], R20 ;          /* 0x0000001410007986 */
        /*0040*/                   EXIT ;                                     /* 0x000000000000794d */
        /*0050*/                   BRA 0x50;                                  /* 0xfffffffc00fc7947 */
\t\t..........
"""


def test_ptxas_resources_of_each_kernel():
    kernels = sass_audit.parse_ptxas(PTXAS, "csrc/cuda/x.cu")
    assert set(kernels) == {"_Z5tilesv", "_Z4rowsv"}
    tiles, rows = kernels["_Z5tilesv"], kernels["_Z4rowsv"]
    assert (tiles.registers, tiles.shared_bytes, tiles.stack_frame_bytes) == (40, 2048, 0)
    assert tiles.problems() == []
    assert (rows.registers, rows.stack_frame_bytes, rows.spill_store_bytes, rows.spill_load_bytes) == (32, 8, 4, 4)
    assert rows.problems() == ["spills 4 B stored, 4 B loaded", "local memory 8 B"]


def test_sass_access_widths_whole_kernel_and_innermost_loops():
    counts = sass_audit.parse_sass(SASS)
    rows, tiles = counts["_Z4rowsv"], counts["_Z5tilesv"]
    assert rows["LDG"] == {16: 2} and rows["STG"] == {16: 1, 4: 4}
    # 0x50..0xa0 is the innermost loop; 0x20..0xc0 holds it and is not.
    assert rows["loop LDG"] == {16: 1} and rows["loop STG"] == {4: 4}
    assert rows["LDL"] == {0: 1} and rows["STL"] == {0: 1}
    assert tiles["LDG"] == {2: 2} and tiles["STG"] == {8: 1}
    assert tiles["loop LDG"] == {} and tiles["loop STG"] == {} and tiles["LDL"] == {}


def test_unread_ptxas_lines_are_errors():
    """A kernel whose stack frame or registers line is missing (or reworded) would read as no spills."""
    frame = "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
    for lost in (frame, "ptxas info    : Used 32 registers, used 0 barriers, 8 bytes cumulative stack size\n"):
        assert lost in PTXAS
        with pytest.raises(RuntimeError, match="_Z4rowsv"):
            sass_audit.parse_ptxas(PTXAS.replace(lost, ""), "csrc/cuda/x.cu")
    reworded = PTXAS.replace(frame, "    4 bytes spill stores, 4 bytes spill loads, 8 bytes stack frame\n")
    with pytest.raises(RuntimeError, match="_Z4rowsv"):
        sass_audit.parse_ptxas(reworded, "csrc/cuda/x.cu")


def test_unread_sass_lines_are_errors():
    """An instruction line in another format would be skipped, and with it an STL or a 16-byte LDG."""
    stl = "        /*0010*/                   STL [R1], R6 ;"
    assert stl in SASS
    with pytest.raises(RuntimeError, match="STL"):
        sass_audit.parse_sass(SASS.replace(stl, stl.replace("/*0010*/", "/*0x0010*/")))
    with pytest.raises(RuntimeError, match="LDC"):
        sass_audit.parse_sass(SASS.replace("/*00", "/* 00"))
    # Without address and encoding comments no line is read: not a function without accesses.
    with pytest.raises(RuntimeError, match="_Z5tilesv"):
        sass_audit.parse_sass(re.sub(r"/\*[0-9a-f]+\*/|/\* 0x[0-9a-f]+ \*/", "", SASS))


def test_a_source_without_kernels_is_an_error(monkeypatch):
    """Nothing parsed from a source is not a clean source."""
    monkeypatch.setattr(sass_audit, "compile_cached", lambda *args: ("ptxas info    : 0 bytes gmem\n", ""))
    with pytest.raises(RuntimeError, match="no kernel"):
        sass_audit.audit_source(os.path.join(ROOT, "csrc", "cuda", "bias_act.cu"), None, "", "")


def wide_kernel(name, source="csrc/cuda/bias_act.cu", loads=None, stores=None):
    return sass_audit.Kernel(source, "_Z1kv", name, loop_loads=loads or {}, loop_stores=stores or {})


def test_lost_16_byte_accesses_fail():
    """The vector instances of a WIDE_LOOPS family need 16-byte loads (and stores, where it says so) in
    their innermost loops; its scalar instances, and kernels of other families, need none."""
    assert wide_kernel("bias_act_kernel<float, Forward, 4>", loads={16: 1, 4: 4}, stores={16: 1}).problems() == []
    assert wide_kernel("bias_act_kernel<float, Forward, 4>", loads={16: 1}, stores={4: 4}).problems() == [
        "no 16-byte global stores in its innermost loops"
    ]
    assert wide_kernel("bias_act_kernel<__half, Grad2, 8>", loads={2: 8}, stores={16: 1}).problems() == [
        "no 16-byte global loads in its innermost loops"
    ]
    assert wide_kernel("bias_act_kernel<float, Forward, 1>", loads={4: 2}, stores={4: 1}).problems() == []
    gradient_penalty = "csrc/cuda/gradient_penalty.cu"
    assert wide_kernel("chunk_sum_squares<float, 4>", gradient_penalty, {16: 4}, {4: 1}).problems() == []
    assert wide_kernel("finish_penalty<float>", gradient_penalty, {4: 32}).problems() == []
    # Every instance of a family without a vector-width argument.
    spectral_norm = "csrc/cuda/spectral_norm.cu"
    assert wide_kernel("normalize_kernel<double, Normalize>", spectral_norm, {8: 21}, {16: 5}).problems() == [
        "no 16-byte global loads in its innermost loops"
    ]


def test_a_wide_family_without_a_checked_instance_fails():
    """Renamed, or its vector instances no longer instantiated: nothing of it would be checked."""
    scalar = wide_kernel("bias_act_kernel<float, Forward, 1>")
    renamed = wide_kernel("bias_act<float, Forward, 4>", loads={16: 1}, stores={16: 1})
    assert sass_audit.missing_wide_families([scalar, renamed], ["csrc/cuda/bias_act.cu"]) == ["bias_act_kernel"]
    vector = wide_kernel("bias_act_kernel<float, Forward, 4>")
    assert sass_audit.missing_wide_families([vector], ["csrc/cuda/bias_act.cu"]) == []
    # Only the audited sources' families are expected.
    assert sass_audit.missing_wide_families([scalar], ["csrc/cuda/minibatch_discrimination.cu"]) == []
    assert set(sass_audit.missing_wide_families([], ["csrc/cuda/spectral_norm.cu"])) == {
        "normalize_kernel",
        "power_step_kernel",
        "grad_dot_kernel",
    }


def test_kernel_names_shortened_with_enumerators():
    enums = sass_audit.enum_names()  # read from csrc's headers
    assert enums["BiasActMode"] == ["Forward", "GradFromX", "GradFromY", "Grad2", "Count"]
    demangled = (
        "void gan_kernels::(anonymous namespace)::bias_act_kernel<float, (gan_kernels::BiasActMode)1, 4>"
        "(gan_kernels::BiasActParams, gan_kernels::BiasActScalars<float>)"
    )
    assert sass_audit.short_name(demangled, enums) == "bias_act_kernel<float, GradFromX, 4>"
    assert sass_audit.short_name("void k<(gan_kernels::Unknown)7>(int (*)(int))", enums) == "k<(Unknown)7>"


def test_flags_are_the_compile_checks():
    flags = sass_audit.nvcc_flags()
    # The half/bfloat16 restrictions of the real build, comments left out.
    assert {"-std=c++17", "-O3", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__"} <= set(flags)
    assert all(flag.startswith("-") and flag == flag.strip() for flag in flags), flags
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        cmakelists = f.read()
    assert "csrc/cuda/nvcc_flags.txt" in cmakelists and "-D__CUDA" not in cmakelists


def test_dependencies_of_a_make_rule():
    rule = "k.o : /src/k.cu \\\n    generated/table.h \\\n    /my\\ headers/a.h /usr/include/b.h\n"
    assert sass_audit.parse_dependencies(rule) == [
        "/src/k.cu",
        "generated/table.h",
        "/my headers/a.h",
        "/usr/include/b.h",
    ]


@pytest.mark.skipif(not os.path.exists("/usr/bin/make"), reason="needs make in /usr/bin")
def test_ci_fails_where_nvcc_is_missing():
    """CI relies on the compile check and the audit: there a missing nvcc fails `make cuda-check`
    rather than skipping it (`-o build`: its prerequisite is not remade)."""
    # No nvcc on the PATH, and not the CI's own setting (.ci/run exports it to the make running this).
    path = {**{k: v for k, v in os.environ.items() if k != "GAN_KERNELS_REQUIRE_NVCC"}, "PATH": "/usr/bin:/bin"}
    if subprocess.run(["sh", "-c", "command -v nvcc"], env=path, capture_output=True).returncode == 0:
        pytest.skip("nvcc is in /usr/bin or /bin")
    make = ["make", "-s", "-C", ROOT, "-o", "build", "cuda-check"]
    skipped = subprocess.run(make, env=path, capture_output=True, text=True)
    assert skipped.returncode == 0 and "skipping" in skipped.stdout, skipped
    required = subprocess.run(make, env={**path, "GAN_KERNELS_REQUIRE_NVCC": "1"}, capture_output=True, text=True)
    assert required.returncode != 0 and "nvcc not found" in required.stderr, required
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "export GAN_KERNELS_REQUIRE_NVCC=1\n" in f.read()


TOOLS = {tool: sass_audit.find_tool(tool) for tool in ("nvcc", "cuobjdump", "nvdisasm")}
needs_tools = pytest.mark.skipif(
    None in TOOLS.values(),
    reason="needs nvcc, cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)",
)

# A kernel whose load width comes from a header it includes, or from a -D flag.
COPY_VECTORS = """\
#include "vector_width.h"
struct alignas(4 * VECTOR_WIDTH) Vector { float lanes[VECTOR_WIDTH]; };
__global__ void copy_vectors(const Vector* in, Vector* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) out[i] = in[i];
}
"""
VECTOR_WIDTH = "#ifndef VECTOR_WIDTH\n#define VECTOR_WIDTH {}\n#endif\n"


@needs_tools
def test_compile_cache_answers_only_what_nothing_changed(tmp_path, monkeypatch):
    """A change to an included header or to the flags compiles again: a stale hit would report the old
    load width. The same source and flags again come from the cache."""
    source, header = tmp_path / "copy_vectors.cu", tmp_path / "vector_width.h"
    source.write_text(COPY_VECTORS)
    header.write_text(VECTOR_WIDTH.format(4))
    build_dir, cache_dir = tmp_path / "build", tmp_path / "cache"
    build_dir.mkdir()
    compiles = []
    compile_and_disassemble = sass_audit.compile_and_disassemble
    monkeypatch.setattr(
        sass_audit, "compile_and_disassemble", lambda *args: compiles.append(args) or compile_and_disassemble(*args)
    )

    def load_widths(toolchain):
        """The widths of the kernel's global loads, and how many compiles ran so far."""
        [kernel] = sass_audit.audit_source(str(source), toolchain, str(build_dir), str(cache_dir))
        assert (build_dir / "copy_vectors.cubin").is_file()
        return sorted(kernel.global_loads), len(compiles)

    toolchain = sass_audit.load_toolchain(TOOLS)
    assert load_widths(toolchain) == ([16], 1)
    assert load_widths(toolchain) == ([16], 1)
    header.write_text(VECTOR_WIDTH.format(1))
    assert load_widths(toolchain) == ([4], 2)
    assert load_widths(dataclasses.replace(toolchain, flags=[*toolchain.flags, "-DVECTOR_WIDTH=2"])) == ([8], 3)


@needs_tools
def test_real_audit_of_pixel_norm(tmp_path):
    """Through the shared compile cache: after `make cuda-check`, no compile."""
    report = tmp_path / "audit.json"
    source = os.path.join(ROOT, "csrc", "cuda", "pixel_norm.cu")
    run = subprocess.run(
        [sys.executable, SCRIPT, "--json", str(report), "--build-dir", str(tmp_path), source],
        capture_output=True,
        text=True,
    )
    assert run.returncode in (0, 1), run.stderr
    kernels = {k["name"]: k for k in json.loads(report.read_text())["kernels"]}
    assert run.returncode == int(any(k["problems"] for k in kernels.values())), run.stdout
    for element in ("float", "double", "__half", "__nv_bfloat16"):
        vector = 16 // {"float": 4, "double": 8}.get(element, 2)
        for backward in ("false", "true"):
            # Both kernels' design: 16-byte loads and stores in their loops on the vector path (tiles
            # cached in shared memory or not), no 16-byte load on the scalar one.
            for kernel, cached in (
                ("pixel_norm_rows", ""),
                ("pixel_norm_tiles", ", false"),
                ("pixel_norm_tiles", ", true"),
            ):
                wide = kernels[f"{kernel}<{element}, {vector}, {backward}{cached}>"]
                assert "16" in wide["loop_loads"] and "16" in wide["loop_stores"], wide["name"]
                assert "16" not in kernels[f"{kernel}<{element}, 1, {backward}{cached}>"]["global_loads"]
