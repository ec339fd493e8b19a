"""The promotion gate: whether a candidate checkpoint replaces the champion, decided on evidence clustered by date.

The candidate and the champion (or the base model while there is none) decide on the same states of an out-of-sample
window (hitchhiker.evaluate), so each decision date gives one paired number: the day's mean reward (or accuracy) of
the candidate minus the champion's. The decisions of one date share the market and the policies' mood, so they are one
cluster: every statistic below counts dates, never decisions. `decide` is the whole rule over two daily series; the
real gate and the simulation that measures its false-promotion rate on real prices (tests/test_gate.py) both call it.

The gate refuses to decide (a logged `promotions` row, not promoted) on fewer than `EvalConfig.min_gate_dates`
scored dates, on a window where more than `EvalConfig.max_unanonymized_share` of the decisions showed headlines
that could not be anonymized (no company names recorded for that stock), and on a contaminated window (one before
the base model's knowledge cutoff, or any window while that cutoff is unknown: hitchhiker.cutoffs) unless
`EvalConfig.allow_contaminated`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import numpy as np

from hitchhiker import db, faults, metrics
from hitchhiker.evaluate import EvalConfig, EvalRun, evaluate

GATE_METRICS = ("mean_reward_usd", "accuracy")


@dataclass(frozen=True)
class Verdict:
    """What `decide` found on two paired daily series; `reason` is its short verdict."""

    promoted: bool
    difference: float  # mean daily difference candidate - champion
    ci: tuple[float, float]  # its 95 % circular block-bootstrap interval over dates
    p_value: float  # one-sided t-test over dates that the difference is above zero
    n_dates: int
    reason: str  # 'promoted', 'kept, not promoted: ...' or 'refused: ...'


@dataclass
class GateDecision:
    candidate: str
    champion_before: str | None
    promoted: bool
    difference: float
    difference_ci: tuple[float, float]
    reason: str
    p_value: float = float("nan")
    n_dates: int = 0
    refused: bool = False  # the gate would not decide (too few dates, headlines not anonymized, contaminated)
    run_id: str = ""  # the evaluation run it was decided on (with the candidate: the `promotions` row's identity)
    metric: str = "mean_reward_usd"
    margin: float = 0.0


def decide(candidate_daily, champion_daily, config: EvalConfig = EvalConfig()) -> Verdict:
    """The gate's rule on two daily series over the same dates (one value per date: mean reward or accuracy).

    Promote only if (1) there are at least `config.min_gate_dates` dates, (2) the mean daily lead is at least
    `config.gate_margin`, (3) a one-sided t-test on the daily differences rejects 'no better' at `config.gate_alpha`
    (0.025: the 95 % t-interval lies above zero) and (4) the 95 % block-bootstrap interval of the mean difference lies
    above zero (it guards against dates that are not independent; the t-test assumes they are).

    On windows of 20 dates of real prices a candidate identical in law to the champion is promoted about 2 % of the
    time (10,000 windows; tests/test_gate.py measures 200). At alpha 0.05 it was about 4 %: within 5 %, but a
    daily flow gates candidate after candidate, and the false promotions add up; the percentile bootstrap alone is
    anti-conservative (up to 7 % on 20 dates)."""
    a, b = np.asarray(candidate_daily, float), np.asarray(champion_daily, float)
    if a.shape != b.shape:
        raise ValueError(f"paired daily series differ in length: {a.shape} vs {b.shape}")
    d = a - b
    n = int(d.size)
    difference = float(d.mean()) if n else float("nan")
    if n < max(2, config.min_gate_dates):
        return Verdict(False, difference, (float("nan"), float("nan")), float("nan"), n,
                       f"refused: {n} scored decision dates, fewer than the {config.min_gate_dates} the gate needs "
                       f"(EvalConfig.min_gate_dates); evaluate a longer window")
    lo, hi = metrics.paired_difference_ci(a, b, n_boot=config.n_boot, seed=config.seed)
    p = metrics.t_test_p_greater(d)
    if difference < config.gate_margin:
        why = "lead below the margin"
    elif not p < config.gate_alpha:
        why = f"not significant over dates (p = {p:.3g} >= {config.gate_alpha})"
    elif not lo > 0:
        why = "interval includes zero"
    else:
        return Verdict(True, difference, (lo, hi), p, n, "promoted")
    return Verdict(False, difference, (lo, hi), p, n, f"kept, not promoted: {why}")


def paired_series(run: EvalRun, subject: str, other: str, metric: str = "mean_reward_usd") -> tuple[np.ndarray, np.ndarray]:
    """The two subjects' daily series of one run on the dates both have scored (metric: 'mean_reward_usd', the daily
    mean reward, or 'accuracy', the daily share of better picks)."""
    if metric not in GATE_METRICS:
        raise ValueError(f"metric {metric!r} is not 'mean_reward_usd' or 'accuracy'")
    column = "reward" if metric == "mean_reward_usd" else "picked"
    both = run.daily[subject][[column]].merge(run.daily[other][[column]], left_index=True, right_index=True,
                                              suffixes=("", "_other")).dropna()
    return both[column].to_numpy(), both[f"{column}_other"].to_numpy()


def paired_difference(run: EvalRun, subject: str, other: str, metric: str = "mean_reward_usd") -> tuple[float, float, float]:
    """(mean daily difference subject - other, 95 % block-bootstrap low, high) of one run's daily series.

    Both subjects decided on the same states, so the days pair up; an interval above zero means `subject` beats
    `other` on this window."""
    a, b = paired_series(run, subject, other, metric)
    if len(a) < 2:
        raise ValueError(f"{subject} and {other} share {len(a)} scored dates: too few to compare")
    lo, hi = metrics.paired_difference_ci(a, b, n_boot=run.n_boot, seed=run.seed)
    return float(np.mean(a - b)), lo, hi


def champion(con: duckdb.DuckDBPyConnection) -> str | None:
    """The checkpoint the daily flow samples with: the latest promoted language-model candidate, or None (use the base
    model). A promoted Beta position head is a champion of its own kind, not a model the sampler can load."""
    try:
        rows = con.execute(
            "SELECT p.candidate FROM promotions AS p LEFT JOIN checkpoints AS c ON c.checkpoint_id = p.candidate "
            "WHERE p.promoted AND coalesce(c.algorithm, '') <> 'beta-head' ORDER BY p.decided_at DESC LIMIT 1"
        ).fetchall()
    except duckdb.CatalogException:  # store not migrated to 006 yet
        return None
    return rows[0][0] if rows else None


def anonymization_refusal(run: EvalRun, config: EvalConfig) -> str | None:
    """Why the gate will not decide on this window's states (headlines of stocks without recorded names), or None."""
    share = run.unanonymized_share
    if share is None or share <= config.max_unanonymized_share:
        return None
    return (f"refused: {share:.1%} of the decisions showed headlines that could not be fully anonymized (no company "
            f"name recorded for a stock whose headlines were shown; EvalConfig.max_unanonymized_share is "
            f"{config.max_unanonymized_share:.1%}), so the model may have recognised the companies; record their names "
            f"with `hitchhiker ingest names` and rebuild the window's states")


