"""MovieLens-100K (GroupLens): ``u.data`` (tab-separated ``user item rating
timestamp``) and ``u.item`` (``|``-separated, latin-1, 19 genre flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestration.sources.base import Source, finish_events, finish_items

# The order of the genre flags in u.item (u.genre of the GroupLens release).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


@dataclass(frozen=True)
class MovieLens100K(Source):
    def events(self) -> pd.DataFrame:
        (path,) = self.event_files
        frame = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False,
                            names=["user_id", "item_id", "rating", "timestamp"],
                            encoding="latin-1")
        frame["event_type"] = "rating"
        return finish_events(frame, path)

    def items(self) -> pd.DataFrame:
        (path,) = self.item_files
        columns = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
        frame = pd.read_csv(path, sep="|", header=None, dtype=str, keep_default_na=False,
                            names=columns + list(ML100K_GENRES), encoding="latin-1")
        flags = frame[list(ML100K_GENRES)] == "1"
        frame["genres"] = flags.apply(lambda row: "|".join(g for g, on in row.items() if on),
                                      axis=1)
        frame["description"] = "Released " + frame["release_date"].where(
            frame["release_date"] != "", "on an unknown date")
        return finish_items(frame)


def movielens_100k(directory: Path) -> MovieLens100K | None:
    data, item = directory / "u.data", directory / "u.item"
    if not data.exists():
        return None
    return MovieLens100K(name="movielens-100k", directory=directory, event_files=(data,),
                         item_files=(item,), rating_range=(1.0, 5.0))
