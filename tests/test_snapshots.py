"""Snapshot stores: one contract suite run on every backend, then the file store's own failure stories."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import CorruptRecordError, PayloadNotSerializable
from runtime.models import RunState
from runtime.snapshots import InMemorySnapshotStore, Snapshot, SnapshotStore
from stores.files import JsonSnapshotStore

BAD_IDS = ["../etc/passwd", "a/b", ""]


def redis_client(request: pytest.FixtureRequest, kind: str) -> Any:
    """A client of the session's own redis-server ("redis") or of the session's fakeredis server."""
    if kind == "redis":
        return request.getfixturevalue("redis_server").client()
    import fakeredis

    return fakeredis.FakeRedis(server=request.getfixturevalue("fake_redis_server"))


def unique_prefix() -> str:
    # Each test gets its own key prefix: no test flushes or sees another's keys.
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "file", "redis", "fakeredis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotStore:
    # Every backend must pass the same suite; the file store gets a fresh directory per test.
    if request.param == "memory":
        return InMemorySnapshotStore()
    if request.param in ("redis", "fakeredis"):
        from stores.redis.snapshots import RedisSnapshotStore

        return RedisSnapshotStore(redis_client(request, request.param), prefix=unique_prefix())
    return JsonSnapshotStore(tmp_path / "snaps")


def make_run(**vars: Any) -> RunState:
    return RunState.new(workflow_id="wf", entry_node="start", vars=dict(vars))


def snap(
    run_id: str = "r1",
    *,
    name: str = "s",
    description: str | None = None,
    tags: list[str] | None = None,
    created_at: str = "2024-01-01T00:00:00+00:00",
    snapshot_id: str | None = None,
) -> Snapshot:
    s = Snapshot.from_run(
        run=RunState.new(workflow_id="wf", entry_node="n", run_id=run_id), name=name, description=description, tags=tags
    )
    s.created_at = created_at
    if snapshot_id is not None:
        s.snapshot_id = snapshot_id
    return s


# -- The value ---------------------------------------------------------------------------------


def test_from_run_freezes_the_run_as_it_was() -> None:
    # Given a run with some vars, when I snapshot it and the run moves on,
    run = make_run(count=1, items=["a"])
    s = Snapshot.from_run(run=run, name="before", description="d", tags=["t"], step_id="step-1")
    run.vars["count"] = 2
    run.vars["items"].append("b")
    # I expect the snapshot to still hold the old state, as a plain dict.
    assert s.run_state["vars"] == {"count": 1, "items": ["a"]}
    assert s.run_state == {**run.to_dict(), "vars": {"count": 1, "items": ["a"]}}
    assert (s.run_id, s.step_id, s.name, s.description, s.tags) == (run.run_id, "step-1", "before", "d", ["t"])
    assert s.created_at == s.updated_at
    assert s.to_run().vars == {"count": 1, "items": ["a"]}


def test_from_run_gives_fresh_ids() -> None:
    run = make_run()
    assert Snapshot.from_run(run=run, name="a").snapshot_id != Snapshot.from_run(run=run, name="a").snapshot_id


def test_dict_round_trip_and_missing_field() -> None:
    s = snap(tags=["x"], description="desc")
    assert Snapshot.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    data = s.to_dict()
    del data["name"]
    with pytest.raises(CorruptRecordError, match="name"):
        Snapshot.from_dict(data)


# -- Contract: every backend -------------------------------------------------------------------


def test_save_then_load_round_trips(store: SnapshotStore) -> None:
    s = Snapshot.from_run(run=make_run(greeting="héllo"), name="n", description="d", tags=["a", "B"])
    store.save(s)
    loaded = store.load(s.snapshot_id)
    assert loaded == s
    assert loaded is not s


def test_load_unknown_is_none_and_delete_reports_existence(store: SnapshotStore) -> None:
    s = snap()
    assert store.load(s.snapshot_id) is None
    assert store.delete(s.snapshot_id) is False
    store.save(s)
    assert store.delete(s.snapshot_id) is True
    assert store.load(s.snapshot_id) is None
    assert store.delete(s.snapshot_id) is False
    assert store.list() == []


def test_save_refreshes_updated_at_only(store: SnapshotStore) -> None:
    s = snap()
    s.updated_at = "2000-01-01T00:00:00+00:00"
    store.save(s)
    loaded = store.load(s.snapshot_id)
    assert loaded is not None
    assert loaded.updated_at > "2020" and loaded.updated_at == s.updated_at
    assert loaded.created_at == "2024-01-01T00:00:00+00:00"


def test_store_keeps_copies_not_objects(store: SnapshotStore) -> None:
    # If I change a snapshot after saving it, or change what I loaded, the store must not change.
    s = Snapshot.from_run(run=make_run(v=[1]), name="n", tags=["t"])
    store.save(s)
    s.run_state["vars"]["v"].append(2)
    s.tags.append("u")
    loaded = store.load(s.snapshot_id)
    assert loaded is not None
    loaded.run_state["vars"]["v"].append(3)
    again = store.load(s.snapshot_id)
    assert again is not None
    assert again.run_state["vars"]["v"] == [1] and again.tags == ["t"]


def test_save_replaces_same_id(store: SnapshotStore) -> None:
    s = snap(name="first")
    store.save(s)
    s.name = "second"
    store.save(s)
    assert [x.name for x in store.list()] == ["second"]


def test_list_filters(store: SnapshotStore) -> None:
    store.save(snap("r1", name="Before deploy", tags=["Prod", "nightly"], snapshot_id="a"))
    store.save(snap("r1", name="checkpoint", description="After the LLM call", tags=["production"], snapshot_id="b"))
    store.save(snap("r2", name="other", tags=["prod"], snapshot_id="c"))

    def ids(**kw: Any) -> set[str]:
        return {s.snapshot_id for s in store.list(**kw)}

    assert ids() == {"a", "b", "c"}
    assert ids(run_id="r1") == {"a", "b"}
    # Tags: exact match, case ignored ("prod" is not a substring match of "production").
    assert ids(tag="PROD") == {"a", "c"}
    assert ids(tag="pro") == set()
    # Query: case-insensitive substring of name or description.
    assert ids(query="DEPLOY") == {"a"}
    assert ids(query="llm") == {"b"}
    assert ids(query="e") == {"a", "b", "c"}
    assert ids(run_id="r1", tag="prod") == {"a"}
    assert ids(run_id="r2", query="deploy") == set()


def test_list_is_newest_created_first_with_times_parsed(store: SnapshotStore) -> None:
    # As text "09:30Z" > "10:00+02:00", but 10:00+02:00 is 08:00Z: parsed order must win (D4).
    store.save(snap(name="oldest", created_at="2024-01-01T10:00:00+02:00", snapshot_id="o"))
    store.save(snap(name="newest", created_at="2024-01-02T00:00:00Z", snapshot_id="n"))
    store.save(snap(name="middle", created_at="2024-01-01T09:30:00Z", snapshot_id="m"))
    assert [s.name for s in store.list()] == ["newest", "middle", "oldest"]
    assert [s.name for s in store.list(limit=2)] == ["newest", "middle"]
    assert store.list(limit=0) == []


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_ids_with_path_characters_are_refused_and_nothing_changes(
    store: SnapshotStore, bad_id: str, tmp_path: Path
) -> None:
    kept = snap(snapshot_id="kept")
    store.save(kept)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    evil = snap(snapshot_id=bad_id)
    for call in (lambda: store.save(evil), lambda: store.load(bad_id), lambda: store.delete(bad_id)):
        with pytest.raises(ValueError, match="snapshot_id"):
            call()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert [s.snapshot_id for s in store.list()] == ["kept"]
    assert store.load("kept") == kept


def test_non_json_state_is_refused_before_writing(store: SnapshotStore) -> None:
    s = snap()
    s.run_state["vars"] = {"when": object()}
    old_updated = s.updated_at
    with pytest.raises(PayloadNotSerializable, match="when"):
        store.save(s)
    assert store.load(s.snapshot_id) is None
    assert s.updated_at == old_updated


# -- The file store ----------------------------------------------------------------------------


def test_file_layout_and_reopen(tmp_path: Path) -> None:
    s = snap()
    JsonSnapshotStore(tmp_path).save(s)
    # One file per snapshot, no temp files left behind, readable by a new store on the same folder.
    assert [p.name for p in tmp_path.iterdir()] == [f"snapshot_{s.snapshot_id}.json"]
    assert JsonSnapshotStore(tmp_path).load(s.snapshot_id) == s


@pytest.mark.parametrize("garbage", [b'{"snapshot_id": "bad", "run', b"\xff\xfe", b"[1, 2]", b'{"name": "x"}'])
def test_corrupt_file_names_itself_and_others_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    store = JsonSnapshotStore(tmp_path)
    good = snap(name="good", snapshot_id="good")
    store.save(good)
    bad_file = tmp_path / "snapshot_bad.json"
    bad_file.write_bytes(garbage)

    with pytest.raises(CorruptRecordError) as err:
        store.load("bad")
    assert "snapshot_bad.json" in str(err.value) and err.value.location == str(bad_file)

    with caplog.at_level(logging.WARNING, logger="stores.files"):
        assert [s.snapshot_id for s in store.list()] == ["good"]
    assert "snapshot_bad.json" in caplog.text
    assert store.load("good") == good


# -- The Redis store ---------------------------------------------------------------------------


@pytest.fixture(params=["redis", "fakeredis"])
def redis_kind(request: pytest.FixtureRequest) -> tuple[Any, str]:
    """``(client, prefix)``: a client of the session's server and a key prefix of this test's own."""
    return redis_client(request, request.param), unique_prefix()


def test_redis_layout_and_indexes_follow_the_run(redis_kind: tuple[Any, str]) -> None:
    from stores.redis.keys import Keys
    from stores.redis.snapshots import RedisSnapshotStore

    client, prefix = redis_kind
    k = Keys(prefix)
    store = RedisSnapshotStore(client, prefix=prefix)
    s = snap("r1", snapshot_id="s1", created_at="2024-01-01T00:00:00.000002Z")
    store.save(s)
    assert client.type(k.snapshot("s1")) == b"hash"
    assert set(client.hkeys(k.snapshot("s1"))) == {b"d", b"r"}
    assert client.zrange(k.snapshots_by_created(), 0, -1, withscores=True) == [(b"s1", 1704067200000002.0)]
    assert client.smembers(k.snapshots_of_run("r1")) == {b"s1"}
    # Saved again for another run: it leaves the first run's set in the same transaction.
    s.run_id = "r2"
    store.save(s)
    assert client.smembers(k.snapshots_of_run("r1")) == set()
    assert [x.snapshot_id for x in store.list(run_id="r2")] == ["s1"] and store.list(run_id="r1") == []
    # A new store on the same prefix (another process) sees it; a delete leaves no key behind.
    assert RedisSnapshotStore(client, prefix=prefix).load("s1") == s
    assert store.delete("s1") is True
    for key in (k.snapshot("s1"), k.snapshots_by_created(), k.snapshots_of_run("r2")):
        assert client.exists(key) == 0


def test_redis_list_pages_through_the_index(redis_kind: tuple[Any, str]) -> None:
    from stores.redis.snapshots import RedisSnapshotStore

    client, prefix = redis_kind
    store = RedisSnapshotStore(client, prefix=prefix)
    for i in range(450):  # more than two pages of 200
        store.save(snap("r1" if i % 2 else "r2", name=f"n{i}", tags=["odd"] if i % 2 else [],
                        created_at=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z", snapshot_id=f"s{i}"))
    assert [s.name for s in store.list(limit=3)] == ["n449", "n448", "n447"]
    assert len(store.list(limit=1000)) == 450
    odd = store.list(tag="odd", limit=1000)
    assert len(odd) == 225 and odd[0].name == "n449" and odd[-1].name == "n1"
    assert [s.name for s in store.list(run_id="r2", limit=2)] == ["n448", "n446"]


def test_redis_over_the_size_limit_is_refused_before_writing(redis_kind: tuple[Any, str]) -> None:
    from stores.redis.codec import ValueTooLarge
    from stores.redis.snapshots import RedisSnapshotStore

    client, prefix = redis_kind
    store = RedisSnapshotStore(client, prefix=prefix, max_value_bytes=1000)
    s = Snapshot.from_run(run=make_run(big="x" * 2000), name="big")
    with pytest.raises(ValueTooLarge, match="max_value_bytes"):
        store.save(s)
    assert store.load(s.snapshot_id) is None and store.list() == []
    # JSON holds integers of any size, msgpack does not: refused as not serializable.
    s = Snapshot.from_run(run=make_run(n=2**70), name="huge int")
    with pytest.raises(PayloadNotSerializable):
        store.save(s)
    assert store.list() == []


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"\x81\xa4name\xa1x", b""])
def test_redis_corrupt_entry_names_its_key_and_others_still_list(
    redis_kind: tuple[Any, str], caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    from stores.redis.keys import Keys
    from stores.redis.snapshots import RedisSnapshotStore

    client, prefix = redis_kind
    store = RedisSnapshotStore(client, prefix=prefix)
    good = snap(name="good", snapshot_id="good")
    bad = snap(name="bad", snapshot_id="bad", created_at="2024-02-01T00:00:00Z")
    store.save(good)
    store.save(bad)
    bad_key = Keys(prefix).snapshot("bad")
    client.hset(bad_key, "d", garbage)  # damaged by some other tool

    with pytest.raises(CorruptRecordError) as err:
        store.load("bad")
    assert bad_key in str(err.value) and err.value.run_id == "r1"

    with caplog.at_level(logging.WARNING, logger="stores.redis.snapshots"):
        assert [s.snapshot_id for s in store.list()] == ["good"]
        assert [s.snapshot_id for s in store.list(run_id="r1")] == ["good"]
    assert bad_key in caplog.text
    assert store.load("good") == good
    # A delete still cleans it up, indexes included; saving again repairs it.
    assert store.delete("bad") is True and store.load("bad") is None
    store.save(bad)
    assert store.load("bad") == bad


def test_redis_refuses_a_decoding_client(fake_redis_server: Any) -> None:
    import fakeredis

    from stores.redis.snapshots import RedisSnapshotStore

    with pytest.raises(ValueError, match="decode_responses"):
        RedisSnapshotStore(fakeredis.FakeRedis(server=fake_redis_server, decode_responses=True))
