"""``make bench SECTIONS=scale``: the real pipeline and the real service at a
product catalogue's size, on this machine.

1. Data: ``orchestration.sources.scale_generator`` writes ``BENCH_SCALE_ITEMS``
   items (default 1,000,000), ``BENCH_SCALE_USERS`` users (1,000,000) and
   ``BENCH_SCALE_EVENTS`` events (20,000,000) into ``$BENCH_HOME/source`` (a
   later run with the same sizes and ``BENCH_HOME`` reuses it, and resumes the
   pipeline after the last stage that succeeded, ``$BENCH_HOME/stages.json``).
2. The pipeline with its defaults, one ``dagster asset materialize`` process
   per stage, so that each stage's peak RSS is its own: ingest and validation,
   the item text embeddings, the feature tables, online materialisation (users
   and items), the point-in-time training set, training with its time budget
   and registration (with the item index) and promotion. The cold-start
   evaluation (a second training) and monitoring are left out.
3. Retrieval: recall@10 of the two-stage answer against the exact blended
   top-10 over ``BENCH_SCALE_RECALL_USERS`` (10,000) users' online histories,
   and the mean candidate count.
4. Serving: ``bentoml serve`` at 200 and 400 req/s (``bench.serving``'s
   open-loop generator, ``BENCH_SERVING_SECONDS`` per rate) on the champion and
   on versions cut from it to its 10,000 and 100,000 most popular items, each on
   the two-stage and the exact path, so the cost of size reads as a curve; the
   serving workers' RSS and Redis's memory.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import scipy.sparse as sp
import torch
import uvloop

from bench.report import table
from bench.serving import API_KEY, open_loop
from infra import redis_server
from infra.processes import descendants, free_port
from infra.settings import Settings
from orchestration.cli import start_service, stop_service, wait_ready
from orchestration.sources.scale_generator import ScaleConfig, write_scale_set
from training import ann, registry
from training.model import BehaviourEncoder
from training.sequences import pad_left
from training.transitions import Lag

STAGES = (
    ("ingest + validation", "item_catalogue,raw_events,validated_events,quarantined_events"),
    ("item text embeddings", "item_text_encoder,item_content_offline"),
    ("feature tables", "user_recent_items_offline,user_profile_offline,"
                       "item_popularity_offline,feast_definitions"),
    ("online materialisation: users", "online_user_features"),
    ("online materialisation: items", "online_item_features"),
    ("point-in-time training set", "training_set"),
    ("training, registration, promotion", "behaviour_encoder_version,champion_model"),
)
TRAINING_STAGE = STAGES[-1][1]
SUBSETS = (10_000, 100_000)
RATES = (200, 400)
EXACT_BATCH = 16  # users scored over the whole catalogue at once for the exact top-10


def sizes() -> ScaleConfig:
    return ScaleConfig(users=int(os.environ.get("BENCH_SCALE_USERS", "1000000")),
                       items=int(os.environ.get("BENCH_SCALE_ITEMS", "1000000")),
                       events=int(os.environ.get("BENCH_SCALE_EVENTS", "20000000")))


def generate(cfg: ScaleConfig, source: Path) -> dict:
    stamp = source / "sizes.json"
    wanted = {"users": cfg.users, "items": cfg.items, "events": cfg.events}
    if stamp.exists() and json.loads(stamp.read_text())["requested"] == wanted:
        return {**json.loads(stamp.read_text()), "reused": True}
    started = time.perf_counter()
    written = write_scale_set(cfg, source)
    out = {"requested": wanted, "written": written,
           "wall_s": round(time.perf_counter() - started, 1)}
    stamp.write_text(json.dumps(out))
    return out


def run_stage(settings: Settings, selection: str, log: Path) -> dict:
    """One ``dagster asset materialize`` process: wall time, peak RSS of it and
    every process it waited for (``wait4``), exit status."""
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to this process's
    # environment: passed on, the stage would take it for an external store and
    # leave the artifact location to MLflow's default (./mlruns).
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env = {**inherited, "RECSYS_HOME": str(settings.home),
           "RECSYS_SOURCE": str(settings.source), "DAGSTER_HOME": str(settings.home / "dagster")}
    (settings.home / "dagster").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "a") as out:
        process = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize",
                                    "-m", "orchestration.definitions", "--select", selection],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    return {"wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "ok": os.waitstatus_to_exitcode(status) == 0}


def forget_champion(uri: str) -> None:
    """Training re-run on a resumed home trains as a fresh run would: with no
    champion to beat. Otherwise its version competes with the earlier run's, and
    one that does not beat it (the same data, the same budget) fails the stage's
    promotion check, which the bench would take for a failed pipeline."""
    champion = registry.alias_version(uri, registry.CHAMPION)
    if champion is not None:
        print(f"training again: v{champion} is no longer champion", flush=True)
        registry.client(uri).delete_registered_model_alias(registry.MODEL_NAME,
                                                           registry.CHAMPION)


def subset_model(model: BehaviourEncoder, keep: np.ndarray) -> BehaviourEncoder:
    """``model`` on the items ``keep`` (model indices, ascending) only: their
    vectors, the transitions among them, their popularity; user vectors as
    they are (cold items' borrowed scores are left out)."""
    from dataclasses import replace

    rows = np.concatenate([[0], keep])
    config = replace(model.config, n_items=len(keep))
    users = sorted(model.user_index, key=model.user_index.get)
    cut = BehaviourEncoder(config, [model.item_ids[i - 1] for i in keep],
                           [model.titles[i - 1] for i in keep], users,
                           user_salt=model.user_salt)
    state = model.state_dict()
    state["item_embedding.weight"] = state["item_embedding.weight"][torch.from_numpy(rows)]
    cut.load_state_dict(state)
    old = model.transitions
    if old is not None:
        size = old.n_items + 1
        lags = []
        for lag in old.lags:
            matrix = sp.csr_matrix((lag.values, lag.indices, lag.indptr[:size + 1]),
                                   shape=(size, size))[rows][:, rows].tocsr()
            lags.append(Lag(indptr=matrix.indptr.astype(np.int64),
                            indices=matrix.indices.astype(np.int32),
                            values=matrix.data.astype(np.float32)))
        cut.transitions = replace(old, n_items=len(keep), lags=tuple(lags),
                                  popularity=old.popularity[rows], borrowers=None,
                                  lenders=None, shares=None)
    cut.ann = ann.build(cut)
    return cut.eval()


def register_subsets(uri: str, artifacts: str | None, champion: str) -> dict[int, str]:
    """Versions of the champion cut to its SUBSETS most popular items."""
    model = registry.load_version(uri, champion)
    popularity = model.transitions.popularity[1:]
    documents = {name: registry.load_document(uri, champion, name) for name in (
        registry.POPULARITY_DOCUMENT, registry.RECENT_POPULARITY_DOCUMENT,
        registry.EVENT_RULES_DOCUMENT)}
    versions = {}
    for size in SUBSETS:
        if size >= model.config.n_items:
            continue
        keep = np.sort(np.argsort(-popularity, kind="stable")[:size] + 1)
        versions[size] = registry.log_and_register(
            uri, artifacts, subset_model(model, keep), {"subset_of": champion, "items": size},
            [], {}, {"purpose": "bench scale"}, documents=documents).version
    registry.client(uri).set_registered_model_alias(registry.MODEL_NAME, registry.CHALLENGER,
                                                    champion)
    return versions


def recall(settings: Settings, users: list[str]) -> dict:
    """The two-stage top-10 against the exact one (every item scored, in batches)."""
    from serving.online import OnlineFeatures
    from serving.scoring import load_served_model, recommend

    torch.set_num_threads(1)
    uri = settings.tracking_uri()
    served = load_served_model(uri, ann_min_items=0)
    online = OnlineFeatures(redis_server.ensure(settings).client(), settings.feast_project,
                            settings.recent_items)
    model, hits, candidates, seconds = served.model, [], [], []
    for start in range(0, len(users), EXACT_BATCH):
        batch = users[start:start + EXACT_BATCH]
        histories = [served.index.encode(online.recent(u)) for u in batch]
        batch = [u for u, h in zip(batch, histories, strict=True) if h]
        histories = [h for h in histories if h]
        if not histories:
            continue
        with torch.inference_mode():
            exact = model.score(pad_left([h[-model.config.max_len:] for h in histories],
                                         model.config.max_len), model.user_rows(batch)).numpy()
        for row, (user, history) in enumerate(zip(batch, histories, strict=True)):
            exact[row, history] = -np.inf
            want = set(np.argpartition(-exact[row], 9)[:10].tolist())
            began = time.perf_counter()
            got = recommend(served, [served.index.item_ids[i - 1] for i in history], 10, True,
                            user_id=user)
            seconds.append(time.perf_counter() - began)
            got = {served.index.index[i] for i, *_ in got.items}
            hits.append(len(want & got) / 10)
            seq = pad_left([history[-model.config.max_len:]], model.config.max_len)
            with torch.inference_mode():
                vector, _ = served.encoder(seq, model.user_rows([user]))
                candidates.append(len(served.retrieval.scores(vector, seq).items))
    return {"users": len(hits), "recall_at_10": round(float(np.mean(hits)), 4),
            "mean_candidates": round(float(np.mean(candidates)), 1),
            "two_stage_in_process_p50_ms": round(float(np.median(seconds)) * 1000, 3)}


def worker_rss_gib(process: subprocess.Popen, workers: int) -> list[float]:
    """RSS of each serving worker (the ``workers`` largest processes under the
    server: the ones holding a model)."""
    sizes = sorted((psutil.Process(pid).memory_info().rss for pid in descendants(process.pid)
                    if psutil.pid_exists(pid)), reverse=True)
    return [round(s / 2**30, 2) for s in sizes[:max(1, workers)]]


def serve_curve(settings: Settings, users: list[str], versions: dict[int, str],
                seconds: float) -> list[dict]:
    """Each (path, version) at RATES: the service's latency, errors and memory."""
    uri = settings.tracking_uri()
    rows = []
    try:
        for path, threshold in (("two-stage", "1"), ("exact", str(10**9))):
            rows.extend(_serve_path(settings, uri, users, versions, seconds, path, threshold))
    finally:  # the pipeline's champion again, whatever happened
        registry.set_champion(uri, versions[max(versions)])
    return rows


def _serve_path(settings: Settings, uri: str, users: list[str], versions: dict[int, str],
                seconds: float, path: str, threshold: str) -> list[dict]:
    """One service (``RECSYS_ANN_MIN_ITEMS`` = ``threshold``) on each version."""
    rows = []
    port = free_port()
    process = start_service(settings, port, settings.home / f"bench_scale_{path}.log", env={
        "RECSYS_API_KEY": API_KEY, "RECSYS_ANN_MIN_ITEMS": threshold,
        "RECSYS_MODEL_POLL_S": "3600"}, name=f"bench-scale-{path}")
    try:
        wait_ready(port, process, timeout=1800)
        for items, version in sorted(versions.items()):
            registry.set_champion(uri, version)
            httpx.post(f"http://127.0.0.1:{port}/reload", headers={"X-API-Key": API_KEY},
                       timeout=1800)
            uvloop.run(open_loop(port, users, 50, 3))  # warm-up, not reported
            for rate in RATES:
                if path == "exact" and rate > RATES[0] and items > SUBSETS[-1]:
                    continue  # the exact path is over capacity long before this
                row = uvloop.run(open_loop(port, users, rate, seconds))
                rows.append({"path": path, "items": items, "version": version, **row,
                             "worker_rss_gib": worker_rss_gib(
                                 process, settings.serving_workers)})
                print(f"{path} {items:,} items {rate}/s: p50 {row.get('p50_ms')} p99 "
                      f"{row.get('p99_ms')} ms, {row['errors']} errors", flush=True)
    finally:
        stop_service(settings, f"bench-scale-{path}")
    return rows


def benchmark() -> dict:
    cfg = sizes()
    home = Path(os.environ.get("BENCH_HOME") or tempfile.mkdtemp(prefix="recsys_scale_"))
    source = home / "source"
    settings = Settings(home=home / "state", source=source)
    print(f"state: {home}", flush=True)
    results: dict = {"generate": generate(cfg, source), "stages": {}}
    settings.home.mkdir(parents=True, exist_ok=True)
    uri = settings.tracking_uri()
    # A reused BENCH_HOME resumes: the stages that succeeded there keep their
    # figures and are not run again.
    done_path = home / "stages.json"
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    for name, selection in STAGES:
        if done.get(name, {}).get("ok"):
            results["stages"][name] = {**done[name], "from_earlier_run": True}
            continue
        if selection == TRAINING_STAGE:
            forget_champion(uri)
        results["stages"][name] = run_stage(settings, selection, home / "pipeline.log")
        print(f"{name}: {results['stages'][name]}", flush=True)
        if not results["stages"][name]["ok"]:
            raise RuntimeError(f"stage {name!r} failed: see {home / 'pipeline.log'}")
        done[name] = results["stages"][name]
        done_path.write_text(json.dumps(done, indent=2))
    champion = registry.alias_version(uri, registry.CHAMPION)
    run = registry.version_run(uri, champion)
    results["model"] = {k: run.data.metrics.get(k) for k in (
        "ndcg_at_10", "baseline_ease_ndcg_at_10", "baseline_pop_ndcg_at_10",
        "train_seconds", "search_seconds", "ann_build_seconds", "best_epoch")}
    results["model"]["stopped_by"] = run.data.params.get("stopped_by")
    from orchestration.offline import read_validated_events

    users = read_validated_events(settings, columns=["user_id"])["user_id"].unique().tolist()
    rng = np.random.default_rng(0)
    picked = rng.choice(users, size=min(len(users), int(os.environ.get(
        "BENCH_SCALE_RECALL_USERS", "10000"))), replace=False).tolist()
    results["retrieval"] = recall(settings, picked)
    print(f"retrieval: {results['retrieval']}", flush=True)
    versions = {**register_subsets(uri, settings.artifact_location(), champion),
                cfg.items: champion}
    seconds = float(os.environ.get("BENCH_SERVING_SECONDS", "30"))
    results["serving"] = serve_curve(settings, users, versions, seconds)
    info = redis_server.ensure(settings).client().info("memory")
    results["redis_used_memory_gib"] = round(info["used_memory"] / 2**30, 2)
    results["seconds_per_rate"] = seconds
    if not os.environ.get("BENCH_HOME"):
        redis_server.stop(settings)
    return results


def tables(results: dict) -> list[dict]:
    generated = results["generate"]
    ran = results["stages"].values()
    stages = [["generate data", generated.get("wall_s"), None, True]] + [
        [name + (" (earlier run)" if r.get("from_earlier_run") else ""), r.get("wall_s"),
         r.get("peak_rss_gib"), r.get("ok")]
        for name, r in results["stages"].items()] + [
        ["pipeline, ingest to champion", round(sum(r.get("wall_s", 0) for r in ran), 1),
         max((r.get("peak_rss_gib", 0) for r in ran), default=None),
         all(r.get("ok") for r in ran)]]
    model = results["model"]
    return [
        table(f"Pipeline stages on {generated['written']['items']:,} items, "
              f"{generated['written']['users']:,} users, "
              f"{generated['written']['events']:,} events",
              ["stage", "wall s", "peak RSS GiB", "ok"], stages),
        table("The champion", ["test NDCG@10", "EASE", "popularity", "train s", "stopped by",
                               "blend search s", "index build s"],
              [[model["ndcg_at_10"], model["baseline_ease_ndcg_at_10"],
                model["baseline_pop_ndcg_at_10"], model["train_seconds"], model["stopped_by"],
                model["search_seconds"], model["ann_build_seconds"]]]),
        retrieval_table(results["retrieval"]),
        serving_table(results),
    ]


def notes(results: dict) -> str | None:
    """What the tables cannot say: which stages a resumed run took from before, and
    what was noted of a stage in the resumed ``stages.json``."""
    stages = results["stages"]
    lines = [f"*{name}*: {r['note']}" for name, r in stages.items() if r.get("note")]
    if any(r.get("from_earlier_run") for r in stages.values()):
        lines.insert(0, "This run resumed a `BENCH_HOME`: the stages marked *(earlier run)* "
                        "were not run again, and their figures (and the champion's, when "
                        "training is one of them) are those of the run that did them; "
                        "retrieval and serving are this run's.")
    return "\n\n".join(lines) or None


def retrieval_table(retrieval: dict) -> dict:
    return table("Two-stage against exact (in process)",
                 ["users", "recall@10", "mean candidates", "two-stage p50 ms"],
                 [[retrieval[k] for k in (
                     "users", "recall_at_10", "mean_candidates", "two_stage_in_process_p50_ms")]])


def serving_table(results: dict) -> dict:
    """``serve_curve``'s rows, with the seconds per rate and Redis's memory."""
    return table(f"/recommend under open-loop load by catalogue size "
                 f"({results['seconds_per_rate']:g} s per rate; Redis "
                 f"{results['redis_used_memory_gib']} GiB)",
                 ["path", "items", "target req/s", "achieved", "p50 ms", "p95 ms", "p99 ms",
                  "errors", "largest worker RSS GiB"],
                 [[r["path"], r["items"], r["target_rps"], r["achieved_rps"], r.get("p50_ms"),
                   r.get("p95_ms"), r.get("p99_ms"), r["errors"],
                   max(r["worker_rss_gib"], default=None)] for r in results["serving"]])


def figures(results: dict) -> dict[str, bytes]:
    return {"scale_latency.svg": latency_figure(results["serving"])}


def latency_figure(serving: list[dict]) -> bytes:
    """An SVG of /recommend p50 and p99 against catalogue size, each path at each
    rate (the latency-against-size curve), from ``serve_curve``'s rows."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4))
    lines = sorted({(r["path"], r["target_rps"]) for r in serving})
    for path, rate in lines:
        rows = sorted((r for r in serving if (r["path"], r["target_rps"])
                       == (path, rate) and r.get("p99_ms") is not None),
                      key=lambda r: r["items"])
        sizes_ = [r["items"] for r in rows]
        style = "-" if path == "two-stage" else "--"
        drawn = axis.plot(sizes_, [r["p99_ms"] for r in rows], style, marker="o",
                          label=f"{path}, {rate} req/s: p99")
        axis.plot(sizes_, [r["p50_ms"] for r in rows], style, marker=".", alpha=0.5,
                  color=drawn[0].get_color(), label=f"{path}, {rate} req/s: p50")
    axis.axhline(10, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("catalogue size (items)")
    axis.set_ylabel("/recommend latency (ms)")
    axis.set_title("Latency against catalogue size (dotted: the 10 ms p99 target)")
    axis.legend(fontsize=7)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    pyplot.close(figure)
    return buffer.getvalue().encode()

