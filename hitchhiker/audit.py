"""The look-ahead audit: does a checkpoint's score on a window come from the numbers it is shown, or from memory?

The checkpoint decides greedily on the window's anonymized states (the evaluation's prompts) and on two
perturbations of each, built so that the numbers stay the same and only what identifies the case changes:

- **named**: the same state (date, pair, A/B order) built by the states stage with `anonymize=False`: the tickers
  and company names restored, every number as before (rebuilt in a scratch store, so `states` is not touched);
- **date_shift**: the anonymized prompt with every YYYY-MM-DD in it (the decision date and each headline's date)
  moved by `date_shift_days`.

Every decision is priced by the rewards stage's SQL (`evaluate.rewards_for`) from the original state's tickers and
date, so the three variants of a state are paid on the same market. Per decision date, the paired difference of
accuracy and of mean reward_usd between the prompt that reveals (named; true date) and the one that hides (anonymized;
shifted date) gets a 95 % circular block-bootstrap interval over dates and a one-sided t-test over dates.

**Flag rule.** The checkpoint is flagged when the revealing prompt does significantly better in accuracy or in
reward: mean daily difference above zero, t-test p below alpha / 4 (Bonferroni over the four tests, family-wise
alpha 0.05 by default) and the bootstrap interval above zero. A flag means the answers depend on knowing which firm
or which day it is, not on the numbers shown: recall, and a score on that window that overstates what the model can
do on dates it has not seen. The knowledge cutoff of the base model and the training cutoff of the lineage
(hitchhiker.cutoffs.contamination) are reported beside the verdict.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from hitchhiker import baselines, contract, cutoffs, db, evaluate, metrics, report
from hitchhiker.states import StatesConfig, as_date, build_states

AUDITOR_VERSION = "audit-v1"
PERTURBATIONS = ("named", "date_shift")
AUDIT_METRICS = ("accuracy", "mean_reward_usd")
# variant names: the anonymized prompt as evaluated, and the two perturbations
ORIGINAL, NAMED, SHIFTED = "anonymized", "named", "date-shifted"
_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")

MEANING = (
    "A significant difference means the checkpoint picks the better stock more often (or earns more) when the prompt "
    "reveals which firm (named) or which day (true date) it is than on the very same numbers with that hidden. The "
    "numbers did not change, so the difference comes from knowing the case: the model recalls how it ended (from its "
    "pretraining or fine-tuning data), and its score on this window overstates what it can do on dates it has not "
    "seen. No significant difference is no proof of innocence: a small window has little power (see the intervals), "
    "and a model can also memorize the numbers themselves, which no perturbation of names or dates reveals; the "
    "knowledge and training cutoffs reported with the verdict cover that case.")


@dataclass
class AuditConfig:
    mode: str = contract.PAIRWISE
    style: str | None = None  # only states of this rendering; None: the window's one style (an error if mixed)
    model: str | None = None  # base model id/path (None: the checkpoint's own base, or the default small model)
    device: str = "auto"
    batch_size: int = 64
    max_new_tokens: int = 48
    # Whole weeks, so a shifted trading day is still a weekday (a Saturday session would give the shift away), and
    # far enough (520 weeks, about ten years forward) that the shifted date is one the model cannot know the end of.
    date_shift_days: int = 3640
    alpha: float = 0.05  # family-wise level of the four one-sided tests (each at alpha / 4)
    min_dates: int = 10  # a test over fewer scored dates is inconclusive
    n_boot: int = 2000
    seed: int = 0
    knowledge_cutoff: str | None = None  # the base model's knowledge cutoff, when its card states none (YYYY-MM-DD)
    allow_contaminated: bool = False  # a contaminated window does not fail the audit (it is still reported)
    # How the window's states were built, for the named rebuild: its seed draws the pairs and the A/B order (mode,
    # style, history, horizon, answer format and trend days are read from the stored states themselves).
    states: StatesConfig = field(default_factory=StatesConfig)
    reports_dir: str | None = None  # default: '<db stem>_reports' beside the database


@dataclass(frozen=True)
class PromptTest:
    """One paired test: the revealing prompt vs the hiding one on the same states, one value per decision date."""

    perturbation: str  # 'named' | 'date_shift'
    metric: str  # 'accuracy' | 'mean_reward_usd'
    revealing: float  # the metric on the prompt that shows the name / the true date (mean over dates)
    hiding: float
    difference: float  # revealing - hiding, mean of the daily differences
    ci: tuple[float, float]  # 95 % circular block-bootstrap interval over dates
    p_value: float  # one-sided t-test over dates that the difference is above zero
    n_dates: int
    n_decisions: int
    significant: bool
    inconclusive: bool  # fewer than min_dates scored dates


@dataclass
class AuditResult:
    audit_id: str
    candidate: str
    window: tuple[str, str]
    n_states: int
    tests: list[PromptTest]
    contamination: str | None
    flagged: bool
    inconclusive: bool
    verdict: str
    report_path: Path
    allow_contaminated: bool = False
    summaries: dict[str, dict] = field(default_factory=dict)  # variant -> metrics.summarize
    changed_answers: dict[str, float] = field(default_factory=dict)  # perturbation -> share of answers that changed
    n_unmatched: int = 0  # anonymized states with no named twin (left out of the named test)
    n_numbers_differ: int = 0  # named twins whose shown numbers differ (the token budget cut them differently)

    @property
    def passed(self) -> bool:
        """Not flagged, conclusive, and clean (or contamination allowed)."""
        return not self.flagged and not self.inconclusive and (self.contamination is None or self.allow_contaminated)

    def test(self, perturbation: str, metric: str) -> PromptTest:
        return next(t for t in self.tests if t.perturbation == perturbation and t.metric == metric)


# --- the perturbations --------------------------------------------------------------------------------------------

def shift_dates(text: str, days: int) -> str:
    """Every YYYY-MM-DD in text moved by `days` (strings that are not real dates are left as they are)."""
    def move(m: re.Match) -> str:
        try:
            return (date(int(m[1]), int(m[2]), int(m[3])) + timedelta(days=days)).isoformat()
        except ValueError:
            return m[0]
    return _DATE.sub(move, text)


def date_shifted(states: pd.DataFrame, days: int) -> pd.DataFrame:
    """The states with every date in their messages moved by `days` (same state ids, same everything else)."""
    out = states.copy()
    out["messages"] = [json.dumps([{**m, "content": shift_dates(m.get("content", ""), days)} for m in json.loads(s)],
                                  ensure_ascii=False) for s in states["messages"]]
    return out


def named_states(con: duckdb.DuckDBPyConnection, states: pd.DataFrame, template: StatesConfig, tokenizer) -> pd.DataFrame:
    """The named twin of each anonymized state: same date, pair and A/B order, names and tickers shown.

    Built by the states stage with anonymize=False in a scratch in-memory store holding the window's prices, news and
    names, so `states` gets no named rows an evaluation would pick up. The twins are drawn over the window's own
    tickers with, per date, as many pairs as the window has: the pair draw ranks pairs by a hash of (seed, date, pair),
    so a date's pairs are the top of that ranking within any universe holding their tickers, and the A/B order is a
    hash of the same. Returns the states' index and state_id with the twin's messages and features (NaN: no twin)."""
    first = states.iloc[0]
    features = json.loads(first["features"])
    config = replace(template, mode=first["mode"], style=_one(states, "style"), history_days=int(first["history_days"]),
                     horizon_days=int(first["horizon_days"]), action_format=first["action_format"], anonymize=False,
                     trend_days=int(features["A"].get("trend_days", template.trend_days)),
                     max_pairs_per_date=int(states.groupby("decision_date").size().max()))
    tickers = sorted({t for ts in states["tickers"] for t in ts})
    days = sorted(set(states["decision_date"]))
    scratch = duckdb.connect()
    try:
        db.migrate(scratch)
        lookback = timedelta(days=config.news_lookback_days + 2)
        for table, query, params in (
            ("prices", "SELECT * FROM prices WHERE ticker IN (SELECT unnest(?::VARCHAR[])) AND date <= ?", [tickers, days[-1]]),
            ("news", "SELECT * FROM news WHERE ticker IN (SELECT unnest(?::VARCHAR[])) AND published_at BETWEEN ? AND ?",
             [tickers, days[0] - lookback, days[-1] + timedelta(days=2)]),
            ("company_names", "SELECT * FROM company_names WHERE ticker IN (SELECT unnest(?::VARCHAR[]))", [tickers]),
        ):
            rows = con.sql(query, params=params).to_arrow_table()
            scratch.register("copied", rows)
            scratch.execute(f"INSERT INTO {table} BY NAME SELECT * FROM copied")
            scratch.unregister("copied")
        build_states(scratch, config, days, tickers, tokenizer=tokenizer)
        twins = scratch.execute("SELECT decision_date, tickers, messages, features FROM states").fetchall()
    finally:
        scratch.close()
    by_key = {(d, tuple(t)): (m, f) for d, t, m, f in twins}
    found = [by_key.get((d, tuple(t)), (np.nan, np.nan)) for d, t in zip(states["decision_date"], states["tickers"])]
    return pd.DataFrame({"state_id": states["state_id"].to_numpy(), "messages": [m for m, _ in found],
                         "features": [f for _, f in found]}, index=states.index)


def _one(states: pd.DataFrame, column: str):
    values = sorted(set(states[column]))
    if len(values) != 1:
        raise ValueError(f"the window's states mix {column}s {values}: audit one at a time (--{column})")
    return values[0]


# --- the run ------------------------------------------------------------------------------------------------------

def run_audit(con: duckdb.DuckDBPyConnection, candidate: str, start, end, config: AuditConfig = AuditConfig(),
              policy=None, spec=None) -> AuditResult:
    """Audit `candidate` (a checkpoint id, 'base' or 'base:<model>') on the anonymized states of [start, end].

    policy: an already loaded Policy (default: loaded from the registry). Writes the report folder; stores nothing in
    the database (the window's states are read, never added to)."""
    start, end = as_date(start, "start"), as_date(end, "end")
    if end < start:
        raise ValueError(f"audit window ends ({end}) before it starts ({start})")
    states = _anonymized_states(con, start, end, config)
    policy = policy or _load(con, candidate, config)
    named = named_states(con, states, config.states, policy.tokenizer)
    with_twin = named["messages"].notna()
    n_numbers_differ = int(sum(json.loads(a) != json.loads(b) for a, b in
                               zip(states.loc[with_twin, "features"], named.loc[with_twin, "features"])))
    variants = {ORIGINAL: states, NAMED: states.loc[with_twin].assign(messages=named.loc[with_twin, "messages"]),
                SHIFTED: date_shifted(states, config.date_shift_days)}
    decided = {v: evaluate.greedy_decisions(policy, frame, config.batch_size, config.max_new_tokens)
               for v, frame in variants.items()}
    scored = _score(con, states, decided, spec)

    tests = []
    for perturbation, revealing, hiding in (("named", NAMED, ORIGINAL), ("date_shift", ORIGINAL, SHIFTED)):
        pair = scored[revealing].join(scored[hiding], how="inner", suffixes=("", "_h")).dropna(subset=["reward_usd", "reward_usd_h"])
        for metric, column in (("accuracy", "picked"), ("mean_reward_usd", "reward_usd")):
            if metric == "accuracy" and config.mode != contract.PAIRWISE:
                continue
            tests.append(paired_test(perturbation, metric, pair["decision_date"], pair[column], pair[f"{column}_h"],
                                     config))
    changed = {p: float((scored[a]["action"].fillna("-") != scored[b]["action"].reindex(scored[a].index).fillna("-")).mean())
               for p, a, b in (("named", NAMED, ORIGINAL), ("date_shift", ORIGINAL, SHIFTED))}
    summaries = {v: _summary(f, config) for v, f in scored.items() if f["reward_usd"].notna().any()}

    flagged = any(t.significant for t in tests)
    inconclusive = not flagged and any(t.inconclusive for t in tests)
    note = cutoffs.contamination(con, candidate, config.model, start, end, config.knowledge_cutoff)
    audit_id = hashlib.sha256(json.dumps([AUDITOR_VERSION, candidate, str(start), str(end), _config_key(config),
                                          sorted(states["state_id"])], default=str).encode()).hexdigest()
    result = AuditResult(audit_id, candidate if not candidate.startswith("base") else policy.policy_version,
                         (str(start), str(end)), len(states), tests, note, flagged, inconclusive, "", Path(),
                         config.allow_contaminated, summaries, changed, int((~with_twin).sum()), n_numbers_differ)
    result.verdict = _verdict(result, config)
    result.report_path = write_report(evaluate._reports_dir(con, config) / f"audit-{audit_id[:16]}", result, config, scored)
    return result


def _anonymized_states(con, start, end, config: AuditConfig) -> pd.DataFrame:
    states = evaluate.load_states(con, start, end, config.mode, config.style)
    states = states[states["placeholders"].notna()]  # the anonymized prompts are what evaluation scores
    if states.empty:
        raise ValueError(f"no anonymized {config.mode} states between {start} and {end}: the audit compares the "
                         "anonymized prompt with its named twin (build them with anonymization on)")
    states = _with_style(con, states)
    style = config.style or _one(states, "style")
    return states[states["style"] == style].reset_index(drop=True)


def _with_style(con, states: pd.DataFrame) -> pd.DataFrame:
    rows = con.execute("SELECT state_id, style FROM states WHERE state_id IN (SELECT unnest(?::VARCHAR[]))",
                       [list(states["state_id"])]).fetchall()
    return states.assign(style=states["state_id"].map(dict(rows)))


def _load(con, candidate: str, config: AuditConfig):
    from hitchhiker.policy import PolicyConfig, load_policy

    if candidate == "base" or candidate.startswith("base:"):
        model = candidate[5:] if candidate.startswith("base:") and "@" not in candidate else config.model
        return load_policy(PolicyConfig(model=model, device=config.device))
    rows = con.execute("SELECT path, algorithm FROM checkpoints WHERE checkpoint_id = ?", [candidate]).fetchall()
    if not rows:
        raise ValueError(f"checkpoint {candidate!r} is not in the checkpoints table")
    if rows[0][1] == "beta-head":
        raise ValueError(f"checkpoint {candidate} is a Beta position head: it decides from the state's numbers, not "
                         "its text, so names and dates in the prompt cannot reach it (nothing to audit)")
    return load_policy(PolicyConfig(model=config.model, checkpoint=rows[0][0], checkpoint_id=candidate,
                                    device=config.device))


def _score(con, states: pd.DataFrame, decided: dict[str, pd.DataFrame], spec) -> dict[str, pd.DataFrame]:
    """Per variant, indexed by state_id: action, valid, reward_usd (priced on the original state) and picked."""
    base = states.set_index("state_id")
    frames = []
    for variant, d in decided.items():
        s = base.loc[d["state_id"]]
        frames.append(pd.DataFrame({
            "decision_id": [f"{variant}:{i}" for i in d["state_id"]], "state_id": d["state_id"].to_numpy(),
            "decision_date": s["decision_date"].to_numpy(), "mode": s["mode"].to_numpy(), "pair": s["pair"].to_numpy(),
            "ticker_a": [t[0] for t in s["tickers"]], "ticker_b": [t[1] if len(t) > 1 else None for t in s["tickers"]],
            "action": d["action"].to_numpy(), "proportion": d["proportion"].to_numpy(),
            "position": d["position"].to_numpy(), "valid": d["valid"].astype(bool).to_numpy(),
            "history_days": s["history_days"].to_numpy(), "variant": variant}))
    everything = pd.concat(frames, ignore_index=True)
    pairwise = states["mode"].iloc[0] == contract.PAIRWISE
    if pairwise:  # both answers of every state, priced once: which stock was better
        both = pd.concat([baselines.fixed_decisions(states, f"cf{side}", [side] * len(states), p, np.nan).assign(variant=f"cf{side}")
                          for side, p in (("A", 1.0), ("B", 0.0))], ignore_index=True)
        everything = pd.concat([everything, both], ignore_index=True)
    everything["reward_usd"], _ = evaluate.rewards_for(con, everything, spec)
    out = {}
    if pairwise:
        cf = everything[everything["variant"].isin(["cfA", "cfB"])].pivot(index="state_id", columns="variant", values="reward_usd")
    for variant in decided:
        f = everything[everything["variant"] == variant].set_index("state_id")
        picked = np.full(len(f), np.nan)
        if pairwise:
            prop = f["proportion"].astype(float).where(f["valid"], 0.5).to_numpy()
            better_a = np.sign(cf.loc[f.index, "cfA"].to_numpy() - cf.loc[f.index, "cfB"].to_numpy())
            chose_a = np.sign(prop - 0.5)
            picked = np.where(chose_a == 0, 0.0, np.where(better_a == 0, 0.5, (chose_a == better_a).astype(float)))
            picked = np.where(f["valid"], picked, 0.0)  # no answer is not a right answer
        out[variant] = f[["decision_date", "pair", "action", "valid", "reward_usd"]].assign(picked=picked)
    return out


def paired_test(perturbation: str, metric: str, decision_dates, revealing, hiding,
                config: AuditConfig = AuditConfig()) -> PromptTest:
    """The flag rule on one metric: per decision, its value on the revealing and on the hiding prompt (same state).

    The decisions of a date are one cluster: the daily means are paired, the interval resamples dates (circular
    block bootstrap) and the t-test counts dates."""
    daily = pd.DataFrame({"date": np.asarray(decision_dates), "r": np.asarray(revealing, float),
                          "h": np.asarray(hiding, float)}).groupby("date")[["r", "h"]].mean()
    rev, hid = daily["r"].to_numpy(), daily["h"].to_numpy()
    n, n_decisions = len(daily), len(np.asarray(revealing))
    if n < 2:
        return PromptTest(perturbation, metric, float(np.mean(rev)) if n else float("nan"),
                          float(np.mean(hid)) if n else float("nan"), float(np.mean(rev - hid)) if n else float("nan"),
                          (float("nan"), float("nan")), float("nan"), n, n_decisions, False, True)
    diff = rev - hid
    lo, hi = metrics.paired_difference_ci(rev, hid, n_boot=config.n_boot, seed=config.seed)
    p = metrics.t_test_p_greater(diff)
    inconclusive = n < config.min_dates
    significant = (not inconclusive and diff.mean() > 0 and p < config.alpha / (2 * len(PERTURBATIONS)) and lo > 0)
    return PromptTest(perturbation, metric, float(rev.mean()), float(hid.mean()), float(diff.mean()),
                      (float(lo), float(hi)), float(p), n, n_decisions, bool(significant), inconclusive)


def _summary(f: pd.DataFrame, config: AuditConfig) -> dict:
    f = f[f["reward_usd"].notna()]
    pairwise = config.mode == contract.PAIRWISE
    return metrics.summarize(f["decision_date"].to_numpy(), f["reward_usd"].to_numpy(), f["valid"].to_numpy(),
                             f["action"].where(f["valid"], None).tolist(),
                             picked_better=f["picked"].to_numpy() if pairwise else None,
                             n_boot=config.n_boot, seed=config.seed)


def _verdict(r: AuditResult, config: AuditConfig) -> str:
    level = config.alpha / (2 * len(PERTURBATIONS))
    if r.flagged:
        hits = [t for t in r.tests if t.significant]
        why = "; ".join(f"{TEST_LABELS[t.perturbation]} {t.metric} {t.difference:+.4g} [{t.ci[0]:+.4g}, {t.ci[1]:+.4g}], "
                        f"p = {t.p_value:.2g} over {t.n_dates} dates" for t in hits)
        text = f"FLAGGED: {why}: the answers depend on knowing which firm or which day it is (recall, not the numbers)"
    elif r.inconclusive:
        few = min(t.n_dates for t in r.tests)
        text = (f"INCONCLUSIVE: {few} scored decision dates, fewer than the {config.min_dates} a test needs; audit a "
                "longer window")
    else:
        text = (f"not flagged: no perturbation made the revealing prompt significantly better (one-sided p < {level:.3g} "
                "and the 95 % interval above zero, over dates)")
    if r.contamination:
        text += (f"; CONTAMINATED window ({'allowed' if r.allow_contaminated else 'refused'}): {r.contamination}")
    return text


TEST_LABELS = {"named": "named - anonymized", "date_shift": "true date - shifted date"}


def _config_key(config: AuditConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in ("device", "batch_size", "reports_dir")}


# --- the report ---------------------------------------------------------------------------------------------------

def differences_figure(tests: list[PromptTest]):
    """Each paired difference (revealing - hiding prompt) with its 95 % interval, one panel per metric; zero marked."""
    import matplotlib.pyplot as plt

    shown = [m for m in AUDIT_METRICS if any(t.metric == m for t in tests)]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        rows = [t for t in tests if t.metric == metric]
        y = np.arange(len(rows))
        for i, t in enumerate(rows):
            err = np.nan_to_num([[t.difference - t.ci[0]], [t.ci[1] - t.difference]])
            ax.errorbar([t.difference], [i], xerr=err, fmt="o", color="C3" if t.significant else "C0", capsize=4)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(y, [TEST_LABELS[t.perturbation] for t in rows], fontsize="small")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlabel("revealing - hiding prompt (" + ("share of decisions)" if metric == "accuracy" else "USD per $1)"))
        ax.set_title(metric)
    fig.suptitle("Paired differences over dates, 95 % block-bootstrap intervals (red: significant)", fontsize="small")
    fig.tight_layout()
    return fig


def write_report(run_dir: str | Path, result: AuditResult, config: AuditConfig, scored: dict[str, pd.DataFrame]) -> Path:
    """report.md, audit.json and the PNG plots in run_dir, as the evaluation stage writes its reports."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for variant, summary in result.summaries.items():
        daily = scored[variant].dropna(subset=["reward_usd"]).groupby("decision_date")["reward_usd"].mean()
        results.append(report.SubjectResult(variant, summary, [str(d) for d in daily.index], daily.tolist()))
    figures = {"differences.png": differences_figure(result.tests), "equity.png": report.equity_figure(results),
               "actions.png": report.actions_figure(results)}
    for name, fig in figures.items():
        fig.savefig(run_dir / name, dpi=100)
        plt.close(fig)
    level = config.alpha / (2 * len(PERTURBATIONS))
    lines = [
        f"# Look-ahead audit of {result.candidate}", "",
        f"- **verdict**: {result.verdict}",
        f"- window: {result.window[0]} .. {result.window[1]} ({config.mode}, {result.n_states} anonymized states)",
        f"- contamination: {result.contamination or 'clean: the window lies after the base model knowledge cutoff and after every reward that trained the lineage'}",
        f"- named twins: {result.n_states - result.n_unmatched} of {result.n_states} states "
        f"({result.n_unmatched} without a twin left out; {result.n_numbers_differ} twins show different numbers, "
        "the token budget having cut them differently)",
        f"- date shift: every YYYY-MM-DD in the prompt moved by {config.date_shift_days} days "
        f"({config.date_shift_days // 7} weeks: weekdays stay weekdays)",
        f"- answers that changed: named vs anonymized {result.changed_answers['named']:.1%}, true vs shifted date "
        f"{result.changed_answers['date_shift']:.1%}", "",
        "## What a significant difference means", "", MEANING, "",
        f"Flag rule: a test is significant when the mean daily difference (revealing - hiding prompt) is above zero, a "
        f"one-sided t-test over decision dates gives p < {level:.4g} (alpha {config.alpha} over the four tests, "
        f"Bonferroni) and the 95 % circular block-bootstrap interval over dates lies above zero; any significant test "
        f"flags the checkpoint. A test over fewer than {config.min_dates} dates is inconclusive.", "",
        "## Paired differences", "",
        "| test | metric | revealing prompt | hiding prompt | difference [95% CI] | p (one-sided, dates) | dates | decisions | significant |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result.tests:
        lines.append(f"| {TEST_LABELS[t.perturbation]} | {t.metric} | {t.revealing:.4f} | {t.hiding:.4f} | {t.difference:+.4f} "
                     f"[{t.ci[0]:+.4f}, {t.ci[1]:+.4f}] | {t.p_value:.3g} | {t.n_dates} | {t.n_decisions} | "
                     f"{'yes' if t.significant else 'inconclusive' if t.inconclusive else 'no'} |")
    lines += ["", "## Each prompt", "", "| " + " | ".join(report.TABLE_COLUMNS) + " |", "|" + "---|" * len(report.TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in report.table_rows(results)]
    lines += ["", "## Plots", "", "![Paired differences](differences.png)", "",
              "![Cumulative reward per prompt](equity.png)", "", "![Action distribution per prompt](actions.png)", ""]
    (run_dir / "audit.json").write_text(json.dumps(evaluate._clean({
        "audit_id": result.audit_id, "auditor_version": AUDITOR_VERSION, "candidate": result.candidate,
        "window": result.window, "n_states": result.n_states, "flagged": result.flagged,
        "inconclusive": result.inconclusive, "passed": result.passed, "verdict": result.verdict,
        "contamination": result.contamination, "tests": [asdict(t) for t in result.tests],
        "changed_answers": result.changed_answers, "n_unmatched": result.n_unmatched,
        "n_numbers_differ": result.n_numbers_differ, "summaries": result.summaries, "config": _config_key(config),
    }), indent=1))
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
