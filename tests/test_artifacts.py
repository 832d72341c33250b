"""Artifact stores: one contract suite run on every backend, the ref helpers, and file-store failures."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.artifacts import (
    Artifact,
    ArtifactMetadata,
    ArtifactStore,
    InMemoryArtifactStore,
    artifact_ref,
    compute_artifact_id,
    get_artifact_id,
    is_artifact_ref,
    resolve_artifact,
    validate_artifact_id,
)
from runtime.errors import CorruptRecordError, InvalidArtifactId, PayloadNotSerializable, StoreError
from stores.files import FileArtifactStore

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


@pytest.fixture(params=["memory", "file", "redis", "fakeredis", "redis+large"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    # Every backend must pass the same suite; the file store gets a fresh directory per test.
    # "redis+large" keeps content over 4 bytes in a FileArtifactStore: the suite runs on that path too.
    if request.param == "memory":
        return InMemoryArtifactStore()
    if request.param.startswith(("redis", "fakeredis")):
        from stores.redis.artifacts import RedisArtifactStore

        kind = request.param.split("+")[0]
        large = FileArtifactStore(tmp_path / "large") if request.param.endswith("+large") else None
        return RedisArtifactStore(redis_client(request, kind), prefix=unique_prefix(), large_store=large,
                                  inline_limit_bytes=4)
    return FileArtifactStore(tmp_path / "base")


def tick() -> None:
    # created_at has microsecond resolution; a short pause keeps "newest first" unambiguous.
    time.sleep(0.002)


# -- Ids ---------------------------------------------------------------------------------------


def test_id_is_first_32_hex_of_sha256() -> None:
    assert compute_artifact_id(b"hello") == hashlib.sha256(b"hello").hexdigest()[:32]
    assert len(compute_artifact_id(b"")) == 32
    assert compute_artifact_id(b"a") == compute_artifact_id(b"a") != compute_artifact_id(b"b")


@pytest.mark.parametrize("good", ["abc", "A-Z_09", compute_artifact_id(b"x")])
def test_valid_ids_pass(good: str) -> None:
    validate_artifact_id(good)


@pytest.mark.parametrize("bad", [*BAD_IDS, "..", "a b", "a.bin", "abc\n", "é", "a\\b", None, 7])
def test_invalid_ids_raise(bad: Any) -> None:
    with pytest.raises(InvalidArtifactId) as err:
        validate_artifact_id(bad)
    assert isinstance(err.value, ValueError)  # code written for the reference catches ValueError
    if bad == "":
        assert "cannot be empty" in str(err.value)


# -- Values ------------------------------------------------------------------------------------


def test_metadata_dict_round_trip_and_missing_field() -> None:
    m = ArtifactMetadata("id1", "text/plain", 3, "2024-01-01T00:00:00+00:00", run_id="r", tags={"k": "v"})
    assert ArtifactMetadata.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert ArtifactMetadata("id1", "t", 0, "x").tags == {}
    with pytest.raises(CorruptRecordError, match="size_bytes"):
        ArtifactMetadata.from_dict({"artifact_id": "a", "content_type": "t", "created_at": "x"})


def test_artifact_accessors() -> None:
    a = Artifact(ArtifactMetadata("id1", "application/json", 9, "x"), '{"a":"é"}'.encode())
    assert (a.artifact_id, a.content_type) == ("id1", "application/json")
    assert a.as_text() == '{"a":"é"}'
    assert a.as_json() == {"a": "é"}


# -- Contract: every backend -------------------------------------------------------------------


def test_store_and_load_round_trip(store: ArtifactStore) -> None:
    meta = store.store(b"\x00\x01bytes", content_type="image/png", run_id="r1", tags={"kind": "shot"})
    assert meta.artifact_id == compute_artifact_id(b"\x00\x01bytes")
    assert (meta.content_type, meta.size_bytes, meta.run_id, meta.tags) == ("image/png", 7, "r1", {"kind": "shot"})
    loaded = store.load(meta.artifact_id)
    assert loaded is not None and loaded.content == b"\x00\x01bytes" and loaded.metadata == meta
    assert store.get_metadata(meta.artifact_id) == meta
    assert store.exists(meta.artifact_id)


def test_defaults(store: ArtifactStore) -> None:
    meta = store.store(b"x")
    assert (meta.content_type, meta.run_id, meta.tags) == ("application/octet-stream", None, {})


def test_absent_artifact(store: ArtifactStore) -> None:
    missing = compute_artifact_id(b"never stored")
    assert store.load(missing) is None
    assert store.get_metadata(missing) is None
    assert store.exists(missing) is False
    assert store.delete(missing) is False
    assert store.load_text(missing) is None and store.load_json(missing) is None


def test_equal_bytes_share_one_artifact_and_the_last_store_wins(store: ArtifactStore) -> None:
    first = store.store(b"same", run_id="r1", tags={"v": "1"})
    tick()
    second = store.store(b"same", run_id="r2", content_type="text/plain")
    assert first.artifact_id == second.artifact_id
    assert second.created_at > first.created_at
    assert store.get_metadata(first.artifact_id) == second
    assert [m.artifact_id for m in store.list_all()] == [first.artifact_id]
    assert store.list_by_run("r1") == []


def test_explicit_id(store: ArtifactStore) -> None:
    meta = store.store(b"payload", artifact_id="my-report_1")
    assert meta.artifact_id == "my-report_1"
    assert store.load_text("my-report_1") == "payload"
    store.store(b"longer payload", artifact_id="my-report_1")
    assert store.load_text("my-report_1") == "longer payload"


def test_returned_objects_are_copies(store: ArtifactStore) -> None:
    tags = {"k": "v"}
    meta = store.store(b"x", tags=tags)
    tags["k"] = "changed"
    meta.tags["k"] = "changed too"
    assert store.get_metadata(meta.artifact_id) == ArtifactMetadata(
        meta.artifact_id, meta.content_type, 1, meta.created_at, None, {"k": "v"}
    )


def test_text_and_json_helpers(store: ArtifactStore) -> None:
    t = store.store_text("héllo", run_id="r1", tags={"a": "b"})
    assert (t.content_type, t.size_bytes, t.run_id, t.tags) == ("text/plain", 6, "r1", {"a": "b"})
    assert store.load_text(t.artifact_id) == "héllo"

    latin = store.store_text("héllo", encoding="latin-1", content_type="text/csv")
    assert latin.size_bytes == 5 and latin.content_type == "text/csv"
    assert store.load_text(latin.artifact_id, encoding="latin-1") == "héllo"

    j = store.store_json({"b": 1, "a": ["é", None]}, run_id="r2")
    loaded = store.load(j.artifact_id)
    # Compact, UTF-8, keys kept in the given order: the id matches the reference's for the same data.
    assert loaded is not None and loaded.content == '{"b":1,"a":["é",null]}'.encode()
    assert j.content_type == "application/json" and j.run_id == "r2"
    assert store.load_json(j.artifact_id) == {"b": 1, "a": ["é", None]}


def test_content_must_be_bytes(store: ArtifactStore) -> None:
    with pytest.raises(TypeError, match="store_text"):
        store.store("text")  # type: ignore[arg-type]
    assert store.list_all() == []


def test_tags_that_json_cannot_hold_are_refused_before_writing(store: ArtifactStore) -> None:
    with pytest.raises(PayloadNotSerializable, match="tags"):
        store.store(b"x", tags={"k": object()})  # type: ignore[dict-item]
    assert store.list_all() == [] and not store.exists(compute_artifact_id(b"x"))


def test_delete_and_delete_by_run(store: ArtifactStore) -> None:
    a = store.store(b"a", run_id="r1")
    b = store.store(b"b", run_id="r1")
    c = store.store(b"c", run_id="r2")
    assert {m.artifact_id for m in store.list_by_run("r1")} == {a.artifact_id, b.artifact_id}
    assert store.delete(a.artifact_id) is True
    assert store.delete(a.artifact_id) is False
    assert not store.exists(a.artifact_id) and store.load(a.artifact_id) is None
    assert store.delete_by_run("r1") == 1
    assert store.delete_by_run("r1") == 0
    assert [m.artifact_id for m in store.list_all()] == [c.artifact_id]


def test_list_all_and_search_newest_first(store: ArtifactStore) -> None:
    m1 = store.store(b"1", run_id="r1", content_type="text/plain", tags={"env": "prod", "kind": "log"})
    tick()
    m2 = store.store(b"2", run_id="r1", content_type="application/json", tags={"env": "prod"})
    tick()
    m3 = store.store(b"3", run_id="r2", content_type="text/plain", tags={"env": "dev", "kind": "log"})

    def ids(metas: list[ArtifactMetadata]) -> list[str]:
        return [m.artifact_id for m in metas]

    assert ids(store.list_all()) == ids([m3, m2, m1])
    assert ids(store.list_all(limit=2)) == ids([m3, m2])
    assert ids(store.search(run_id="r1")) == ids([m2, m1])
    assert ids(store.search(content_type="text/plain")) == ids([m3, m1])
    assert ids(store.search(tags={"env": "prod"})) == ids([m2, m1])
    assert ids(store.search(tags={"env": "prod", "kind": "log"})) == ids([m1])
    assert ids(store.search(tags={"env": "PROD"})) == []
    assert ids(store.search(run_id="r2", content_type="text/plain", tags={"kind": "log"})) == ids([m3])
    assert ids(store.search(limit=1)) == ids([m3])


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_ids_with_path_characters_are_refused_everywhere(store: ArtifactStore, bad_id: str, tmp_path: Path) -> None:
    # Decision: the in-memory store refuses what the file store refuses (the reference let it pass).
    kept = store.store(b"kept", run_id="r1")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    calls: list[Callable[[], Any]] = [
        lambda: store.store(b"evil", artifact_id=bad_id),
        lambda: store.load(bad_id),
        lambda: store.get_metadata(bad_id),
        lambda: store.exists(bad_id),
        lambda: store.delete(bad_id),
        lambda: store.load_text(bad_id),
        lambda: resolve_artifact({"$artifact": bad_id}, store),
    ]
    for call in calls:
        with pytest.raises(InvalidArtifactId):
            call()
    # Nothing was written, read or removed outside (or inside) the store.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert store.list_all() == [kept]
    assert store.load_text(kept.artifact_id) == "kept"
    assert not store.exists(compute_artifact_id(b"evil"))


# -- References --------------------------------------------------------------------------------


def test_ref_helpers(store: ArtifactStore) -> None:
    meta = store.store_json({"answer": 42})
    ref = artifact_ref(meta.artifact_id)
    assert ref == {"$artifact": meta.artifact_id}
    assert is_artifact_ref(ref) and is_artifact_ref({"$artifact": "x", "note": "extra keys are fine"})
    assert not is_artifact_ref({"artifact": "x"}) and not is_artifact_ref(meta.artifact_id)
    assert not is_artifact_ref([("$artifact", "x")]) and not is_artifact_ref(None)
    assert get_artifact_id(ref) == meta.artifact_id
    with pytest.raises(KeyError):
        get_artifact_id({"id": "x"})
    resolved = resolve_artifact(ref, store)
    assert resolved is not None and resolved.as_json() == {"answer": 42}
    assert resolve_artifact({"not": "a ref"}, store) is None
    assert resolve_artifact("plain string", store) is None
    assert resolve_artifact(artifact_ref(compute_artifact_id(b"missing")), store) is None


# -- The file store ----------------------------------------------------------------------------


def test_file_layout_and_reopen(tmp_path: Path) -> None:
    meta = FileArtifactStore(tmp_path).store(b"data", run_id="r1")
    files = sorted(p.name for p in (tmp_path / "artifacts").iterdir())
    # Exactly the two files, no temp files left behind.
    assert files == [f"{meta.artifact_id}.bin", f"{meta.artifact_id}.meta"]
    reopened = FileArtifactStore(tmp_path)
    loaded = reopened.load(meta.artifact_id)
    assert loaded is not None and loaded.content == b"data" and loaded.metadata == meta


@pytest.mark.parametrize("cut", [0, 1, 20])
def test_truncated_meta_names_the_file_and_others_still_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    store = FileArtifactStore(tmp_path)
    good = store.store(b"good")
    bad = store.store(b"bad", run_id="r1")
    meta_file = tmp_path / "artifacts" / f"{bad.artifact_id}.meta"
    meta_file.write_bytes(meta_file.read_bytes()[:cut])  # a torn write by some other tool

    for call in (lambda: store.load(bad.artifact_id), lambda: store.get_metadata(bad.artifact_id)):
        with pytest.raises(CorruptRecordError) as err:
            call()
        assert err.value.location == str(meta_file) and meta_file.name in str(err.value)
    assert store.exists(bad.artifact_id)  # the bytes are still there

    with caplog.at_level(logging.WARNING, logger="stores.files"):
        assert store.list_all() == [good]
        assert store.search() == [good]
    assert meta_file.name in caplog.text
    # Storing the bytes again repairs it.
    store.store(b"bad", run_id="r1")
    assert store.load_text(bad.artifact_id) == "bad"


def test_meta_without_bin_counts_as_absent(tmp_path: Path) -> None:
    # A crash between writing .meta and .bin (or between deleting them) must look like absence.
    store = FileArtifactStore(tmp_path)
    meta = store.store(b"half")
    (tmp_path / "artifacts" / f"{meta.artifact_id}.bin").unlink()
    assert not store.exists(meta.artifact_id)
    assert store.load(meta.artifact_id) is None and store.get_metadata(meta.artifact_id) is None
    assert store.list_all() == []


def test_stray_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileArtifactStore(tmp_path)
    good = store.store(b"good")
    (tmp_path / "artifacts" / "not an id.meta").write_text("{}")
    (tmp_path / "artifacts" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="stores.files"):
        assert store.list_all() == [good]


# -- The Redis store ---------------------------------------------------------------------------


@pytest.fixture(params=["redis", "fakeredis"])
def redis_kind(request: pytest.FixtureRequest) -> tuple[Any, str]:
    """``(client, prefix)``: a client of the session's server and a key prefix of this test's own."""
    return redis_client(request, request.param), unique_prefix()


def test_redis_layout_and_indexes(redis_kind: tuple[Any, str]) -> None:
    from stores.redis.artifacts import RedisArtifactStore
    from stores.redis.keys import Keys

    client, prefix = redis_kind
    k = Keys(prefix)
    store = RedisArtifactStore(client, prefix=prefix)
    meta = store.store(b"inline bytes", run_id="r1", tags={"k": "v"})
    key = k.artifact(meta.artifact_id)
    assert client.type(key) == b"hash"
    assert client.hget(key, "c") == b"inline bytes" and client.hget(key, "r") == b"r1"
    assert client.hexists(key, "x") == 0
    assert client.zrange(k.artifacts_by_created(), 0, -1) == [meta.artifact_id.encode()]
    assert client.smembers(k.artifacts_of_run("r1")) == {meta.artifact_id.encode()}
    anonymous = store.store(b"no run")
    assert client.hexists(k.artifact(anonymous.artifact_id), "r") == 0
    # Another process on the same prefix sees the same artifacts.
    assert RedisArtifactStore(client, prefix=prefix).list_all() == [anonymous, meta]
    assert store.delete_by_run("r1") == 1 and store.delete(anonymous.artifact_id) is True
    for name in (key, k.artifacts_by_created(), k.artifacts_of_run("r1")):
        assert client.exists(name) == 0


def test_redis_large_content_goes_to_the_large_store(redis_kind: tuple[Any, str], tmp_path: Path) -> None:
    from stores.redis.artifacts import RedisArtifactStore
    from stores.redis.keys import Keys

    client, prefix = redis_kind
    k = Keys(prefix)
    files = FileArtifactStore(tmp_path)
    store = RedisArtifactStore(client, prefix=prefix, large_store=files, inline_limit_bytes=1024,
                               max_value_bytes=4096)
    big = bytes(range(256)) * 40  # 10,240 bytes: over the inline limit and over max_value_bytes too
    meta = store.store(big, run_id="r1", content_type="image/png")
    key = k.artifact(meta.artifact_id)

    # Redis keeps the metadata and a pointer; the bytes are one file of the large store.
    assert client.hexists(key, "c") == 0
    blob_id = client.hget(key, "x").decode()
    assert blob_id.startswith(meta.artifact_id + "_")
    assert (tmp_path / "artifacts" / f"{blob_id}.bin").read_bytes() == big
    loaded = store.load(meta.artifact_id)
    assert loaded is not None and loaded.content == big and loaded.metadata == meta
    assert store.get_metadata(meta.artifact_id) == meta and store.exists(meta.artifact_id)
    assert store.list_by_run("r1") == [meta] and store.search(content_type="image/png") == [meta]

    # Small content stays inline.
    small = store.store(b"small", run_id="r1")
    assert client.hget(k.artifact(small.artifact_id), "c") == b"small"

    # Replacing it (same id, new bytes) moves the pointer and removes the old file.
    bigger = big + b"!"
    store.store(bigger, artifact_id=meta.artifact_id)
    new_blob = client.hget(key, "x").decode()
    assert new_blob != blob_id and not files.exists(blob_id)
    assert store.load_text(meta.artifact_id, encoding="latin-1") == bigger.decode("latin-1")
    # Replacing it with small bytes brings the content back inline and removes the file too.
    store.store(b"tiny now", artifact_id=meta.artifact_id)
    assert client.hget(key, "c") == b"tiny now" and not files.exists(new_blob)

    again = store.store(big, run_id="r2")
    third_blob = client.hget(k.artifact(again.artifact_id), "x").decode()
    assert store.delete_by_run("r2") == 1
    assert not files.exists(third_blob) and files.list_all() == []


def test_redis_without_large_store_over_the_limit_is_refused(redis_kind: tuple[Any, str]) -> None:
    from stores.redis.artifacts import RedisArtifactStore
    from stores.redis.codec import ValueTooLarge

    client, prefix = redis_kind
    store = RedisArtifactStore(client, prefix=prefix, max_value_bytes=1000)
    with pytest.raises(ValueTooLarge, match="large_store") as err:
        store.store(b"x" * 1001, run_id="r1")
    assert isinstance(err.value, ValueError) and err.value.size == 1001 and err.value.limit == 1000
    assert store.list_all() == [] and store.list_by_run("r1") == []
    assert not store.exists(compute_artifact_id(b"x" * 1001))
    # Without a large store the inline limit does not apply: up to max_value_bytes stays in Redis.
    assert store.load_text(store.store(b"y" * 1000).artifact_id) == "y" * 1000


def test_redis_missing_or_torn_content_is_corrupt(redis_kind: tuple[Any, str], tmp_path: Path) -> None:
    from stores.redis.artifacts import RedisArtifactStore
    from stores.redis.keys import Keys

    client, prefix = redis_kind
    k = Keys(prefix)
    files = FileArtifactStore(tmp_path)
    store = RedisArtifactStore(client, prefix=prefix, large_store=files, inline_limit_bytes=8)
    external = store.store(b"kept outside redis")
    files.delete(client.hget(k.artifact(external.artifact_id), "x").decode())  # lost by some other tool
    with pytest.raises(CorruptRecordError, match="large store") as err:
        store.load(external.artifact_id)
    assert k.artifact(external.artifact_id) in str(err.value)

    inline = store.store(b"inline")
    client.hset(k.artifact(inline.artifact_id), "c", b"inlin")
    with pytest.raises(CorruptRecordError, match="metadata says 6"):
        store.load(inline.artifact_id)
    # Metadata alone is still readable, and the content's loss does not hide them from listings.
    assert store.get_metadata(inline.artifact_id) == inline
    assert {m.artifact_id for m in store.list_all()} == {external.artifact_id, inline.artifact_id}

    # A store without the large store cannot follow the pointer, and says so.
    with pytest.raises(StoreError, match="no large_store"):
        RedisArtifactStore(client, prefix=prefix).load(external.artifact_id)


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"\x81\xa4tags\xa1x", b""])
def test_redis_corrupt_metadata_names_its_key_and_others_still_list(
    redis_kind: tuple[Any, str], caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    from stores.redis.artifacts import RedisArtifactStore
    from stores.redis.keys import Keys

    client, prefix = redis_kind
    store = RedisArtifactStore(client, prefix=prefix)
    good = store.store(b"good", run_id="r1")
    bad = store.store(b"bad", run_id="r1")
    bad_key = Keys(prefix).artifact(bad.artifact_id)
    client.hset(bad_key, "m", garbage)  # damaged by some other tool

    for call in (lambda: store.load(bad.artifact_id), lambda: store.get_metadata(bad.artifact_id)):
        with pytest.raises(CorruptRecordError) as err:
            call()
        assert bad_key in str(err.value) and err.value.run_id == "r1"
    assert store.exists(bad.artifact_id)  # the hash is still there

    with caplog.at_level(logging.WARNING, logger="stores.redis.artifacts"):
        assert store.list_all() == [good]
        assert store.search() == [good]
        assert store.list_by_run("r1") == [good]
    assert bad_key in caplog.text
    # Storing the bytes again repairs it.
    store.store(b"bad", run_id="r1")
    assert store.load_text(bad.artifact_id) == "bad"
    # delete_by_run removes damaged artifacts of the run too (their run id is kept apart from m).
    client.hset(bad_key, "m", garbage)
    assert store.delete_by_run("r1") == 2
    assert not store.exists(bad.artifact_id) and store.list_all() == []


def test_redis_racing_writers_leave_the_indexes_consistent(redis_kind: tuple[Any, str], tmp_path: Path) -> None:
    # Two writers store the same id for different runs (inline and large by turns), a third deletes it:
    # whatever the interleaving, the run sets and the creation index must agree with the hash.
    import threading

    from stores.redis.artifacts import RedisArtifactStore
    from stores.redis.keys import Keys

    client, prefix = redis_kind
    k = Keys(prefix)
    files = FileArtifactStore(tmp_path)
    store = RedisArtifactStore(client, prefix=prefix, large_store=files, inline_limit_bytes=8)
    errors: list[BaseException] = []

    def writer(run_id: str, content: bytes) -> None:
        try:
            for i in range(150):
                store.store(content if i % 2 else b"s", run_id=run_id, artifact_id="shared")
                if run_id == "r1" and i % 10 == 0:
                    store.delete("shared")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r, c)) for r, c in (("r1", b"x" * 20), ("r2", b"y" * 30))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    meta = store.get_metadata("shared")
    runs = {r: client.sismember(k.artifacts_of_run(r), "shared") for r in ("r1", "r2")}
    indexed = client.zscore(k.artifacts_by_created(), "shared") is not None
    if meta is None:
        assert runs == {"r1": 0, "r2": 0} and not indexed
    else:
        assert runs == {"r1": int(meta.run_id == "r1"), "r2": int(meta.run_id == "r2")} and indexed
        loaded = store.load("shared")
        assert loaded is not None and len(loaded.content) == meta.size_bytes
    # Only the current content, if any, is left in the large store.
    blob = client.hget(k.artifact("shared"), "x")
    assert {m.artifact_id for m in files.list_all()} == ({blob.decode()} if blob else set())
