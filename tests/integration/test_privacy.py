"""Pseudonymisation end to end and a user forgotten everywhere: the whole pipeline
with RECSYS_PSEUDONYMISE on, a real service, then a scan of every file under
RECSYS_HOME and every Redis key and value for the source's raw user ids."""

import json
import re
import sqlite3

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo.privacy import TOMBSTONES_KEY, load_key, pseudonym
from infra import redis_server
from infra.settings import Settings
from tests.conftest import API_KEY, AUTH

pytestmark = pytest.mark.slow

USER = re.compile(rb"(?<![A-Za-z0-9])u\d{5}(?![0-9])")  # the generator's user ids
ALLOWED = ("privacy/tombstones.jsonl", "privacy/audit.jsonl")


def _strings(value) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return [value if isinstance(value, bytes) else str(value).encode()]


def scan(settings: Settings, needles: set[bytes], pattern: re.Pattern | None = None):
    """Every file under RECSYS_HOME (parquet column by column, SQLite cell by cell,
    anything else as bytes) and every Redis key and value: (counts, hits). A hit
    is (place, needle) for each needle found (or each ``pattern`` match that is a
    needle). The privacy files that must hold pseudonyms are skipped."""
    counts = {"files": 0, "keys": 0, "values": 0}
    hits = set()

    def look(place: str, data: bytes) -> None:
        found = ({m.group(0) for m in pattern.finditer(data)} & needles if pattern
                 else {n for n in needles if n in data})
        hits.update((place, n) for n in found)

    for path in sorted(p for p in settings.home.rglob("*") if p.is_file()):
        relative = path.relative_to(settings.home).as_posix()
        if relative in ALLOWED or relative.startswith("generated_source/"):
            continue
        counts["files"] += 1
        head = path.open("rb").read(16)
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.column_names:
                look(f"{relative}:{column}",
                     b"\n".join(s for v in table.column(column).to_pylist() for s in _strings(v)))
        elif head.startswith(b"SQLite format 3"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                    for row in db.execute(f'SELECT * FROM "{name}"'):
                        look(f"{relative}:{name}", b"\n".join(
                            s for v in row for s in _strings(v)))
        look(relative, path.read_bytes())
    client = redis_server.ensure(settings).client()
    for key in client.scan_iter(count=1000):
        counts["keys"] += 1
        kind = client.type(key).decode()
        if kind == "hash":
            values = [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == "stream":
            values = [b for _, fields in client.xrange(key) for kv in fields.items() for b in kv]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            values = list(client.smembers(key)) if kind == "set" else client.zrange(key, 0, -1)
        else:
            values = [client.get(key) or b""]
        counts["values"] += len(values)
        look(f"redis:{key!r}", b"\n".join([key, *values]))
    return counts, hits


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """The pipeline on a generated source outside RECSYS_HOME, pseudonymised, and a
    real service with an API key."""
    from dagster import materialize

    from infra.processes import free_port
    from orchestration.cli import start_service, stop_service, wait_ready
    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.lineage import instance_for
    from orchestration.resources import resources_from_settings
    from orchestration.sources.generator import GeneratorConfig, generate, write_canonical

    source = tmp_path_factory.mktemp("source")
    data = generate(GeneratorConfig(users=300, items=200, events=12_000))
    write_canonical(data, source)
    settings = Settings(home=tmp_path_factory.mktemp("private_home"), source=source,
                        pseudonymise=True)
    result = materialize(
        [*ASSETS, *CHECKS], resources=resources_from_settings(settings),
        instance=instance_for(settings),
        run_config={"ops": {"behaviour_encoder_version": {"config": {"epochs": 3}}}})
    assert result.success
    port = free_port()
    env = {"RECSYS_API_KEY": API_KEY, "RECSYS_PSEUDONYMISE": "true",
           "RECSYS_SOURCE": str(source), "RECSYS_MODEL_POLL_S": "1"}
    process = start_service(settings, port, settings.home / "serve.log", env=env)
    try:
        wait_ready(port, process)
    except Exception:
        stop_service(settings)
        print((settings.home / "serve.log").read_text()[-5000:])
        raise
    yield settings, f"http://127.0.0.1:{port}", data, result
    stop_service(settings)
    redis_server.stop(settings)


def test_no_raw_user_id_anywhere_and_the_real_id_reaches_its_history(private):
    settings, url, data, result = private
    raw_ids = set(data.events["user_id"].astype(str))
    active = data.events["user_id"].value_counts().index[0]
    item = data.events["item_id"].iloc[0]
    reply = httpx.post(f"{url}/events", headers=AUTH, json={"events": [
        {"user_id": active, "item_id": item, "event_type": "click"}]}).json()
    assert reply["accepted"] == 1, reply
    answer = httpx.post(f"{url}/recommend", headers=AUTH, json={"user_id": active}).json()
    # The caller's id is echoed; the answer is the user's own, not a cold start.
    assert answer["user_id"] == active and answer["degraded"] is False, answer
    samples = httpx.post(f"{url}/sample_users", headers=AUTH, json={}).json()
    assert samples["most_active"] is None and samples["new_visitor"]  # no id is known
    history = httpx.post(f"{url}/history", headers=AUTH, json={"user_id": active}).json()
    assert history["items"][0]["item_id"] == item
    key = load_key(settings)
    from serving.online import OnlineFeatures

    online = OnlineFeatures(redis_server.ensure(settings).client(), settings.feast_project,
                            settings.recent_items)
    assert online.recent(pseudonym(key, active))[-1] == item
    assert online.recent(active) == []
    counts, hits = scan(settings, {u.encode() for u in raw_ids}, USER)
    print("scan before forget:", counts, "raw ids found:", len(hits))
    assert counts["files"] > 100 and counts["keys"] > 300
    assert not hits, sorted(hits)[:20]


def test_forgotten_users_are_gone_everywhere_and_do_not_come_back(private):
    from dagster import materialize

    from orchestration.lineage import instance_for
    from orchestration.privacy import apply_pending, forget
    from orchestration.resources import resources_from_settings

    settings, url, data, _ = private
    ranked = data.events["user_id"].value_counts().index
    by_cli, by_api = ranked[1], ranked[2]
    rows_of = {u: int((data.events["user_id"] == u).sum()) for u in (by_cli, by_api)}
    key = load_key(settings)
    pseudonyms = {u: pseudonym(key, u) for u in (by_cli, by_api)}

    def forget_by_api(user, **headers):
        return httpx.post(f"{url}/forget", json={"user_id": user, "reason": "test request"},
                          headers=headers, timeout=30)

    assert forget_by_api(by_api).status_code == 401
    first = forget_by_api(by_api, **AUTH).json()
    assert first["forgotten"] is True and first["removed"]["online_rows"] == 1, first
    again = forget_by_api(by_api, **AUTH).json()
    assert again["already_forgotten"] is True and again["removed"] == {}, again
    unknown = forget_by_api("nobody-at-all", **AUTH).json()
    assert unknown["forgotten"] is False and "nothing" in unknown["offline"]
    [cli] = forget(settings, [by_cli], reason="test request")
    assert cli.known and cli.removed["validated_events"] == rows_of[by_cli], cli
    assert cli.removed["raw_events"] == rows_of[by_cli]
    [none] = forget(settings, ["u99999"], reason="test request")
    assert not none.known and none.removed == {}
    applied = apply_pending(settings)
    assert applied.counts["validated_events"] == rows_of[by_api], applied

    # Both answer as a new visitor with the same (empty) history would.
    visitor = httpx.post(f"{url}/recommend", headers=AUTH, json={"user_id": "visitor-x"}).json()
    for user in (by_cli, by_api):
        answer = httpx.post(f"{url}/recommend", headers=AUTH, json={"user_id": user}).json()
        assert answer["reason"] == visitor["reason"] and answer["reason"]
        assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in visitor["items"]]

    needles = {u.encode() for u in pseudonyms} | {p.encode() for p in pseudonyms.values()}
    counts, hits = scan(settings, needles)
    # Only the tombstones hold the pseudonyms: Redis's tombstone hash (a field and
    # the JSON value's key), and the append-only file, rewritten from what Redis
    # holds now, just as often.
    tombstones = redis_server.ensure(settings).client().hgetall(TOMBSTONES_KEY)
    aof = (settings.redis_dir / "appendonly.aof").read_bytes()
    for p in pseudonyms.values():
        assert json.loads(tombstones[p.encode()])["key"] == p
        assert aof.count(p.encode()) == 2
    outside = {h for h in hits if h[0] not in (f"redis:{TOMBSTONES_KEY.encode()!r}",
                                                 "redis/appendonly.aof")}
    print("scan after forget:", counts, "ids or pseudonyms outside the tombstones:",
          len(outside))
    assert not outside, sorted(outside)
    audit = (settings.privacy_dir / "audit.jsonl").read_text()
    assert by_cli not in audit and by_api not in audit and pseudonyms[by_api] in audit

    # Ingest rebuilt from the unchanged source: the tombstones keep both out, counted.
    import shutil

    from orchestration.assets.ingest import item_catalogue, raw_events, validate_raw_events
    from orchestration.checks import no_rows_lost

    shutil.rmtree(settings.offline_dir)
    shutil.rmtree(settings.quarantine_dir)
    shutil.rmtree(settings.event_log_dir)
    result = materialize([item_catalogue, raw_events, validate_raw_events, no_rows_lost],
                         resources=resources_from_settings(settings),
                         instance=instance_for(settings))
    assert result.success
    raw = result.asset_materializations_for_node("raw_events")[0].metadata
    assert raw["forgotten_rows"].value == sum(rows_of.values())
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["forgotten"].value == sum(rows_of.values())
    validated = pd.concat(pd.read_parquet(p, columns=["user_id"])
                          for p in settings.validated_events_dir.glob("*.parquet"))
    assert not set(pseudonyms.values()) & set(validated["user_id"])
    assert validated["user_id"].nunique() == len(set(data.events["user_id"])) - 2
    tombstones = (settings.privacy_dir / "tombstones.jsonl").read_text().splitlines()
    assert sorted(json.loads(t)["key"] for t in tombstones) == sorted(pseudonyms.values())
