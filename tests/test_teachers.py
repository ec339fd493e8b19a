"""Teacher weights in SQL (issue 21 part 2): scores from matured advantages, softmax with a floor, the stale rule,
computed once per date, and the seeded split of a group across teachers."""
from __future__ import annotations

import json
import random
from datetime import date, timedelta

import pytest

from hitchhiker import db, teachers
from hitchhiker.teachers import TeachersConfig, split_group, update_weights

GOOD, BAD = "ckpt-trained", "base:untrained"


def _insert(con, day: date, teacher: str, group: str, rewards_usd: list[float], spec: str, matured: bool = True):
    for k, r in enumerate(rewards_usd):
        rid = f"{group}-{teacher}-{k}"
        con.execute("INSERT INTO replay VALUES (?, ?, ?)", [rid, teacher, day])
        if matured:
            con.execute("INSERT INTO rewards (rollout_id, reward_spec, state_id, group_id, policy_version, decision_date, "
                        "mode, valid, ticker_a, entry_date, exit_date, weight_a, weight_b, return_a, cost_usd, risk_usd, "
                        "reward_usd, shaped_reward_usd, computed_at) VALUES (?, ?, ?, ?, ?, ?, 'pairwise', true, 'X', ?, ?, "
                        "1, -1, 0, 0, 0, ?, ?, now())",
                        [rid, spec, group, group, teacher, day, day + timedelta(days=1), day + timedelta(days=1), r, r])


@pytest.fixture
def con(tmp_path):
    c = db.connect(tmp_path / "t.duckdb")
    c.execute("DROP VIEW replay")  # the buffer as a plain table of what the weights read
    c.execute("CREATE TABLE replay (rollout_id VARCHAR, policy_version VARCHAR, decision_date DATE)")
    yield c
    c.close()


def test_the_trained_teacher_gains_weight_the_floor_holds_and_the_stale_are_forced_back(con):
    """Two teachers, 8 samples a group, 4 groups a date, split by the stored weights; the trained one's samples earn
    more. Its weight passes 0.8 within 10 dates; no weight ever goes under floor / N; once the other draws nothing
    for longer than stale_days (its worker down from date 12), it is forced back to stale_share, and drawn again."""
    cfg = TeachersConfig(teachers=[GOOD, BAD], reward_spec="spec", half_life_dates=3, temperature=0.5, floor=0.02,
                         stale_days=4, stale_share=0.15, seed=0)
    rng = random.Random(0)
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(30)]
    history = []
    for i, day in enumerate(days):
        rows = {r["teacher"]: r for r in update_weights(con, day, cfg)}
        history.append(rows)
        for g in range(4):  # one group = one state's round, split across the teachers
            split = split_group({t: r["weight"] for t, r in rows.items()}, 8, cfg.seed, f"{day}-{g}")
            if 12 <= i < 20 and not rows[BAD]["forced"]:  # the untrained teacher's worker is down for a while
                split = {GOOD: 8, BAD: 0}
            for t, n in split.items():
                _insert(con, day, t, f"{day}-{g}", [(0.01 if t == GOOD else -0.01) + rng.gauss(0, 0.004)
                                                    for _ in range(n)], "spec")
    weights = [{t: r["weight"] for t, r in rows.items()} for rows in history]
    print("trained teacher's weight by date:", [round(w[GOOD], 3) for w in weights])
    assert weights[0] == {GOOD: pytest.approx(0.5), BAD: pytest.approx(0.5)}  # 1/N before any reward matured
    above = [i for i, w in enumerate(weights) if w[GOOD] > 0.8]
    assert above and above[0] <= 10
    assert all(abs(b[GOOD] - a[GOOD]) < 0.25 for a, b in zip(weights[:above[0]], weights[1:above[0] + 1]))  # smoothed
    assert all(min(w.values()) >= cfg.floor / 2 - 1e-12 and sum(w.values()) == pytest.approx(1) for w in weights)
    forced = [i for i, rows in enumerate(history) if rows[BAD]["forced"]]
    assert forced and 12 + cfg.stale_days <= forced[0] <= 12 + cfg.stale_days + 1
    assert not any(rows[GOOD]["forced"] for rows in history)
    for i in forced:  # forced exactly when stale, to exactly the share, and drawn again on that date
        last = history[i][BAD]["last_sampled"]
        assert last is None or (days[i] - last).days > cfg.stale_days
        assert weights[i][BAD] == pytest.approx(cfg.stale_share)
    drawn = {d for (d,) in con.execute("SELECT DISTINCT decision_date FROM replay WHERE policy_version = ?", [BAD]).fetchall()}
    assert all(days[i] in drawn for i in forced)
    for i, rows in enumerate(history):  # and never forced while it had been drawn recently
        last = rows[BAD]["last_sampled"]
        if last is not None and (days[i] - last).days <= cfg.stale_days:
            assert not rows[BAD]["forced"]


