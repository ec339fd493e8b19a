"""Out-of-sample evaluation of a checkpoint against the base model and rule baselines (the gate: hitchhiker/gate.py).

One evaluation run = one candidate (a checkpoint or the base model), a window of decision dates, and the states
of that window: the candidate decides greedily, the base model and every baseline decide on the very same
states, every decision gets its reward from the rewards stage's SQL under one spec, and the metrics (with
block-bootstrap intervals over dates) go to the `evaluations` table and a report folder.

The walk-forward check comes first: the window must start after the exit date of every reward that trained the
checkpoint or any of its ancestors (no overlap of reward windows); otherwise the run is refused.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from hitchhiker import baselines, contract, cutoffs, db, faults, grounding, metrics, registry, report
from hitchhiker.states import as_date

EVALUATOR_VERSION = "eval-v1"


class SplitError(ValueError):
    """The evaluation window overlaps what the checkpoint was trained on."""


@dataclass
class EvalConfig:
    mode: str = contract.PAIRWISE
    style: str | None = None  # only states of this rendering ('full'/'trend'); None = every state of the window
    baselines: tuple[str, ...] | None = None  # None: every baseline of the mode
    include_base_model: bool = True
    model: str | None = None  # base model id/path (None: the default small model)
    device: str = "auto"
    batch_size: int = 64
    max_new_tokens: int = 48
    n_boot: int = 2000
    seed: int = 0
    results: list[report.SubjectResult] = field(default_factory=list)  # what the report shows, candidate first
    reports_dir: str | None = None  # default: '<db stem>_reports' beside the database
    gate_metric: str = "mean_reward_usd"  # or 'accuracy'
    gate_margin: float = 0.0  # required lead over the champion, in the metric's unit
    gate_alpha: float = 0.025  # one-sided level of the gate's t-test over dates (hitchhiker.gate.decide)
    min_gate_dates: int = 20  # the gate refuses to decide on fewer scored decision dates
    max_unanonymized_share: float = 0.0  # the gate refuses a window with more decisions whose headlines named a stock
    # The base model's knowledge cutoff (YYYY-MM-DD) where hitchhiker.cutoffs.KNOWLEDGE_CUTOFFS has none (a model card
    # that states none): a window on or before it, or any window while it is unknown, is marked contaminated.
    knowledge_cutoff: str | None = None
    allow_contaminated: bool = False  # the gate decides on a contaminated window (the report still marks it)


@dataclass
class EvalRun:
    run_id: str
    candidate: str
    window: tuple[str, str]
    n_states: int
    report_path: Path
    summaries: dict[str, dict] = field(default_factory=dict)  # subject -> metrics
    daily: dict[str, pd.DataFrame] = field(default_factory=dict)  # subject -> per date: mean reward, accuracy
    kinds: dict[str, str] = field(default_factory=dict)  # subject -> 'checkpoint' | 'base' | 'baseline'
    n_boot: int = 2000
    seed: int = 0
    # share of the candidate's scored decisions whose headlines could not be fully anonymized (`unanonymized`)
    unanonymized_share: float | None = None
    contamination: str | None = None  # why the window may be known to a compared model (hitchhiker.cutoffs); None: clean


# --- walk-forward split -------------------------------------------------------------------------------------------

def training_cutoff(con: duckdb.DuckDBPyConnection, checkpoint_id: str) -> tuple[date | None, date | None]:
    """(last decision date trained on, last reward exit date) over the checkpoint's whole lineage; Nones if untrained.

    The exit of each trained state's reward is read from the reward calendar (sql/rewards/calendar.sql, the state's
    own tickers and horizon), and from the stored rewards of those groups (a longer-horizon spec exits later):
    cutoffs.lineage_exit. A lineage that cannot be checked is a SplitError."""
    last, exit_date, problem = cutoffs.lineage_exit(con, checkpoint_id)
    if problem:
        raise SplitError(f"checkpoint {checkpoint_id}: {problem}")
    return last, exit_date


def check_split(con: duckdb.DuckDBPyConnection, checkpoint_id: str, start: date | str) -> str:
    """Refuse (SplitError) a window starting on or before the last training reward's exit date; returns a note."""
    start = as_date(start)
    last, exit_date = training_cutoff(con, checkpoint_id)
    if last is None:
        return f"{checkpoint_id} was trained on no replay groups"
    if start <= exit_date:
        raise SplitError(
            f"checkpoint {checkpoint_id} was trained on decisions up to {last} whose rewards run until {exit_date}; "
            f"an evaluation window starting {start} overlaps its training data. Evaluate from a date after {exit_date}.")
    return f"{checkpoint_id} trained on decisions up to {last} (rewards exit {exit_date}); window starts {start}"


