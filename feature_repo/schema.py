"""The event and item schema that adapters, validation, features, training and
serving agree on (canonical format of DESIGN.md)."""

from __future__ import annotations

import pandas as pd

EVENT_TYPES: tuple[str, ...] = ("view", "click", "rating", "add_to_cart", "purchase")

# Columns of a raw event as every adapter hands it over (values as read, strings).
EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "timestamp", "rating")
# Where each raw row came from (lineage, quarantine), and why a line could not be
# split into fields (None when it could).
PROVENANCE_COLUMNS: tuple[str, ...] = ("source_file", "source_row", "parse_error")

ITEM_COLUMNS: tuple[str, ...] = ("item_id", "title", "genres", "description")
GENRE_SEPARATOR = "|"

# Ids: strings of letters, digits and ``_ . : -``, at most 64 characters.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
ID_MAX_LENGTH = 64

# Timestamps before this are treated as invalid (unix seconds of 1990-01-01).
MIN_TIMESTAMP = 631152000
# Timestamps more than this far in the future are treated as invalid.
FUTURE_TOLERANCE_S = 86400


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Unix seconds or ISO-8601 strings -> float unix seconds (NaN if unparseable).
    ISO-8601 without a zone is read as UTC."""
    text = values.astype("string").str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    iso = pd.to_datetime(text.where(numeric.isna()), errors="coerce", utc=True, format="ISO8601")
    iso_seconds = (iso - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return numeric.fillna(iso_seconds).astype(float)
