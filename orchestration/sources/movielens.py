"""MovieLens-100K (GroupLens): ``u.data`` (tab-separated ``user item rating
timestamp``) and ``u.item`` (``|``-separated, latin-1, 19 genre flags)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestration.sources.base import LineFormat, Source, csv_split, finish_items

# The order of the genre flags in u.item (u.genre of the GroupLens release).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


# MovieLens ids are positive integers; anything else in an id field is bad data.
NUMERIC_ID = r"^[0-9]{1,10}$"
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def ratings_format(split, delimiter: str, encoding: str, header: bool = False) -> LineFormat:
    """A MovieLens ratings file: user, item, rating, timestamp; every line a rating."""
    return LineFormat(split=split, columns=RATING_COLUMNS, encoding=encoding, header=header,
                      constants={"event_type": "rating"}, delimiter=delimiter)


def _tab_split(line: str) -> list[str]:
    return line.split("	")


def _colons_split(line: str) -> list[str]:
    return line.split("::")


@dataclass(frozen=True)
class MovieLens100K(Source):
    def line_format(self, path: Path) -> LineFormat:
        return ratings_format(_tab_split, "\t", "latin-1")

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




@dataclass(frozen=True)
class MovieLens1M(Source):
    """``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
    (``MovieID::Title::Genres``, genres ``|``-separated), latin-1."""

    def line_format(self, path: Path) -> LineFormat:
        return ratings_format(_colons_split, "::", "latin-1")

    def items(self) -> pd.DataFrame:
        (path,) = self.item_files
        rows = [line.rstrip("\r\n").split("::", 2)
                for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
        frame = pd.DataFrame(rows, columns=["item_id", "title", "genres"])
        return finish_items(frame)


@dataclass(frozen=True)
class MovieLensLatest(Source):
    """``ratings.csv`` (``userId,movieId,rating,timestamp``), ``movies.csv``
    (``movieId,title,genres``) and optional ``tags.csv`` (``userId,movieId,tag,timestamp``),
    UTF-8 with a header row; tags become the item description."""

    def line_format(self, path: Path) -> LineFormat:
        return ratings_format(csv_split, ",", "utf-8", header=True)

    def items(self) -> pd.DataFrame:
        movies = self.item_files[0]
        frame = pd.read_csv(movies, dtype=str, keep_default_na=False, encoding="utf-8",
                            encoding_errors="replace").rename(columns={"movieId": "item_id"})
        frame["genres"] = frame["genres"].replace("(no genres listed)", "")
        tags = self.directory / "tags.csv"
        if tags.exists():
            tag_frame = pd.read_csv(tags, dtype=str, keep_default_na=False, encoding="utf-8",
                                    encoding_errors="replace")
            text = (tag_frame.groupby("movieId")["tag"]
                    .agg(lambda t: ", ".join(dict.fromkeys(x.strip() for x in t if x.strip()))))
            frame["description"] = frame["item_id"].map(text).fillna("")
        return finish_items(frame)


def _detector(kind: type[Source], name: str, ratings: str, movies: str,
              rating_range: tuple[float, float]) -> Callable[[Path], Source | None]:
    """The adapter when ``ratings`` is in the directory (``movies`` is then required)."""
    def detect(directory: Path) -> Source | None:
        if not (directory / ratings).exists():
            return None
        return kind(name=name, directory=directory, event_files=(directory / ratings,),
                    item_files=(directory / movies,), rating_range=rating_range,
                    id_pattern=NUMERIC_ID)
    return detect


movielens_100k = _detector(MovieLens100K, "movielens-100k", "u.data", "u.item", (1.0, 5.0))
movielens_1m = _detector(MovieLens1M, "movielens-1m", "ratings.dat", "movies.dat", (1.0, 5.0))
movielens_latest = _detector(MovieLensLatest, "movielens-latest", "ratings.csv", "movies.csv",
                             (0.5, 5.0))