# --- states and decisions -----------------------------------------------------------------------------------------

# An anonymized state whose headlines could not be fully anonymized: for some stock i (feature key 'A', 'B', ...)
# headlines were shown and no company name was recorded (names_known[i] false, or names_known NULL on states built
# before names were tracked), so only its ticker symbol was scrubbed from them and they may still name the company.
UNANONYMIZED_SQL = """coalesce(anonymized AND list_bool_or(list_transform(range(1, len(tickers) + 1), lambda i:
    coalesce(TRY_CAST(json_extract(features, '$.' || chr(CAST(64 + i AS INTEGER)) || '.headlines') AS INTEGER), 0) > 0
    AND NOT coalesce(names_known[i], false))), false)"""


def load_states(con: duckdb.DuckDBPyConnection, start, end, mode: str, style: str | None = None) -> pd.DataFrame:
    """The states of the window, ordered, with `unanonymized` (UNANONYMIZED_SQL); a clear error if there are none."""
    df = con.execute(
        "SELECT state_id, decision_date, mode, tickers, pair, action_format, horizon_days, history_days, "
        f"messages, features, placeholders, {UNANONYMIZED_SQL} AS unanonymized FROM states "
        "WHERE decision_date BETWEEN ? AND ? AND mode = ? AND (? IS NULL OR style = ?) "
        "ORDER BY decision_date, pair, state_id",
        [as_date(start), as_date(end), mode, style, style]).df()
    if df.empty:
        raise ValueError(f"no {mode} states{' of style ' + style if style else ''} between {start} and {end}: "
                         f"build them first (hitchhiker states build)")
    df["tickers"] = df["tickers"].map(list)
    df["decision_date"] = pd.to_datetime(df["decision_date"]).dt.date
    return df


def greedy_decisions(policy, states: pd.DataFrame, batch_size: int = 64, max_new_tokens: int = 48) -> pd.DataFrame:
    """The policy's deterministic (greedy) completion and parsed action for every state."""
    import torch

    tok = policy.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else policy.eos_token_ids[0]
    out = []
    for i in range(0, len(states), batch_size):
        chunk = states.iloc[i:i + batch_size]
        prompts = [policy.prompt_ids(json.loads(m)) for m in chunk["messages"]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=policy.device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=policy.device)
        with torch.no_grad():
            gen = policy.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                        eos_token_id=policy.eos_token_ids, pad_token_id=pad)
        for row, seq in zip(chunk.itertuples(), gen[:, width:].tolist()):
            text = tok.decode(seq, skip_special_tokens=True)
            parsed = contract.parse(text, row.mode, with_proportion=row.action_format == "proportion",
                                    list_size=len(row.tickers) if row.mode == contract.LISTWISE else None)
            out.append({"state_id": row.state_id, "completion": text, "action": parsed.action if parsed.valid else None,
                        "proportion": parsed.proportion, "position": parsed.position, "valid": parsed.valid,
                        "advisory_text": parsed.advisory_text})
    return pd.DataFrame(out)


