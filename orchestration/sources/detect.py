"""Pick the adapter for a source directory by the files present."""

from __future__ import annotations

from pathlib import Path

from orchestration.sources.base import Source, SourceFormatError
from orchestration.sources.canonical import canonical
from orchestration.sources.movielens import movielens_1m, movielens_100k, movielens_latest

EXPECTED = (
    "MovieLens-100K: u.data, u.item (u.user optional); "
    "MovieLens-1M: ratings.dat, movies.dat (users.dat optional); "
    "MovieLens latest: ratings.csv, movies.csv (tags.csv optional); "
    "canonical: events.csv or events.parquet (or one events*.csv / events*.parquet "
    "file per day or batch), and items.csv"
)
DETECTORS = (movielens_100k, movielens_1m, movielens_latest, canonical)


def detect_source(directory: Path) -> Source:
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceFormatError(f"RECSYS_SOURCE {directory} is not a directory. "
                                f"Expected one of: {EXPECTED}")
    for detector in DETECTORS:
        source = detector(directory)
        if source is not None:
            missing = [p.name for p in source.files if not p.exists()]
            if missing:
                raise SourceFormatError(f"{directory} looks like {source.name} but {missing} "
                                        f"is missing. Expected one of: {EXPECTED}")
            return source
    present = sorted(p.name for p in directory.iterdir())[:20]
    raise SourceFormatError(f"{directory} is in no known format (found {present}). "
                            f"Expected one of: {EXPECTED}")
