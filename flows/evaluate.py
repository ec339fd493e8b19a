"""Flow `evaluate`: score a checkpoint (and the baselines, on the same states) over a window, optionally run the
promotion gate, and attach the metrics table and the report as Prefect artifacts. The work is hitchhiker.evaluate."""
from __future__ import annotations

import base64
import re
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.slots import store_slot
from hitchhiker import report
from hitchhiker.evaluate import EvalConfig


@task
def run_evaluation(db_path: str | None, checkpoint: str, start: str, end: str, config: dict, gate: bool) -> dict:
    """Evaluate (and, with gate, reach the gate's verdict) under the store's writer slot; returns the run id, report
    path, metric rows and the verdict, not yet decided in the store (`record_promotion` does that)."""
    from dataclasses import asdict

    from hitchhiker import db, evaluate
    from hitchhiker.gate import gate_verdict

    cfg = EvalConfig(**config)
    with store_slot():
        con = db.connect(db_path)
        try:
            if gate:
                run, decision = gate_verdict(con, checkpoint, start, end, cfg)
                verdict = asdict(decision)
            else:
                run, verdict = evaluate.evaluate(con, checkpoint, start, end, cfg), None
        finally:
            con.close()
    return {"run_id": run.run_id, "candidate": run.candidate, "report_path": str(run.report_path),
            "rows": [dict(zip(report.TABLE_COLUMNS, row)) for row in report.table_rows(run.results)], "gate": verdict}


@task
def record_promotion(db_path: str | None, verdict: dict) -> bool:
    """Log the gate's verdict in `promotions` (once per candidate and evaluation run); after the report is published,
    so a decision never exists without its report."""
    from hitchhiker import db
    from hitchhiker.gate import GateDecision, record_decision

    decision = GateDecision(**(verdict | {"difference_ci": tuple(verdict["difference_ci"])}))
    with store_slot():
        con = db.connect(db_path)
        try:
            logged = record_decision(con, decision)
        finally:
            con.close()
    if not logged:
        get_run_logger().warning("gate: the decision on %s (evaluation %s) was not logged again: it already was, or the "
                                 "champion changed since the verdict", decision.candidate, decision.run_id[:12])
    return logged


@task
def attach_artifacts(result: dict) -> str:
    """A table of every subject's metrics and the markdown report with its PNGs."""
    key = f"evaluation-{result['run_id'][:12]}"
    create_table_artifact(table=result["rows"], key=key, description=f"Evaluation of {result['candidate']}")
    folder = Path(result["report_path"]).parent
    # The UI cannot read the run folder: the plots travel inside the artifact as data URIs (~150 kB in all).
    text = re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: "](data:image/png;base64,"
                  + base64.b64encode((folder / m.group(1)).read_bytes()).decode() + ")",
                  Path(result["report_path"]).read_text())
    create_markdown_artifact(markdown=text + f"\n\nRun folder: `{folder}`\n", key=f"{key}-report",
                             description=f"Report of {result['candidate']}")
    return key


@task
def publish_report(report_path: str, reports_url: str) -> str:
    """Copy the report's folder to <storage>/reports/<run> (committed by its manifest); returns its URL."""
    from hitchhiker import faults, storage

    folder = Path(report_path).parent
    url = storage.join(reports_url, folder.name)
    faults.point("report.before-commit")
    storage.commit_dir(folder, url, {"report": Path(report_path).name})
    faults.point("report.after-commit")
    return url


@flow(name="evaluate")
def evaluate_flow(checkpoint: str, start: str, end: str, db: str | None = None, mode: str = "pairwise",
                  style: str | None = None, gate: bool = False, gate_margin: float = 0.0, n_boot: int = 2000,
                  reports_dir: str | None = None, storage: str | None = None, model: str | None = None,
                  knowledge_cutoff: str | None = None, allow_contaminated: bool = False) -> dict:
    """Evaluate `checkpoint` ('base' for the untrained model) on start..end; with gate=True, promote if it wins.
    storage: the report folder goes to <storage>/reports (a folder URL: written there; object storage: written
    beside the store, then published there). model: the base model (hub id or path; None: the default small model).
    knowledge_cutoff: that model's, where hitchhiker.cutoffs has none; the gate refuses a window on or before it
    (or any window while it is unknown) unless allow_contaminated."""
    from hitchhiker import storage as files

    url = files.storage_url(storage)
    if reports_dir is None and url is not None and files.is_local(url):
        reports_dir = files.location(db, url, "reports")
    config = dict(mode=mode, style=style, gate_margin=gate_margin, n_boot=n_boot, reports_dir=reports_dir, model=model,
                  knowledge_cutoff=knowledge_cutoff, allow_contaminated=allow_contaminated)
    result = run_evaluation(db, checkpoint, start, end, config, gate)
    attach_artifacts(result)
    published = None
    if url is not None and not files.is_local(url):
        published = publish_report(result["report_path"], files.location(db, url, "reports"))
    if gate:
        record_promotion(db, result["gate"])
    verdict = result["gate"]["reason"] if gate else None
    get_run_logger().info("evaluation %s: report %s%s%s", result["run_id"][:12], result["report_path"],
                          f" (published to {published})" if published else "", f"; gate: {verdict}" if gate else "")
    return {k: result[k] for k in ("run_id", "report_path")} | {"gate": verdict, "report_url": published}