def _policy_frame(name: str, states: pd.DataFrame, decided: pd.DataFrame) -> pd.DataFrame:
    decided = decided.copy()
    for column in ("action", "proportion", "position", "completion", "advisory_text"):
        if column not in decided:
            decided[column] = None
    d = states.merge(decided, on="state_id", how="left")
    return pd.DataFrame({
        "decision_id": [f"{name}:{s}" for s in d["state_id"]], "state_id": d["state_id"],
        "decision_date": d["decision_date"], "mode": d["mode"], "pair": d["pair"],
        "ticker_a": [t[0] for t in d["tickers"]], "ticker_b": [t[1] if len(t) > 1 else None for t in d["tickers"]],
        "action": d["action"], "proportion": d["proportion"], "position": d["position"],
        "valid": d["valid"].fillna(False).astype(bool), "history_days": d["history_days"],
        "completion": d["completion"], "advisory_text": d["advisory_text"],
        "tickers": [list(t) if m == contract.LISTWISE else None for t, m in zip(d["tickers"], d["mode"])],
    })


def _load_candidate(con, candidate: str, config: EvalConfig):
    """(subject kind, loaded Policy) of a checkpoint id, 'base' or 'base:<model>'."""
    from hitchhiker.policy import PolicyConfig, load_policy

    if candidate == "base" or candidate.startswith("base:"):
        model = candidate[5:] if candidate.startswith("base:") and "@" not in candidate else config.model
        return "base", load_policy(PolicyConfig(model=model, device=config.device))
    # fetchall, not fetchone: DuckDB 2 keeps a half-read result open and refuses the next statement
    rows = con.execute("SELECT path, algorithm FROM checkpoints WHERE checkpoint_id = ?", [candidate]).fetchall()
    row = rows[0] if rows else None
    if row is None:
        raise ValueError(f"checkpoint {candidate!r} is not in the checkpoints table")
    if row[1] == "beta-head":  # a position head, not a language model: it decides by its mean position
        from hitchhiker.beta.rollouts import checkpoint_decider

        return "checkpoint", checkpoint_decider(con, row[0])
    return "checkpoint", load_policy(PolicyConfig(model=config.model, checkpoint=row[0], checkpoint_id=candidate,
                                                  device=config.device))


# --- rewards ------------------------------------------------------------------------------------------------------

def rewards_for(con: duckdb.DuckDBPyConnection, decisions: pd.DataFrame, spec=None) -> tuple[pd.Series, str]:
    """reward_usd of each decision row (index-aligned; NaN where not matured) and the spec's versioned name."""
    priced, name = priced_for(con, decisions, spec)
    return priced["reward_usd"], name


def priced_for(con: duckdb.DuckDBPyConnection, decisions: pd.DataFrame, spec=None) -> tuple[pd.DataFrame, str]:
    """(reward_usd and leg_returns of each decision row, index-aligned; NaN / None where not matured) and the spec's
    versioned name. leg_returns: a listwise decision's legs' realized returns in prompt order (None otherwise).

    Runs the rewards stage's own sql/rewards.sql over the decisions (`rewards.flat_decisions`, with the variables
    its `set_spec_variables` sets), so a baseline is paid by exactly the formula that pays the policy, invalid
    completions included (their penalty is the spec's).
    """
    from hitchhiker import rewards

    spec = spec or rewards.RewardSpec()
    rel = decisions[baselines.DECISION_COLUMNS + (["tickers"] if "tickers" in decisions else [])].copy()
    rel["action"] = rel["action"].where(rel["valid"], None)
    for column in ("proportion", "position"):
        rel[column] = rel[column].astype("float64")
    rel["valid"] = rel["valid"].astype(bool)
    rel["history_days"] = rel["history_days"].astype("int64")
    if rel["decision_id"].duplicated().any():
        raise ValueError("decision ids must be unique within one pricing call")
    rewards.set_spec_variables(con, spec)
    with rewards.flat_decisions(con, rel):
        priced = con.execute(f"SELECT decision_id, reward_usd, leg_returns FROM ({db.sql_text('rewards')})").df()
    by_id = priced.set_index("decision_id")
    return pd.DataFrame({
        "reward_usd": decisions["decision_id"].map(by_id["reward_usd"]).astype(float).to_numpy(),
        "leg_returns": decisions["decision_id"].map(by_id["leg_returns"]).to_numpy(),
    }, index=decisions.index), spec.reward_spec


# --- the run ------------------------------------------------------------------------------------------------------

