"""Flows `daily` and `backfill`: the scheduled pipeline, after the US close on trading days.

    ingest prices and news -> the date's states -> groups sampled by the champion (or the base model)
    -> rewards of every rollout that matured -> train on the GPU pool when enough new matured groups exist
    -> evaluate a waiting candidate on out-of-sample days -> promotion gate

Each stage is a subflow of its own module (flows/ingest.py, states.py, rewards.py, train.py, evaluate.py) or a small
task here; only network I/O is retried (downloads and feed fetches, inside the ingest flows). Every stage is
idempotent, so re-running a date changes nothing: prices and news are upserts, states and replay groups are keyed
by content hashes, rewards are an anti-join, training starts only for groups no checkpoint has used, and the gate
decides each candidate once. Writers take the store slot (flows/slots.py), so concurrent runs queue.

Training runs as the `train/train` deployment (gpu work pool) through `run_deployment` with a training batch that
this flow wrote to storage (the store slot is held for seconds, not for the training), waited on with a timeout; a
run that outlives the timeout keeps going, and a later daily run registers and evaluates its checkpoints. With a
`storage` URL (s3://...) the gpu machine needs nothing but the bucket; `sample_deployment` samples there too. The candidate is
gated on the first `eval_days` decision dates (default 20, the gate's minimum) after the exit of every reward it (or
the champion) trained on, once their own rewards have matured: in live use, days after the training.
"""
from __future__ import annotations

import json
from datetime import date as Date, datetime, timedelta
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_names, ingest_news, ingest_prices, unnamed_tickers
from flows.rewards import compute_rewards
from flows.rollouts import generate_rollouts, point_replay_view, snapshot_states
from flows.slots import store_slot
from flows.states import build_states
from flows.train import prepare_training, register_training, train_flow

EXCHANGE_TZ = "America/New_York"
HISTORY_LOOKBACK_DAYS = 45  # calendar days of prices a backfill fetches before its start (states need 11 rows)


def _today() -> str:
    return datetime.now(ZoneInfo(EXCHANGE_TZ)).date().isoformat()


def _day(value: str | None, name: str = "date") -> str:
    """A date parameter as YYYY-MM-DD (None: today in New York); anything else is an error naming it."""
    from hitchhiker.states import as_date

    return _today() if value is None else as_date(value, name).isoformat()


def _daily_run_name() -> str:
    from prefect.runtime import flow_run

    return f"daily-{flow_run.parameters.get('date') or _today()}"


def _backfill_run_name() -> str:
    from prefect.runtime import flow_run

    return f"backfill-{flow_run.parameters.get('start')}-{flow_run.parameters.get('end')}"


# --- stages --------------------------------------------------------------------------------------------------


