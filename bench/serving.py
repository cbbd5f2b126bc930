"""``make bench SECTIONS=serving``: the real service under load, on this machine.

1. A MovieLens-100K champion: the pipeline on ``../shared/data/ml-100k`` in a
   temporary RECSYS_HOME (``BENCH_HOME`` reuses one that already has a
   champion); ``BENCH_SERVING_EPOCHS`` (default 5) epochs: latency does not
   depend on how long the model trained.
2. The in-process floor: feature read (Redis) + encode + top-10, no HTTP; back
   to back, and paced at one worker's share of 200 req/s (``PACED_RATE``).
3. ``bentoml serve`` with the embedded Redis, then an open-loop load generator
   on loopback: requests are sent on a fixed schedule (``rate`` per second, for
   ``BENCH_SERVING_SECONDS``, default 30) whatever the answers do, for random
   users; latency is measured from each request's scheduled time, so a slow
   server cannot hide queueing by slowing the client down. Requests take turns
   on ``CONNECTIONS`` keep-alive connections, as many clients' would. At most
   ``MAX_IN_FLIGHT`` requests are outstanding; a request over that is an error.
4. Event-to-visible: ``/events`` with an item, then ``/recommend`` no longer
   offers it; the time from sending the event to that answer.
5. Queries: the query encoder's cost per precision in process (one short text,
   one thread) with its agreement with float32 on the served catalogue; then
   ``/recommend`` at ``QUERY_RATE`` with no query, with a distinct (never
   cached) query in every request, and with queries from a small warmed pool.
"""

import asyncio
import collections
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvloop

from bench.features import percentiles, print_latency_table, timed
from bench.report import markdown as report_markdown
from bench.report import table
from infra import redis_server
from infra.collector import collector_settled
from infra.processes import free_port
from infra.settings import Settings
from orchestration.cli import start_service, stop_service, wait_ready
from training import registry

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
RATES = (50, 100, 200, 400)
BATCH_SIZES = (1, 2, 4, 8, 16)
MAX_IN_FLIGHT = 256
# Keep-alive connections the load generator opens before a schedule starts, used
# in turn: many clients' share of the traffic, which the server's workers divide.
CONNECTIONS = 16
# A worker's share of 200 req/s over the default two workers.
PACED_RATE = 100
API_KEY = "bench"
QUERY_RATE = 100
QUERY_WORDS = ("comedy", "horror", "romance", "war", "space", "western", "family", "crime",
               "musical", "animated", "documentary", "thriller", "funny", "dark", "classic",
               "film", "about", "love", "story", "adventure")
QUERY_POOL = 50  # the distinct queries of the cached scenario


def query_text(i: int, distinct: bool) -> str:
    """Three words of QUERY_WORDS picked by ``i`` (a pool of QUERY_POOL when not
    ``distinct``), plus ``i`` itself when distinct, so no two requests share one."""
    n = len(QUERY_WORDS)
    j = i if distinct else i % QUERY_POOL
    words = [QUERY_WORDS[(j * 7) % n], QUERY_WORDS[(j * 3 + 1) % n], QUERY_WORDS[(j + 5) % n]]
    return " ".join(words) + (f" {i}" if distinct else "")


def prepare(settings: Settings) -> None:
    if registry.alias_version(settings.tracking_uri(), registry.CHAMPION):
        return
    from dagster import materialize

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.resources import resources_from_settings

    epochs = int(os.environ.get("BENCH_SERVING_EPOCHS", "5"))
    result = materialize([*ASSETS, *CHECKS], resources=resources_from_settings(settings),
                         run_config={"ops": {"behaviour_encoder_version": {
                             "config": {"epochs": epochs}}}})
    assert result.success


class Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: a load generator
    much cheaper per request than a general client, so that on two cores it
    takes less CPU away from the server it measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 api_key: str = API_KEY):
        self.reader, self.writer, self.api_key = reader, writer, api_key
        self.closing = False

    @classmethod
    async def open(cls, host: str, port: int, api_key: str = API_KEY) -> "Connection":
        return cls(*await asyncio.open_connection(host, port), api_key=api_key)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one request on this connection; ``closing`` is set
        when the server answered ``Connection: close``."""
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {self.api_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
            elif line.startswith(b"connection:") and b"close" in line:
                self.closing = True
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class Sample:
    """One scheduled request: when it was due and sent, when (and how) it was
    answered; ``done`` None when it got no answer (``error`` says why)."""

    scheduled: float
    sent: float | None = None
    done: float | None = None
    status: int | None = None
    body: bytes = b""
    error: str | None = None

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.scheduled


async def drive(port: int, users: list[str], rate: float, seconds: float,
                timeout_s: float = 10.0, api_key: str = API_KEY,
                query: Callable[[int], str] | None = None,
                connections: int = CONNECTIONS) -> list[Sample]:
    """``/recommend`` for random users on a fixed schedule (open loop), ``rate`` per
    second for ``seconds``: every request's sample, in schedule order; with
    ``query``, request i asks ``query(i)``.

    Each request goes out on the connection idle longest among ``connections``
    opened beforehand; one is opened when none is idle, as a client's pool does,
    and one the server answered ``Connection: close`` on is closed. A connection
    is served by one worker of the server, so reusing the one idle shortest would,
    at rates where requests seldom overlap, put nearly all of them on one worker."""
    clock = time.perf_counter  # not loop.time(): uvloop's has millisecond resolution
    samples: list[Sample] = []
    opened = [await Connection.open("127.0.0.1", port, api_key) for _ in range(connections)]
    idle = collections.deque(opened)
    in_flight = 0

    async def one(sample: Sample, user: str, asked: str | None) -> None:
        nonlocal in_flight
        in_flight += 1
        connection = idle.popleft() if idle else None
        if connection is not None and connection.reader.at_eof():
            connection.close()  # the server closed it while idle (keep-alive timeout)
            connection = None
        try:
            if connection is None:
                connection = await Connection.open("127.0.0.1", port, api_key)
                opened.append(connection)
            body = (f'{{"user_id": "{user}", "k": 10}}' if asked is None else
                    f'{{"user_id": "{user}", "k": 10, "query": "{asked}"}}').encode()
            sample.sent = clock()
            sample.status, sample.body = await asyncio.wait_for(
                connection.post("/recommend", body), timeout_s)
            sample.done = clock()
            if connection.closing:  # the server closes it (a later request opens anew)
                connection.close()
            else:
                idle.append(connection)
        except TimeoutError:
            sample.error = "timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError):
            sample.error = "exception"
        finally:
            in_flight -= 1

    tasks = []
    loop = asyncio.get_running_loop()
    paced = loop.create_future()

    def launch(sample: Sample) -> None:
        samples.append(sample)
        if in_flight >= MAX_IN_FLIGHT:
            sample.error = "over_in_flight"
        else:
            asked = None if query is None else query(len(samples))
            tasks.append(asyncio.create_task(one(sample, random.choice(users), asked)))

    def pace() -> None:
        # The event loop's timers have millisecond resolution (epoll's timeout, and
        # libuv's under uvloop): a sleep there sends up to 1 ms late, and that delay
        # would count as the server's latency. time.sleep in a thread wakes within
        # tens of microseconds; the loop then starts the request at once.
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - clock()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, Sample(scheduled=scheduled))
        loop.call_soon_threadsafe(paced.set_result, None)

    # The generator runs in a process holding the stack (and in the scale bench a
    # million-item model): a full collection there would hold the pacer and the
    # loop for longer than a request's deadline, and the burst sent after it would
    # count as the server's latency.
    with collector_settled():
        start = clock() + 0.05
        threading.Thread(target=pace, name="pacer", daemon=True).start()
        await paced
        await asyncio.gather(*tasks)
    for connection in opened:
        connection.close()
    return samples


def degraded_reason(body: bytes) -> str:
    """A degraded answer's reason up to its first colon ("past the request deadline",
    "no history", ...): the kind, without the details that vary per request."""
    found = re.search(rb'"reason":"([^":]*)', body)
    return found.group(1).decode() if found else "unknown"


async def open_loop(port: int, users: list[str], rate: float, seconds: float,
                    query: Callable[[int], str] | None = None) -> dict:
    """``drive``, summarised: achieved rate, latency percentiles of the 200s, errors."""
    samples = await drive(port, users, rate, seconds, query=query)
    ok = [x for x in samples if x.status == 200]
    errors = {"status": sum(x.status not in (None, 200) for x in samples)}
    for x in samples:
        if x.error:
            errors[x.error] = errors.get(x.error, 0) + 1
    elapsed = max(x.done or x.scheduled for x in samples) - samples[0].scheduled
    reasons: dict[str, int] = {}
    for x in ok:
        if b'"degraded":true' in x.body:
            reason = degraded_reason(x.body)
            reasons[reason] = reasons.get(reason, 0) + 1
    row = {"target_rps": rate, "achieved_rps": round(len(ok) / elapsed, 1),
           "requests": len(samples), "errors": sum(errors.values()),
           "degraded": sum(reasons.values()), "degraded_reasons": reasons, **{
               f"errors_{k}": v for k, v in errors.items() if v}}
    if ok:
        row.update(percentiles([x.latency for x in ok]))
        row["send_lateness"] = percentiles([x.sent - x.scheduled for x in ok])
    return row


def event_to_visible(url: str, users: list[str], samples: int = 100) -> dict:
    times = []
    with httpx.Client(timeout=10, headers={"X-API-Key": API_KEY}) as http:
        for _ in range(samples):
            user = random.choice(users)
            item = http.post(f"{url}/recommend", json={"user_id": user, "k": 1}
                             ).json()["items"][0]["item_id"]
            started = time.perf_counter()
            http.post(f"{url}/events", json={"events": [
                {"user_id": user, "item_id": item, "event_type": "click"}]})
            after = http.post(f"{url}/recommend", json={"user_id": user, "k": 10}).json()
            times.append(time.perf_counter() - started)
            assert item not in [i["item_id"] for i in after["items"]]
    return percentiles(times)


def in_process_floor(settings: Settings, users: list[str]) -> dict:
    """Float and int8 encoders: the floor (read + encode + top-10) and test NDCG@10."""
    import torch

    from orchestration.offline import read_validated_events
    from serving.online import OnlineFeatures
    from serving.scoring import load_served_model, recommend
    from training.evaluate import evaluate
    from training.sequences import leave_one_out
    from training.train import model_scorer

    torch.set_num_threads(1)
    server = redis_server.ensure(settings)
    online = OnlineFeatures(server.client(), settings.feast_project, settings.recent_items)
    split = leave_one_out(read_validated_events(settings))
    out = {}
    for name, quantize in (("float32", False), ("int8", True)):
        served = load_served_model(settings.tracking_uri(), quantize=quantize)

        def floor(user: str, served=served) -> object:
            return recommend(served, online.recent(user), 10, True, user_id=user)

        timed(floor, users, 200)
        out[name] = {**percentiles(timed(floor, users, 2000)), "test_ndcg_at_10": round(
            evaluate(model_scorer(served.model), split, served.index, "test")["ndcg_at_10"], 4)}
        if not quantize:
            out["float32_paced"] = percentiles(paced(floor, users, PACED_RATE, 1000))
    out["int8_relative_ndcg_change"] = round(
        out["int8"]["test_ndcg_at_10"] / out["float32"]["test_ndcg_at_10"] - 1, 4)
    out["batched_scoring"] = batched_scoring_cost(
        load_served_model(settings.tracking_uri()), online, users)
    return out


def query_encoder_cost(settings: Settings, repeat: int = 300) -> dict:
    """Per variant of the text encoder (precision, eager or traced): the time to
    embed one distinct short query (one thread), and against eager float32 the
    cosine of its embeddings and the overlap of the top 10 items it ranks on the
    catalogue's text embeddings; ``served`` names the variant a worker runs."""
    import pandas as pd
    import torch

    from feature_repo.data_sources import ITEM_CONTENT_FILE
    from serving.query import QUERY_PRECISION
    from training.text_encoder import TextEncoder, native_bfloat16

    torch.set_num_threads(1)
    uri = settings.tracking_uri()
    directory = registry.text_encoder_dir(uri, registry.alias_version(
        uri, registry.CHAMPION, registry.TEXT_MODEL_NAME))
    content = np.stack(pd.read_parquet(settings.offline_dir / ITEM_CONTENT_FILE,
                                       columns=["text_embedding"])["text_embedding"])
    texts = [query_text(i, distinct=True) for i in range(repeat)]
    variants = [("float32", False), ("float32", True), ("int8", False), ("int8", True)]
    variants += [("bfloat16", False)] if native_bfloat16() else []
    out, exact = {"served": f"{QUERY_PRECISION} traced"}, None
    for precision, traced in variants:
        encoder = TextEncoder(directory, precision=precision, traced=traced)
        for text in texts[:20]:  # warm-up
            encoder.encode([text])
        times, vectors = [], []
        for text in texts:
            started = time.perf_counter()
            vectors.append(encoder.encode([text])[0])
            times.append(time.perf_counter() - started)
        vectors = np.stack(vectors)
        exact = vectors if exact is None else exact
        top = [np.argsort(-(v @ content.T), axis=1)[:, :10] for v in (exact, vectors)]
        overlap = [len(set(a) & set(b)) / 10 for a, b in zip(*top, strict=True)]
        cosine = (exact * vectors).sum(axis=1)
        out[precision + (" traced" if traced else "")] = {
            **percentiles(times), "cosine_mean": round(float(cosine.mean()), 4),
            "cosine_min": round(float(cosine.min()), 4),
            "top10_overlap": round(float(np.mean(overlap)), 3)}
    return out


