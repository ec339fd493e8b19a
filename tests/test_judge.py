"""Judges and the judge's reward shift (issue 21 part 3): labels, strict parsing, once per (rollout, judge), the
shaped reward beside an unchanged reward_usd, and the advantages over the shaped reward."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hitchhiker import contract, db, judge, replay, rewards
from hitchhiker.loop import _build, synthetic_setup
from hitchhiker.rollouts import group_id
from hitchhiker.synthetic import SyntheticMarket

JUDGE_ITERATIONS = 10

# On the synthetic market every state shows 'Stock A trend: UP/DOWN' with the trend's return in its features.
TEXTS = {  # completion template -> label; {up}/{down}: the stock whose shown trend rose / fell
    "Stock {up} is UP.\nACTION: {up}": 1,             # supported, argues for the chosen stock
    "Stock {down} is DOWN.\nACTION: {up}": 1,         # supported, argues against the other one
    "Stock {up} is DOWN.\nACTION: {up}": -1,          # unsupported direction
    "Stock {down} is UP.\nACTION: {down}": -1,        # unsupported direction
    "Stock {up} is UP.\nACTION: {down}": 0,           # supported, but argues against the action
    "Stock {up} is.\nACTION: {up}": 0,                # a name alone is no reason
    "ACTION: {up}": 0,                                 # nothing checkable
    "Stock {up} is UP 99.5%.\nACTION: {up}": -1,      # unsupported number
}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A store with the synthetic market's states of 6 training dates and, per state, a group of the TEXTS."""
    tmp = tmp_path_factory.mktemp("judge")
    con = db.connect(tmp / "j.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=60)
    ids = _build(con, cfg, cfg.train_dates[:6])
    root = tmp / "replay"
    expected = {}
    for sid, day, pair, features in con.execute(
            "SELECT state_id, decision_date, pair, features FROM states WHERE list_contains(?, state_id)", [ids]).fetchall():
        trend = {k: v["trend_return_pct"] for k, v in json.loads(features).items()}
        up, down = ("A", "B") if trend["A"] > trend["B"] else ("B", "A")
        gid, rows = group_id(sid, "base:test"), []
        for i, (template, label) in enumerate(TEXTS.items()):
            text = template.format(up=up, down=down)
            parsed = contract.parse(text, contract.PAIRWISE)
            rid = f"{gid}-{i}"
            expected[rid] = label if trend[up] > 0 > trend[down] else None  # else a claim's sign is not as named
            rows.append(dict(rollout_id=rid, state_id=sid, group_id=gid, mode="pairwise", policy_version="base:test",
                             sample_index=i, temperature=1.0, top_p=1.0, prompt_ids=[1], completion=text,
                             completion_ids=[1], token_logprobs=[-1.0], logprob_sum=-1.0, action=parsed.action,
                             proportion=parsed.proportion, position=None, advisory_text=parsed.advisory_text,
                             valid=parsed.valid, invalid_reason=parsed.invalid_reason,
                             created_at=datetime.now(timezone.utc)))
        replay.write_group(root, day, pair, gid, rows)
    yield con, root, expected
    con.close()


def test_grounding_judge_labels_each_kind_of_advice(market):
    con, root, expected = market
    out = judge.judge_rollouts(con, "grounding", root)
    assert out["judge"] == "grounding-v1" and out["inserted"] == out["pending"] == len(expected) >= 30
    got = dict(con.execute("SELECT rollout_id, label FROM judgements WHERE judge = 'grounding-v1'").fetchall())
    checked = {r: lab for r, lab in expected.items() if lab is not None}  # both trends of the state signed as named
    assert len(checked) >= 20 and {r: got[r] for r in checked} == checked
    reasons = dict(con.execute("SELECT rollout_id, reason FROM judgements").fetchall())
    assert all(reasons[r].startswith("unsupported: ") for r, lab in checked.items() if lab == -1)
    # once per (rollout, judge): a re-run judges nothing and changes nothing
    before = con.execute("SELECT * FROM judgements ORDER BY rollout_id").fetchall()
    assert judge.judge_rollouts(con, "grounding", root)["inserted"] == 0
    assert con.execute("SELECT * FROM judgements ORDER BY rollout_id").fetchall() == before


def test_the_shift_moves_the_advantages_and_never_the_dollars(market):
    con, root, _ = market
    plain, shifted = rewards.RewardSpec(), rewards.RewardSpec(judge="grounding", judge_shift_usd=0.01)
    assert "judge" not in plain.reward_spec  # specs without a judge keep their names
    assert ",judge=grounding-v1,judge_shift_usd=0.01," in shifted.reward_spec
    for spec in (plain, shifted):
        rewards.compute_rewards(con, spec, root)
    rows = con.execute(
        "SELECT p.rollout_id, p.reward_usd, s.reward_usd, p.shaped_reward_usd, s.shaped_reward_usd, s.judge_label, "
        "j.label, pa.advantage, sa.advantage, sa.group_mean_usd "
        "FROM rewards AS p JOIN rewards AS s USING (rollout_id) "
        "JOIN judgements AS j ON j.rollout_id = p.rollout_id AND j.judge = 'grounding-v1' "
        "JOIN advantages AS pa ON pa.rollout_id = p.rollout_id AND pa.reward_spec = p.reward_spec "
        "JOIN advantages AS sa ON sa.rollout_id = s.rollout_id AND sa.reward_spec = s.reward_spec "
        "WHERE p.reward_spec = ? AND s.reward_spec = ?", [plain.reward_spec, shifted.reward_spec]).fetchall()
    assert len(rows) == con.execute("SELECT count(*) FROM judgements").fetchone()[0]
    for _, r_plain, r_shift, sh_plain, sh_shift, used, label, _, _, _ in rows:
        assert r_plain == r_shift and sh_plain == r_plain  # the market's dollars, unchanged by the judge
        assert used == label and sh_shift == pytest.approx(r_shift + 0.01 * label, abs=1e-15)
    assert any(a_p != a_s for *_, a_p, a_s, _ in rows)  # the shift reaches the advantages
    # the view's group mean is the mean of the shaped rewards
    means = dict(con.execute("SELECT group_id, avg(shaped_reward_usd) FROM rewards WHERE reward_spec = ? GROUP BY 1",
                             [shifted.reward_spec]).fetchall())
    for gid, mean in con.execute("SELECT group_id, group_mean_usd FROM advantages WHERE reward_spec = ?",
                                 [shifted.reward_spec]).fetchall():
        assert mean == pytest.approx(means[gid], abs=1e-15)
    # idempotent: a re-run under the judged spec adds nothing
    assert rewards.compute_rewards(con, shifted, root)["inserted"] == 0


def test_lm_judge_parses_strictly():
    assert judge.parse_lm_answer(" Accepted.") == judge.Judgement(1, "judge answered 'accepted'")
    assert judge.parse_lm_answer("rejected, because") .label == -1
    assert judge.parse_lm_answer("neutral").label == 0
    for answer in ("", "accept", "yes", "It is accepted", "accepted!?x"):
        j = judge.parse_lm_answer(answer)
        assert j.label == 0 and "is not accepted/neutral/rejected" in j.reason, answer


def test_lm_judge_on_the_default_model():
    from hitchhiker.default_model import default_model_path

    path = str(default_model_path())
    name = judge.judge_name(f"lm:{path}")
    assert name.startswith(f"lm:{path}@") and name == judge.judge_name(f"lm:{path}")
    j = judge.LMJudge(path)
    texts = list(TEXTS)[:2]
    labels = [j("Stock A trend: UP. Stock B trend: DOWN.", t.format(up="A", down="B")) for t in texts]
    assert all(lab.label in (-1, 0, 1) and lab.reason for lab in labels)
    assert labels == [j("Stock A trend: UP. Stock B trend: DOWN.", t.format(up="A", down="B")) for t in texts]  # greedy


def test_bad_judge_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="judge_shift_usd 0.01 needs a judge"):
        rewards.RewardSpec(judge_shift_usd=0.01)
    with pytest.raises(ValueError, match="judge 'gpt': use 'grounding' or 'lm:"):
        rewards.RewardSpec(judge="gpt")
    with pytest.raises(ValueError, match="judge_shift_usd -0.01 must be a finite number >= 0"):
        rewards.RewardSpec(judge="grounding", judge_shift_usd=-0.01)
    with pytest.raises(ValueError, match="no \\*.safetensors or \\*.bin weights"):
        judge.judge_name(f"lm:{tmp_path}")