def _ingest(first: str, last: str, db: str, demo: bool, prices_csv: str | None, tickers: list[str] | None,
            feeds: list[str | dict[str, str]] | None, news_csv: str | None, retry_delay_s: float,
            names_csv: str | None = None) -> dict:
    """Prices, news and company names up to `last`: the shipped demo files, given CSVs/feeds, or Yahoo (online) and
    feeds. Names come from `names_csv` (the demo's shipped list) and, when prices come from Yahoo, from Yahoo for
    tickers still unnamed; a ticker left without a name is logged (its states are marked, the gate refuses them)."""
    from hitchhiker import demo_data

    logger = get_run_logger()
    feeds = list(feeds or [])
    if demo:
        shipped = demo_data.paths()
        prices_csv = prices_csv or str(shipped["prices_dir"])
        feeds += [str(f) for f in shipped["feeds"]]
        names_csv = names_csv or str(shipped["names"])
    if prices_csv:
        prices = ingest_prices(csv=prices_csv, db=db)
    else:  # Yahoo: from a few days before what is stored (or before `first`) to `last`, end exclusive
        end = (Date.fromisoformat(last) + timedelta(days=1)).isoformat()
        start = None if first == last else (Date.fromisoformat(first) - timedelta(days=HISTORY_LOOKBACK_DAYS)).isoformat()
        prices = ingest_prices(tickers=tickers, start=start, end=end, db=db, retry_delay_s=retry_delay_s)
    if feeds or news_csv:
        news = ingest_news(feeds=feeds or None, csv=news_csv, db=db, retry_delay_s=retry_delay_s)
    else:
        logger.info("news: no feeds or headline CSV given; states use the news already stored")
        news = {"inserted": 0, "failed": 0}
    if names_csv or not prices_csv:
        named = ingest_names(tickers=tickers, csv=names_csv, db=db, retry_delay_s=retry_delay_s)
    else:  # offline CSV prices and no names file: nothing to look names up in
        named = {"added": 0, "missing": unnamed_tickers(db, tickers)}
        if named["missing"]:
            logger.warning("no company name for %s: pass names_csv (or run hitchhiker ingest names); their headlines "
                           "cannot be fully anonymized", ", ".join(named["missing"]))
    return {"prices_inserted": prices["inserted"], "prices_updated": prices["updated"], "prices_failed": prices["failed"],
            "news_inserted": news["inserted"], "news_failed": news["failed"], "names_added": named["added"],
            "names_missing": len(named["missing"])}


@task
def check_day(db_path: str, day: str) -> dict:
    """Whether `day` has prices (a trading day with data; else why not), and the champion that samples it."""
    from hitchhiker import db
    from hitchhiker.gate import champion

    with store_slot():
        con = db.connect(db_path)
        try:
            ((on_day, latest),) = con.execute(
                "SELECT count(*) FILTER (WHERE date = ?::DATE), max(date) FROM prices", [day]).fetchall()
            current = champion(con)
        finally:
            con.close()
    if on_day:
        reason = None
    elif latest is None:
        reason = "no prices stored at all: ingest found nothing (check the tickers, the CSV or the network)"
    elif latest > Date.fromisoformat(day):
        reason = f"{day} is not a trading day: no prices on that date, the market was closed"
    else:
        reason = f"no prices for {day} yet (the latest stored date is {latest}): not a trading day, or data not out yet"
    return {"trading_day": bool(on_day), "reason": reason, "champion": current}


@task
def sampled_already(db_path: str, replay_root: str, day: str, mode: str) -> dict:
    """How many of the day's states exist, and how many of them already have a group (from any policy)."""
    from hitchhiker import db, replay

    with store_slot():
        con = db.connect(db_path)
        try:
            replay.ensure_view(con, replay_root)
            ((states, sampled),) = con.execute(db.sql_text("daily/sampled_states"), {"day": day, "mode": mode}).fetchall()
        finally:
            con.close()
    return {"states": states, "sampled": sampled}


