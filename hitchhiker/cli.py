"""The `hitchhiker` command line: thin wrappers over the library, one sub-command per stage.

Library imports happen inside each handler so that `hitchhiker --help` stays fast (torch is slow to import).
Every sub-command takes `--db PATH` (default $HITCHHIKER_DB or ./hitchhiker.duckdb) and `--storage URL` (default
$HITCHHIKER_STORAGE, else the folders beside the database).
"""
from __future__ import annotations

import argparse
import os
import sys

from hitchhiker import cli_audit, cli_eval, cli_sql
from hitchhiker.db import StoreError


def _db_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", default=None, help="DuckDB file (default: $HITCHHIKER_DB or ./hitchhiker.duckdb)")
    p.add_argument("--storage", default=None, help="where the replay, checkpoints, batches and reports live: a folder or "
                   "fsspec URL such as s3://bucket/prefix (default: $HITCHHIKER_STORAGE, else folders beside the db)")
    return p


def _location(args, name: str) -> str:
    """Where `name` (replay, checkpoints, ...) lives for this command's --db and --storage."""
    from hitchhiker import storage

    return storage.location(args.db, args.storage, name)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# --- ingest ----------------------------------------------------------------------------------------------

def _add_ingest(sub, parent) -> None:
    p = sub.add_parser("ingest", help="store prices or news (upsert: re-running stores nothing twice)")
    kinds = p.add_subparsers(dest="kind", required=True)
    pp = kinds.add_parser("prices", parents=[parent], help="daily prices from Yahoo or from CSV files")
    src = pp.add_mutually_exclusive_group(required=True)
    src.add_argument("--tickers", type=_csv_list, help="comma-separated symbols to download from Yahoo")
    src.add_argument("--csv", help="CSV file, directory or glob (sp500_5yr or ticker,date,...,adj_close,volume)")
    pp.add_argument("--start", help="with --tickers: first date (YYYY-MM-DD)")
    pp.add_argument("--end", help="with --tickers: end date, exclusive (default: today)")
    pp.set_defaults(func=_cmd_ingest_prices)
    pn = kinds.add_parser("news", parents=[parent], help="headlines from RSS/Atom feeds or a headline CSV")
    src = pn.add_mutually_exclusive_group(required=True)
    src.add_argument("--feed", action="append", help="feed URL or file (repeat for several)")
    src.add_argument("--csv", help="headline CSV (Benzinga ',title,date,stock' or BBC 'title,pubDate,guid,...')")
    pn.add_argument("--ticker", help="with --feed: the ticker these feeds are about (default: from a Yahoo "
                                     "feed's s= parameter, else market-wide)")
    pn.add_argument("--feed-tz", metavar="ZONE", help="with --feed: the IANA time zone (e.g. America/New_York) to read "
                    "the feeds' dates that have no offset in; without it such entries are rejected")
    pn.set_defaults(func=_cmd_ingest_news)
    names = kinds.add_parser("names", parents=[parent], help="company names for anonymization, from Yahoo or a file")
    src = names.add_mutually_exclusive_group(required=True)
    src.add_argument("--tickers", type=_csv_list, help="comma-separated symbols whose names to fetch from Yahoo")
    src.add_argument("--missing", action="store_true", help="fetch from Yahoo every stored ticker that has no name")
    src.add_argument("--csv", help="'ticker,name[,alias...]' CSV, or SEC's company_tickers.json")
    names.set_defaults(func=_cmd_ingest_names)


def _print_report(report) -> None:
    print(report.summary())
    for problem in report.problems:
        print(f"  rejected: {problem}")
    for key, why in sorted(report.failed.items()):
        print(f"  failed: {key}: {why}")


def _cmd_ingest_prices(args) -> int:
    from hitchhiker import db, prices

    if args.tickers is not None and not args.start:
        raise ValueError("--tickers needs --start (YYYY-MM-DD)")
    if args.tickers is not None:
        import datetime as dt

        end = args.end or (dt.date.today() + dt.timedelta(days=1)).isoformat()
        # Download (retries and backoff included) before opening the store: its lock is held only for the write.
        bars, failed = prices.download_yfinance(args.tickers, args.start, end)
    con = db.connect(args.db)
    try:
        if args.csv:
            report = prices.ingest_csv(con, args.csv)
        else:
            report = prices.ingest_bars(con, bars)
            report.failed = failed
        total = con.execute("SELECT count(*), count(DISTINCT ticker) FROM prices").fetchone()
    finally:
        con.close()
    _print_report(report)
    print(f"prices table: {total[0]} rows, {total[1]} tickers")
    return 1 if report.failed and not (report.inserted or report.updated or report.unchanged) else 0


