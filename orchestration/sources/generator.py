"""Deterministic generator of behaviour events and an item catalogue (canonical format).

Structure a sequence model can learn and popularity cannot:
- users have tastes over a few genres, and the taste drifts to other genres over time;
- items come in series (Part 1, 2, 3...) that users watch in order;
- item popularity follows a skewed (Zipf) curve within each genre;
- titles and descriptions are built from per-genre vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRE_VOCABULARY: dict[str, tuple[str, ...]] = {
    "Action": ("Strike", "Fury", "Bullet", "Chase", "Outlaw", "Vengeance", "Blast", "Siege"),
    "Comedy": ("Laughs", "Mixup", "Wedding", "Roommates", "Prank", "Holiday", "Oops", "Family"),
    "Drama": ("Letters", "Winter", "Silence", "Promise", "Harbour", "Mother", "Years", "Rain"),
    "Horror": ("Shadow", "Crypt", "Whisper", "Haunting", "Blood", "Cellar", "Night", "Curse"),
    "SciFi": ("Orbit", "Android", "Nebula", "Quantum", "Colony", "Signal", "Vector", "Drift"),
    "Romance": ("Heart", "Kiss", "Summer", "Paris", "Forever", "Dance", "Moonlight", "Vow"),
    "Documentary": ("Planet", "Ocean", "History", "Inside", "Truth", "Wild", "Empire", "Makers"),
    "Animation": ("Bunny", "Dragon", "Toy", "Robot", "Island", "Magic", "Puppy", "Castle"),
    "Thriller": ("Alibi", "Witness", "Cipher", "Trap", "Stranger", "Deadline", "Motive", "Edge"),
    "Fantasy": ("Sword", "Realm", "Wizard", "Throne", "Elf", "Quest", "Rune", "Oracle"),
    "Western": ("Saloon", "Canyon", "Sheriff", "Dust", "Frontier", "Rider", "Gold", "Mesa"),
    "Musical": ("Song", "Stage", "Rhythm", "Encore", "Melody", "Jazz", "Chorus", "Tempo"),
}
GENRES: tuple[str, ...] = tuple(GENRE_VOCABULARY)
START = 1_600_000_000  # 2020-09-13, unix seconds


@dataclass(frozen=True)
class Structure:
    """What makes generated behaviour learnable, shared by every generator."""

    seed: int = 7
    series_fraction: float = 0.3  # share of items that belong to a series
    series_continue: float = 0.7  # chance the next event continues an open series
    drift: float = 1.0  # how far tastes move from the first to the last event
    popularity_exponent: float = 1.4  # Zipf exponent of item popularity


@dataclass(frozen=True)
class GeneratorConfig(Structure):
    users: int = 2000
    items: int = 1000
    events: int = 100_000
    start: int = START  # unix seconds; users start within 180 days after it
    # Variations on the same catalogue (for drift windows): behaviour drawn from
    # its own seed, popularity shuffled by its own seed, tastes limited to these genres.
    behaviour_seed: int | None = None
    popularity_seed: int | None = None
    taste_genres: tuple[str, ...] = ()


@dataclass(frozen=True)
class GeneratedData:
    events: pd.DataFrame  # user_id,item_id,event_type,timestamp,rating
    items: pd.DataFrame  # item_id,title,genres,description
    series: dict[str, list[str]]  # series id -> item ids in order


def _catalogue(cfg: GeneratorConfig, rng: np.random.Generator):
    genre_of = rng.integers(0, len(GENRES), size=cfg.items)
    second = rng.integers(0, len(GENRES), size=cfg.items)
    rows, series, item_series = [], {}, {}
    i = 0
    while i < cfg.items:
        g = int(genre_of[i])
        words = GENRE_VOCABULARY[GENRES[g]]
        name = f"{rng.choice(words)} {rng.choice(words)}"
        length = int(rng.integers(3, 7)) if rng.random() < cfg.series_fraction else 1
        length = min(length, cfg.items - i)
        ids = [f"i{i + j:05d}" for j in range(length)]
        for j, item_id in enumerate(ids):
            genres = [GENRES[g]]
            if second[i + j] != g and rng.random() < 0.4:
                genres.append(GENRES[int(second[i + j])])
            title = f"{name} Part {j + 1}" if length > 1 else name
            extra = rng.choice(words, size=6)
            description = (
                f"A {GENRES[g].lower()} story of {' and '.join(extra[:2]).lower()}: "
                f"{' '.join(extra[2:]).lower()}."
            )
            rows.append((item_id, title, "|".join(genres), description, g))
        if length > 1:
            sid = f"s{len(series):04d}"
            series[sid] = ids
            for pos, item_id in enumerate(ids):
                item_series[item_id] = (sid, pos)
        i += length
    items = pd.DataFrame(rows, columns=["item_id", "title", "genres", "description", "g"])
    return items, series, item_series


def generate(cfg: GeneratorConfig = GeneratorConfig()) -> GeneratedData:
    rng = np.random.default_rng(cfg.seed)
    items, series, item_series = _catalogue(cfg, rng)
    n_genres = len(GENRES)
    ids = items["item_id"].to_numpy()
    genre_idx = items["g"].to_numpy()
    # Zipf popularity within the catalogue, shuffled so it is unrelated to id order.
    pop = 1.0 / np.arange(1, cfg.items + 1) ** cfg.popularity_exponent
    pop = pop[(rng if cfg.popularity_seed is None
               else np.random.default_rng(cfg.popularity_seed)).permutation(cfg.items)]
    if cfg.behaviour_seed is not None:
        rng = np.random.default_rng(cfg.behaviour_seed)
    pool = [GENRES.index(g) for g in cfg.taste_genres] or n_genres
    by_genre = [np.flatnonzero(genre_idx == g) for g in range(n_genres)]
    # Series are entered at Part 1 only.
    entry_ok = np.array([item_series.get(x, ("", 0))[1] == 0 for x in ids])
    # Events per user: skewed, at least 5, scaled to the requested total.
    raw = rng.lognormal(mean=0.0, sigma=0.8, size=cfg.users)
    per_user = np.maximum(5, np.round(raw / raw.sum() * cfg.events)).astype(int)
    event_types = np.array(["view", "click", "rating", "add_to_cart", "purchase"])
    type_cdf = np.cumsum([0.45, 0.25, 0.2, 0.06, 0.04])
    out_u, out_i, out_t, out_ts, out_r = [], [], [], [], []
    for u in range(cfg.users):
        n = int(per_user[u])
        k = min(3, len(cfg.taste_genres) or n_genres)
        start_taste = np.zeros(n_genres)
        start_taste[rng.choice(pool, size=k, replace=False)] = rng.dirichlet(np.ones(k))
        end_taste = np.zeros(n_genres)
        end_taste[rng.choice(pool, size=k, replace=False)] = rng.dirichlet(np.ones(k))
        t = cfg.start + int(rng.integers(0, 86400 * 180))
        seen = np.zeros(cfg.items, dtype=bool)
        open_series: tuple[str, int] | None = None
        user_id = f"u{u:05d}"
        # Pre-drawn uniforms: continue-series, genre, item, gap, type, rating.
        draws = rng.random((n, 4))
        gaps = rng.exponential(3600 * 6, size=n).astype(int) + 1
        types = event_types[np.searchsorted(type_cdf, draws[:, 3], side="right")]
        ratings = rng.integers(1, 6, size=n).astype(float)
        for step in range(n):
            item = -1
            if open_series and draws[step, 0] < cfg.series_continue:
                sid, pos = open_series
                item = int(series[sid][pos + 1][1:])
            if item < 0 or seen[item]:
                w = step / max(1, n - 1) * cfg.drift
                taste_cdf = np.cumsum((1 - w) * start_taste + w * end_taste)
                g = int(np.searchsorted(taste_cdf, draws[step, 1] * taste_cdf[-1]))
                g = min(g, n_genres - 1)
                cands = by_genre[g]
                weights = pop[cands] * entry_ok[cands] * ~seen[cands]
                if weights.sum() == 0:  # genre exhausted: any unseen series entry or single
                    cands = np.arange(cfg.items)
                    weights = pop * entry_ok * ~seen
                if weights.sum() == 0:  # nothing left to enter: anything unseen, else anything
                    weights = pop * ~seen if (~seen).any() else pop
                cdf = np.cumsum(weights)
                pick = min(int(np.searchsorted(cdf, draws[step, 2] * cdf[-1], side="right")),
                           len(cands) - 1)
                item = int(cands[pick])
            seen[item] = True
            s = item_series.get(ids[item])
            open_series = s if s and s[1] + 1 < len(series[s[0]]) else None
            t += int(gaps[step])
            etype = str(types[step])
            out_u.append(user_id)
            out_i.append(ids[item])
            out_t.append(etype)
            out_ts.append(t)
            out_r.append(ratings[step] if etype == "rating" else np.nan)
    events = pd.DataFrame(
        {"user_id": out_u, "item_id": out_i, "event_type": out_t, "timestamp": out_ts,
         "rating": out_r}
    )
    # One global stream in time order, as a log would be delivered.
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return GeneratedData(events=events, items=items.drop(columns="g"), series=series)


def write_canonical(data: GeneratedData, directory: Path) -> list[Path]:
    """Write ``events.csv`` and ``items.csv`` (the canonical format) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    events_path, items_path = directory / "events.csv", directory / "items.csv"
    data.events.to_csv(events_path, index=False)
    data.items.to_csv(items_path, index=False)
    return [events_path, items_path]


