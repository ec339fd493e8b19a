"""Point-in-time states: the prompts the policy sees for one decision date, built after that date's close.

A state for trading day T uses prices with date <= T and news published at or before T's decision time
(T's close in the exchange's time zone by default) and nothing else. The numbers come from set-based SQL
over all (T, ticker) at once (`sql/states/*.sql`); Python only renders text (`render.py`), fits it into the
token budget, and stores rows in `states` (idempotently: `state_id` hashes the builder version and content).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa

from hitchhiker import contract, db, faults, listwise
from hitchhiker.render import PromptSpec, StockView, anonymize, clean_headline, name_aliases, render_messages, shown_features

# Bump when the rendering or the features change, so that new states get new ids instead of colliding.
BUILDER_VERSION = "states-2"  # 2: names_known per ticker
STYLES = ("full", "trend")
ACTION_FORMATS = {contract.PAIRWISE: ("choice", "proportion"), contract.ELEMENTWISE: ("discrete", "numeric"),
                  contract.LISTWISE: ("ranking",)}


@dataclass(frozen=True)
class StatesConfig:
    """How states are built; the defaults build the full pairwise prompt (about 300-700 tokens of the default model)."""

    mode: str = contract.PAIRWISE
    style: str = "full"  # 'full': returns, volumes, summary, headlines; 'trend': one trend word per stock
    history_days: int = 10  # daily rows of price history (returns need history_days + 1 prices)
    trend_days: int = 5  # the trend word is the sign of this many days' return
    max_headlines: int = 5  # per stock, newest first
    news_lookback_days: int = 30  # older headlines are stale; keeps the news join bounded
    max_headline_chars: int = 160
    horizon_days: int = 1
    max_pairs_per_date: int = 20
    list_size: int = 4  # listwise: stocks per basket, 3..8
    max_lists_per_date: int = 20  # listwise: baskets per date
    seed: int = 0
    anonymize: bool = True
    action_format: str | None = None  # None: 'choice' (pairwise) / 'discrete' (elementwise)
    max_prompt_tokens: int = 1024
    cutoff: str = "16:00"  # decision time, local exchange time, on T
    exchange_tz: str = "America/New_York"
    # The tokenizer that counts prompt tokens, by name or path, for the caller to load and hand to build_states
    # (hitchhiker.policy.load_tokenizer); None: the default small model's.
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in contract.ALL_MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {contract.ALL_MODES}")
        contract.check_list_size(self.list_size)
        if self.style not in STYLES:
            raise ValueError(f"style {self.style!r} is not one of {STYLES}")
        if self.action_format is not None and self.action_format not in ACTION_FORMATS[self.mode]:
            raise ValueError(f"action_format {self.action_format!r} is not one of {ACTION_FORMATS[self.mode]} for {self.mode}")
        for name in ("history_days", "trend_days", "horizon_days", "max_pairs_per_date", "max_lists_per_date", "max_prompt_tokens", "max_headline_chars", "news_lookback_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_headlines < 0:
            raise ValueError(f"max_headlines must be >= 0, got {self.max_headlines}")
        self.cutoff_time  # parses, or raises naming the value
        ZoneInfo(self.exchange_tz)

    @property
    def answer_format(self) -> str:
        return self.action_format or ACTION_FORMATS[self.mode][0]

    @property
    def cutoff_time(self) -> time:
        try:
            return time.fromisoformat(self.cutoff)
        except ValueError:
            raise ValueError(f"cutoff {self.cutoff!r} is not a local time like '16:00'") from None


def decision_time(day: date, config: StatesConfig = StatesConfig()) -> datetime:
    """T's decision time in UTC: the cutoff on T in the exchange's time zone (16:00 New York = 21:00 or 20:00 UTC)."""
    local = datetime.combine(day, config.cutoff_time, tzinfo=ZoneInfo(config.exchange_tz))
    return local.astimezone(timezone.utc)


def trading_days(con: duckdb.DuckDBPyConnection, start: date | str, end: date | str) -> list[date]:
    """The trading days in [start, end]: dates on which `prices` has at least one row."""
    rows = con.execute(
        "SELECT DISTINCT date FROM prices WHERE date BETWEEN ? AND ? ORDER BY date", [as_date(start), as_date(end)]
    ).fetchall()
    return [r[0] for r in rows]


def set_company_names(con: duckdb.DuckDBPyConnection, names: dict[str, Iterable[str]], source: str = "manual") -> int:
    """Record the names companies go by in headlines ({ticker: [names]}), for anonymization; returns rows added.

    A name already recorded for the ticker keeps its first source (the upsert adds, never rewrites)."""
    now = datetime.now(timezone.utc)
    rows = [(t.strip(), " ".join(n.split()), source, now) for t, ns in names.items() for n in ns if n and n.strip()]
    before = con.execute("SELECT count(*) FROM company_names").fetchone()[0]
    with db.transaction(con):
        con.executemany("INSERT INTO company_names (ticker, name, source, ingested_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING", rows)
        faults.point("names.before-commit")
    return con.execute("SELECT count(*) FROM company_names").fetchone()[0] - before


def build_states(
    con: duckdb.DuckDBPyConnection,
    config: StatesConfig = StatesConfig(),
    dates: Sequence[date | str] = (),
    tickers: Sequence[str] | None = None,
    *,
    tokenizer,
) -> list[str]:
    """Build and store the states of the given dates (non-trading dates are skipped); returns their state_ids.

    Idempotent: rebuilding a date with the same data and config returns the same ids and inserts nothing.
    tickers: the universe (default: every ticker in `prices`). tokenizer: any Hugging Face tokenizer with a chat
    template (the policy's: e.g. `hitchhiker.policy.load_tokenizer(config.tokenizer)`); it counts each prompt's
    tokens as the sampler will feed them, which is what the `max_prompt_tokens` budget is measured in.
    """
    wanted = sorted({as_date(d) for d in dates})
    if not wanted:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template; prompt_tokens counts the chat-templated prompt")
    days = [r[0] for r in con.execute(
        "SELECT DISTINCT date FROM prices WHERE date IN (SELECT unnest(?::DATE[])) ORDER BY date", [wanted]
    ).fetchall()]
    if not days:
        return []
    if tickers is None:
        tickers = [r[0] for r in con.execute("SELECT DISTINCT ticker FROM prices ORDER BY ticker").fetchall()]
    tickers = sorted({t.strip() for t in tickers if t and t.strip()})
    if not tickers:
        raise ValueError("tickers is empty")

    drafts = _drafts(con, config, days, tickers)
    rows = _fit_and_hash(drafts, config, _TokenCounter(tokenizer))
    _insert(con, rows)
    return [r["state_id"] for r in rows]


_BROKERS = ("Barclays", "Morgan Stanley", "Goldman Sachs", "Citigroup", "Jefferies", "UBS", "Wells Fargo", "Mizuho")
_RATINGS = ("Buy", "Hold", "Sell", "Overweight", "Underweight", "Neutral", "Outperform", "Equal-weight")
_HEADLINES = (
    "{broker} Upgrades {label} to {rating}, Raises PT to ${price}",
    "{broker} Downgrades {label} to {rating}, Lowers PT to ${price}",
    "{broker} Maintains {rating} on {label}, Announces ${price} PT",
    "{label} Q{quarter} EPS ${eps} vs ${est} est",
    "{label} Shares Rise {move}% After Earnings Beat",
    "{label} Shares Fall {move}% On Weak Guidance",
    "{label} Announces ${buyback}M Share Buyback",
    "{label} Names New CFO",
    "Earnings Scheduled For {label}",
    "Stocks Hitting 52-Week Highs",
    "{count} Stocks Moving In Pre-Market Session",
    "{label} Trading Ex-Dividend Today",
)


def example_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` rendered prompt texts (system and user content) of every mode (listwise: 3 to 8 stocks), both styles and
    every action format.

    Synthetic numbers and made-up headlines, no database: the corpus the default small model's tokenizer is
    trained on, so that every word and symbol a real prompt uses is in its vocabulary.
    """
    rng = random.Random(seed)
    kinds = [(m, st, f) for m in contract.ALL_MODES for st in STYLES for f in ACTION_FORMATS[m]]
    out = []
    for k in range(n):
        mode, style, fmt = kinds[k % len(kinds)]
        history = rng.randint(1, 20)
        spec = PromptSpec(
            mode=mode, style=style, decision_date=date(2010, 1, 1) + timedelta(days=rng.randrange(6000)),
            history_days=history, trend_days=rng.randint(1, 10), horizon_days=rng.choice((1, 1, 1, 2, 5)),
            action_format=fmt,
        )
        letters = {contract.PAIRWISE: "AB", contract.ELEMENTWISE: "A"}.get(mode) or contract.LETTERS[
            :rng.randint(contract.MIN_LIST_SIZE, contract.MAX_LIST_SIZE)]
        stocks = [_synthetic_stock(rng, f"Stock {letter}", spec) for letter in letters]
        messages = render_messages(spec, stocks)
        out.append("\n".join(m["content"] for m in messages))
    return out


def _synthetic_stock(rng: random.Random, label: str, spec: PromptSpec) -> StockView:
    rets = [round(rng.gauss(0, 1.5), 2) for _ in range(spec.history_days)]
    trend_ret = round(rng.gauss(0, 3), 2)
    heads = []
    for _ in range(rng.randint(0, 5)):
        text = rng.choice(_HEADLINES).format(
            label=label, broker=rng.choice(_BROKERS), rating=rng.choice(_RATINGS), price=f"{rng.uniform(5, 500):.2f}",
            quarter=rng.randint(1, 4), eps=f"{rng.uniform(-1, 5):.2f}", est=f"{rng.uniform(-1, 5):.2f}",
            move=rng.randint(1, 20), buyback=rng.randint(10, 5000), count=rng.randint(5, 80),
        )
        heads.append((spec.decision_date - timedelta(days=rng.randint(0, 20)), text))
    return StockView(
        label=label, returns_pct=rets, volume_changes_pct=[float(round(rng.gauss(0, 30))) for _ in rets],
        history_return_pct=round(sum(rets), 2), volatility_pct=round(abs(rng.gauss(1.5, 0.7)), 2),
        trend="UP" if trend_ret > 0 else "DOWN" if trend_ret < 0 else "FLAT", trend_return_pct=trend_ret,
        headlines=sorted(heads, reverse=True),
    )


# --- the numbers, from SQL ------------------------------------------------------------------------------------

@dataclass
class _Draft:
    decision_date: date
    decision_time: datetime
    tickers: list[str]  # prompt order
    pair: str
    stocks: list[StockView]
    headline_times: list[list[datetime]]  # per stock, newest first, parallel to stocks[i].headlines
    names_known: list[bool]  # per stock: a company name was recorded, so anonymization could scrub it


def _drafts(con, config: StatesConfig, days: list[date], tickers: list[str]) -> list[_Draft]:
    times = [decision_time(d, config) for d in days]
    con.register("state_dates", pa.table({
        "decision_date": pa.array(days, pa.date32()),
        "decision_time": pa.array(times, pa.timestamp("us", tz="UTC")),
    }))
    con.register("state_tickers", pa.table({"ticker": pa.array(tickers, pa.string())}))
    try:
        feats = con.execute(
            db.sql_text("states/features"), {"history_days": config.history_days, "trend_days": config.trend_days}
        ).fetchall()
        news: dict[tuple[date, str], list] = {}
        if config.style == "full" and config.max_headlines > 0:
            for d, t, published_at, title, _ in con.execute(
                db.sql_text("states/headlines"),
                {"max_headlines": config.max_headlines, "news_lookback_days": config.news_lookback_days},
            ).fetchall():
                news.setdefault((d, t), []).append((published_at, title))
        by_key = {(r[0], r[1]): r for r in feats}
        if config.mode == contract.PAIRWISE:
            con.register("state_eligible", pa.table({
                "decision_date": pa.array([r[0] for r in feats], pa.date32()),
                "ticker": pa.array([r[1] for r in feats], pa.string()),
            }))
            try:
                picks = con.execute(
                    db.sql_text("states/pairs"), {"seed": config.seed, "max_pairs_per_date": config.max_pairs_per_date}
                ).fetchall()
            finally:
                con.unregister("state_eligible")
            combos = [(d, [a, b], pair) for d, a, b, pair in picks]
        elif config.mode == contract.LISTWISE:
            combos = listwise.draw_baskets(con, [(r[0], r[1]) for r in feats], config.list_size, config.max_lists_per_date, config.seed)
        else:
            combos = [(r[0], [r[1]], r[1]) for r in feats]
        names = _company_names(con, tickers)
    finally:
        con.unregister("state_dates")
        con.unregister("state_tickers")

    when = dict(zip(days, times))
    tz = ZoneInfo(config.exchange_tz)
    drafts = []
    for d, order, pair in combos:
        stocks, stamps = [], []
        for i, t in enumerate(order):
            _, _, rets, vols, hist_ret, vol_pct, trend_ret, trend = by_key[(d, t)]
            letter = contract.LETTERS[i]
            label = f"Stock {letter}" if config.anonymize else f"Stock {letter} ({t})"
            heads = news.get((d, t), [])
            texts = []
            for _, title in heads:
                text = clean_headline(title, 10 * config.max_headline_chars)
                if config.anonymize:
                    for j, other in enumerate(order):  # a headline may name the other stock of the pair too
                        text = anonymize(text, other, names.get(other, ()), f"Stock {contract.LETTERS[j]}")
                texts.append(clean_headline(text, config.max_headline_chars))
            stocks.append(StockView(
                label=label, returns_pct=_no_minus_zero(rets), volume_changes_pct=_no_minus_zero(vols),
                history_return_pct=_no_minus_zero(hist_ret), volatility_pct=vol_pct, trend=trend,
                trend_return_pct=_no_minus_zero(trend_ret),
                headlines=[(p.astimezone(tz).date(), x) for (p, _), x in zip(heads, texts)],
            ))
            stamps.append([p for p, _ in heads])
        drafts.append(_Draft(d, when[d], order, pair, stocks, stamps, [t in names for t in order]))
    return drafts


def _company_names(con, tickers: list[str]) -> dict[str, tuple[str, ...]]:
    rows = con.execute(
        "SELECT ticker, list(name ORDER BY name) FROM company_names WHERE ticker IN (SELECT unnest(?::VARCHAR[])) GROUP BY ticker",
        [tickers],
    ).fetchall()
    return {t: name_aliases(ns) for t, ns in rows}


# --- the budget, the id, the rows -----------------------------------------------------------------------------

def _fit_and_hash(drafts: list[_Draft], config: StatesConfig, count: "_TokenCounter") -> list[dict]:
    """Render every draft, count tokens in batches, and shrink the ones over budget (oldest headlines, then history)."""
    specs = [_spec(config, d.decision_date) for d in drafts]
    rendered = [render_messages(s, d.stocks) for s, d in zip(specs, drafts)]
    counts = count(rendered)
    shown = [config.history_days] * len(drafts)
    for i, n in enumerate(counts):
        if n > config.max_prompt_tokens:
            rendered[i], counts[i], shown[i], drafts[i].stocks = _shrink(drafts[i], specs[i], config, count, n)
    created_at = datetime.now(timezone.utc)
    rows = []
    for d, s, messages, n, h in zip(drafts, specs, rendered, counts, shown):
        row = {
            "builder_version": BUILDER_VERSION,
            "decision_date": d.decision_date,
            "decision_time": d.decision_time,
            "mode": config.mode,
            "style": config.style,
            "tickers": d.tickers,
            "pair": d.pair,
            "action_format": config.answer_format,
            "horizon_days": config.horizon_days,
            "history_days": config.history_days,
            "anonymized": config.anonymize,
            "names_known": d.names_known,
            # stored as these exact JSON texts, which are also what the id hashes
            "messages": json.dumps(messages, ensure_ascii=False),
            "features": json.dumps(shown_features(s, d.stocks, h), sort_keys=True),
            "placeholders": json.dumps({f"Stock {contract.LETTERS[i]}": t for i, t in enumerate(d.tickers)}, sort_keys=True)
            if config.anonymize else None,
        }
        head = [row[k] for k in _HASHED_SCALARS]
        head[1], head[2] = d.decision_date.isoformat(), d.decision_time.isoformat()
        blob = "\n".join([json.dumps(head, ensure_ascii=False), row["messages"], row["features"], str(row["placeholders"])])
        row["state_id"] = hashlib.sha256(blob.encode()).hexdigest()
        row["prompt_tokens"] = n
        row["created_at"] = created_at
        rows.append(row)
    return rows


# The state's content: everything stored but the id, the token count (a measurement under one tokenizer, not
# content) and created_at. Same content, same id: rebuilding is idempotent.
_HASHED_SCALARS = (
    "builder_version", "decision_date", "decision_time", "mode", "style", "tickers", "pair", "action_format",
    "horizon_days", "history_days", "anonymized", "names_known",
)


def _spec(config: StatesConfig, day: date) -> PromptSpec:
    return PromptSpec(
        mode=config.mode, style=config.style, decision_date=day, history_days=config.history_days,
        trend_days=config.trend_days, horizon_days=config.horizon_days, action_format=config.answer_format,
    )


def _shrink(d: _Draft, spec: PromptSpec, config: StatesConfig, count: _TokenCounter, full_tokens: int) -> tuple:
    """Fit one state into the budget: drop the oldest headlines first, then the oldest history rows.

    The removal steps form one sequence (step s: the s oldest headlines gone, then history shortened row by
    row); the answer is its first step that fits. Candidates are ranked by an estimate (the exact full count
    minus the tokens of the pieces removed; exact for whitespace-cut tokenizers) and only the chosen step and
    its neighbour are counted exactly. Returns (messages, tokens, history rows shown, stocks as shown).
    """
    order = sorted(
        ((p, i, j) for i, stamps in enumerate(d.headline_times) for j, p in enumerate(stamps)),
        key=lambda x: (x[0], x[1], x[2]),
    )
    total = len(order)
    last = total + config.history_days - 1  # all headlines gone and one history row left

    def stocks_at(step: int) -> list[StockView]:
        gone = {(i, j) for _, i, j in order[:min(step, total)]}
        return [
            replace(s, headlines=[h for j, h in enumerate(s.headlines) if (i, j) not in gone])
            for i, s in enumerate(d.stocks)
        ]

    def messages_at(step: int) -> list[dict]:
        return render_messages(spec, stocks_at(step), config.history_days - max(0, step - total))

    def pieces_sum(step: int) -> int:
        return sum(count.pieces_sum(m["content"]) for m in messages_at(step))

    full_sum = pieces_sum(0)
    estimates: dict[int, int] = {}
    exact: dict[int, tuple[list[dict], int]] = {}

    def estimate(step: int) -> int:
        if step not in estimates:
            estimates[step] = full_tokens - full_sum + pieces_sum(step)
        return estimates[step]

    def fits(step: int) -> bool:
        if step not in exact:
            messages = messages_at(step)
            exact[step] = (messages, count([messages])[0])
        return exact[step][1] <= config.max_prompt_tokens

    lo, hi = 1, last  # step 0 is over budget
    while lo < hi:  # the first step whose estimate fits
        mid = (lo + hi) // 2
        if estimate(mid) <= config.max_prompt_tokens:
            hi = mid
        else:
            lo = mid + 1
    step = lo
    while not fits(step):  # the estimate was optimistic: walk forward
        if step == last:
            raise ValueError(
                f"max_prompt_tokens={config.max_prompt_tokens} is too small: the state of {d.decision_date} {d.pair} "
                f"needs {exact[step][1]} tokens with no headlines and one day of history"
            )
        step += 1
    while step > 1 and fits(step - 1):  # ... or pessimistic: walk back
        step -= 1
    messages, n = exact[step]
    return messages, n, config.history_days - max(0, step - total), stocks_at(step)


class _TokenCounter:
    """Exact lengths of chat-templated prompts, as the sampler will feed them (generation prompt included).

    Tokenizing is most of what a build costs. A tokenizer that cuts text at every space and newline before
    anything else (the default small model's word-level one) tokenizes each piece on its own, so a prompt's
    length is the sum of its pieces' lengths; pieces ("+0.52", "Stock", "\n") recur across states, so each
    is tokenized once per build. Any other tokenizer (BPE over raw bytes, ...) tokenizes every prompt whole.
    """

    def __init__(self, tok):
        self.tok = tok
        self.additive = _cuts_at_spaces(tok)
        self.by_piece: dict[str, int] = {}
        self.by_line: dict[str, int] = {}

    def __call__(self, conversations: list[list[dict]]) -> list[int]:
        if not conversations:  # a date with no eligible stock: nothing to count (the template rejects [])
            return []
        texts = self.tok.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        if self.additive:
            return [self.pieces_sum(t) for t in texts]
        return [len(e) for e in _encode(self.tok, texts)]

    def pieces_sum(self, text: str) -> int:
        """The sum of the token counts of the text's pieces: exact when `additive`, an estimate otherwise.

        Pieces are the lines, the newlines between them, and within a line each space with the text that follows
        it ("a  b" -> "a", " ", " b"); whole lines are cached too, as most recur (instructions, headlines).
        """
        lines = text.split("\n")
        if any(ln not in self.by_line for ln in lines):
            self._learn([ln for ln in lines if ln not in self.by_line])
        return sum(self.by_line[ln] for ln in lines) + (len(lines) - 1) * self.by_piece["\n"]

    def _learn(self, lines: list[str]) -> None:
        split = {ln: _pieces(ln) for ln in lines}
        new = list({p for ps in split.values() for p in ps if p not in self.by_piece} | ({"\n"} - self.by_piece.keys()))
        if new:
            self.by_piece.update(zip(new, (len(e) for e in _encode(self.tok, new))))
        for ln, ps in split.items():
            self.by_line[ln] = sum(self.by_piece[p] for p in ps)


def _pieces(line: str) -> list[str]:
    first, *rest = line.split(" ")
    return ([first] if first else []) + [" " + w for w in rest]


def _cuts_at_spaces(tok) -> bool:
    """Whether the tokenizer's pipeline cuts at every space and newline before any step that could join text.

    Read from its serialized form: no normalizer; a pre-tokenizer that splits at spaces (Whitespace,
    WhitespaceSplit, or Metaspace with split and no prepended space) and at newlines; no added token that
    eats neighbouring whitespace or contains any. Every later step (punctuation, digits) only splits further,
    and the model sees one pre-token at a time.
    """
    backend = getattr(tok, "backend_tokenizer", None)  # Python-only tokenizers have no serialized pipeline
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    if spec.get("normalizer") is not None:
        return False
    for added in spec.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word") or re.search(r"\s", added["content"]):
            return False
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    spaces = newlines = False
    for step in steps:
        kind = step.get("type")
        if kind in ("Whitespace", "WhitespaceSplit"):
            spaces = newlines = True
        elif kind == "Metaspace" and step.get("split") and step.get("prepend_scheme") == "never":
            spaces = True
        elif kind == "Split" and step.get("pattern") in ({"Regex": "\\n"}, {"String": "\n"}) and not step.get("invert") \
                and step.get("behavior") in ("Isolated", "Removed"):
            newlines = True
        elif kind not in ("Punctuation", "Digits", "Split"):
            return False  # a step that may rewrite text (ByteLevel, Metaspace that prepends): whole prompts only
    return spaces and newlines


def _encode(tok, texts: list[str]) -> list:
    # The Rust tokenizer without offsets (encode_batch_fast) gives the same ids as tok(texts) at about two
    # thirds of the cost. Python-only tokenizers lack it.
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return tok(texts, add_special_tokens=False)["input_ids"]
    return backend.encode_batch_fast(texts, add_special_tokens=False)


def _insert(con, rows: list[dict]) -> None:
    if not rows:
        return
    column = lambda name: [r[name] for r in rows]  # noqa: E731
    table = pa.table({
        "state_id": column("state_id"),
        "decision_date": pa.array(column("decision_date"), pa.date32()),
        "decision_time": pa.array(column("decision_time"), pa.timestamp("us", tz="UTC")),
        "mode": column("mode"),
        "style": column("style"),
        "tickers": pa.array(column("tickers"), pa.list_(pa.string())),
        "pair": column("pair"),
        "action_format": column("action_format"),
        "horizon_days": pa.array(column("horizon_days"), pa.int32()),
        "history_days": pa.array(column("history_days"), pa.int32()),
        "messages": column("messages"),
        "features": column("features"),
        "anonymized": column("anonymized"),
        "names_known": pa.array(column("names_known"), pa.list_(pa.bool_())),
        "placeholders": column("placeholders"),
        "prompt_tokens": pa.array(column("prompt_tokens"), pa.int32()),
        "builder_version": column("builder_version"),
        "created_at": pa.array(column("created_at"), pa.timestamp("us", tz="UTC")),
    })
    con.register("new_states", table)
    try:
        with db.transaction(con):
            con.execute("INSERT INTO states BY NAME SELECT * FROM new_states ON CONFLICT DO NOTHING")
            faults.point("states.before-commit")
        faults.point("states.after-commit")
    finally:
        con.unregister("new_states")


# --- helpers ----------------------------------------------------------------------------------------------------

def _no_minus_zero(x):
    # SQL rounds -0.004 to -0.0, which would render as "-0.00"; adding 0.0 turns -0.0 into 0.0
    if isinstance(x, list):
        return [None if v is None else v + 0.0 for v in x]
    return None if x is None else x + 0.0


def as_date(value: date | str, name: str = "date") -> date:
    """A date argument (date, datetime or 'YYYY-MM-DD') as a date; anything else is an error naming `name`."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None