async def query_load(port: int, users: list[str], seconds: float) -> list[dict]:
    """``/recommend`` at QUERY_RATE: without a query, with queries of a warmed pool
    of QUERY_POOL (cached by now in every worker), and with a distinct query in
    every request (last: a service it overloads works through the backlog after
    the client gave up, which would count against the next scenario)."""
    for i in range(QUERY_POOL * 8):  # both workers see each pool query
        await drive(port, users[:1], 1000, 0.001, query=lambda _, i=i: query_text(i, False))
    rows = []
    for label, query in (("no query", None),
                         (f"pool of {QUERY_POOL} queries, cached",
                          lambda i: query_text(i, False)),
                         ("distinct query, never cached", lambda i: query_text(i, True))):
        before = query_cache_lookups(port)
        row = await open_loop(port, users, QUERY_RATE, seconds, query=query)
        after = query_cache_lookups(port)
        rows.append({"scenario": label, **row, **{
            f"cache_{kind}": int(after[kind] - before[kind]) for kind in after}})
    return rows


def query_cache_lookups(port: int) -> dict[str, float]:
    """The service's query-cache hits and misses so far, over its workers."""
    from serving.query import cache_lookups

    return cache_lookups(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                                   headers={"X-API-Key": API_KEY}).text)


def paced(fn, users: list[str], rate: float, repeat: int) -> list[float]:
    """``timed`` at a fixed rate, the process asleep between calls: what a
    service worker's requests meet (caches cooled and cores idled by the other
    processes in between), without HTTP. Back to back, the same calls run warm."""
    samples, due = [], time.perf_counter()
    for _ in range(repeat):
        due += 1 / rate
        samples.extend(timed(fn, users, 1))
        time.sleep(max(0.0, due - time.perf_counter()))
    return samples