def write_bulk_events(path: Path, events: int, item_ids: list[str], users: int = 100_000,
                      seed: int = 7, bad_every: int = 1000, chunk: int = 1_000_000) -> int:
    """A large canonical events file for scale tests, written ``chunk`` rows at a
    time: Zipf users and items, one event per second, and every ``bad_every``-th
    row deliberately broken (rotating: unknown item, rating out of range, text
    timestamp, exact duplicate of the row before). No behavioural structure:
    use ``generate`` for data a model should learn from. Returns the bad rows."""
    rng = np.random.default_rng(seed)
    types = np.array(["view", "click", "rating", "add_to_cart", "purchase"])
    items = np.asarray(item_ids, dtype=object)
    bad = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("user_id,item_id,event_type,timestamp,rating\n")
        for start in range(0, events, chunk):
            n = min(chunk, events - start)
            user = (rng.zipf(1.3, n) - 1) % users
            item = (rng.zipf(1.2, n) - 1) % len(items)
            kind = types[rng.choice(5, n, p=[0.45, 0.25, 0.2, 0.06, 0.04])]
            rating = np.where(kind == "rating", rng.integers(1, 6, n).astype(str), "")
            frame = pd.DataFrame({
                "user_id": np.char.add("u", user.astype(str)),
                "item_id": items[item],
                "event_type": kind,
                "timestamp": (START + start + np.arange(n)).astype(str),  # one per second
                "rating": rating,
            })
            rows = np.arange(start, start + n)
            broken = np.flatnonzero((rows % bad_every == bad_every - 1) & (rows > start))
            for k, at in enumerate(broken):
                column, value = [("item_id", "no-such-item"), ("rating", "9"),
                                 ("timestamp", "soon"), (None, None)][(start + k) % 4]
                if column is None:
                    frame.iloc[at] = frame.iloc[at - 1]
                else:
                    frame.iat[at, frame.columns.get_loc(column)] = value
            bad += len(broken)
            frame.to_csv(f, header=False, index=False)
    return bad
