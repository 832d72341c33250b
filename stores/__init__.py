"""Durable backends for the kernel's store interfaces.

The JSON-file stores live here; the in-memory stores are re-exported so that code
written for AbstractRuntime 0.2.0 finds every store it imported in one place.
Imports point one way: ``stores`` uses ``runtime``, never the reverse.
"""

from runtime import (
    HashChainedLedgerStore,
    InMemoryArtifactStore,
    InMemoryLedgerStore,
    InMemoryRunStore,
    InMemorySnapshotStore,
    LedgerStore,
    QueryableRunStore,
    RunStore,
    verify_ledger_chain,
)

from .files import FileArtifactStore, JsonSnapshotStore
from .jsonfile import JsonFileRunStore, JsonlLedgerStore

__all__ = [
    # Interfaces (from runtime)
    "RunStore",
    "QueryableRunStore",
    "LedgerStore",
    # In memory (from runtime)
    "InMemoryRunStore",
    "InMemoryLedgerStore",
    "InMemorySnapshotStore",
    "InMemoryArtifactStore",
    # Files
    "JsonFileRunStore",
    "JsonlLedgerStore",
    "JsonSnapshotStore",
    "FileArtifactStore",
    # Hash chain (from runtime)
    "HashChainedLedgerStore",
    "verify_ledger_chain",
]