def _cmd_ingest_news(args) -> int:
    from hitchhiker import db, news

    if args.csv and args.feed_tz:
        raise ValueError("--feed-tz applies to --feed only: a headline CSV's dates must carry their offset")
    con = db.connect(args.db)
    try:
        if args.csv:
            report = news.ingest_csv(con, args.csv)
        else:
            ticker_map = {f: args.ticker for f in args.feed} if args.ticker else None
            feed_tz = {f: args.feed_tz for f in args.feed} if args.feed_tz else None
            report = news.ingest_feeds(con, args.feed, ticker_map=ticker_map, feed_tz=feed_tz)
        total = con.execute("SELECT count(*), count(DISTINCT ticker) FROM news").fetchone()
    finally:
        con.close()
    _print_report(report)
    print(f"news table: {total[0]} items, {total[1]} tickers")
    return 1 if report.failed and len(report.failed) == len(args.feed or []) else 0


def _cmd_ingest_names(args) -> int:
    from hitchhiker import db, names

    con = db.connect(args.db)
    try:
        failed = {}
        if args.csv:
            added = names.ingest_file(con, args.csv)
        else:
            tickers = args.tickers if args.tickers is not None else names.missing(con)
            added, failed = names.ingest_yahoo(con, tickers) if tickers else (0, {})
        still = names.missing(con)
        total = con.execute("SELECT count(*), count(DISTINCT ticker) FROM company_names").fetchone()
    finally:
        con.close()
    print(f"company names: {added} added; {total[0]} names of {total[1]} tickers stored")
    for ticker, why in sorted(failed.items()):
        print(f"  failed: {ticker}: {why}")
    if still:
        print(f"  no name yet for {len(still)} stored tickers ({', '.join(still[:20])}{', ...' if len(still) > 20 else ''}): "
              f"their headlines cannot be fully anonymized")
    return 1 if failed and not added else 0


# --- states ----------------------------------------------------------------------------------------------

def _add_states(sub, parent) -> None:
    p = sub.add_parser("states", help="point-in-time states (prompts) per decision date")
    verbs = p.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("build", parents=[parent], help="build the states of a date or a date range (idempotent)")
    when = b.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="one decision date (a trading day in prices), YYYY-MM-DD")
    when.add_argument("--start", help="first date of a range (with --end)")
    b.add_argument("--end", help="last date of the range, inclusive")
    b.add_argument("--mode", required=True, choices=["pairwise", "elementwise", "listwise"])
    b.add_argument("--tickers", type=_csv_list, help="comma-separated universe (default: every ticker in prices)")
    b.add_argument("--style", default="full", choices=["full", "trend"],
                   help="full: returns, volumes, summary, headlines; trend: one trend word per stock (tiny models)")
    b.add_argument("--action-format", choices=["choice", "proportion", "discrete", "numeric", "ranking"],
                   help="pairwise: choice|proportion; elementwise: discrete|numeric (default: the first)")
    # None: the StatesConfig default (one place for defaults)
    b.add_argument("--history-days", type=int, help="daily rows of price history (default 10)")
    b.add_argument("--trend-days", type=int, help="the trend word's look-back (default 5)")
    b.add_argument("--max-headlines", type=int, help="per stock, newest first (default 5)")
    b.add_argument("--horizon-days", type=int, help="the prompt asks about the next N trading days (default 1)")
    b.add_argument("--max-pairs-per-date", type=int, help="pairwise: pairs drawn per date (default 20)")
    b.add_argument("--list-size", type=int, help="listwise: stocks per basket, 3 to 8 (default 4)")
    b.add_argument("--max-lists-per-date", type=int, help="listwise: baskets drawn per date (default 20)")
    b.add_argument("--max-prompt-tokens", type=int, help="token budget of the chat-templated prompt (default 1024)")
    b.add_argument("--seed", type=int, help="pair sampling and A/B order (default 0)")
    b.add_argument("--cutoff", help="decision time on T, exchange local time, America/New_York (default 16:00)")
    b.add_argument("--no-anonymize", action="store_true", help="show real tickers (not for training)")
    b.add_argument("--tokenizer", help="tokenizer name or path counting prompt tokens (default: the default small model's)")
    b.set_defaults(func=_cmd_states_build)