def evaluate(con: duckdb.DuckDBPyConnection, candidate: str, start, end, config: EvalConfig = EvalConfig(),
             spec=None, compare_with: tuple[str, ...] = (), policies: dict | None = None) -> EvalRun:
    """Evaluate `candidate` (checkpoint id, 'base' or 'base:<model>') and the comparisons on one window; store it all.

    compare_with: other checkpoints decided on the same states (the champion, for the gate). policies: by subject,
    an already loaded Policy (decided greedily) or any deterministic function `states -> decisions` (columns state_id,
    action, proportion, position, valid; e.g. the Beta head's mean position); absent subjects are loaded.
    """
    start, end = as_date(start), as_date(end)
    if end < start:
        raise ValueError(f"evaluation window ends ({end}) before it starts ({start})")
    notes = [check_split(con, c, start) for c in (candidate, *compare_with) if not c.startswith("base")]
    contamination = window_contamination(con, (candidate, *compare_with), start, end, config)
    states = load_states(con, start, end, config.mode, config.style)
    returns = baselines.past_returns(con, states)
    policies = dict(policies or {})

    models = []  # (subject name, kind, Policy)
    for subject in (candidate, *compare_with):
        kind, policy = ("base" if subject.startswith("base") else "checkpoint"), policies.get(subject)
        if policy is None:
            kind, policy = _load_candidate(con, subject, config)
        name = policy.policy_version if kind == "base" and not callable(policy) else subject
        models.append((name, kind, policy))
    if config.include_base_model and not any(k == "base" for _, k, _ in models):
        base = policies.get("base")
        if base is None:
            from hitchhiker.policy import PolicyConfig, load_policy

            base = load_policy(PolicyConfig(model=config.model, device=config.device))
        models.append((getattr(base, "policy_version", "base"), "base", base))
    frames: dict[str, pd.DataFrame] = {}
    kinds: dict[str, str] = {}
    for name, kind, policy in models:
        kinds[name] = kind
        decided = policy(states) if callable(policy) else greedy_decisions(policy, states, config.batch_size, config.max_new_tokens)
        frames[name] = _policy_frame(name, states, decided)
    candidate_name = next(iter(frames))
    names = config.baselines or baselines.BASELINES[config.mode]
    for b in names:
        frames[f"baseline:{b}"] = baselines.decide(b, states, returns, seed=config.seed)
        kinds[f"baseline:{b}"] = "baseline"

    # Every decision priced by the same SQL in one call; for pairwise, both answers of every state too (accuracy).
    everything = pd.concat([f.assign(subject=s) for s, f in frames.items()], ignore_index=True)
    if config.mode == contract.PAIRWISE:
        both = pd.concat([baselines.fixed_decisions(states, f"cf{side}", [side] * len(states), p, np.nan).assign(subject=f"cf{side}")
                          for side, p in (("A", 1.0), ("B", 0.0))], ignore_index=True)
        everything = pd.concat([everything, both], ignore_index=True)
    elif config.mode == contract.LISTWISE:  # the prompt-order ranking of every basket: its legs' realized returns
        ident = [">".join(contract.LETTERS[:len(t)]) for t in states["tickers"]]
        everything = pd.concat([everything, baselines.fixed_decisions(states, "cfL", ident, np.nan, np.nan).assign(subject="cfL")],
                               ignore_index=True)
    priced, spec_name = priced_for(con, everything, spec)
    everything["reward_usd"] = priced["reward_usd"]

    cf = None
    if config.mode == contract.PAIRWISE:
        cf = everything[everything["subject"].isin(["cfA", "cfB"])].pivot(index="state_id", columns="subject", values="reward_usd")
        everything = everything[~everything["subject"].isin(["cfA", "cfB"])]
    elif config.mode == contract.LISTWISE:
        legs = everything["subject"] == "cfL"
        cf = {s: [float(x) for x in r] for s, r in zip(everything.loc[legs, "state_id"], priced.loc[legs, "leg_returns"])
              if isinstance(r, (list, np.ndarray))}
        everything = everything[~legs]
    # Decisions whose reward has not matured (exit price not in the store yet) cannot be scored.
    unmatured = everything["reward_usd"].isna()
    if unmatured.all():
        raise ValueError(f"no decision between {start} and {end} has a matured reward yet (prices after the horizon missing)")
    unscored = everything[unmatured].groupby("subject").size()
    everything = everything[~unmatured]

    universe = [t for (t,) in con.execute("SELECT DISTINCT ticker FROM prices").fetchall()]
    state_by_id = states.set_index("state_id")
    ret_by_id = returns.set_index("state_id")
    run_id = _run_id(candidate_name, [s for s in frames if s != candidate_name], start, end, config, spec_name, states)
    run = EvalRun(run_id, candidate_name, (str(start), str(end)), len(states), Path(), kinds=kinds,
                  n_boot=config.n_boot, seed=config.seed, contamination=contamination)
    results, rows, decision_rows = [], [], []
    for subject, f in everything.groupby("subject", sort=False):
        summary, g, daily, dec = _score(f, config, cf, state_by_id, ret_by_id, universe, kinds[subject] != "baseline")
        summary["n_unscored"] = int(unscored.get(subject, 0))  # no exit price (yet): left out of every metric
        hidden = state_by_id["unanonymized"].reindex(f["state_id"].dropna())
        summary["n_unanonymized"] = int(hidden.sum())  # decisions whose headlines may have named the company
        summary["unanonymized_share"] = float(hidden.mean()) if len(hidden) else None
        run.summaries[subject], run.daily[subject] = summary, daily
        results.append(report.SubjectResult(subject, summary, [str(d) for d in daily.index], daily["reward"].tolist(), g))
        eval_id = hashlib.sha256(f"{run_id}:{subject}".encode()).hexdigest()[:24]
        rows.append((eval_id, run_id, subject, kinds[subject], candidate_name, start, end, config.mode, spec_name,
                     len(states), summary["accuracy"], summary["mean_reward_usd"], _finite(summary["sharpe"]),
                     json.dumps(_clean(summary)), json.dumps(_clean(g))))
        decision_rows.append(dec.assign(evaluation_id=eval_id))
    order = [candidate_name] + [s for s in run.summaries if s != candidate_name]
    results.sort(key=lambda r: order.index(r.subject))
    run.results = results
    run.unanonymized_share = run.summaries[candidate_name]["unanonymized_share"]
    run_dir = _reports_dir(con, config) / run_id[:16]
    run.report_path = report.write_report(run_dir, report.ReportInput(
        f"Evaluation of {candidate_name}", candidate_name, run.window, config.mode, spec_name, len(states), results,
        split_note="; ".join(notes) or "untrained base model: no training dates to check",
        anonymization_note=_anonymization_note(run.summaries[candidate_name]),
        contamination_note=(f"CONTAMINATED: {contamination}" if contamination else
                            "none found (the base model's knowledge cutoff and the training data precede the window)"),
        training_rewards=training_rewards(con, candidate_name, spec_name) if kinds[candidate_name] == "checkpoint" else [],
        teacher_weights=teacher_weights(con, candidate_name) if kinds[candidate_name] == "checkpoint" else []))
    _store(con, run_id, rows, pd.concat(decision_rows, ignore_index=True), run.report_path)
    return run


