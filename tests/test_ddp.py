"""torchrun DDP: train_rm.py and train_rl.py (SFT + policy-gradient RL) run unchanged on 2 CPU processes
(gloo). The suite's one torchrun test: it must launch real separate processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_rl import TINY_RL, TINY_RM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flags(d: dict) -> list:
    return [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in d.items()]


def torchrun(script: str, args: list, tmp_path) -> None:
    """Run `torchrun --nproc_per_node=2 script args`; fail with the processes' output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_torchrun_two_processes(tmp_path):
    rm_dir, rl_dir = tmp_path / "rm", tmp_path / "rl"
    torchrun("train_rm.py", flags({**TINY_RM, "out_dir": rm_dir, "device": "cpu"}), tmp_path)
    # Rank 0 alone wrote the checkpoints and the log: every stage once, validation rows present.
    assert sorted(os.listdir(rm_dir)) == sorted(
        ["config.json", "metrics.jsonl", "state.pt"] + [f"rm_stage{k}" for k in range(4)]
    )
    rows = [json.loads(x) for x in open(rm_dir / "metrics.jsonl")]
    assert sum("val" in r for r in rows) == 4 and sum("val" not in r for r in rows) == 4 * 2  # one writer
    # train_rl: the SFT phase and 2 RL steps (pg: the backward per trained step uses DDP's no_sync).
    args = flags({**TINY_RL, "out_dir": rl_dir, "rm_dir": rm_dir, "device": "cpu"})
    p = torchrun("train_rl.py", args, tmp_path)
    assert (rl_dir / "policy_final" / "policy.json").is_file() and (rl_dir / "policy_sft").is_dir()
    rows = [json.loads(x) for x in open(rl_dir / "metrics.jsonl")]
    rl = [r for r in rows if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [0, 1]  # logged once per step (rank 0), not once per rank
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rl)
    assert p.stdout.count("RL done:") == 1  # the closing line is printed by rank 0 only