def _cmd_states_build(args) -> int:
    from hitchhiker import db, states
    from hitchhiker.policy import load_tokenizer

    if args.start and not args.end:
        raise ValueError("--start needs --end (YYYY-MM-DD)")
    given = {k: getattr(args, k) for k in (
        "action_format", "history_days", "trend_days", "max_headlines", "horizon_days", "max_pairs_per_date",
        "list_size", "max_lists_per_date", "max_prompt_tokens", "seed", "cutoff", "tokenizer") if getattr(args, k) is not None}
    config = states.StatesConfig(mode=args.mode, style=args.style, anonymize=not args.no_anonymize, **given)
    tokenizer = load_tokenizer(config.tokenizer)  # before the store is opened: the default model may be built first
    con = db.connect(args.db)
    try:
        first, last = (args.date, args.date) if args.date else (args.start, args.end)
        days = states.trading_days(con, first, last)
        if not days:
            raise ValueError(f"no trading day between {first} and {last} in the prices table of {db.db_path(args.db)}")
        before = con.execute("SELECT count(*) FROM states").fetchone()[0]
        ids = states.build_states(con, config, days, args.tickers, tokenizer=tokenizer)
        new = con.execute("SELECT count(*) FROM states").fetchone()[0] - before
        tokens = con.execute("SELECT max(prompt_tokens) FROM states WHERE list_contains(?, state_id)", [ids]).fetchone()[0]
    finally:
        con.close()
    print(f"{len(ids)} {args.mode} states ({new} new) for {len(days)} trading days {days[0]}..{days[-1]}, "
          f"style {args.style}; longest prompt {tokens or 0} tokens (budget {config.max_prompt_tokens})")
    return 0


# --- rollouts --------------------------------------------------------------------------------------------

