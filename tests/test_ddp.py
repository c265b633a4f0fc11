"""Two-process DDP training on CPU (gloo) through torchrun, end to end.

Checks that the run succeeds, that only rank 0 wrote the run directory (one TensorBoard file,
one metrics.csv with one header and one row per epoch, one calibration), and that the ranks
agree: loop.py's test hook (env BRAINMRI_DDP_DUMP_DIR) makes every rank write rank{r}.json
with its epoch count, best validation monitor and float64 sums of its parameters and buffers.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch.distributed as dist

from brainmri.train.loop import CSV_FIELDS

TIMEOUT_S = 180
STAGES = ["frozen", "top30", "full"]  # the smoke recipe's stages, one epoch each here


@pytest.fixture(scope="module")
def ddp_run(small_benchmark, tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    work = tmp_path_factory.mktemp("ddp")
    run_dir, dump_dir = work / "run", work / "dump"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "brainmri", "train", "--data", str(small_benchmark), "--config", "smoke",
        "--out", str(run_dir), "--device", "cpu",
        "--set", "train.stages.0.epochs=1", "--set", "train.stages.1.epochs=1",
        "--set", "train.stages.2.epochs=1", "--set", "data.max_per_class=4",
        "--set", "train.batch_size=4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAINMRI_DDP_DUMP_DIR": str(dump_dir)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a hang is killed with its workers
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers, nothing else
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S}s (hang?):\n{out[-4000:]}")
    assert proc.returncode == 0, f"torchrun exit {proc.returncode}:\n{out[-4000:]}"
    return run_dir, dump_dir, out


def test_ddp_run_succeeds_with_two_ranks(ddp_run):
    run_dir, _, _ = ddp_run
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["world_size"] == 2 and env["device"] == "cpu"
    for name in ("best", "final", "stage1_best", "stage2_best", "stage3_best"):
        assert (run_dir / "models" / f"{name}.safetensors").is_file(), name


def test_only_rank0_wrote_artifacts(ddp_run):
    run_dir, _, out = ddp_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    events = [p for p in files if p.name.startswith("events.out.tfevents")]
    assert len(events) == 1, events
    assert not [p for p in files if p.name.endswith(".tmp") or "rank" in p.name.lower()]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_FIELDS
    assert [r for r in rows[1:] if r == CSV_FIELDS] == []  # a single header
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        (stage, str(i + 1), "1") for i, stage in enumerate(STAGES)
    ]
    train_list = (run_dir / "splits" / "train.txt").read_text().splitlines()
    assert len(train_list) == len(set(train_list)) == 16  # 4 per class, written once
    assert out.count("temperature fitted on validation") == 1  # calibration on rank 0 only


def test_ranks_agree(ddp_run):
    run_dir, dump_dir, _ = ddp_run
    ranks = [json.loads((dump_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    n_rows = len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == n_rows == len(STAGES)
    assert ranks[0]["best"] == pytest.approx(ranks[1]["best"], rel=1e-6)
    for key in ("param_sum", "buffer_sum"):
        assert ranks[0][key] == pytest.approx(ranks[1][key], rel=1e-6), key
