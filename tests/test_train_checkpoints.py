"""Checkpoints: registry and lineage, and resume after kill -9 with no group reused or skipped."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hitchhiker import db
from hitchhiker import registry as ckpts
from hitchhiker.train.config import GRPOConfig
from hitchhiker.batches import train_grpo
from train_helpers import make_groups, tiny_model_dir

CONFIG = dict(finetune="lora", lora_rank=4, lora_alpha=8, groups_per_step=2, groups_per_micro_batch=1,
              save_every_steps=2, learning_rate=1e-2, max_completion_length=8, bf16=False)
N_GROUPS = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _adapter_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def test_registry_lineage_and_policy_loads_checkpoint(model_dir, tmp_path):
    from hitchhiker.policy import PolicyConfig, load_policy

    con = db.connect(tmp_path / "a.duckdb")
    groups = make_groups(model_dir, 6, seed=2)
    res = train_grpo(con, GRPOConfig(**CONFIG), tmp_path / "run", groups=groups, base_model=str(model_dir))
    rows = con.execute("SELECT checkpoint_id, parent_id, step, len(groups_used), algorithm, finetune FROM checkpoints ORDER BY step").fetchall()
    assert [r[2] for r in rows] == [2, 3]  # saved every 2 steps and at the end (6 groups / 2 per step)
    assert rows[0][1] is None and rows[1][1] == rows[0][0]
    assert [r[3] for r in rows] == [4, 2] and rows[1][4:] == ("grpo", "lora")
    assert sorted(ckpts.lineage_groups(con, res.checkpoint_id)) == sorted(g.group_id for g in groups)
    metrics = ckpts.get(con, res.checkpoint_id)["train_metrics"]
    assert "reward_mean" in metrics and "clip_fraction" in metrics
    # the policy stage samples from it, under its id
    policy = load_policy(PolicyConfig(model=str(model_dir), checkpoint=res.path))
    assert policy.policy_version == res.checkpoint_id
    # a second call on the finished run trains nothing and returns the same checkpoint
    again = train_grpo(con, GRPOConfig(**CONFIG), tmp_path / "run", groups=groups, base_model=str(model_dir))
    assert again.checkpoint_id == res.checkpoint_id and again.metrics == []
    # continuing from it: a new run on new groups, its lineage holds both
    more = make_groups(model_dir, 2, seed=9)
    child = train_grpo(con, GRPOConfig(**CONFIG), tmp_path / "run2", groups=more, parent_id=res.checkpoint_id)
    assert ckpts.get(con, child.checkpoint_id)["parent_id"] == res.checkpoint_id
    assert len(ckpts.lineage_groups(con, child.checkpoint_id)) == 8
    with pytest.raises(ValueError, match="nope"):
        ckpts.get(con, "nope")


@pytest.fixture(scope="module")
def straight(model_dir, tmp_path_factory):
    """The uninterrupted run every killed one must end equal to: its result and the groups of its lineage."""
    work = tmp_path_factory.mktemp("straight")
    con = db.connect(work / "straight.duckdb")
    res = train_grpo(con, GRPOConfig(**CONFIG), work / "run", groups=make_groups(model_dir, N_GROUPS, seed=4),
                     base_model=str(model_dir))
    groups = ckpts.lineage_groups(con, res.checkpoint_id)
    con.close()
    return res, groups


# Where the child kills itself (6 optimizer steps, a checkpoint after steps 2, 4 and 6), and the steps committed by then.
KILL_POINTS = {
    "after-step-1": [],  # before any checkpoint: the resumed run starts from the base model
    "after-step-3": [2],
    "after-step-6": [2, 4],  # the last step, before its (final) checkpoint
    "saving-step-4-before-rename": [2],  # every file written and fsynced under the temp name, not yet renamed
    "saving-step-4-after-rename": [2, 4],  # renamed into place, the trainer gone before it went on
}
KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from hitchhiker import db
from hitchhiker.train.config import GRPOConfig
from hitchhiker.batches import train_grpo
from train_helpers import make_groups

point = {point!r}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

on_step_end = None
if point.startswith("after-step-"):  # right after that optimizer step, before any save it would trigger
    k = int(point.rsplit("-", 1)[1])
    on_step_end = lambda step, metrics: step == k and die()  # noqa: E731
else:
    real_replace = os.replace
    def replace(src, dst):  # the rename that publishes step 4's checkpoint folder
        if str(dst).endswith("-s00004") and point.endswith("before-rename"):
            die()
        real_replace(src, dst)
        if str(dst).endswith("-s00004"):
            die()
    os.replace = replace
groups = make_groups({model_dir!r}, {n_groups}, seed=4)
train_grpo(db.connect({db_file!r}), GRPOConfig(**{config!r}), {run!r}, groups=groups, base_model={model_dir!r},
           on_step_end=on_step_end)
"""


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_resume_after_kill_9_uses_every_group_once(point, straight, model_dir, tmp_path):
    """Killed with SIGKILL at `point`, then resumed: each group used once and the uninterrupted run's weights."""
    straight, straight_groups = straight
    committed = KILL_POINTS[point]
    killed_db, killed_run = tmp_path / "killed.duckdb", tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), point=point, model_dir=str(model_dir),
                                n_groups=N_GROUPS, db_file=str(killed_db), config=CONFIG, run=str(killed_run))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if point.endswith("before-rename"):  # step 4's files lie complete under a hidden temp name: no checkpoint
        assert [p.name for p in killed_run.glob(".*-s00004-*")]
    con = db.connect(killed_db)
    # the trainer commits, the orchestrator registers: the killed run's committed checkpoints are registered by
    # the next look at the recorded runs (a daily run's first task), and nothing uncommitted is
    assert con.execute("SELECT count(*) FROM checkpoints").fetchone() == (0,)
    registered = ckpts.register_known_runs(con).get(str(killed_run), [])
    assert registered == [f"{straight.run_id}-s{s:05d}" for s in committed]
    assert [r[0] for r in con.execute("SELECT step FROM checkpoints ORDER BY step").fetchall()] == committed

    resumed = train_grpo(con, GRPOConfig(**CONFIG), killed_run, base_model=str(model_dir))  # the plan is in the run dir
    last = committed[-1] if committed else 0
    assert [m["step"] for m in resumed.metrics] == list(range(last + 1, 7))  # continued after the last checkpoint
    used = ckpts.lineage_groups(con, resumed.checkpoint_id)
    assert len(used) == len(set(used)) == N_GROUPS  # no group trained twice, none skipped
    assert sorted(used) == sorted(straight_groups)
    per_ckpt = con.execute("SELECT step, groups_used FROM checkpoints ORDER BY step").fetchall()
    assert [s for s, _ in per_ckpt] == [2, 4, 6]
    assert resumed.checkpoint_id == straight.checkpoint_id
    # and the model is the one the uninterrupted run produced (optimizer, scheduler and RNG restored)
    a, b = _adapter_weights(straight.path), _adapter_weights(resumed.path)
    assert a.keys() == b.keys()
    atol = 1e-6 if not torch.cuda.is_available() else 1e-4  # CUDA float32 kernels are not bitwise reproducible
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k