def batched_scoring_cost(served, online, users: list[str], repeat: int = 300) -> dict:
    """What batching could save: median encode + score time per user when
    ``size`` users are scored together (the traced encoder takes any batch)."""
    import torch

    from training.sequences import pad_left

    histories = [(served.index.encode(online.recent(u)), u) for u in users[:200]]
    out = {}
    for size in BATCH_SIZES:
        samples = []
        for _ in range(repeat):
            picked = random.sample(histories, size)
            seq = pad_left([h for h, _ in picked], served.model.config.max_len)
            rows = served.model.user_rows([u for _, u in picked])
            started = time.perf_counter()
            with torch.inference_mode():
                served.model.logits(served.encoder(seq, rows)[0], served.table)
            samples.append(time.perf_counter() - started)
        out[f"batch_{size}"] = {"per_user_ms": round(float(np.median(samples)) * 1000 / size, 3)}
    return out


def handler_kind() -> str:
    """Whether the service's endpoints are ``async def`` (run on the event loop) or
    ``def`` (run in BentoML's thread pool)."""
    import inspect

    from serving.service import Recommender

    method = Recommender.inner.recommend if hasattr(Recommender, "inner") else None
    method = method or Recommender.recommend
    function = getattr(method, "func", method)
    return "async" if inspect.iscoroutinefunction(function) else "sync"


