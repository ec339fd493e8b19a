"""The evaluation report: a markdown file and PNG plots in one run folder.

Figures are built by functions that return them (so tests inspect axes, labels and legends before anything is
written) and saved by `write_report`. matplotlib runs on the Agg backend: no display on servers or in CI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


@dataclass
class SubjectResult:
    """What the report needs of one evaluated policy (checkpoint, base model or baseline)."""

    subject: str
    metrics: dict
    dates: list  # decision dates of the daily series, sorted
    daily_reward_usd: list[float]  # mean reward_usd of each date's decisions
    grounding: dict = field(default_factory=dict)


@dataclass
class ReportInput:
    title: str
    candidate: str
    window: tuple[str, str]
    mode: str
    reward_spec: str
    n_states: int
    results: list[SubjectResult]
    split_note: str = ""  # what the walk-forward check found
    anonymization_note: str = ""  # the share of decisions whose headlines could not be fully anonymized
    contamination_note: str = ""  # whether the window lies before a compared model's knowledge or training cutoff
    training_rewards: list[tuple[int, float]] = field(default_factory=list)  # (iteration, mean reward_usd)
    gate_note: str = ""
    teacher_weights: list[tuple] = field(default_factory=list)  # (decision date, teacher, weight, forced): issue 21


def equity_figure(results: list[SubjectResult]) -> Figure:
    """Cumulative reward_usd of each subject over the window (candidate and baselines on one axis)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        dates = np.asarray(r.dates, dtype="datetime64[D]")
        ax.plot(dates, np.cumsum(r.daily_reward_usd), label=r.subject, linewidth=2 if not r.subject.startswith("baseline:") else 1)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    return _dated(fig, ax, "cumulative reward (USD per $1 per day)", "Cumulative reward vs baselines")


