"""The GPU check's file names (scripts/gpu_verify.py): results name the card that produced them.
Its commands are checked by `make gpu-verify-dry`."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))

import gpu_verify  # noqa: E402


@pytest.mark.parametrize(
    "gpu_name, tag",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),  # no model token: the whole name
        ("", "gpu"),
    ],
)
def test_results_are_named_after_the_gpu_model(gpu_name, tag):
    assert gpu_verify.model_tag(gpu_name) == tag


def test_every_benchmark_output_carries_the_tag(tmp_path):
    outs = [
        step.argv[step.argv.index("--out") + 1]
        for steps in gpu_verify.stages(str(tmp_path), "h100").values()
        for step in steps
        if "--out" in step.argv
    ]
    assert len(outs) == 3 and all(pathlib.Path(out).name.startswith("cuda-h100") for out in outs), outs


def test_the_summary_of_a_stage_is_on_disk_before_each_step(tmp_path):
    """The box's tool ends a call at the session's device time, which can come before the stage's
    budget: the summary, written only at the end of the stage, was then lost with every step's result."""
    summary = tmp_path / "stage-summary.txt"
    steps = [
        gpu_verify.Step("one", ["true"], 30),
        # Passes only if the table already holds step one's result when step two starts.
        gpu_verify.Step("two", ["grep", "-q", r"^one  *pass", str(summary)], 30),
    ]
    assert gpu_verify.run_stage("stage", steps, str(tmp_path), 60)
    lines = summary.read_text().splitlines()
    assert "ended during" not in lines[0] and [line.split()[:2] for line in lines[2:]] == [
        ["one", "pass"],
        ["two", "pass"],
    ]


def test_a_pytest_step_cut_at_its_limit_still_writes_its_report(tmp_path):
    """cuda-tests stopped at its limit lost its JUnit report (the step's pass/fail counts) and pytest's
    summary of the failures so far: SIGTERM ends Python without either."""
    (tmp_path / "test_slow.py").write_text(
        "import time\n\ndef test_quick():\n    pass\n\ndef test_hangs():\n    time.sleep(60)\n"
    )
    report = tmp_path / "report.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", str(tmp_path)]
    result, output = gpu_verify.run_step(gpu_verify.Step("tests", argv, 5), 5, str(tmp_path / "stage.log"))
    assert result == "TIMEOUT (5 s)"
    # However far a slow machine got in 5 s (test_quick ran here in well under that).
    assert report.exists() and "failed" in gpu_verify.junit_counts(str(report))(output)


def keep_build_step(out):
    (step,) = [s for s in gpu_verify.stages(str(out), "h100")["first"] if s.name == "keep-build"]
    return step


def test_the_first_stage_returns_its_build_for_the_second_call_to_carry(tmp_path):
    step = keep_build_step(tmp_path)
    result, output = gpu_verify.run_step(step, 60, str(tmp_path / "stage.log"))
    built = pathlib.Path(gpu_verify.ROOT, "gan_kernels")
    (kept,) = [p.name for p in tmp_path.glob("_C*.so")]
    assert result == "pass" and (built / kept).read_bytes() == (tmp_path / kept).read_bytes(), output
    assert step.detail(output).startswith(f"kept {kept} (")


def test_a_build_larger_than_the_box_returns_is_not_kept(tmp_path):
    step = keep_build_step(tmp_path)
    step.argv[-1] = "1024"  # the limit in bytes
    result, output = gpu_verify.run_step(step, 60, str(tmp_path / "stage.log"))
    assert result == "FAIL (1)" and not list(tmp_path.glob("_C*.so"))
    assert "MiB, over the 0 MiB a returned file may have" in step.detail(output), output
