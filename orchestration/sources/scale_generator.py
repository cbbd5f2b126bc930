"""Generated data at the scale of a product catalogue (a million items and users,
tens of millions of events), with the structure of the built-in generator
(``generator``): tastes over a few genres that drift, series watched in order,
Zipf popularity, titles and descriptions from per-genre vocabularies.

The built-in generator walks one user and one event at a time over the whole
catalogue; this one draws every user of a chunk at once, one step of their
histories at a time, picks items by binary search in per-genre popularity
tables, and appends each chunk to the canonical files, so memory depends on the
catalogue and the chunk, not on the number of users or events. Two departures
from the built-in generator keep it vectorised: an item a user already saw is
dropped, not drawn again (each user's history is drawn with spare steps and cut
to its length after the drop, so the set holds the events asked for), and the
events file is in time order within each chunk of users, not globally (ingest
orders events itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orchestration.sources.generator import GENRE_VOCABULARY, GENRES, START, Structure

EVENT_TYPES = np.array(["view", "click", "rating", "add_to_cart", "purchase"])
TYPE_SHARES = (0.45, 0.25, 0.2, 0.06, 0.04)
WORDS = np.array([list(GENRE_VOCABULARY[g]) for g in GENRES])  # (G, 8)


@dataclass(frozen=True)
class ScaleConfig(Structure):
    users: int = 1_000_000
    items: int = 1_000_000
    events: int = 20_000_000
    # Flatter than the built-in set's 1.4: over a million items a steeper curve
    # would leave most of the catalogue without a single event.
    popularity_exponent: float = 0.9
    chunk_users: int = 50_000  # users drawn (and held) at once
    # Steps drawn per user beyond its length, as a share of it (plus two): the
    # spare that the drop of already-seen items uses up.
    spare_steps: float = 0.25


@dataclass(frozen=True)
class Catalogue:
    items: pd.DataFrame  # item_id,title,genres,description
    genre: np.ndarray  # (N,) the main genre's index
    next_part: np.ndarray  # (N,) the series' next item, -1 for none
    entry: np.ndarray  # (N,) bool: a single item or a series' first part
    popularity: np.ndarray  # (N,) Zipf weight


def catalogue(cfg: ScaleConfig, rng: np.random.Generator) -> Catalogue:
    n, n_genres = cfg.items, len(GENRES)
    lengths = np.where(rng.random(n) < cfg.series_fraction, rng.integers(3, 7, n), 1)
    lengths = lengths[:int(np.searchsorted(np.cumsum(lengths), n)) + 1]
    lengths[-1] -= lengths.sum() - n  # the last series ends with the catalogue
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,) its series' first item
    part = np.arange(n) - first
    is_series = np.repeat(lengths > 1, lengths)
    genre = np.repeat(rng.integers(0, n_genres, len(lengths)), lengths)
    words = rng.integers(0, WORDS.shape[1], (len(lengths), 2))
    name = pd.Series(WORDS[genre[np.cumsum(lengths) - lengths], words[:, 0]]) + " " + \
        pd.Series(WORDS[genre[np.cumsum(lengths) - lengths], words[:, 1]])
    title = name.repeat(lengths).reset_index(drop=True)
    title = title.where(~is_series, title + " Part " + pd.Series(part + 1).astype(str))
    second = rng.integers(0, n_genres, n)
    two = (second != genre) & (rng.random(n) < 0.4)
    names = np.array(GENRES)
    genres = pd.Series(names[genre]).where(~two, pd.Series(names[genre]) + "|"
                                           + pd.Series(names[second]))
    extra = WORDS[genre[:, None], rng.integers(0, WORDS.shape[1], (n, 6))]  # (N, 6)
    low = np.char.lower(extra.astype(str))
    description = ("A " + pd.Series(np.char.lower(names[genre])) + " story of "
                   + pd.Series(low[:, 0]) + " and " + pd.Series(low[:, 1]) + ": "
                   + pd.Series(low[:, 2]) + " " + pd.Series(low[:, 3]) + " "
                   + pd.Series(low[:, 4]) + " " + pd.Series(low[:, 5]) + ".")
    last = np.repeat(np.cumsum(lengths) - 1, lengths)
    popularity = 1.0 / np.arange(1, n + 1) ** cfg.popularity_exponent
    items = pd.DataFrame({"item_id": pd.Series(np.arange(n)).map("i{:07d}".format),
                          "title": title, "genres": genres, "description": description})
    return Catalogue(items=items, genre=genre,
                     next_part=np.where(np.arange(n) < last, np.arange(n) + 1, -1),
                     entry=part == 0, popularity=popularity[rng.permutation(n)])


class GenrePicker:
    """Draws series entries and single items of a genre by popularity: per genre
    the cumulative weights, searched with a uniform draw."""

    def __init__(self, cat: Catalogue):
        self.members, self.cdfs = [], []
        for g in range(len(GENRES)):
            members = np.flatnonzero((cat.genre == g) & cat.entry)
            cdf = np.cumsum(cat.popularity[members])
            self.members.append(members)
            self.cdfs.append(cdf / cdf[-1] if len(cdf) else cdf)

    def pick(self, genres: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        out = np.empty(len(genres), dtype=np.int64)
        for g, (members, cdf) in enumerate(zip(self.members, self.cdfs, strict=True)):
            rows = np.flatnonzero(genres == g)
            if len(rows):
                out[rows] = members[np.minimum(np.searchsorted(cdf, uniforms[rows]),
                                               len(members) - 1)]
        return out


def _tastes(rng: np.random.Generator, users: int) -> np.ndarray:
    """(U, G) weights over three genres per user, summing to 1."""
    picked = rng.random((users, len(GENRES))).argsort(axis=1)[:, :3]
    taste = np.zeros((users, len(GENRES)))
    np.put_along_axis(taste, picked, rng.dirichlet(np.ones(3), size=users), axis=1)
    return taste


def _chunk_events(cfg: ScaleConfig, cat: Catalogue, picker: GenrePicker,
                  rng: np.random.Generator, first_user: int, per_user: np.ndarray,
                  ) -> pd.DataFrame:
    """The events of users first_user.. (``per_user`` events each: fewer only for
    a user whose spare steps all repeated seen items), in time order."""
    users = len(per_user)
    start, end = _tastes(rng, users), _tastes(rng, users)
    wanted = per_user
    per_user = wanted + np.ceil(wanted * cfg.spare_steps).astype(np.int64) + 2
    longest = int(per_user.max())
    items = np.full((users, longest), -1, dtype=np.int64)
    previous = np.full(users, -1, dtype=np.int64)
    for step in range(longest):
        active = np.flatnonzero(per_user > step)
        drift = (step / np.maximum(1, per_user[active] - 1) * cfg.drift)[:, None]
        taste = np.cumsum((1 - drift) * start[active] + drift * end[active], axis=1)
        genre = (taste < rng.random(len(active))[:, None] * taste[:, -1:]).sum(axis=1)
        chosen = picker.pick(np.minimum(genre, len(GENRES) - 1), rng.random(len(active)))
        following = cat.next_part[np.maximum(previous[active], 0)]
        carry_on = ((previous[active] >= 0) & (following >= 0)
                    & (rng.random(len(active)) < cfg.series_continue))
        chosen[carry_on] = following[carry_on]
        items[active, step] = chosen
        previous[active] = chosen
    user_of, step_of = np.nonzero(items >= 0)
    frame = pd.DataFrame({"user": user_of, "item": items[user_of, step_of], "step": step_of})
    frame = frame[~frame.duplicated(["user", "item"])]  # seen already: dropped
    frame = frame[frame.groupby("user").cumcount().to_numpy() < wanted[frame["user"]]]
    n = len(frame)
    gaps = rng.exponential(3600 * 6, n).astype(np.int64) + 1
    begins = START + rng.integers(0, 86400 * 180, users)
    times = begins[frame["user"].to_numpy()] + pd.Series(gaps).groupby(
        frame["user"].to_numpy()).cumsum().to_numpy()
    kind = EVENT_TYPES[np.searchsorted(np.cumsum(TYPE_SHARES), rng.random(n), side="right")
                       .clip(max=len(EVENT_TYPES) - 1)]
    rating = np.where(kind == "rating", rng.integers(1, 6, n).astype(str), "")
    out = pd.DataFrame({
        "user_id": pd.Series(frame["user"].to_numpy() + first_user).map("u{:07d}".format),
        "item_id": cat.items["item_id"].to_numpy()[frame["item"].to_numpy()],
        "event_type": kind, "timestamp": times, "rating": rating})
    return out.sort_values("timestamp", kind="stable")


def write_scale_set(cfg: ScaleConfig, directory: Path) -> dict[str, int]:
    """``items.csv`` and ``events.csv`` (the canonical format) in ``directory``,
    written a chunk of users at a time; how many items, users and events."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    cat = catalogue(cfg, rng)
    cat.items.to_csv(directory / "items.csv", index=False, chunksize=200_000)
    picker = GenrePicker(cat)
    raw = rng.lognormal(mean=0.0, sigma=0.8, size=cfg.users)
    per_user = np.maximum(5, np.ceil(raw / raw.sum() * cfg.events)).astype(np.int64)
    del raw
    written = 0
    with open(directory / "events.csv", "w", encoding="utf-8", newline="") as f:
        f.write("user_id,item_id,event_type,timestamp,rating\n")
        for first in range(0, cfg.users, cfg.chunk_users):
            chunk = _chunk_events(cfg, cat, picker, rng, first,
                                  per_user[first:first + cfg.chunk_users])
            chunk.to_csv(f, header=False, index=False)
            written += len(chunk)
    return {"items": cfg.items, "users": cfg.users, "events": written}