def test_weights_are_computed_once_from_rewards_matured_before_the_date(con):
    cfg = TeachersConfig(teachers=[GOOD, BAD], reward_spec="spec")
    day = date(2024, 2, 1)
    _insert(con, day - timedelta(days=3), GOOD, "g1", [0.02, 0.01], "spec")
    _insert(con, day - timedelta(days=3), BAD, "g1", [-0.02, -0.01], "spec")
    # a reward that exits on the date itself is not known at its decision time: it must not count
    _insert(con, day - timedelta(days=1), BAD, "g2", [0.5, 0.5], "spec")
    _insert(con, day - timedelta(days=1), GOOD, "g2", [-0.5, -0.5], "spec")
    w = {r["teacher"]: r for r in update_weights(con, day, cfg)}
    assert w[GOOD]["weight"] > 0.55 and w[GOOD]["n_dates"] == w[BAD]["n_dates"] == 1  # g2 exits on the date: unknown
    # once stored, later rewards do not rewrite the date's weights (its draws can be replayed)
    _insert(con, day - timedelta(days=2), BAD, "g3", [1.0] * 4, "spec")
    _insert(con, day - timedelta(days=2), GOOD, "g3", [-1.0] * 4, "spec")
    assert {r["teacher"]: r for r in update_weights(con, day, cfg)} == w
    assert con.execute("SELECT count(*) FROM teacher_weights").fetchone()[0] == 2


def test_split_is_seeded_and_sums_to_the_group():
    w = {GOOD: 0.7, BAD: 0.3}
    a = split_group(w, 16, 0, "state-1")
    assert sum(a.values()) == 16 and a == split_group(w, 16, 0, "state-1")
    draws = [split_group(w, 16, 0, f"s{i}")[GOOD] for i in range(400)]
    assert abs(sum(draws) / (400 * 16) - 0.7) < 0.02
    assert any(split_group(w, 16, 1, f"s{i}") != split_group(w, 16, 0, f"s{i}") for i in range(5))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="teachers \\['a', 'a'\\]: give one or more distinct"):
        TeachersConfig(teachers=["a", "a"], reward_spec="s")
    with pytest.raises(ValueError, match="floor 0 must be in \\(0, 1\\]"):
        TeachersConfig(teachers=["a", "b"], reward_spec="s", floor=0)
    with pytest.raises(ValueError, match="stale_share 0.6 must be in \\(0, 1/2\\]"):
        TeachersConfig(teachers=["a", "b"], reward_spec="s", stale_share=0.6)
    with pytest.raises(ValueError, match="temperature 0 must be a finite number > 0"):
        TeachersConfig(teachers=["a", "b"], reward_spec="s", temperature=0)
    with pytest.raises(ValueError, match="weights .* must be > 0 and sum to 1"):
        split_group({"a": 1.0, "b": 0.0}, 8, 0, "s")


