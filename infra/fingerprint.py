"""Content fingerprints of files (lineage: which bytes a model was made from)."""

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path, end: int | None = None) -> str:
    """SHA-256 of a file, or of its first ``end`` bytes."""
    digest = hashlib.sha256()
    remaining = float("inf") if end is None else end
    with open(path, "rb") as f:
        while remaining > 0 and (block := f.read(int(min(CHUNK, remaining)))):
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def tree_sha256(directory: Path, pattern: str = "*.parquet") -> str:
    """One fingerprint for a directory of part files: the SHA-256 of their names and
    content hashes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob(pattern)):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
