"""Smoke tests of the examples (a few iterations each) and their metrics on hand-made samples."""

import dataclasses
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import mixture_of_gaussians as mog  # noqa: E402
from gan_kernels import penalties  # noqa: E402

RING, RING_STD = mog.DATASETS["ring8"]


@pytest.fixture(autouse=True)
def one_thread():
    # The examples' networks are tiny: on a busy machine (xdist workers on every core) a second
    # thread only waits for the first; test_samples_are_returned_in_the_data_units took 145 s, not 7.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_all_points_on_one_mode_cover_one_mode():
    samples = RING[3] + 0.01 * torch.randn(800, 2)
    modes, quality = mog.mode_metrics(samples, RING, RING_STD)
    assert modes == 1
    assert quality == 1.0


def test_points_on_every_mode_cover_all_modes():
    samples = RING.repeat(100, 1) + 0.01 * torch.randn(800, 2)
    modes, quality = mog.mode_metrics(samples, RING, RING_STD)
    assert modes == 8
    assert quality == 1.0


def test_points_between_modes_are_low_quality():
    samples = RING.repeat(100, 1) * 0.5  # on a ring of radius 1, far from every mode
    modes, quality = mog.mode_metrics(samples, RING, RING_STD)
    assert modes == 0
    assert quality == 0.0


def test_a_mode_with_a_few_stray_points_is_not_covered():
    samples = torch.cat([RING[0] + 0.01 * torch.randn(795, 2), RING[1].repeat(5, 1)])
    modes, _ = mog.mode_metrics(samples, RING, RING_STD)
    assert modes == 1


def test_mixture_of_gaussians_runs_every_configuration(tmp_path):
    pytest.importorskip("tqdm")
    results = mog.main(
        ["--steps", "3", "--seeds", "1", "--out", str(tmp_path), "--threads", str(torch.get_num_threads())]
    )
    assert set(results) == {(c, d) for c in mog.CONFIGS for d in mog.DATASETS}
    for r in results.values():
        assert r["samples"].shape == (2500, 2) and torch.isfinite(r["samples"]).all()
    sn = results["sn", "ring8"]["curves"]["sigma"]
    assert len(sn) == 3 and len(sn[0]) == 4 and all(s > 0 for s in sn[-1])
    pytest.importorskip("matplotlib")
    assert (tmp_path / "mog_samples.png").exists() and (tmp_path / "mog_curves.png").exists()


def test_every_configuration_uses_the_same_optimiser_and_budget():
    per_configuration = {
        "loss",
        "spectral_norm",
        "penalty",
        "weight",
        "unroll_steps",
        "instance_noise",
        "minibatch_discrimination",
    }
    shared = {f.name for f in dataclasses.fields(mog.Config)} - per_configuration
    for name in shared:
        assert len({getattr(c, name) for c in mog.CONFIGS.values()}) == 1, name


def test_samples_are_returned_in_the_data_units():
    # The networks train on standardised data; the samples come back scaled to the mixture.
    for ds, expected_spread in (("ring8", 2.0), ("grid25", 8**0.5)):
        samples, _, _ = mog.train(mog.CONFIGS["r1"], ds, 300, 0)
        assert 0.5 * expected_spread < samples.std(dim=0).mean() < 1.5 * expected_spread


@pytest.mark.parametrize("penalty", ["r1", "wgan-gp"])
def test_single_forward_penalty_equals_the_library_helper(penalty):
    # discriminator_loss gets the penalty from the logits of its one D forward over
    # [real, fake(, interpolates)]; it must equal the gan_kernels helper's separate forward.
    torch.manual_seed(0)
    config = mog.Config("non_saturating", penalty=penalty, weight=0.7)
    d = mog.make_discriminator(config)
    real, fake = torch.randn(64, 2), torch.randn(64, 2)
    adversarial, _ = mog.discriminator_loss(mog.Config("non_saturating"), d, real.clone(), fake, None)
    total, observed = mog.discriminator_loss(config, d, real.clone(), fake, torch.Generator().manual_seed(1))
    if penalty == "r1":
        expected = penalties.r1(d, real, gamma=0.7)
    else:
        expected = penalties.wgan_gp(d, real, fake, weight=0.7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(total - adversarial, expected)
    torch.testing.assert_close(observed["penalty"], expected)


def test_digits_runs_and_measures_coverage(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    import digits

    result = digits.main(["--steps", "4", "--out", str(tmp_path), "--threads", str(torch.get_num_threads())])
    assert 0 <= result["classes"] <= 10
    assert 0.0 <= result["entropy"] <= 2.31


def test_digits_coverage_metric_on_real_digits():
    pytest.importorskip("sklearn")
    import digits

    images, labels = digits.load_digits()
    classifier = digits.train_classifier(images, labels)
    produced, entropy, _ = digits.class_coverage(classifier, images)
    assert produced == 10 and entropy > 2.2
    one_class = images[labels == 7]
    produced, entropy, _ = digits.class_coverage(classifier, one_class)
    assert produced <= 2 and entropy < 0.3


@pytest.mark.xdist_group("distributed")  # one gloo job at a time under make test's workers
def test_distributed_example_runs_under_torchrun():
    # Two gloo processes on 127.0.0.1 for a few steps; the example exits 1 if the ranks' parameters
    # differ at the end. Its own session, so that a timeout ends torchrun's workers too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "distributed.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        example,
        "--steps",
        "3",
        "--print-every",
        "1",
    ]
    # PYTHONFAULTHANDLER: a rank that aborts (a crash in gloo, say) prints where each of its threads was.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    if "lo" in [name for _, name in socket.if_nameindex()]:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    # stdin from /dev/null: under pytest-xdist the worker's stdin is its channel to the controller.
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, f"stdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-3000:]}"
    assert "step    3" in stdout
    assert "parameters identical on all 2 ranks: True" in stdout
