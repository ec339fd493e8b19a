"""The checkpoint registry: what a run committed is registered with its lineage checked against the batch, once;
nothing without a manifest is registered; a run URL belongs to one batch."""
from __future__ import annotations

from datetime import date

import pytest

from hitchhiker import db, registry, storage
from hitchhiker.train import batch as batches
from hitchhiker.train.data import Group, Rollout


def _group(gid: str) -> Group:
    return Group(gid, f"s-{gid}", date(2016, 3, 1), "base:m", False,
                 [Rollout(f"{gid}-0", [1, 2], [3], [-0.5], 0.7, 1.0, 0.01, True)])


def _batch(tmp_path, ids=("g1", "g2", "g3", "g4"), parent=None) -> str:
    return batches.write_grpo_batch(str(tmp_path / "batches"), [_group(g) for g in ids],
                                    {"parent_id": parent, "parent_url": None, "base_model": "m", "reward_spec": "r",
                                     "config": {"groups_per_step": 2}, "carry_optimizer": False})


def _commit(tmp_path, run_url: str, batch_url: str, step: int, parent: str | None, used: list[str], **changes) -> str:
    meta = {"checkpoint_id": f"grpo-x-s{step:05d}", "parent_id": parent, "run_id": "grpo-x", "base_model": "m",
            "algorithm": "grpo", "finetune": "lora", "step": step, "reward_spec": "r", "groups_used": used,
            "batch_id": batches.read_meta(batch_url)["batch_id"], "train_metrics": {"loss": 0.1}, **changes}
    work = tmp_path / f"work-{step}"
    work.mkdir(exist_ok=True)
    (work / "weights.bin").write_bytes(b"w" * step)
    storage.commit_dir(work, storage.join(run_url, meta["checkpoint_id"]), meta)
    return meta["checkpoint_id"]


def test_a_run_is_registered_once_in_step_order_and_uncommitted_folders_are_not(tmp_path):
    con = db.connect(tmp_path / "r.duckdb")
    batch_url, run_url = _batch(tmp_path), str(tmp_path / "run")
    registry.record_run(con, run_url, batch_url)
    first = _commit(tmp_path, run_url, batch_url, 1, None, ["g1", "g2"])
    second = _commit(tmp_path, run_url, batch_url, 2, first, ["g3", "g4"])
    (tmp_path / "run" / "grpo-x-s00003").mkdir()  # a killed save: files, no manifest
    (tmp_path / "run" / "grpo-x-s00003" / "weights.bin").write_bytes(b"half")
    assert registry.register_known_runs(con) == {run_url: [first, second]}
    assert registry.register_run(con, run_url) == [first, second]  # idempotent
    assert con.execute("SELECT checkpoint_id, parent_id, groups_used FROM checkpoints ORDER BY step").fetchall() == [
        (first, None, ["g1", "g2"]), (second, first, ["g3", "g4"])]
    assert sorted(registry.lineage_groups(con, second)) == ["g1", "g2", "g3", "g4"]


@pytest.mark.parametrize("bad", ["parent", "groups", "batch"])
def test_a_checkpoint_that_does_not_continue_its_batch_is_refused(tmp_path, bad):
    con = db.connect(tmp_path / "r.duckdb")
    batch_url, run_url = _batch(tmp_path), str(tmp_path / "run")
    registry.record_run(con, run_url, batch_url)
    changes = {"parent": {"parent_id": "someone-else"}, "groups": {"groups_used": ["g2", "g1"]},
               "batch": {"batch_id": "0123456789abcdef"}}[bad]
    _commit(tmp_path, run_url, batch_url, 1, None, ["g1", "g2"], **changes)
    with pytest.raises(ValueError, match=f"does not continue batch .*{bad}"):
        registry.register_run(con, run_url)
    assert con.execute("SELECT count(*) FROM checkpoints").fetchone() == (0,)


def test_a_run_url_belongs_to_one_batch(tmp_path):
    con = db.connect(tmp_path / "r.duckdb")
    run_url = str(tmp_path / "run")
    registry.record_run(con, run_url, _batch(tmp_path))
    registry.record_run(con, run_url, _batch(tmp_path))  # the same batch again: nothing changes
    with pytest.raises(ValueError, match="was started with batch"):
        registry.record_run(con, run_url, _batch(tmp_path, ids=("g9",)))
    with pytest.raises(ValueError, match="not in train_runs"):
        registry.register_run(con, str(tmp_path / "unknown-run"))
