"""Two-process DDP training on CPU (gloo) through torchrun, end to end.

A single run: both ranks must end with identical tensors (every weight and buffer compared
exactly, not sums), the same epoch decisions, and only rank 0 may write the run directory.
An ensemble run with one rank starting late: the ranks synchronise before inspecting the run
folder, so the slow rank does not find its peer's fresh folder and stop with "already holds a
run".
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from brainmri.train.loop import CSV_FIELDS

TIMEOUT_S = 600
WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = ["data.max_per_class=4", "train.batch_size=4", "train.max_steps_per_epoch=2"]


def torchrun(work: Path, data: Path, name: str, sets: list[str], delay: str | None = None):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    run_dir, dump = work / name, work / f"{name}-dump"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(WORKER), "--data", str(data), "--out", str(run_dir), "--dump", str(dump),
    ]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    if delay:
        cmd += ["--delay-rank", delay]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: a hang is killed with its workers
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers, nothing else
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S}s (hang?):\n{out[-4000:]}")
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}:\n{out[-4000:]}"
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return run_dir, ranks, out


@pytest.fixture(scope="module")
def ddp_run(small_benchmark, tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    return torchrun(work, small_benchmark, "run", TINY)


def test_ranks_end_with_identical_tensors(ddp_run):
    _, (r0, r1), _ = ddp_run
    assert r0["epochs"] == r1["epochs"] == 4  # smoke: frozen 2 + top30 1 + full 1
    assert r0["best"] == r1["best"]
    assert r0["state"].keys() == r1["state"].keys() and r0["state"]
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k


def test_only_rank0_wrote_artifacts(ddp_run):
    run_dir, _, out = ddp_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len([p for p in files if p.name.startswith("events.out.tfevents")]) == 1
    assert not [p for p in files if p.name.endswith(".tmp") or "rank" in p.name.lower()]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_FIELDS and [r for r in rows[1:] if r == CSV_FIELDS] == []
    assert [r[0] for r in rows[1:]] == ["frozen", "frozen", "top30", "full"]
    assert out.count("temperature fitted on validation") == 1  # calibration on rank 0 only


def test_ensemble_with_a_slow_rank_synchronises_before_checking_the_folder(
    small_benchmark, tmp_path
):
    sets = [*TINY, "ensemble=2", "train.stages.1.epochs=0", "train.stages.2.epochs=0"]
    run_dir, _, out = torchrun(tmp_path, small_benchmark, "ens", sets, delay="1:5")
    assert "already holds a run" not in out
    for k in (1, 2):
        assert (run_dir / f"member{k}" / "models" / "final.safetensors").is_file()
    assert (run_dir / "models" / "best.safetensors").is_file()
