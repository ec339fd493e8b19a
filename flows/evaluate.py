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
    """Evaluate (and gate) under the store's writer slot; returns the run id, report path and metric rows."""
    from hitchhiker import db, evaluate

    cfg = EvalConfig(**config)
    with store_slot():
        con = db.connect(db_path)
        try:
            if gate:
                run, decision = evaluate.promotion_gate(con, checkpoint, start, end, cfg)
                verdict = decision.reason
            else:
                run, verdict = evaluate.evaluate(con, checkpoint, start, end, cfg), None
        finally:
            con.close()
    return {"run_id": run.run_id, "candidate": run.candidate, "report_path": str(run.report_path),
            "rows": [dict(zip(report.TABLE_COLUMNS, row)) for row in report.table_rows(run.results)], "gate": verdict}


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


@flow(name="evaluate")
def evaluate_flow(checkpoint: str, start: str, end: str, db: str | None = None, mode: str = "pairwise",
                  style: str | None = None, gate: bool = False, gate_margin: float = 0.0, n_boot: int = 2000,
                  reports_dir: str | None = None) -> dict:
    """Evaluate `checkpoint` ('base' for the untrained model) on start..end; with gate=True, promote if it wins."""
    config = dict(mode=mode, style=style, gate_margin=gate_margin, n_boot=n_boot, reports_dir=reports_dir)
    result = run_evaluation(db, checkpoint, start, end, config, gate)
    attach_artifacts(result)
    get_run_logger().info("evaluation %s: report %s%s", result["run_id"][:12], result["report_path"],
                          f"; gate: {result['gate']}" if result["gate"] else "")
    return {k: result[k] for k in ("run_id", "report_path", "gate")}