def benchmark() -> dict:
    random.seed(0)
    home = Path(os.environ.get("BENCH_HOME") or tempfile.mkdtemp(prefix="recsys_bench_"))
    settings = Settings(home=home, source=ML100K)
    print(f"state: {home}")
    prepare(settings)
    from orchestration.offline import read_validated_events

    users = read_validated_events(settings, columns=["user_id"])["user_id"].unique().tolist()
    seconds = float(os.environ.get("BENCH_SERVING_SECONDS", "30"))
    results: dict = {"in_process_floor": in_process_floor(settings, users),
                     "query_encoder": query_encoder_cost(settings),
                     "handlers": handler_kind(), "seconds_per_rate": seconds}
    port = free_port()
    process = start_service(settings, port, settings.home / "bench_serve.log",
                            env={"RECSYS_API_KEY": API_KEY, "RECSYS_SOURCE": str(ML100K)})
    try:
        wait_ready(port, process)
        url = f"http://127.0.0.1:{port}"
        # uvloop (a dependency of BentoML's server): its wake-ups are ~0.7 ms
        # closer to schedule than asyncio's on this machine, so less of the
        # generator's own lateness is counted as the server's latency.
        uvloop.run(open_loop(port, users, 50, 5))  # warm-up, not reported
        results["load"] = [uvloop.run(open_loop(port, users, rate, seconds)) for rate in RATES]
        results["event_to_visible"] = event_to_visible(url, users)
        results["query_load"] = uvloop.run(query_load(port, users, seconds))
    finally:
        stop_service(settings)
    floor = results["in_process_floor"]
    print_latency_table({"floor float32 (in process)": floor["float32"],
                         f"floor float32 paced {PACED_RATE}/s": floor["float32_paced"],
                         "floor int8 (in process)": floor["int8"],
                         "event-to-visible": results["event_to_visible"]})
    print("encode + score per user, float32, batch " + ", ".join(
        f"{name.split('_')[1]}: {row['per_user_ms']} ms"
        for name, row in floor["batched_scoring"].items()))
    print(f"test NDCG@10 float32 {floor['float32']['test_ndcg_at_10']}, int8 "
          f"{floor['int8']['test_ndcg_at_10']} ({floor['int8_relative_ndcg_change']:+.2%})")
    print(f"\n{'target rps':>10} {'achieved':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7}")
    for row in results["load"]:
        print(f"{row['target_rps']:>10} {row['achieved_rps']:>9} {row.get('p50_ms', np.nan):>8} "
              f"{row.get('p95_ms', np.nan):>8} {row.get('p99_ms', np.nan):>8} {row['errors']:>7}")
    for row in results["load"]:
        if row["target_rps"] == 200 and "p50_ms" in row:
            print("p50 at 200 req/s against the floor's p50: " + ", ".join(
                f"{row['p50_ms'] / floor[name]['p50_ms']:.2f}x {label}" for name, label in (
                    ("float32", "back to back"), ("float32_paced", f"paced {PACED_RATE}/s"))))
    print(report_markdown(query_tables(results)))
    if not os.environ.get("BENCH_HOME"):
        redis_server.stop(settings)
    return results


def query_tables(results: dict) -> list[dict]:
    if "query_encoder" not in results:  # runs from before the query path
        return []
    variants = {name: r for name, r in results["query_encoder"].items() if name != "served"}
    served = results["query_encoder"].get("served", "int8")
    encoder = [[name, r["p50_ms"], r["p99_ms"], r["cosine_mean"], r["cosine_min"],
                r["top10_overlap"]] for name, r in variants.items()]
    load = [[r["scenario"], r["achieved_rps"], r.get("p50_ms"), r.get("p95_ms"),
             r.get("p99_ms"), r["errors"], r.get("cache_miss")] for r in results["query_load"]]
    return [
        table("Query encoder, one short query, one thread (agreement with eager float32; "
              f"the top-10 overlap over the catalogue; served: {served})",
              ["variant", "p50 ms", "p99 ms", "cosine mean", "cosine min",
               "top-10 overlap"], encoder),
        table(f"/recommend with queries at {QUERY_RATE} req/s",
              ["requests", "achieved", "p50 ms", "p95 ms", "p99 ms", "errors",
               "query embeddings (cache misses)"], load),
    ]


def tables(results: dict) -> list[dict]:
    floor = results["in_process_floor"]
    latency = [[name, r["p50_ms"], r["p99_ms"]] for name, r in (
        ("in-process floor, float32, back to back", floor["float32"]),
        (f"in-process floor, float32, paced {PACED_RATE}/s", floor["float32_paced"]),
        ("in-process floor, int8, back to back", floor["int8"]),
        ("event-to-visible (/events then /recommend)", results["event_to_visible"]))]
    load = [[r["target_rps"], r["achieved_rps"], r.get("p50_ms"), r.get("p95_ms"),
             r.get("p99_ms"), r["errors"], r.get("degraded")] for r in results["load"]]
    return [
        table("Floors and event-to-visible", ["measure", "p50 ms", "p99 ms"], latency),
        table(f"/recommend under open-loop load ({results['handlers']} handlers, "
              f"{results['seconds_per_rate']:g} s per rate)",
              ["target req/s", "achieved", "p50 ms", "p95 ms", "p99 ms", "errors", "degraded"],
              load),
        *query_tables(results),
    ]