def contamination_refusal(run: EvalRun, config: EvalConfig) -> str | None:
    """Why the gate will not decide on a window a compared model may know (EvalRun.contamination), or None."""
    if run.contamination is None or config.allow_contaminated:
        return None
    return (f"refused: the window is contaminated ({run.contamination}); a score there may be memory, not skill. "
            "Evaluate a window after the cutoff, set the model's knowledge cutoff (EvalConfig.knowledge_cutoff, "
            "--knowledge-cutoff) where its card states one, or decide anyway with allow_contaminated")


def promotion_gate(con: duckdb.DuckDBPyConnection, candidate: str, start, end, config: EvalConfig = EvalConfig(),
                   spec=None, policies: dict | None = None) -> tuple[EvalRun, GateDecision]:
    """`gate_verdict`, then `record_decision`: evaluate, decide, write the verdict into the report, log it in
    `promotions`. A flow that publishes the report elsewhere calls the two itself, publishing in between."""
    run, decision = gate_verdict(con, candidate, start, end, config, spec, policies)
    record_decision(con, decision)
    return run, decision


def gate_verdict(con: duckdb.DuckDBPyConnection, candidate: str, start, end, config: EvalConfig = EvalConfig(),
                 spec=None, policies: dict | None = None) -> tuple[EvalRun, GateDecision]:
    """Evaluate `candidate` against the champion (or the base model when there is none) on the validation window and
    apply `decide` to their paired daily `config.gate_metric`; a contaminated window, or one of states whose headlines
    could not be anonymized, is refused. The verdict goes into the run's report; nothing is decided in the store until
    `record_decision`, so the report (and its published copy) always exists before the decision does: a run killed in
    between decides again, on the same evaluation, with the same verdict."""
    if config.gate_metric not in GATE_METRICS:
        raise ValueError(f"gate metric {config.gate_metric!r} is not 'mean_reward_usd' or 'accuracy'")
    current = champion(con)
    if current == candidate:
        raise ValueError(f"checkpoint {candidate} is already the champion")
    run = evaluate(con, candidate, start, end, config, spec, compare_with=(current,) if current else (), policies=policies)
    against = current or next(s for s, k in run.kinds.items() if k == "base")
    verdict = decide(*paired_series(run, run.candidate, against, config.gate_metric), config)
    refusal = contamination_refusal(run, config) or anonymization_refusal(run, config)
    lo, hi = verdict.ci
    reason = (f"{config.gate_metric} {verdict.difference:+.5f} vs {against} over {verdict.n_dates} dates (95% CI "
              f"[{lo:+.5f}, {hi:+.5f}], one-sided p {verdict.p_value:.3g} clustered by date, margin "
              f"{config.gate_margin}): {refusal or verdict.reason}")
    with open(run.report_path, "a") as f:  # evaluate wrote the report afresh, before the verdict existed
        f.write(f"\n## Promotion gate\n\n{reason}\n")
    refused = refusal is not None or verdict.reason.startswith("refused")
    return run, GateDecision(run.candidate, current, verdict.promoted and refusal is None, verdict.difference, (lo, hi),
                             reason, verdict.p_value, verdict.n_dates, refused, run.run_id, config.gate_metric,
                             config.gate_margin)


def record_decision(con: duckdb.DuckDBPyConnection, decision: GateDecision) -> bool:
    """Log `decision` in `promotions` (promoting its candidate when it says so); True when this call logged it.

    Once per verdict: a decision already logged for the same candidate, evaluation run and verdict (a re-run after a
    kill, or two daily runs that gated the same waiting candidate at once) is not logged again; the same evaluation
    gated under other settings (another metric, margin or knowledge cutoff: another verdict text) is a new decision. A decision taken against a
    champion that is no longer the champion is not logged either (False): gate the candidate again."""
    with db.transaction(con):
        logged = con.execute("SELECT count(*) FROM promotions WHERE candidate = ? AND run_id = ? AND reason = ?",
                             [decision.candidate, decision.run_id, decision.reason]).fetchall()[0][0]
        if logged or champion(con) != decision.champion_before:
            return False
        lo, hi = decision.difference_ci
        con.execute("INSERT INTO promotions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [datetime.now(timezone.utc), decision.candidate, decision.champion_before, decision.promoted,
                     decision.metric, decision.margin, _finite(decision.difference), _finite(lo), _finite(hi),
                     decision.run_id, decision.reason])
        faults.point("promotions.before-commit")
    faults.point("promotions.after-commit")
    return True


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