def _add_rollouts(sub, parent) -> None:
    p = sub.add_parser("rollouts", help="sample groups of completions into the replay buffer")
    verbs = p.add_subparsers(dest="verb", required=True)
    g = verbs.add_parser("generate", parents=[parent], help="a group for every state of the dates with none yet "
                                                            "for the policy (idempotent)")
    when = g.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="one decision date, YYYY-MM-DD")
    when.add_argument("--start", help="first date of a range (with --end)")
    g.add_argument("--end", help="last date of the range, inclusive")
    g.add_argument("--group-size", type=int, default=8, help="completions per state (default 8)")
    g.add_argument("--model", help="base model: hub id or local folder (default: the default small model)")
    g.add_argument("--checkpoint", help="checkpoint folder (or a checkpoint_id of the checkpoints table) on top")
    g.add_argument("--mode", choices=["pairwise", "elementwise", "listwise"], help="only states of this mode (default: all)")
    g.add_argument("--replay-root", help="replay Parquet root (default: <db stem>_replay/ beside the db)")
    g.add_argument("--max-states", type=int, help="sample at most this many new groups in this run")
    g.add_argument("--max-new-tokens", type=int, help="completion length limit (default 48)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="sampler (default hf; vllm: README \"vLLM\")")
    g.set_defaults(func=_cmd_rollouts_generate)


def _cmd_rollouts_generate(args) -> int:
    from tqdm import tqdm

    from hitchhiker.policy import PolicyConfig
    from hitchhiker.rollouts import SamplingConfig, generate_dates

    if args.start and not args.end:
        raise ValueError("--start needs --end (YYYY-MM-DD)")
    first, last = (args.date, args.date) if args.date else (args.start, args.end)
    config = SamplingConfig(group_size=args.group_size, seed=args.seed, backend=args.backend,
                            **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
    with tqdm(unit="group", desc="sampling") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        s = generate_dates(args.db, first, last, PolicyConfig(model=args.model, checkpoint=args.checkpoint), config,
                           args.replay_root or _location(args, "replay"), mode=args.mode, max_states=args.max_states, progress=progress)
    valid = "-" if s["valid_rate"] is None else f"{s['valid_rate']:.3f}"
    print(f"{s['states']} states {first}..{last}: {s['groups_written']} groups written, {s['groups_skipped']} already "
          f"there, {s['states_left']} left for a later run; {s['rollouts']} rollouts by {s['policy_version']}, valid "
          f"rate {valid}, {s['tokens_per_s']:.0f} completion tokens/s -> {s['root']}")
    return 0


# --- server / prefect-setup ------------------------------------------------------------------------------

def _add_server(sub, parent) -> None:
    p = sub.add_parser("server", help="start the Prefect server and UI (127.0.0.1 by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(func=_cmd_server)
    p = sub.add_parser("prefect-setup", help="create the cpu/gpu work pools and the DuckDB writer limit (idempotent)")
    p.set_defaults(func=_cmd_prefect_setup)


def _cmd_server(args) -> int:
    import os

    env = dict(os.environ)
    # The UI asks this URL for the API; it must match the port the server really listens on.
    env.setdefault("PREFECT_UI_API_URL", f"http://{args.host}:{args.port}/api")
    print(f"Prefect UI: http://{args.host}:{args.port}  (API {env['PREFECT_UI_API_URL']})", flush=True)
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    os.execve(prefect, [prefect, "server", "start", "--host", args.host, "--port", str(args.port)], env)
    return 0  # not reached


def _cmd_prefect_setup(args) -> int:
    from flows.setup import setup

    print("\n".join(setup()))
    return 0


# --- train / loop ----------------------------------------------------------------------------------------

def _add_train(sub, parent) -> None:
    p = sub.add_parser("train", parents=[parent], help="train a checkpoint on matured replay groups (GRPO, DPO or ORPO)")
    p.add_argument("--algorithm", default="grpo", choices=["grpo", "dpo", "orpo"])
    p.add_argument("--parent", default=None, help="checkpoint id to continue (default: the base model)")
    p.add_argument("--model", default=None, help="base model id or path (default: the default small model)")
    p.add_argument("--finetune", default="lora", choices=["lora", "full"])
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the algorithm's)")
    p.add_argument("--policy-version", default=None, help="GRPO: only groups sampled by this policy_version")
    p.add_argument("--groups-per-step", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=None, help="GRPO: groups per forward pass (gradient accumulation)")
    p.add_argument("--loss-type", default="dr_grpo", choices=["grpo", "bnpo", "dr_grpo", "dapo"])
    p.add_argument("--beta", type=float, default=None, help="KL weight (GRPO default 0, DPO 0.1); ORPO: odds-ratio weight lambda (0.1)")
    p.add_argument("--margin-usd", type=float, default=0.0, help="DPO/ORPO: minimum reward difference of a pair")
    p.add_argument("--save-every", type=int, default=0, help="GRPO: checkpoint every N optimizer steps")
    p.add_argument("--run-dir", default=None, help="default: <db stem>_checkpoints/<algorithm>-<time>; an existing one resumes")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    import time

    from hitchhiker import batches, db, storage
    from hitchhiker.train.config import PREFERENCE_CONFIGS, GRPOConfig

    con = db.connect(args.db)
    run_dir = args.run_dir or storage.join(_location(args, "checkpoints"), f"{args.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        from hitchhiker.replay import ensure_view
        from hitchhiker.rewards import ensure_advantages_view

        ensure_view(con, _location(args, "replay"))
        ensure_advantages_view(con)
        if args.algorithm == "grpo":
            from hitchhiker.batches import plan_groups, train_grpo

            cfg = GRPOConfig(finetune=args.finetune, groups_per_step=args.groups_per_step,
                             groups_per_micro_batch=args.micro_batch or args.groups_per_step, loss_type=args.loss_type, save_every_steps=args.save_every,
                             **({"learning_rate": args.lr} if args.lr else {}), **({"beta": args.beta} if args.beta is not None else {}))
            groups = None
            if args.policy_version and batches.run_batch(run_dir, cfg) is None:
                groups = plan_groups(con, cfg, args.parent, policy_version=args.policy_version)
            res = train_grpo(con, cfg, run_dir, groups=groups, parent_id=args.parent, base_model=args.model,
                             on_step_end=lambda step, m: print(f"step {step}: loss {m['loss']:.4f} reward_mean {m['reward_mean']:.4f} "
                                                               f"valid {m['valid_rate']:.2f}", flush=True))
        else:
            from hitchhiker.batches import train_pairs

            cfg = PREFERENCE_CONFIGS[args.algorithm](finetune=args.finetune, margin_usd=args.margin_usd,
                                                     **({"learning_rate": args.lr} if args.lr else {}), **({"beta": args.beta} if args.beta is not None else {}))
            res = train_pairs(con, cfg, run_dir, parent_id=args.parent, base_model=args.model)
    finally:
        con.close()
    print(f"checkpoint {res.checkpoint_id}: {res.steps} steps on {len(res.groups_used)} groups -> {res.path}")
    return 0


def _add_loop(sub, parent) -> None:
    p = sub.add_parser("loop", parents=[parent], help="states -> rollouts -> rewards -> GRPO -> eval, N iterations")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--synthetic", action="store_true", help="write the synthetic learnable market and loop on it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-start", default=None)
    p.add_argument("--train-end", default=None)
    p.add_argument("--eval-start", default=None)
    p.add_argument("--eval-end", default=None)
    p.add_argument("--tickers", default=None, help="comma-separated universe (default: every ticker in prices)")
    p.add_argument("--model", default=None, help="base model id or path (default: the default small model)")
    p.add_argument("--finetune", default="full", choices=["lora", "full"])
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="sampler (default hf; vllm: README \"vLLM\")")
    p.add_argument("--style", default="trend", choices=["full", "trend"])
    p.add_argument("--mode", default="pairwise", choices=["pairwise", "listwise"],
                   help="listwise: rank baskets (with --synthetic: the market of triples, K = 3); accuracy = pairs ordered")
    p.add_argument("--list-size", type=int, default=4, help="listwise without --synthetic: stocks per basket (3-8)")
    p.add_argument("--teacher", action="append", default=None, metavar="NAME=SOURCE",
                   help="train on groups sampled by teachers, split by their reward-driven weights (repeat it; SOURCE: "
                        "a checkpoint id, a folder or 'base')")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--out", default=None, help="run folder (default: <db stem>_loop/)")
    p.add_argument("--policy", default="llm", choices=["llm", "beta-head"],
                   help="llm: GRPO on the language model; beta-head: the Beta(alpha, beta) position head (elementwise)")
    p.add_argument("--embedding-model", default=None,
                   help="beta-head: also read this causal LM's prompt embedding ('default' = the default small model)")
    p.set_defaults(func=_cmd_loop)


def _cmd_loop(args) -> int:
    import dataclasses
    from pathlib import Path

    from hitchhiker import db
    from hitchhiker.loop import loop_config, run_loop

    if args.policy == "beta-head":
        return _cmd_loop_beta(args)
    con = db.connect(args.db)
    try:
        cfg = loop_config(con, synthetic=args.synthetic, mode=args.mode, list_size=args.list_size, seed=args.seed,
                          train_start=args.train_start, train_end=args.train_end, eval_start=args.eval_start,
                          eval_end=args.eval_end, tickers=_csv_list(args.tickers) if args.tickers else None,
                          iterations=args.iterations, model=args.model, eval_every=args.eval_every,
                          teachers=_teachers(args.teacher))
        cfg.grpo.finetune = args.finetune
        cfg.sampling = dataclasses.replace(cfg.sampling, backend=args.backend)
        cfg.states = dataclasses.replace(cfg.states, style=args.style)
        out = Path(args.out) if args.out else db.beside(args.db, "loop")
        res = run_loop(con, cfg, out, _location(args, "replay"), on_iteration=lambda r: print(
            f"iteration {r['iteration']:>3}  {r['seconds']:7.1f}s  held-out accuracy {r['accuracy']:.3f} "
            f"(n={r['n']}, p={r['p_value']:.2g}, p by date={r['p_value_by_date']:.2g} over {r['n_dates']} dates, "
            f"unpriced {r['n_unpriced']})  valid {r['valid_rate']:.3f}", flush=True))
    finally:
        con.close()
    print(f"last checkpoint: {res.checkpoint_id}; TensorBoard logs: {Path(res.out_dir) / 'tensorboard'}")
    return 0


def _teachers(given: list[str] | None) -> dict[str, str] | None:
    if not given:
        return None
    bad = [t for t in given if "=" not in t or not t.split("=", 1)[0] or not t.split("=", 1)[1]]
    if bad:
        raise ValueError(f"--teacher {bad[0]!r}: give NAME=SOURCE (SOURCE: a checkpoint id, a folder or 'base')")
    return dict(t.split("=", 1) for t in given)


def _cmd_loop_beta(args) -> int:
    from pathlib import Path

    from hitchhiker import db
    from hitchhiker.beta import loop as beta_loop
    from hitchhiker.states import trading_days
    from hitchhiker.synthetic import SyntheticMarket

    con = db.connect(args.db)
    try:
        common = dict(iterations=args.iterations, seed=args.seed, embedding_model=args.embedding_model)
        if args.synthetic:
            cfg = beta_loop.synthetic_setup(con, SyntheticMarket(seed=args.seed), **common)
        else:
            if not all([args.train_start, args.train_end, args.eval_start, args.eval_end]):
                raise ValueError("give --train-start/--train-end/--eval-start/--eval-end, or --synthetic")
            cfg = beta_loop.BetaLoopConfig(train_dates=trading_days(con, args.train_start, args.train_end),
                                           eval_dates=trading_days(con, args.eval_start, args.eval_end),
                                           tickers=_csv_list(args.tickers) if args.tickers else None, **common)
        out = Path(args.out) if args.out else db.beside(args.db, "loop")
        res = beta_loop.run_beta_loop(con, cfg, out, _location(args, "replay"), on_iteration=lambda r: print(
            f"iteration {r['iteration']:>3}  {r['seconds']:7.1f}s  held-out mean reward_usd {r['mean_reward_usd']:+.5f} "
            f"(random {r['random_mean_reward_usd']:+.5f}, n={r['n']})  mean position {r['mean_position']:.3f}", flush=True))
    finally:
        con.close()
    print(f"last checkpoint: {res.checkpoint_id}; evaluation report: {res.report_path}")
    return 0


# --- rewards ---------------------------------------------------------------------------------------------

def _add_rewards(sub, parent) -> None:
    p = sub.add_parser("rewards", help="dollar-normalized rewards of matured rollouts (sql/rewards.sql)")
    rsub = p.add_subparsers(dest="rewards_command", required=True)
    spec = argparse.ArgumentParser(add_help=False)
    spec.add_argument("--horizon-days", type=int, default=1, help="sessions exposed (default 1)")
    spec.add_argument("--entry", choices=["next_open", "decision_close"], default="next_open")
    spec.add_argument("--pairwise", choices=["long_short", "allocation"], default="long_short")
    spec.add_argument("--listwise", choices=["top_bottom", "rank_weighted"], default="top_bottom")
    spec.add_argument("--cost-bps", type=float, default=5.0, help="cost per leg traded, basis points (default 5)")
    spec.add_argument("--risk-lambda", type=float, default=0.0, help="risk penalty lambda*|p|*sigma (default 0)")
    spec.add_argument("--invalid-penalty-usd", type=float, default=0.02, help="reward of an invalid completion is -this")
    spec.add_argument("--max-entry-gap-days", type=int, default=5, help="next_open: enter at most this many calendar "
                      "days after the decision date, else the decision is an error (default 5)")
    spec.add_argument("--judge", default=None, help="label each rollout -1/0/+1 first: 'grounding' or 'lm:<model>'")
    spec.add_argument("--judge-shift-usd", type=float, default=0.0,
                      help="shaped reward = reward_usd + this * label, what the advantages use (default 0)")
    c = rsub.add_parser("compute", parents=[parent, spec], help="reward every matured rollout of the replay buffer")
    c.add_argument("--replay-root", default=None, help="replay Parquet root (default: <db stem>_replay/ beside the db)")
    c.set_defaults(func=_cmd_rewards_compute)
    v = rsub.add_parser("preview", parents=[parent, spec], help="what-if rewards for decisions in a CSV")
    v.add_argument("--actions", required=True, help="CSV: decision_date,mode,ticker_a,ticker_b,action,proportion "
                   "(listwise rows: tickers A|B|C|D, action C>A>D>B)")
    v.add_argument("--out", default=None, help="write the result as CSV here instead of printing it")
    v.add_argument("--history-days", type=int, default=20, help="volatility window of the risk penalty")
    v.set_defaults(func=_cmd_rewards_preview)


def _reward_spec(args):
    from hitchhiker.rewards import RewardSpec

    return RewardSpec(horizon_days=args.horizon_days, entry=args.entry, pairwise=args.pairwise, cost_bps=args.cost_bps,
                      risk_lambda=args.risk_lambda, invalid_penalty_usd=args.invalid_penalty_usd,
                      max_entry_gap_days=args.max_entry_gap_days, listwise=args.listwise, judge=args.judge,
                      judge_shift_usd=args.judge_shift_usd)


def _cmd_rewards_compute(args) -> int:
    from hitchhiker import db, rewards

    spec = _reward_spec(args)
    con = db.connect(args.db)
    try:
        counts = rewards.compute_rewards(con, spec, args.replay_root or _location(args, "replay"))
    finally:
        con.close()
    print(f"reward_spec {counts['reward_spec']}: {counts['inserted']} rewarded, {counts['waiting']} waiting for "
          f"their exit price, {counts['unpriceable']} that can never be priced, {counts['total']} in all "
          f"({counts['dates_read']} decision date(s) read)")
    for state_id, why in counts["unpriceable_states"].items():
        print(f"  not priced: state {state_id}: {why}")
    return 0


def _cmd_rewards_preview(args) -> int:
    from hitchhiker import db, rewards

    spec = _reward_spec(args)
    con = db.connect(args.db, read_only=True)
    try:
        out = rewards.preview(con, args.actions, spec, history_days=args.history_days)
    finally:
        con.close()
    if args.out:
        out.to_csv(args.out, index=False)
        n = out["status"].value_counts()
        print(f"{len(out)} decisions: {n.get('rewarded', 0)} rewarded, {n.get('not_matured', 0)} not matured, "
              f"{n.get('error', 0)} errors (see the reason column) -> {args.out}")
    else:
        print(out.to_string(index=False))
    return 0


# --- demo ------------------------------------------------------------------------------------------------

def _add_demo(sub, parent) -> None:
    from hitchhiker.demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="the whole loop offline on the shipped data: ingest -> states -> rollouts -> "
                                    "rewards -> GRPO -> evaluation report (a few minutes on a laptop CPU)")
    # Not $HITCHHIKER_DB: the demo deletes its previous store before it starts, so it keeps to its own folder.
    p.add_argument("--out", default=d.out_dir, help=f"the demo's folder (default ./{d.out_dir}); re-running "
                                                    "deletes what the previous demo run wrote there and starts clean")
    p.add_argument("--db", default=None, help="DuckDB file (default: <out>/hitchhiker.duckdb; replay beside it)")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"loop iterations (default {d.iterations})")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    import os
    import time

    # Offline by design (no hub lookups), and the demo prints its own progress lines: no library progress bars.
    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    from hitchhiker.demo import DemoConfig, run_demo, summary

    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    started = time.perf_counter()
    result = run_demo(DemoConfig(out_dir=args.out, db=args.db, iterations=args.iterations),
                      log=lambda line: print(line, flush=True))
    print("\n".join(summary(result)))
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


# --- main ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hitchhiker", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line (also HITCHHIKER_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    parent = _db_parent()
    _add_demo(sub, parent)
    cli_sql.add_sql(sub, parent)
    _add_server(sub, parent)
    _add_ingest(sub, parent)
    _add_states(sub, parent)
    _add_rollouts(sub, parent)
    cli_eval.add_eval(sub, parent)
    cli_audit.add_audit(sub, parent)
    _add_train(sub, parent)
    _add_loop(sub, parent)
    _add_rewards(sub, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (StoreError, ValueError, FileNotFoundError) as e:
        if args.debug or os.environ.get("HITCHHIKER_DEBUG", "0") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