def a_is_first_of_pair(tickers) -> bool:
    """Whether stock A is the first of its pair key (the sorted tickers joined by '-'), read from the tickers: the
    key cannot be split back at '-' ('BRK-B-XOM' is BRK-B and XOM)."""
    return tickers[0] == min(tickers)


def _score(f: pd.DataFrame, config: EvalConfig, cf, state_by_id, ret_by_id, universe, is_model: bool):
    """(summary, grounding, daily frame, decisions to store) of one subject."""
    pairwise = config.mode == contract.PAIRWISE and f["state_id"].notna().all()
    ranked = config.mode == contract.LISTWISE and f["state_id"].notna().all()  # not buy_and_hold's benchmark rows
    picked = exposure_a = extra = None
    if ranked:
        actions = [a if v and isinstance(a, str) else None for a, v in zip(f["action"], f["valid"])]
        realized = [cf[s] for s in f["state_id"]]  # every scored decision matured, so its basket's counterfactual did
        picked = np.array([metrics.pair_ordering_accuracy(a, r) if a else 0.0 for a, r in zip(actions, realized)])
        top1 = [metrics.top1_hit(a, r) if a else 0.0 for a, r in zip(actions, realized)]
        rho = [metrics.spearman(a, r) if a else (0.0 if len(set(r)) > 1 else np.nan) for a, r in zip(actions, realized)]
        extra = metrics.listwise_summary(f["decision_date"].to_numpy(), top1, rho, [a[0] if a else None for a in actions],
                                         n_boot=config.n_boot, seed=config.seed)
        exposure = None  # K legs a decision: no one exposure to turn over
    elif pairwise:
        prop = f["proportion"].astype(float).where(f["valid"], 0.5).to_numpy()
        ra, rb = cf.loc[f["state_id"], "cfA"].to_numpy(), cf.loc[f["state_id"], "cfB"].to_numpy()
        better_a = np.sign(ra - rb)  # +1: A was the better stock; costs are the same for both answers
        chose_a = np.sign(prop - 0.5)
        picked = np.where(chose_a == 0, 0.0, np.where(better_a == 0, 0.5, (chose_a == better_a).astype(float)))
        picked = np.where(f["valid"], picked, 0.0)  # no answer is not a right answer
        exposure_a = 2 * prop - 1
        first_is_a = np.array([a_is_first_of_pair(state_by_id.loc[s, "tickers"]) for s in f["state_id"]])
        exposure = np.where(first_is_a, exposure_a, -exposure_a)
    else:
        exposure = f["position"].astype(float).fillna(0.0).to_numpy()
    summary = metrics.summarize(f["decision_date"].to_numpy(), f["reward_usd"].to_numpy(), f["valid"].to_numpy(),
                                f["action"].where(f["valid"], None).tolist(), picked_better=picked,
                                keys=f["pair"].to_numpy(), exposure=exposure, n_boot=config.n_boot, seed=config.seed)
    if extra:
        summary.update(extra, list_sizes=sorted({len(state_by_id.loc[s, "tickers"]) for s in f["state_id"]}))
    daily = pd.DataFrame({"date": f["decision_date"].to_numpy(), "reward": f["reward_usd"].to_numpy(),
                          "picked": picked if picked is not None else np.nan}).groupby("date").mean()
    g = {}
    if f["state_id"].notna().all() and not ranked:
        r = ret_by_id.loc[f["state_id"]]
        last = (r["last_return_a"] - r["last_return_b"]) if pairwise else r["last_return_a"]
        g.update(extrapolation=grounding.extrapolation_bias(exposure_a if pairwise else exposure, last.to_numpy()))
        g["agreement_rate"] = g["extrapolation"]["agreement_rate"]
    claims = unsupported = None
    if is_model:
        checks = [grounding.check(t or "", grounding.prompt_text(state_by_id.loc[s, "messages"]), state_by_id.loc[s, "features"], universe)
                  for s, t in zip(f["state_id"], f["advisory_text"])]
        claims, unsupported = [c.n_claims for c in checks], [c.n_unsupported for c in checks]
        g.update(unsupported_rate=grounding.unsupported_rate(checks), n_claims=int(sum(claims)))
    dec = pd.DataFrame({
        "state_id": f["state_id"].to_numpy(), "decision_date": f["decision_date"].to_numpy(), "pair": f["pair"].to_numpy(),
        "action": f["action"].where(f["valid"], None).to_numpy(), "proportion": f["proportion"].astype(float).to_numpy(),
        "position": f["position"].astype(float).to_numpy(), "valid": f["valid"].astype(bool).to_numpy(),
        "reward_usd": f["reward_usd"].to_numpy(), "picked_better": picked if picked is not None else np.nan,
        "completion": f["completion"].to_numpy() if "completion" in f else None,
        "claims": claims, "unsupported": unsupported,
    })
    dec["state_id"] = dec["state_id"].fillna(pd.Series([f"{d}:{p}" for d, p in zip(dec["decision_date"], dec["pair"])]))
    return summary, g, daily, dec


