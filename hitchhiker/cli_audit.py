"""`hitchhiker audit`: the look-ahead audit of a checkpoint on an evaluation window (hitchhiker/audit.py).

Exit code 0 when the audit passes (not flagged, conclusive, window clean or --allow-contaminated), 1 when it does not
(flagged by a prompt test, inconclusive, or a contaminated window), 2 on errors (as every command).
"""
from __future__ import annotations


def add_audit(sub, parent) -> None:
    p = sub.add_parser("audit", parents=[parent], help="look-ahead audit: named vs anonymized and date-shifted prompts, "
                       "knowledge and training cutoffs")
    p.add_argument("--checkpoint", required=True, help="checkpoint id, or 'base' for the untrained model")
    p.add_argument("--start", required=True, help="first decision date (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last decision date (YYYY-MM-DD)")
    p.add_argument("--mode", default="pairwise", choices=["pairwise", "elementwise"])
    p.add_argument("--style", default=None, choices=["full", "trend"], help="only states of this rendering")
    p.add_argument("--model", default=None, help="base model id or path (default: the checkpoint's own base)")
    p.add_argument("--date-shift-days", type=int, default=3640,
                   help="days every date in the prompt is moved by (default 3640 = 520 weeks: weekdays stay weekdays)")
    p.add_argument("--knowledge-cutoff", default=None, help="the base model's knowledge cutoff (YYYY-MM-DD), for a "
                   "model whose card states none (see hitchhiker.cutoffs.KNOWLEDGE_CUTOFFS)")
    p.add_argument("--allow-contaminated", action="store_true",
                   help="a window before a cutoff is reported but does not fail the audit")
    p.add_argument("--seed", type=int, default=0, help="the seed the window's pairwise states were built with")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args) -> int:
    from hitchhiker import audit, db
    from hitchhiker.states import StatesConfig

    config = audit.AuditConfig(mode=args.mode, style=args.style, model=args.model, date_shift_days=args.date_shift_days,
                               knowledge_cutoff=args.knowledge_cutoff, allow_contaminated=args.allow_contaminated,
                               n_boot=args.n_boot, states=StatesConfig(seed=args.seed))
    con = db.connect(args.db, read_only=True)
    try:
        result = audit.run_audit(con, args.checkpoint, args.start, args.end, config)
    finally:
        con.close()
    head = ["test", "metric", "revealing", "hiding", "difference [95% CI]", "p", "dates", "significant"]
    rows = [head] + [[audit.TEST_LABELS[t.perturbation], t.metric, f"{t.revealing:.4f}", f"{t.hiding:.4f}",
                      f"{t.difference:+.4f} [{t.ci[0]:+.4f}, {t.ci[1]:+.4f}]", f"{t.p_value:.3g}", str(t.n_dates),
                      "yes" if t.significant else "inconclusive" if t.inconclusive else "no"] for t in result.tests]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    print(f"{result.candidate}: {result.window[0]} .. {result.window[1]}, {result.n_states} anonymized {args.mode} states")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"contamination: {result.contamination or 'none found'}")
    print(f"verdict: {result.verdict}")
    print(f"report: {result.report_path}")
    return 0 if result.passed else 1

