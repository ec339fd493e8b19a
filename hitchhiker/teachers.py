"""Teacher ensembles with reward-driven weights (issue 21 parts 1-2): which teachers sample a date's groups, and how
many of each group's samples each one draws.

Every teacher starts at 1/N. Once rewards mature, a teacher's score is the exponential moving average from 0
(half-life in decision dates) of its mean advantage per date; the weights are softmax(score / temperature) mixed with a floor
share, and a teacher not sampled for `stale_days` while others were is forced back to `stale_share`
(sql/teachers/weights.sql). A date's weights are computed once, from rewards whose exit came before the date, and
stored in `teacher_weights`, so a group's draw can be replayed: `split_group` is a seeded multinomial over them.
Written by hand: the rule is the project's (no library has it); the arithmetic is DuckDB's and numpy's.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone

import duckdb
import numpy as np

from hitchhiker import db
from hitchhiker.states import as_date


@dataclass
class TeachersConfig:
    teachers: list[str] = field(default_factory=list)  # policy versions: checkpoint ids or 'base:<model>'
    reward_spec: str = ""  # the rewards whose advantages score the teachers
    half_life_dates: float = 5.0  # a date's mean advantage counts half as much this many dates later
    temperature: float = 0.5  # of the softmax over scores (advantages are in units of the group's std)
    floor: float = 0.05  # share spread evenly over the teachers whatever their scores: no weight reaches 0
    stale_days: int = 10  # a teacher without a rollout for more calendar days than this ...
    stale_share: float = 0.2  # ... gets at least this share
    seed: int = 0

    def __post_init__(self):
        if len(self.teachers) < 1 or len(set(self.teachers)) != len(self.teachers) or not all(
                isinstance(t, str) and t for t in self.teachers):
            raise ValueError(f"teachers {self.teachers!r}: give one or more distinct policy versions")
        if not self.reward_spec:
            raise ValueError("reward_spec: name the reward spec whose advantages score the teachers")
        for name, low in (("half_life_dates", 0.0), ("temperature", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= low:
                raise ValueError(f"{name} {v!r} must be a finite number > 0")
        n = len(self.teachers)
        if not 0 < self.floor <= 1:
            raise ValueError(f"floor {self.floor!r} must be in (0, 1]: the minimum exploration share")
        if not 0 < self.stale_share <= 1 / n:
            raise ValueError(f"stale_share {self.stale_share!r} must be in (0, 1/{n}] for {n} teacher(s)")
        if not isinstance(self.stale_days, int) or self.stale_days < 1:
            raise ValueError(f"stale_days {self.stale_days!r} must be an integer >= 1")

    @property
    def name(self) -> str:
        """The settings' versioned name, the key of their rows in teacher_weights."""
        params = {k: v for k, v in asdict(self).items() if k != "seed"}
        digest = hashlib.sha256((json.dumps(params, sort_keys=True) + db.sql_text("teachers/weights")).encode())
        return f"teachers:{len(self.teachers)}:{digest.hexdigest()[:12]}"


def update_weights(con: duckdb.DuckDBPyConnection, decision_date: date | str, config: TeachersConfig) -> list[dict]:
    """The teachers' weights for decision_date: computed and stored the first time (one transaction), read back after.

    Needs the relation `replay` (replay.ensure_view) for the stale rule. Returns one dict per teacher (teacher, score,
    n_dates, weight, forced, last_sampled), in teacher order.
    """
    day = as_date(decision_date, "decision_date")
    with db.transaction(con):
        rows = con.execute(db.sql_text("teachers/weights"), _params(day, config)).df()
        con.register("new_weights", rows)
        try:
            con.execute("INSERT INTO teacher_weights BY NAME SELECT *, $day::DATE AS decision_date, $settings AS settings, "
                        "$at AS computed_at FROM new_weights ON CONFLICT DO NOTHING",
                        {"day": day, "settings": config.name, "at": datetime.now(timezone.utc)})
        finally:
            con.unregister("new_weights")
    return stored_weights(con, day, config)


def stored_weights(con: duckdb.DuckDBPyConnection, decision_date: date | str, config: TeachersConfig) -> list[dict]:
    rel = con.execute("SELECT teacher, score, n_dates, weight, forced, last_sampled FROM teacher_weights "
                      "WHERE decision_date = ? AND settings = ? ORDER BY teacher",
                      [as_date(decision_date, "decision_date"), config.name])
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r)) for r in rel.fetchall()]


def _params(day: date, config: TeachersConfig) -> dict:
    return {"decision_date": day, "teachers": config.teachers, "reward_spec": config.reward_spec,
            "half_life_dates": float(config.half_life_dates), "temperature": float(config.temperature),
            "floor": float(config.floor), "stale_days": config.stale_days, "stale_share": float(config.stale_share)}


def split_group(weights: dict[str, float], group_size: int, seed: int, state_id: str) -> dict[str, int]:
    """How many of a group's `group_size` samples each teacher draws: a multinomial over the weights, seeded by
    (seed, state_id), so the same weights give the same split on any machine."""
    if group_size < 1:
        raise ValueError(f"group_size {group_size!r} must be >= 1")
    teachers = sorted(weights)
    p = np.array([weights[t] for t in teachers], float)
    if not np.all(p > 0) or not math.isclose(p.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"weights {weights!r} must be > 0 and sum to 1")
    key = int.from_bytes(hashlib.sha256(f"{seed}\x1f{state_id}".encode()).digest()[:8], "little")
    counts = np.random.default_rng(key).multinomial(group_size, p / p.sum())
    return {t: int(c) for t, c in zip(teachers, counts)}