def window_contamination(con: duckdb.DuckDBPyConnection, subjects, start, end, config: EvalConfig) -> str | None:
    """Why [start, end] may be known to one of the compared models (hitchhiker.cutoffs.contamination), or None.

    subjects: checkpoint ids (their recorded base model) and 'base' / 'base:<model>' (config.model). Baselines know
    nothing but the prices before each decision, and the base model beside the candidate shares its base."""
    notes = []
    for subject in subjects:
        model = config.model if subject.startswith("base") else None
        note = cutoffs.contamination(con, subject, model, start, end, config.knowledge_cutoff)
        if note:
            notes.append(f"{subject}: {note}" if len(subjects) > 1 else note)
    return "; ".join(notes) or None


def _anonymization_note(summary: dict) -> str:
    n, share = summary["n_unanonymized"], summary["unanonymized_share"]
    if not n:
        return "every decision's headlines were anonymized (or none were shown)"
    return (f"{n} of {summary['n_decisions']} decisions ({share:.1%}) showed headlines that could not be fully "
            "anonymized (no company name recorded for that stock): record the names with `hitchhiker ingest names` "
            "and rebuild the states; the promotion gate refuses such a window")


def _run_id(candidate, others, start, end, config, spec_name, states) -> str:
    key = json.dumps([EVALUATOR_VERSION, candidate, sorted(others), str(start), str(end), config.mode, config.style,
                      spec_name, config.n_boot, config.seed, sorted(states["state_id"])])
    return hashlib.sha256(key.encode()).hexdigest()


