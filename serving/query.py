"""The query path of a serving worker: what a user types, embedded at request
time by the served ``item_text_encoder`` (int8, one thread: a short text costs a
few milliseconds) and kept in a bounded LRU cache, so a repeated query (a
popular search, a page refresh) costs a dictionary lookup."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cache
from pathlib import Path

import numpy as np

from training.text_encoder import TextEncoder

QUERY_PRECISION = "int8"
CACHE_METRIC = "recsys_query_cache"


@cache
def _lookups():
    """The process's query-cache counter. prometheus_client is imported here, at
    first use, not with the module: a BentoML worker points it at the shared
    multiprocess directory after importing the service, and a client imported
    before that would count into a registry ``/metrics`` never reads."""
    from prometheus_client import Counter

    return Counter(CACHE_METRIC, "Query embedding cache lookups.", ["result"])


def cache_lookups(metrics: str) -> dict[str, float]:
    """``{"hit": n, "miss": m}`` from a ``/metrics`` page (0 before any query)."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {"hit": 0.0, "miss": 0.0}
    for family in text_string_to_metric_families(metrics):
        if family.name == CACHE_METRIC:
            found.update({s.labels["result"]: s.value for s in family.samples
                          if s.name.endswith("_total")})
    return found


class QueryEncoder:
    def __init__(self, model_dir: Path, cache_size: int, precision: str = QUERY_PRECISION):
        self.encoder = TextEncoder(model_dir, precision=precision, traced=True)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # handler threads share the cache
        self.hits = self.misses = 0
        self._hit, self._miss = (_lookups().labels(result) for result in ("hit", "miss"))

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def vector(self, query: str) -> np.ndarray:
        """(T,) unit float32 embedding of a cleaned query (``training.query.clean_query``)."""
        with self._lock:
            found = self._cache.get(query)
            if found is not None:
                self._cache.move_to_end(query)
                self.hits += 1
                self._hit.inc()
                return found
        vector = self.encoder.encode([query])[0]
        vector.setflags(write=False)  # shared by every request that asks the same
        self._miss.inc()
        with self._lock:
            self.misses += 1
            if self.cache_size > 0:
                self._cache[query] = vector
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vector