def _dated(fig: Figure, ax, ylabel: str, title: str) -> Figure:
    """Finish a figure over decision dates: labels, title, legend, slanted dates."""
    ax.set_xlabel("decision date")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def training_figure(training_rewards: list[tuple[int, float]], results: list[SubjectResult], candidate: str) -> Figure:
    """Mean reward_usd of the training groups per iteration, with the candidate's and base's held-out reward."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if training_rewards:
        it, rw = zip(*training_rewards)
        ax.plot(it, rw, marker="o", label="training groups (sampled)")
    for r in results:
        if r.subject == candidate or r.subject.startswith("base:"):
            ax.axhline(r.metrics["mean_reward_usd"], linestyle="--", linewidth=1,
                       label=f"held-out: {r.subject}", color="C1" if r.subject == candidate else "C2")
    if not training_rewards:
        ax.text(0.5, 0.5, "no training iterations recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("training iteration (checkpoint lineage)")
    ax.set_ylabel("mean reward (USD per $1 per decision)")
    ax.set_title("Reward per training iteration")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def actions_figure(results: list[SubjectResult], key: str = "action_fractions") -> Figure:
    """Share of each action per subject (a collapsed policy shows one bar near 1); listwise: of each first-ranked
    letter (key 'first_ranked_fractions')."""
    actions = sorted({a for r in results for a in r.metrics.get(key, {})})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(results)), 4))
    x = np.arange(len(results))
    width = 0.8 / max(1, len(actions))
    for i, a in enumerate(actions):
        ax.bar(x + i * width, [r.metrics.get(key, {}).get(a, 0.0) for r in results], width, label=a)
    ax.set_xticks(x + 0.4 - width / 2, [r.subject for r in results], rotation=30, ha="right", fontsize="small")
    ax.set_xlabel("policy")
    ax.set_ylabel("fraction of decisions")
    ax.set_ylim(0, 1)
    ax.set_title("Action distribution" if key == "action_fractions" else "First-ranked letter")
    ax.legend(title="action" if key == "action_fractions" else "ranked first", loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def learning_curve_figure(history: list[dict], target: float | None = None) -> Figure:
    """Held-out accuracy per loop iteration (the loop's evaluations), against chance and the target."""
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot([h["iteration"] for h in history], [h["accuracy"] for h in history], marker="o", label="held-out accuracy")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    if target is not None:
        ax.axhline(target, color="C2", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy")
    ax.set_title("Held-out accuracy per iteration")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def teacher_weights_figure(rows: list[tuple]) -> Figure:
    """Each teacher's weight per decision date (the share of every group of that date it sampled), a cross where
    the stale rule forced it back in."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, teacher in enumerate(sorted({t for _, t, _, _ in rows})):
        mine = [(d, w, f) for d, t, w, f in rows if t == teacher]
        dates = np.asarray([d for d, _, _ in mine], dtype="datetime64[D]")
        ax.plot(dates, [w for _, w, _ in mine], marker=".", color=f"C{i}", label=teacher)
        forced = [(d, w) for d, w, f in mine if f]
        if forced:
            ax.scatter(np.asarray([d for d, _ in forced], dtype="datetime64[D]"), [w for _, w in forced], marker="x",
                       s=60, color=f"C{i}", label=f"{teacher}: forced (stale)")
    ax.set_ylim(0, 1)
    return _dated(fig, ax, "weight (share of each group)", "Teacher weights over time")


def prepend(report_path: str | Path, lines: list[str], figures: dict[str, Figure] | None = None) -> None:
    """Put markdown `lines` above what the report says (its first screen), their figures saved beside it."""
    path = Path(report_path)
    for name, fig in (figures or {}).items():
        fig.savefig(path.parent / name, dpi=100)
        plt.close(fig)
    path.write_text("\n".join(lines) + "\n" + path.read_text())


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _with_ci(m: dict, key: str, digits: int = 4) -> str:
    ci = m.get(f"{key}_ci")
    if m.get(key) is None:
        return "-"
    return f"{_fmt(m[key], digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else _fmt(m[key], digits)


TABLE_COLUMNS = ["policy", "accuracy [95% CI]", "mean reward_usd [95% CI]", "Sharpe [95% CI]", "max drawdown",
                 "hit rate", "turnover", "valid", "collapsed", "unsupported claims", "follows last return"]
# listwise (issue 20): the ranking's metrics, and the long-short book built from it (its reward_usd a decision)
LISTWISE_COLUMNS = ["policy", "pair-ordering accuracy [95% CI]", "top-1 hit [95% CI]", "Spearman [95% CI]",
                    "long-short reward_usd [95% CI]", "Sharpe [95% CI]", "max drawdown", "valid", "collapsed",
                    "unsupported claims"]


def table_columns(mode: str = "pairwise") -> list[str]:
    return LISTWISE_COLUMNS if mode == "listwise" else TABLE_COLUMNS


def table_rows(results: list[SubjectResult], mode: str = "pairwise") -> list[list[str]]:
    """One row of formatted metrics per subject (shared by the markdown report and the terminal table), in the
    columns of `table_columns(mode)`."""
    rows = []
    for r in results:
        m, g = r.metrics, r.grounding
        if mode == "listwise":
            rows.append([r.subject, _with_ci(m, "accuracy", 3), _with_ci(m, "top1_hit", 3), _with_ci(m, "spearman", 3),
                         _with_ci(m, "mean_reward_usd", 5), _with_ci(m, "sharpe", 2), _fmt(m.get("max_drawdown"), 3),
                         _fmt(m.get("valid_rate"), 3), "yes" if m.get("collapsed") else "no",
                         _fmt(g.get("unsupported_rate"), 3)])
            continue
        rows.append([r.subject, _with_ci(m, "accuracy", 3), _with_ci(m, "mean_reward_usd", 5), _with_ci(m, "sharpe", 2),
                     _fmt(m.get("max_drawdown"), 3), _fmt(m.get("hit_rate"), 3), _fmt(m.get("turnover"), 3),
                     _fmt(m.get("valid_rate"), 3), "yes" if m.get("collapsed") else "no",
                     _fmt(g.get("unsupported_rate"), 3), _fmt(g.get("agreement_rate"), 3)])
    return rows


def write_report(run_dir: str | Path, data: ReportInput) -> Path:
    """Write report.md and its PNGs into run_dir; returns the markdown path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "equity.png": equity_figure(data.results),
        "training_reward.png": training_figure(data.training_rewards, data.results, data.candidate),
        "actions.png": actions_figure(data.results, "first_ranked_fractions" if data.mode == "listwise" else "action_fractions"),
    }
    if data.teacher_weights:
        figures["teacher_weights.png"] = teacher_weights_figure(data.teacher_weights)
    for name, fig in figures.items():
        fig.savefig(run_dir / name, dpi=100)
        plt.close(fig)
    lines = [
        f"# {data.title}",
        "",
        f"- candidate: `{data.candidate}`",
        f"- window: {data.window[0]} .. {data.window[1]} ({data.mode}, {data.n_states} states, reward spec `{data.reward_spec}`)",
    ]
    if data.split_note:
        lines.append(f"- walk-forward split: {data.split_note}")
    if data.anonymization_note:
        lines.append(f"- anonymization: {data.anonymization_note}")
    if data.contamination_note:
        lines.append(f"- contamination: {data.contamination_note}")
    if data.gate_note:
        lines.append(f"- promotion gate: {data.gate_note}")
    about = ("Intervals: 95 % circular block bootstrap over decision dates. p-values: one-sided t-test over decision "
             "dates (one value per date: the decisions of a date are one cluster).")
    if data.mode == "listwise":
        about += (" Listwise: accuracy is the share of a basket's pairs ordered like their realized returns (ties half; "
                  "chance 0.5), top-1 hit the first-ranked stock being the best (chance 1/K), Spearman the mean over "
                  "dates of each date's mean rank correlation (chance 0); reward_usd is what the dollar-neutral book "
                  f"of the spec's listwise weighting earned (`{data.reward_spec}`). An invalid ranking scores 0 on each.")
    columns = table_columns(data.mode)
    lines += ["", "## Metrics", "", about, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(data.results, data.mode)]
    tested = [f"{r.subject} p = {r.metrics['accuracy_p_value_by_date']:.3g}" for r in data.results
              if r.metrics.get("accuracy_p_value_by_date") is not None and not r.subject.startswith("baseline:")]
    if tested:
        lines += ["", "Accuracy above a coin's 0.5, clustered by date: " + "; ".join(tested) + "."]
    lines += ["", "## Plots", "",
              "![Cumulative reward vs baselines](equity.png)", "",
              "![Reward per training iteration](training_reward.png)", "",
              "![Action distribution](actions.png)", ""]
    if data.teacher_weights:
        lines += ["The candidate trained on groups its teachers sampled; their weights per date "
                  "(sql/evaluate/teacher_weights.sql, over the lineage's groups):", "",
                  "![Teacher weights over time](teacher_weights.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