def _reports_dir(con, config: EvalConfig) -> Path:
    if config.reports_dir:
        return Path(config.reports_dir)
    ((path,),) = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    if not path or path == ":memory:":
        return Path(tempfile.gettempdir()) / "hitchhiker_reports"
    return db.beside(path, "reports")


def training_rewards(con, checkpoint_id: str, spec_name: str) -> list[tuple[int, float]]:
    """(iteration, mean reward_usd of the groups it trained on) along the checkpoint's lineage, oldest first."""
    try:
        rows = con.execute(db.sql_text("evaluate/training_rewards"),
                           {"checkpoint_id": checkpoint_id, "reward_spec": spec_name}).fetchall()
    except duckdb.CatalogException:  # no rewards table: nothing to plot
        return []
    return [(i + 1, float(m)) for i, (_, _, m) in enumerate(rows) if m is not None]


def teacher_weights(con, checkpoint_id: str) -> list[tuple[date, str, float, bool]]:
    """(decision date, teacher, weight, forced) of the teachers whose groups the checkpoint's lineage trained on
    (sql/evaluate/teacher_weights.sql); empty when it trained on its own groups."""
    try:
        rows = con.execute(db.sql_text("evaluate/teacher_weights"),
                           {"groups": registry.lineage_groups(con, checkpoint_id)}).fetchall()
    except duckdb.CatalogException:  # a store from before migration 014: no teachers
        return []
    return [(d, t, float(w), bool(f)) for d, t, w, f, _ in rows]


def _store(con, run_id: str, rows: list[tuple], decisions: pd.DataFrame, report_path: Path) -> None:
    """Replace the run's rows in one transaction: re-running the same evaluation leaves one copy."""
    now = datetime.now(timezone.utc)
    con.register("new_decisions", decisions)
    try:
        with db.transaction(con):
            con.execute("DELETE FROM evaluation_decisions WHERE evaluation_id IN "
                        "(SELECT evaluation_id FROM evaluations WHERE run_id = ?)", [run_id])
            con.execute("DELETE FROM evaluations WHERE run_id = ?", [run_id])
            con.executemany("INSERT INTO evaluations (evaluation_id, run_id, subject, subject_kind, candidate, window_start, "
                            "window_end, mode, reward_spec, n_states, accuracy, mean_reward_usd, sharpe, metrics, grounding, "
                            "report_path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(*r, str(report_path), now) for r in rows])
            con.execute("INSERT INTO evaluation_decisions BY NAME SELECT * FROM new_decisions")
            faults.point("evaluations.before-commit")
        faults.point("evaluations.after-commit")
    finally:
        con.unregister("new_decisions")


def _finite(x):
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else x


def _clean(x):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to null (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, (date, datetime)):
        return str(x)
    return x
