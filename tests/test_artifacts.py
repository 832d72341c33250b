"""Artifact stores: one contract suite run on every backend, the ref helpers, and file-store failures."""

from __future__ import annotations

import hashlib
import json
import logging
import time
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
from runtime.errors import CorruptRecordError, InvalidArtifactId, PayloadNotSerializable
from stores.files import FileArtifactStore

BAD_IDS = ["../etc/passwd", "a/b", ""]


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    # Every backend must pass the same suite; the file store gets a fresh directory per test.
    if request.param == "memory":
        return InMemoryArtifactStore()
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
