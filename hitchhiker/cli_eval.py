"""`hitchhiker eval` (and the look-ahead audit): evaluation commands, beside cli.py to keep each file one idea."""
from __future__ import annotations


# --- eval ------------------------------------------------------------------------------------------------

def add_eval(sub, parent) -> None:
    p = sub.add_parser("eval", parents=[parent], help="evaluate a checkpoint against the base model and baselines")
    p.add_argument("--checkpoint", required=True, help="checkpoint id, or 'base' for the untrained model")
    p.add_argument("--start", required=True, help="first decision date (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last decision date (YYYY-MM-DD)")
    p.add_argument("--mode", default="pairwise", choices=["pairwise", "elementwise", "listwise"])
    p.add_argument("--style", default=None, choices=["full", "trend"], help="only states of this rendering")
    p.add_argument("--model", default=None, help="base model id or path (default: the default small model)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--gate", action="store_true", help="run the promotion gate against the current champion")
    p.add_argument("--margin", type=float, default=0.0, help="gate: required lead in mean reward_usd")
    p.add_argument("--knowledge-cutoff", default=None, help="the base model's knowledge cutoff (YYYY-MM-DD), for a "
                   "model whose card states none (see hitchhiker.cutoffs.KNOWLEDGE_CUTOFFS)")
    p.add_argument("--allow-contaminated", action="store_true",
                   help="gate: decide on a window before a cutoff (the report still marks it contaminated)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from hitchhiker import db, evaluate, gate, report

    config = evaluate.EvalConfig(mode=args.mode, style=args.style, model=args.model, n_boot=args.n_boot,
                                 gate_margin=args.margin, knowledge_cutoff=args.knowledge_cutoff,
                                 allow_contaminated=args.allow_contaminated)
    con = db.connect(args.db)
    try:
        if args.gate:
            run, decision = gate.promotion_gate(con, args.checkpoint, args.start, args.end, config)
        else:
            run, decision = evaluate.evaluate(con, args.checkpoint, args.start, args.end, config), None
    finally:
        con.close()
    rows = [report.table_columns(args.mode)] + report.table_rows(run.results, args.mode)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"{run.candidate}: {run.window[0]} .. {run.window[1]}, {run.n_states} {args.mode} states")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if run.contamination:
        print(f"contamination: {run.contamination}")
    if decision is not None:
        print(f"gate: {decision.reason}")
    print(f"report: {run.report_path}")
    return 0