def test_a_group_is_split_across_teachers_and_trains_the_student(tmp_path):
    """Two teachers (the default model under two policy versions) sample the synthetic market's states: each group
    holds group_size rollouts of both, split as teacher_groups says; a re-run samples nothing; the student's GRPO
    run consumes the mixed groups (their advantages over the whole group)."""
    from hitchhiker import rewards
    from hitchhiker.loop import _build, synthetic_setup
    from hitchhiker.policy import PolicyConfig, load_policy
    from hitchhiker.rollouts import SamplingConfig, group_id
    from hitchhiker.synthetic import SyntheticMarket
    from hitchhiker.train.config import GRPOConfig
    from hitchhiker.batches import train_grpo

    con = db.connect(tmp_path / "mixed.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=60)
    ids = _build(con, cfg, cfg.train_dates[:3])
    import dataclasses

    base = load_policy(PolicyConfig())  # one model under two policy versions: two teachers with one tokenizer
    policies = {v: dataclasses.replace(base, policy_version=v) for v in ("teacher-one", "teacher-two")}
    spec = rewards.RewardSpec()
    tcfg = TeachersConfig(teachers=sorted(policies), reward_spec=spec.reward_spec, seed=0)
    sampling = SamplingConfig(group_size=8, max_new_tokens=8, groups_per_batch=8, seed=0)
    root = tmp_path / "replay"
    out = teachers.sample_with_teachers(con, policies, ids, sampling, tcfg, root)
    assert out["groups_written"] == len(ids) and sum(out["rollouts_by_teacher"].values()) == 8 * len(ids)
    assert all(n > 0 for n in out["rollouts_by_teacher"].values())
    rows = con.execute("SELECT group_id, state_id, policy_version, sample_index, rollout_id FROM replay").fetchall()
    groups = {}
    for gid, sid, version, k, rid in rows:
        assert gid == group_id(sid, tcfg.name) and rid == f"{gid}-{k}"
        groups.setdefault(gid, []).append((k, version))
    for gid, members in groups.items():
        assert sorted(k for k, _ in members) == list(range(8))
        split = json.loads(con.execute("SELECT split FROM teacher_groups WHERE group_id = ?", [gid]).fetchone()[0])
        assert {v: sum(1 for _, m in members if m == v) for v in split} == split
    assert teachers.sample_with_teachers(con, policies, ids, sampling, tcfg, root)["groups_written"] == 0
    rewards.compute_rewards(con, spec, root)
    sizes = con.execute("SELECT DISTINCT group_size FROM advantages").fetchall()
    assert sizes == [(8,)]  # one group across both teachers, not one per teacher
    result = train_grpo(con, GRPOConfig(finetune="full", groups_per_step=len(ids), groups_per_micro_batch=len(ids),
                                        learning_rate=1e-4, reward_spec=spec.reward_spec),
                        tmp_path / "student")
    assert result.checkpoint_id and con.execute("SELECT len(groups_used) FROM checkpoints WHERE checkpoint_id = ?",
                                                [result.checkpoint_id]).fetchone()[0] == len(ids)
    from hitchhiker import evaluate  # the report's weights plot: the weights of the dates the checkpoint trained on

    stored = con.execute("SELECT decision_date, teacher, weight, forced FROM teacher_weights ORDER BY 1, 2").fetchall()
    assert len(stored) == 2 * 3 and evaluate.teacher_weights(con, result.checkpoint_id) == stored
    con.close()


def test_the_loop_trains_a_student_on_its_teachers_groups(tmp_path):
    from hitchhiker.loop import run_loop, synthetic_setup
    from hitchhiker.synthetic import SyntheticMarket

    con = db.connect(tmp_path / "loop.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=20, iterations=2, eval_every=2,
                          states_per_iteration=8)
    cfg.teachers = {"first": "base", "self": "self"}  # an untrained teacher and the student's own share
    res = run_loop(con, cfg, tmp_path / "loop", tmp_path / "replay")
    assert len(res.iterations) == 2 and res.checkpoint_id
    versions = dict(con.execute("SELECT policy_version, count(*) FROM replay GROUP BY 1").fetchall())
    assert set(versions) == {"first", "self"} and sum(versions.values()) == 2 * 8 * cfg.sampling.group_size
    used = con.execute("SELECT groups_used FROM checkpoints ORDER BY created_at").fetchall()
    groups = {g for (gs,) in used for g in gs}
    assert groups == {g for (g,) in con.execute("SELECT group_id FROM teacher_groups").fetchall()}
    assert con.execute("SELECT count(DISTINCT decision_date) FROM teacher_weights").fetchone()[0] >= 2
    # the loop's teacher_grpo: no importance weight on the teachers' rows (exactly 1 in every step's metrics) ...
    assert all(json.loads(m)["is_weight_mean"] == 1.0 for (m,) in
               con.execute("SELECT train_metrics FROM checkpoints").fetchall())
    # ... and advantages against the mean of the group's own 'self' rows (the group mean where it has none)
    check = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE abs(a.advantage_self - (a.shaped_reward_usd - coalesce(s.m, "
        "a.group_mean_usd)) / (a.group_std_usd + 1e-4)) < 1e-9), count(*) FILTER (WHERE s.m IS NOT NULL AND "
        "abs(a.advantage_self - a.advantage) > 1e-6) FROM advantages a LEFT JOIN (SELECT group_id, reward_spec, "
        "avg(shaped_reward_usd) AS m FROM rewards WHERE policy_version = 'self' GROUP BY ALL) s USING (group_id, "
        "reward_spec)").fetchone()
    assert check[0] == 2 * 8 * cfg.sampling.group_size and check[1] == check[0] and check[2] > 0, check
    con.close()


TEACHER_ITERATIONS = 48  # the loop's checkpoint at 48 iterations: its samples are right ~98 % of the time


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_trained_checkpoint_of_the_loop_gains_weight_over_the_untrained_model(tmp_path):
    """Issue 21's weights acceptance on real teachers: a checkpoint of the learning loop (TEACHER_ITERATIONS on the
    synthetic market) and the untrained default model sample the groups of another loop; the weights computed from
    their real rewards put the trained teacher above 0.8 within 15 decision dates, and no weight under floor / N."""
    from hitchhiker import registry
    from hitchhiker.loop import run_loop, synthetic_setup
    from hitchhiker.synthetic import SyntheticMarket

    con = db.connect(tmp_path / "teacher.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=60, iterations=TEACHER_ITERATIONS,
                          eval_every=TEACHER_ITERATIONS, target_accuracy=1.1, max_eval_states=64)
    res = run_loop(con, cfg, tmp_path / "teacher-loop", tmp_path / "teacher-replay")
    teacher = registry.get(con, res.checkpoint_id)["path"]
    late = con.execute("SELECT avg((reward_usd > 0)::int) FROM rewards WHERE decision_date >= "
                       "(SELECT max(decision_date) - 10 FROM rewards)").fetchone()[0]
    con.close()
    print(f"teacher: held-out accuracy {res.history[-1]['accuracy']:.3f}, its last samples right {late:.3f}")
    assert late > 0.9  # a trained teacher: its own sampled answers, not only its greedy ones

    con = db.connect(tmp_path / "mixed.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=60, iterations=8, eval_every=8, max_eval_states=64)
    cfg.teachers = {"trained": teacher, "untrained": "base"}
    run_loop(con, cfg, tmp_path / "mixed-loop", tmp_path / "mixed-replay")
    rows = con.execute("SELECT decision_date, teacher, weight FROM teacher_weights ORDER BY 1, 2").fetchall()
    mean = dict(con.execute("SELECT policy_version, avg(reward_usd) FROM rewards GROUP BY 1").fetchall())
    con.close()
    trained = [w for _, t, w in rows if t == "trained"]
    print("trained teacher's weight by date:", [round(w, 3) for w in trained], "mean reward:", mean)
    floor = TeachersConfig(teachers=["a", "b"], reward_spec="x").floor
    assert trained[0] == pytest.approx(0.5) and mean["trained"] > mean["untrained"]
    assert any(w > 0.8 for w in trained[:15]) and len(trained) >= 15
    assert all(w >= floor / 2 - 1e-12 for _, _, w in rows)


def test_loop_cli_and_flow_take_teachers(tmp_path, prefect_harness):
    import os
    import subprocess
    import sys

    from flows.loop import loop_flow

    exe = [sys.executable, "-m", "hitchhiker.cli", "loop", "--synthetic", "--iterations", "1", "--eval-every", "1"]
    p = subprocess.run(exe + ["--db", str(tmp_path / "cli.duckdb"), "--teacher", "one=base", "--teacher", "two=base"],
                       capture_output=True, text=True, timeout=900, env=os.environ)
    assert p.returncode == 0, p.stderr[-3000:]
    con = db.connect(tmp_path / "cli.duckdb", read_only=True)
    assert {v for (v,) in con.execute("SELECT DISTINCT policy_version FROM replay").fetchall()} == {"one", "two"}
    (cli_settings,) = con.execute("SELECT DISTINCT settings FROM teacher_weights").fetchone()
    con.close()
    p = subprocess.run(exe + ["--db", str(tmp_path / "bad.duckdb"), "--teacher", "one"], capture_output=True, text=True,
                       timeout=900, env=os.environ)
    assert p.returncode != 0 and "--teacher 'one': give NAME=SOURCE" in p.stderr
    out = loop_flow(iterations=1, db=str(tmp_path / "flow.duckdb"), synthetic=True, eval_every=1,
                    teachers={"one": "base", "two": "base"}, teacher_weighting={"floor": 0.1, "stale_days": 5})
    assert out["checkpoint_id"].startswith("grpo-")
    con = db.connect(tmp_path / "flow.duckdb", read_only=True)
    assert con.execute("SELECT count(DISTINCT teacher) FROM teacher_weights").fetchone()[0] == 2
    (flow_settings,) = con.execute("SELECT DISTINCT settings FROM teacher_weights").fetchone()
    con.close()
    assert flow_settings != cli_settings  # the flow's weighting (floor, stale rule) is part of the settings' name
    with pytest.raises(ValueError, match=r"teacher_weighting \['flor'\]: not a weighting setting"):
        loop_flow(iterations=1, db=str(tmp_path / "bad-flow.duckdb"), synthetic=True, eval_every=1,
                  teachers={"one": "base"}, teacher_weighting={"flor": 0.1})
