"""Multi-process training with torchrun on the gloo backend (CPU), gradient accumulation and bf16 autocast.

ACT runs without dropout and without its VAE, so a step is a deterministic function of the weights and the batch:
2 processes with batch b must then give the weights of 1 process with batch 2b (up to the order of float sums),
and 2 batches of b accumulated those of one batch of 2b.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robotrain.cli import main
from tests.datasets.helpers import record
from tests.training.test_train_e2e import TINY, assert_same_weights, weights

DETERMINISTIC_ACT = [*TINY["act"], "--policy.dropout=0", "--policy.use_vae=false"]
# Float sums in another order change gradients by ~1e-7 relative. AdamW divides each gradient by its running scale,
# so on parameters whose gradients are near 0 that can move the update by a fraction of the learning rate (1e-5):
# after 10 steps every parameter must be within one step's worth, 1e-5 (seen: 1.6e-6 at most).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("data") / "ds", [12, 9, 14])


def train_args(dataset: Path, run: Path, *flags: str) -> list[str]:
    """A tiny deterministic ACT run; a --policy.dropout flag brings dropout (and its random stream) back."""
    policy = [f for f in DETERMINISTIC_ACT if not (f.startswith("--policy.dropout") and
                                                  any(g.startswith("--policy.dropout") for g in flags))]
    return ["train", *policy, "--dataset.repo_id=test/synthetic", f"--dataset.root={dataset}",
            "--num_workers=0", "--log_freq=1", f"--output_dir={run}", *flags]


def torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "robotrain", *args]


def run_processes(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOLERANCE, msg=lambda m, k=key: f"{k}: {m}")


# ---- in process: accumulation and precision ----------------------------------------------------------------
def test_accumulating_two_batches_equals_one_batch_twice_as_large(workdir, dataset):
    assert main(train_args(dataset, workdir / "big", "--batch_size=4", "--steps=5")) == 0
    assert main(train_args(dataset, workdir / "acc", "--batch_size=2", "--gradient_accumulation_steps=2",
                           "--steps=5")) == 0
    assert_close_weights(weights(workdir / "acc"), weights(workdir / "big"))
    import json

    rows = [json.loads(line) for line in (workdir / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and [r["samples"] for r in rows] == [4, 8, 12, 16, 20]
    state = json.loads((workdir / "acc/checkpoints/last/training_state/training_step.json").read_text())
    assert state["grad_accum_steps"] == 2 and state["samples"] == 20


def test_accumulation_resumes_exactly(workdir, dataset):
    flags = ["--batch_size=2", "--gradient_accumulation_steps=3", "--policy.dropout=0.1"]  # dropout: RNG matters
    assert main(train_args(dataset, workdir / "full", *flags, "--steps=4")) == 0
    assert main(train_args(dataset, workdir / "part", *flags, "--steps=2")) == 0
    assert main(["train", f"--output_dir={workdir / 'part'}", "--resume=true", "--steps=4"]) == 0
    assert_same_weights(weights(workdir / "part"), weights(workdir / "full"))


@pytest.mark.slow  # several real CLI processes or trainings: over 6 s
def test_bf16_autocast_trains_keeps_fp32_weights_and_resumes_exactly(workdir, dataset, capsys):
    from robotrain.devices import bf16_native

    if not bf16_native("cpu"):
        pytest.skip("this CPU has no native bf16")
    amp = ["--policy.use_amp=true", "--batch_size=4", "--policy.dropout=0.1"]
    assert main(train_args(dataset, workdir / "full", *amp, "--steps=4")) == 0
    assert "act policy on cpu, bf16 autocast, fp32 weights and optimizer" in capsys.readouterr().err
    assert all(t.dtype == torch.float32 for t in weights(workdir / "full").values() if t.is_floating_point())
    assert main(train_args(dataset, workdir / "part", *amp, "--steps=2")) == 0
    assert main(["train", f"--output_dir={workdir / 'part'}", "--resume=true", "--steps=4"]) == 0
    assert_same_weights(weights(workdir / "part"), weights(workdir / "full"))
    assert main(train_args(dataset, workdir / "fp32", "--batch_size=4", "--policy.dropout=0.1", "--steps=4")) == 0
    differs = any(not torch.equal(a, b) for a, b in zip(weights(workdir / "full").values(),
                                                        weights(workdir / "fp32").values(), strict=True))
    assert differs, "bf16 autocast changed nothing: it was not applied"


def test_a_cpu_where_bf16_is_slower_says_so_in_the_banner(monkeypatch):
    """AVX512-BF16 does not make bf16 fast everywhere (2.1x slower than fp32 on an Intel Xeon without AMX):
    the run measures it once and warns with the ratio and the fix."""
    from robotrain import devices

    bf16 = devices.Precision("cpu", torch.bfloat16)
    monkeypatch.setattr(devices, "bf16_matmul_speedup", lambda: 0.47)
    warning = devices.slow_bf16_warning(bf16)
    assert "bf16 matrix products run at 0.47x the speed of fp32" in warning
    assert "Fix: drop --policy.use_amp" in warning
    monkeypatch.setattr(devices, "bf16_matmul_speedup", lambda: 2.4)
    assert devices.slow_bf16_warning(bf16) is None
    assert devices.slow_bf16_warning(devices.Precision("cpu")) is None  # fp32: nothing measured, nothing said
    monkeypatch.undo()
    assert devices.bf16_matmul_speedup(size=64, repeats=1) > 0


def test_use_amp_on_a_cpu_without_bf16_is_refused(workdir, dataset, monkeypatch, capsys):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert main(train_args(dataset, workdir / "run", "--policy.use_amp=true", "--steps=1")) == 2
    assert "--policy.use_amp=true: this CPU (it needs AVX512-BF16 or AMX) has no native bf16" in capsys.readouterr().err
    assert not (workdir / "run").exists()


# ---- torchrun, 2 processes on gloo -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(workdir, dataset):
    one = run_processes([sys.executable, "-m", "robotrain",
                         *train_args(dataset, workdir / "one", "--batch_size=4", "--steps=10")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_processes(torchrun(2, train_args(dataset, workdir / "two", "--batch_size=2", "--steps=10")))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("step:10 ") == 1, "only rank 0 reports"
    assert "10 steps of 2 samples in each of 2 processes" in two.stderr
    assert_close_weights(weights(workdir / "two"), weights(workdir / "one"))
    import json

    state = json.loads((workdir / "two/checkpoints/last/training_state/training_step.json").read_text())
    assert state["dp_world_size"] == 2 and state["samples"] == 40
    assert (workdir / "two/checkpoints/last/training_state/rng_state_rank1.safetensors").is_file()


@pytest.mark.slow
def test_two_process_run_resumes_exactly_with_two_and_continues_with_one(workdir, dataset):
    flags = ["--batch_size=2", "--policy.dropout=0.1"]  # dropout draws from each rank's own random stream
    full = run_processes(torchrun(2, train_args(dataset, workdir / "full", *flags, "--steps=6")))
    assert full.returncode == 0, full.stderr[-3000:]
    part = run_processes(torchrun(2, train_args(dataset, workdir / "part", *flags, "--steps=3")))
    assert part.returncode == 0, part.stderr[-3000:]
    resumed = run_processes(torchrun(2, ["train", f"--output_dir={workdir / 'part'}", "--resume=true",
                                         "--steps=6"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(weights(workdir / "part"), weights(workdir / "full"))
    single = run_processes([sys.executable, "-m", "robotrain", "train", f"--output_dir={workdir / 'part'}",
                            "--resume=true", "--steps=8"])
    assert single.returncode == 0, single.stderr[-3000:]
    assert "resuming from step 6" in single.stderr


def wait_for(process: subprocess.Popen, text: str) -> str:
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the run ended before printing {text!r}:\n" + "".join(seen[-50:]))


def rank_pids(torchrun_pid: int) -> list[int]:
    """The worker processes torchrun started (its children running robotrain)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(torchrun_pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.slow
def test_sigterm_to_one_rank_saves_once_and_every_rank_exits(workdir, dataset):
    run = workdir / "run"
    process = subprocess.Popen(torchrun(2, train_args(dataset, run, "--batch_size=2", "--steps=100000",
                                                      "--save_freq=0")),
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(process, "step:3 ")
    ranks = rank_pids(process.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it at the end of the step
    _, rest = process.communicate(timeout=300)
    assert rest.count("saved checkpoint") == 1, rest[-3000:]
    assert os.readlink(run / "checkpoints" / "last").isdigit()
    assert "stopped by a signal to another process" in rest and f"--output_dir={run} --resume=true" in rest


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_the_run_resumes(workdir, dataset):
    run = workdir / "run"
    process = subprocess.Popen(torchrun(2, train_args(dataset, run, "--batch_size=2", "--steps=100000",
                                                      "--save_freq=2")),
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(process, "saved checkpoint")
    wait_for(process, "step:3 ")
    os.kill(rank_pids(process.pid)[1], signal.SIGKILL)
    start = time.monotonic()
    process.communicate(timeout=300)
    assert process.returncode != 0 and time.monotonic() - start < 120, "the job stops soon after a rank dies"
    last = os.readlink(run / "checkpoints" / "last")
    step = int(last)
    assert step >= 2 and weights(run)  # `last` names a complete checkpoint that loads
    finished = run_processes(torchrun(2, ["train", f"--output_dir={run}", "--resume=true", f"--steps={step + 2}"]))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert os.readlink(run / "checkpoints" / "last") == f"{step + 2:06d}"