def _advisor(con, cfg, out: Path, seed: int = 0) -> Path:
    """The default model warmed up (SFT, 60 steps) to advise before it acts, for a random letter X: 85 % of the time
    'Stock X is UP 99.5%.' (a made-up figure: the prompt shows no such number, so the grounding judge rejects it, -1),
    else 'Stock X is.' (a name alone: neutral, 0), then 'ACTION: X'. Its greedy advice fabricates the figure: the
    seed's hallucinating advisor. The market's reward does not depend on the advice, so only the judge's shift can
    move the choice (one token after 'is', whatever the prompt says: learnable in a few iterations)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hitchhiker.default_model import _format_warmup, default_model_path

    rng = random.Random(seed)
    examples = []
    ids = _build(con, cfg, cfg.train_dates[:40])
    for (messages,) in con.execute("SELECT messages FROM states WHERE list_contains(?, state_id) ORDER BY state_id",
                                   [ids]).fetchall():
        x = rng.choice("AB")
        advice = f"Stock {x} is UP 99.5%." if rng.random() < 0.85 else f"Stock {x} is."
        examples.append({"prompt": json.loads(messages),
                         "completion": [{"role": "assistant", "content": f"{advice}\nACTION: {x}"}]})
    base = default_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _format_warmup(model, tokenizer, examples, out / "warmup", seed, 60, 32, learning_rate=1e-3)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_a_judge_shift_lowers_the_unsupported_claim_rate(tmp_path):
    """Issue 21's acceptance: the same data and seeds, GRPO with judge_shift_usd 0.02 against 0 (JUDGE_ITERATIONS
    each from the same hallucinating advisor, one store): the evaluation's unsupported-claim rate of the shifted
    checkpoint is lower, with a date-block bootstrap interval of the difference above zero; reward_usd of the
    rollouts both runs rewarded is identical. Measured: advisor 0.5, shift 0 0.5 (it still writes the figure),
    shift 0.02 0.0 ('Stock A is.'), on every one of the 40 dates; with the shift's sign reversed the test fails.
    A race, honestly: the market slowly favours the shorter advice too (12 iterations from a 90 % advisor took the
    unshifted run to 0.0 as well); the shift gets there first."""
    import dataclasses

    import numpy as np

    from hitchhiker import metrics
    from hitchhiker.evaluate import EvalConfig, evaluate
    from hitchhiker.loop import run_loop

    con = db.connect(tmp_path / "shift.duckdb")
    cfg = synthetic_setup(con, SyntheticMarket(seed=0), eval_dates=40, iterations=JUDGE_ITERATIONS,
                          eval_every=JUDGE_ITERATIONS, max_eval_states=64, seed=0)
    cfg.model = str(_advisor(con, cfg, tmp_path / "advisor"))
    cfg.sampling = dataclasses.replace(cfg.sampling, max_new_tokens=24)  # 'Stock A is UP 99.5%.\nACTION: A': 15 tokens
    checkpoints, specs = {}, {}
    for shift in (0.0, 0.02):
        # no invalid penalty: a longer advice is more often garbled, and the penalty alone (not the judge) then
        # taught both runs to drop the made-up figure; the KL term (beta) keeps both writing advice instead
        spec = rewards.RewardSpec(invalid_penalty_usd=0.0, judge="grounding" if shift else None, judge_shift_usd=shift)
        run = dataclasses.replace(cfg, reward=spec, sampling=dataclasses.replace(cfg.sampling, seed=0),
                                  grpo=dataclasses.replace(cfg.grpo, seed=0, shuffle_seed=0, beta=0.1))
        checkpoints[shift] = run_loop(con, run, tmp_path / f"loop{shift}", tmp_path / "replay").checkpoint_id
        specs[shift] = spec.reward_spec
    same = con.execute("SELECT count(*), count(*) FILTER (WHERE a.reward_usd = b.reward_usd) FROM rewards a "
                       "JOIN rewards b USING (rollout_id) WHERE a.reward_spec = ? AND b.reward_spec = ?",
                       [specs[0.0], specs[0.02]]).fetchone()
    assert same[0] >= 16 * 16 and same[1] == same[0], same  # the first iteration's groups at least: one sampling
    ev = evaluate(con, checkpoints[0.02], cfg.eval_dates[0], cfg.eval_dates[-1],
                  EvalConfig(mode="pairwise", style="trend", baselines=(), model=cfg.model, max_new_tokens=24, n_boot=200),
                  spec=rewards.RewardSpec(), compare_with=(checkpoints[0.0],))
    daily = con.execute(
        "SELECT e.subject, d.decision_date, sum(d.unsupported), sum(d.claims) FROM evaluation_decisions d "
        "JOIN evaluations e USING (evaluation_id) WHERE e.run_id = ? AND e.subject_kind <> 'baseline' "
        "GROUP BY ALL ORDER BY 1, 2", [ev.run_id]).fetchall()
    by = {}
    for subject, _, unsupported, claims in daily:
        by.setdefault(subject, ([], []))[0].append(unsupported)
        by[subject][1].append(claims)
    (u_plain, c_plain), (u_shift, c_shift) = (np.array(by[checkpoints[s]], float) for s in (0.0, 0.02))
    base = next(s for s in by if s.startswith("base:") or s not in checkpoints.values())
    rate = {s: sum(u) / max(sum(c), 1) for s, (u, c) in by.items()}
    lo, hi = metrics.bootstrap_ci(lambda idx: u_plain[idx].sum(1) / c_plain[idx].sum(1) - u_shift[idx].sum(1) / c_shift[idx].sum(1),
                                  len(u_plain), n_boot=2000, seed=0)
    print(f"unsupported-claim rate: advisor {rate[base]:.3f}, shift 0 {rate[checkpoints[0.0]]:.3f}, "
          f"shift 0.02 {rate[checkpoints[0.02]]:.3f}; difference 95% CI [{lo:.3f}, {hi:.3f}]; claims "
          f"{c_plain.sum():.0f} / {c_shift.sum():.0f}")
    print(con.execute("SELECT e.subject, d.completion, count(*) FROM evaluation_decisions d JOIN evaluations e "
                      "USING (evaluation_id) WHERE e.run_id = ? AND e.subject_kind <> 'baseline' GROUP BY ALL "
                      "ORDER BY 1, 3 DESC", [ev.run_id]).fetchall())
    assert c_plain.sum() >= 40 and c_shift.sum() >= 40  # both still advise (claims to check)
    assert rate[checkpoints[0.02]] < rate[checkpoints[0.0]] and lo > 0
    con.close()