@task
def run_on_pool(deployment: str, parameters: dict, job_variables: dict | None, timeout_s: float,
                idempotency_key: str) -> dict:
    """Start a deployment (training or sampling on the GPU work pool) and wait up to timeout_s; never retried (the
    idempotency key makes a re-run of the daily flow find the same deployment run)."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        return {"status": "skipped", "reason": f"no deployment {deployment!r} on this server "
                                                "(prefect deploy --all --prefect-file deployments/prefect.yaml)"}
    run = run_deployment(deployment, parameters=parameters, job_variables=job_variables or None, timeout=timeout_s,
                         idempotency_key=idempotency_key)
    state = run.state
    out = {"flow_run": run.name, "flow_run_id": str(run.id), "state": state.name if state else None}
    if state is not None and state.is_completed():
        return out | {"status": "completed"}
    if state is not None and state.is_final():
        return out | {"status": "failed", "reason": f"{deployment} run {run.name} ended {state.name}: {state.message}"}
    return out | {"status": "running", "reason": f"{deployment} run {run.name} still {out['state']} after {timeout_s:.0f} s; "
                                                  "a later daily run picks up what it commits"}


@task
def pending_work(db_path: str, replay_root: str, day: str, mode: str, style: str, eval_days: int) -> dict:
    """What training and the gate have to do as of `day`, read in one go: the matured groups no checkpoint has
    trained on (count, dates, a key naming the set), and the oldest checkpoint waiting for the gate whose evaluation
    window is complete (None: none), with notes on those still waiting.

    Reading the gate's candidate before today's training is safe: a checkpoint trained today cannot have matured
    out-of-sample days yet. First, checkpoints that runs committed while no daily run waited are registered."""
    from hitchhiker import db, registry, replay, rewards
    from hitchhiker.evaluate import SplitError, training_cutoff
    from hitchhiker.gate import champion
    from hitchhiker.batches import default_reward_spec

    out = {"candidate": None, "waiting": []}
    with store_slot():
        con = db.connect(db_path)
        try:
            replay.ensure_view(con, replay_root)
            rewards.ensure_calendar(con)  # the reward calendar decides the gate's matured evaluation dates
            out["registered"] = {url: ids for url, ids in registry.register_known_runs(con).items() if ids}
            out["unfinished"] = registry.unfinished_runs(con)
            ((n, first, last, key),) = con.execute(db.sql_text("daily/new_groups"),
                                                   {"reward_spec": default_reward_spec()}).fetchall()
            out |= {"new_groups": n, "first_date": str(first) if first else None,
                    "last_date": str(last) if last else None, "groups_key": key}
            current = champion(con)
            for (cid, _) in con.execute(db.sql_text("daily/candidates")).fetchall():
                try:
                    exits = [training_cutoff(con, c)[1] for c in (cid, current) if c]
                except SplitError as e:
                    out["waiting"].append(f"{cid}: {e}")
                    continue
                after = max((e for e in exits if e is not None), default=Date.min)
                dates = [r[0] for r in con.execute(db.sql_text("daily/eval_dates"), {
                    "mode": mode, "style": style, "after": after, "until": Date.fromisoformat(day), "n": eval_days,
                }).fetchall()]
                if len(dates) >= eval_days:
                    return out | {"candidate": cid, "start": str(dates[0]), "end": str(dates[-1])}
                out["waiting"].append(f"{cid}: {len(dates)} of {eval_days} out-of-sample days after {after} have matured")
        finally:
            con.close()
    return out


@task
def champion_now(db_path: str) -> str | None:
    from hitchhiker import db
    from hitchhiker.gate import champion

    with store_slot():
        con = db.connect(db_path)
        try:
            return champion(con)
        finally:
            con.close()


# --- flows ---------------------------------------------------------------------------------------------------


@flow(name="daily", flow_run_name=_daily_run_name)
def daily(
    date: str | None = None,
    db: str | None = None,
    storage: str | None = None,
    demo: bool = False,
    prices_csv: str | None = None,
    tickers: list[str] | None = None,
    feeds: list[str | dict[str, str]] | None = None,
    news_csv: str | None = None,
    names_csv: str | None = None,
    ingest: bool = True,
    mode: str = "pairwise",
    style: str = "full",
    max_pairs_per_date: int = 20,
    model: str | None = None,
    group_size: int = 8,
    seed: int = 0,
    backend: str = "hf",
    sample_deployment: str | None = None,
    sample_timeout_s: float = 3600,
    train: bool = True,
    min_new_groups: int = 64,
    train_deployment: str | None = "train/train",
    train_config: dict | None = None,
    train_job_variables: dict | None = None,
    train_timeout_s: float = 7200,
    eval_days: int = 20,
    gate_margin: float = 0.0,
    n_boot: int = 2000,
    knowledge_cutoff: str | None = None,
    allow_contaminated: bool = False,
    retry_delay_s: float = 10.0,
) -> dict:
    """One decision date (default: today in New York) through every stage; a closed market or missing data is a
    logged skip. Parameters are documented in deployments/prefect.yaml."""
    from hitchhiker import db as store, storage as files

    logger = get_run_logger()
    day = _day(date)
    if eval_days < 2:
        raise ValueError(f"eval_days must be >= 2 (the gate compares daily results), got {eval_days}")
    from hitchhiker.evaluate import EvalConfig

    if eval_days < EvalConfig.min_gate_dates:  # the gate refuses such a window (logged in `promotions`), never promotes
        logger.warning("eval_days=%d is below the %d decision dates the promotion gate needs: every candidate will be "
                       "evaluated and refused, not promoted", eval_days, EvalConfig.min_gate_dates)
    db = str(store.db_path(db).resolve())  # workers on other machines and subprocesses need the same file
    storage = files.storage_url(storage)
    replay_root = files.location(db, storage, "replay")
    out: dict = {"date": day, "db": db, "storage": storage}
    if ingest:
        out["ingest"] = _ingest(day, day, db, demo, prices_csv, tickers, feeds, news_csv, retry_delay_s, names_csv)
    checked = check_day(db, day)
    if not checked["trading_day"]:
        logger.info("skipping %s: %s", day, checked["reason"])
        out |= {"status": "skipped", "reason": checked["reason"]}
        _summary_artifact(out)
        return out

    built = build_states(decision_date=day, mode=mode, tickers=tickers, style=style, db_path=db, tokenizer=model,
                         max_pairs_per_date=max_pairs_per_date)
    out["states"] = {"states": sum(r["states"] for r in built), "new": sum(r["new"] for r in built)}
    if out["states"]["states"] == 0:
        logger.info("%s: no states (no ticker has enough price history yet); nothing to sample", day)
    before = sampled_already(db, replay_root, day, mode)
    if before["states"] and before["sampled"] == before["states"]:
        # Each state is decided once, by the champion of the day it was first sampled: a re-run after a promotion
        # must not add a second group for the same decision.
        logger.info("%s: all %d states already have a group; nothing to sample", day, before["states"])
        out["rollouts"] = {"groups_written": 0, "groups_skipped": before["states"], "policy_version": None}
    elif before["states"] and sample_deployment:
        out["rollouts"] = _sample_off_host(db, storage, replay_root, day, checked["champion"], model, mode, group_size,
                                           seed, backend, sample_deployment, train_job_variables, sample_timeout_s)
    elif before["states"]:
        sampled = generate_rollouts(start=day, db=db, model=model, checkpoint=checked["champion"], group_size=group_size,
                                    mode=mode, seed=seed, replay_root=replay_root, backend=backend)
        out["rollouts"] = {k: sampled[k] for k in ("groups_written", "groups_skipped", "policy_version", "valid_rate")}
    else:
        out["rollouts"] = {"groups_written": 0, "groups_skipped": 0, "policy_version": None}
    rewarded = compute_rewards(db=db, replay_root=replay_root)
    out["rewards"] = {"inserted": rewarded["inserted"], "waiting": rewarded["waiting"]}

    pending = pending_work(db, replay_root, day, mode, style, eval_days)
    out["train"] = _train_stage(db, storage, day, model, checked["champion"], pending, train, min_new_groups, train_deployment,
                                train_config, train_job_variables, train_timeout_s)
    out["gate"] = _gate_stage(db, storage, pending, mode, style, gate_margin, n_boot,
                              dict(model=model, knowledge_cutoff=knowledge_cutoff, allow_contaminated=allow_contaminated))
    out["status"] = "done"
    _summary_artifact(out)
    if out["train"]["status"] == "failed":  # after the gate ran: the day's other work is stored, the run shows red
        raise RuntimeError(out["train"]["reason"])
    return out


def _sample_off_host(db: str, storage: str | None, replay_root: str, day: str, champion: str | None, model: str | None,
                     mode: str, group_size: int, seed: int, backend: str, deployment: str, job_variables: dict | None,
                     timeout_s: float) -> dict:
    """The day's states exported to storage as a snapshot, sampled by the deployment (gpu pool) into the replay under
    the storage URL, the view pointed at it: the store is held only to export and to re-point."""
    snap = snapshot_states(db, day, day, checkpoint=champion, model=model, mode=mode, storage=storage,
                           replay_root=replay_root)
    if snap["snapshot_url"] is None:
        return {"groups_written": 0, "groups_skipped": snap["states_in_range"], "policy_version": snap["policy_version"]}
    params = {"snapshot_url": snap["snapshot_url"], "replay_root": replay_root, "group_size": group_size, "seed": seed,
              "backend": backend}
    result = run_on_pool(deployment, params, job_variables, timeout_s, f"sample:{snap['snapshot_url']}:{replay_root}")
    point_replay_view(db, replay_root)
    if result["status"] != "completed":
        raise RuntimeError(f"sampling {snap['snapshot_url']}: {result.get('reason') or result}")
    return {"groups_written": snap["states"], "groups_skipped": snap["states_in_range"] - snap["states"],
            "policy_version": snap["policy_version"], "snapshot_url": snap["snapshot_url"], "flow_run": result["flow_run"]}


def _train_stage(db: str, storage: str | None, day: str, model: str | None, champion: str | None, fresh: dict, train: bool,
                 min_new_groups: int, deployment: str | None, config: dict | None, job_variables: dict | None,
                 timeout_s: float) -> dict:
    logger = get_run_logger()
    if not train:
        logger.info("training: off (train=False)")
        return {"status": "skipped", "reason": "train=False"}
    if fresh["unfinished"]:  # a run killed (or still going) before its last step is resumed, never replaced
        run_url, batch_url = fresh["unfinished"][0]
        prepared = {"batch_url": batch_url}
        logger.info("training: resuming run %s, stopped before its last step", run_url)
    elif fresh["new_groups"] < min_new_groups:
        reason = f"{fresh['new_groups']} new matured groups, fewer than min_new_groups={min_new_groups}"
        logger.info("training: not yet, %s", reason)
        return {"status": "skipped", "reason": reason, "new_groups": fresh["new_groups"]}
    else:
        from hitchhiker import storage as files

        # One run per set of groups: a re-triggered training resumes its run instead of starting another.
        run_url = files.join(files.location(db, storage, "checkpoints"), f"daily-{day}-{fresh['groups_key'][:8]}")
        prepared = prepare_training(db, storage, run_url, "grpo", config or {}, champion, model)
    params = {"batch_url": prepared["batch_url"], "run_url": run_url}
    if deployment is None:  # one machine, no GPU pool: train here, as a subflow
        logger.info("training in this process on %d new groups (run %s)", fresh["new_groups"], run_url)
        done = train_flow(**params)
        result = {"status": "completed", "checkpoint_id": done["checkpoint_id"]}
    else:
        logger.info("training: %d new matured groups (%s..%s) -> deployment %s, batch %s", fresh["new_groups"],
                    fresh["first_date"], fresh["last_date"], deployment, prepared["batch_url"])
        result = run_on_pool(deployment, params, job_variables, timeout_s, f"train:{run_url}")
    # what the run committed, registered with its lineage (a run still going is registered by a later daily run)
    registered = register_training(db, run_url)[run_url]
    (logger.info if result["status"] == "completed" else logger.warning)("training: %s; registered %s",
                                                                        result.get("reason") or result, registered)
    return result | {"new_groups": fresh["new_groups"], "run_url": run_url, "batch_url": prepared["batch_url"],
                     "registered": registered}


def _gate_stage(db: str, storage: str | None, ready: dict, mode: str, style: str, gate_margin: float,
                n_boot: int, knowledge: dict) -> dict:
    logger = get_run_logger()
    for note in ready["waiting"]:
        logger.info("gate: waiting: %s", note)
    if ready["candidate"] is None:
        if not ready["waiting"]:
            logger.info("gate: no checkpoint waiting for evaluation")
        return {"status": "skipped", "waiting": len(ready["waiting"])}
    result = evaluate_flow(checkpoint=ready["candidate"], start=ready["start"], end=ready["end"], db=db, mode=mode,
                           style=style, gate=True, gate_margin=gate_margin, n_boot=n_boot, storage=storage, **knowledge)
    promoted = champion_now(db) == ready["candidate"]
    logger.info("gate: %s on %s..%s: %s", ready["candidate"], ready["start"], ready["end"], result["gate"])
    return {"status": "promoted" if promoted else "kept", "candidate": ready["candidate"], "window": [ready["start"], ready["end"]],
            "report_path": result["report_path"], "report_url": result["report_url"], "reason": result["gate"],
            "waiting": len(ready["waiting"])}


def _summary_artifact(out: dict) -> None:
    lines = [f"# Daily run for {out['date']}: {out['status']}", ""]
    if out.get("reason"):
        lines += [out["reason"], ""]
    lines += ["| stage | result |", "|---|---|"]
    for stage in ("ingest", "states", "rollouts", "rewards", "train", "gate"):
        if stage in out:
            lines.append(f"| {stage} | `{json.dumps(out[stage], default=str)}` |")
    lines += ["", f"Database: `{out['db']}`"]
    create_markdown_artifact(markdown="\n".join(lines), key=f"daily-summary-{out['date']}", description="daily pipeline summary")


@flow(name="backfill", flow_run_name=_backfill_run_name)
def backfill(
    start: str,
    end: str,
    db: str | None = None,
    storage: str | None = None,
    demo: bool = False,
    prices_csv: str | None = None,
    tickers: list[str] | None = None,
    feeds: list[str | dict[str, str]] | None = None,
    news_csv: str | None = None,
    names_csv: str | None = None,
    retry_delay_s: float = 10.0,
    options: dict | None = None,
) -> list[dict]:
    """The daily pipeline for every trading day in [start, end], in order: one ingest, then a `daily` subflow per
    day (states, sampling, rewards, training and gate as of that day). options: other parameters of `daily`."""
    from tqdm import tqdm

    from hitchhiker import db as store
    from hitchhiker.states import trading_days

    first, last = _day(start, "start"), _day(end, "end")
    if last < first:
        raise ValueError(f"backfill end {last} is before start {first}")
    db = str(store.db_path(db).resolve())
    logger = get_run_logger()
    options = dict(options or {})
    clash = sorted(set(options) & {"date", "db", "storage", "ingest", "tickers", "demo", "prices_csv", "feeds", "news_csv",
                                    "names_csv", "retry_delay_s"})
    if clash:
        raise ValueError(f"options {clash} are backfill's own parameters (or set per day); pass them directly")
    _ingest(first, last, db, demo, prices_csv, tickers, feeds, news_csv, retry_delay_s, names_csv)
    with store_slot():
        con = store.connect(db)
        try:
            days = [d.isoformat() for d in trading_days(con, first, last)]
        finally:
            con.close()
    if not days:
        logger.info("backfill %s..%s: no trading day with prices in the store", first, last)
        return []
    progress = create_progress_artifact(progress=0.0, description=f"backfill {first}..{last}: days done")
    results = []
    for i, day in enumerate(tqdm(days, desc="backfill", unit="day", disable=None)):
        results.append(daily(date=day, db=db, storage=storage, tickers=tickers, ingest=False, retry_delay_s=retry_delay_s, **options))
        update_progress_artifact(progress, 100.0 * (i + 1) / len(days))
    logger.info("backfill %s..%s: %d trading days", first, last, len(days))
    return [{k: r.get(k) for k in ("date", "status")} | {"train": r.get("train", {}).get("status"),
                                                         "gate": r.get("gate", {}).get("status")} for r in results]