def sample_with_teachers(con: duckdb.DuckDBPyConnection, policies: dict, state_ids: list[str], sampling,
                         config: TeachersConfig, root, round_key: str = "") -> dict:
    """Sample one group per state, its `sampling.group_size` samples split across the teachers by the date's weights.

    policies: {policy_version: loaded Policy} for every teacher of `config` (they must share one tokenizer: the
    student trains on the teachers' token ids, scored against each row's stored behaviour log-probs, the truncated
    importance ratio it already applies to stale samples). A group's id is rollouts.group_id(state_id, key) with key
    `group_key(config, round_key)` (round_key: what makes a new round of the same state, e.g. the student's version
    when it is a teacher too): a re-run of a round finds its groups and samples nothing. Each rollout row is its teacher's (policy_version, prompt_ids, token
    log-probs); the weights and the split go to `teacher_groups`. Returns counts and the rows written per teacher.
    """
    import dataclasses

    from hitchhiker import replay
    from hitchhiker.rollouts import _batches, _prompt_or_failure, _row, group_generator, group_id, load_states, \
        sample_temperatures, sample_token_groups

    if sorted(policies) != sorted(config.teachers):
        raise ValueError(f"policies {sorted(policies)} are not the teachers {sorted(config.teachers)}")
    vocabs = {v: p.tokenizer.get_vocab() for v, p in policies.items()}
    first = config.teachers[0]
    for v in config.teachers[1:]:
        if vocabs[v] != vocabs[first]:
            raise ValueError(f"teacher {v!r} has another tokenizer than {first!r}: teachers must share one")
    key = group_key(config, round_key)
    replay.ensure_view(con, root)
    states = [s for s in load_states(con, state_ids)
              if not replay.has_group(root, s.decision_date, s.pair, group_id(s.state_id, key))]
    weights = {d: {r["teacher"]: r["weight"] for r in update_weights(con, d, config)}
               for d in sorted({s.decision_date for s in states})}
    splits = {s.state_id: split_group(weights[s.decision_date], sampling.group_size, config.seed, s.state_id)
              for s in states}
    rows: dict[str, list[dict]] = {s.state_id: [] for s in states}
    failed: dict[str, str] = {}
    for teacher in config.teachers:  # each teacher samples its share of every group, batched over the states
        policy = policies[teacher]
        mine = [s for s in states if splits[s.state_id][teacher] > 0]
        prompt_of = {s.state_id: p for s in mine if (p := _prompt_or_failure(policy, s, failed)) is not None}
        offset = {s.state_id: sum(splits[s.state_id][t] for t in config.teachers[:config.teachers.index(teacher)])
                  for s in mine}
        for batch in _batches([s for s in mine if s.state_id in prompt_of], prompt_of, sampling.groups_per_batch):
            size = max(splits[s.state_id][teacher] for s in batch)
            gids = [group_id(s.state_id, key) for s in batch]
            generators = [group_generator(sampling.seed, f"{g}\x1f{teacher}", policy.device) for g in gids]
            temperatures = sample_temperatures(sampling, size, generators)
            samples = sample_token_groups(policy, [prompt_of[s.state_id] for s in batch], temperatures, generators,
                                          dataclasses.replace(sampling, group_size=size))
            now = datetime.now(timezone.utc)
            for state, gid, temps, group in zip(batch, gids, temperatures.tolist(), samples):
                n = splits[state.state_id][teacher]
                rows[state.state_id] += [
                    _row(policy, state, gid, prompt_of[state.state_id], offset[state.state_id] + k, t, sampling.top_p,
                         ids, lps, now) for k, (t, (ids, lps)) in enumerate(zip(temps[:n], group[:n]))]
    written, n_valid, per_teacher = 0, 0, {t: 0 for t in config.teachers}
    for s in states:
        if s.state_id in failed or len(rows[s.state_id]) != sampling.group_size:
            continue
        gid = group_id(s.state_id, key)
        # the draw first: a kill before the file leaves a row that the re-run's identical draw finds in place
        con.execute("INSERT INTO teacher_groups VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [gid, s.state_id, s.decision_date, config.name, json.dumps(weights[s.decision_date]),
                     json.dumps(splits[s.state_id]), config.seed, datetime.now(timezone.utc)])
        if replay.write_group(root, s.decision_date, s.pair, gid, rows[s.state_id]) is None:
            continue
        written += 1
        for r in rows[s.state_id]:
            per_teacher[r["policy_version"]] += 1
            n_valid += r["valid"]
    replay.ensure_view(con, root)
    n_rows = sum(per_teacher.values())
    return {"states": len(state_ids), "groups_written": written, "rollouts_by_teacher": per_teacher,
            "valid_rate": n_valid / n_rows if n_rows else None,
            "states_failed": failed, "settings": config.name}


def group_key(config: TeachersConfig, round_key: str = "") -> str:
    """The policy-version slot of rollouts.group_id for a group sampled across teachers."""
    return f"{config.name}\x1f{round_key}" if round_key else config.name

