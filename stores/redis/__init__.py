"""Redis backends: connection settings, the embedded redis-server, and the Redis stores.

``connect(RedisSettings.from_env())`` gives a checked redis-py client: to the URL in
``ABSTRACTRUNTIME_REDIS_URL``, or, when it is unset, to an embedded redis-server that keeps
its data under ``ABSTRACTRUNTIME_DATA_DIR`` (default ``./.abstractruntime``).
"""

from .artifacts import RedisArtifactStore
from .backend import RedisBackend
from .embedded import EmbeddedRedis, find_redis_server, shared_embedded, stop_running
from .errors import (
    ChosenRedisServerNotFound,
    EmbeddedRedisFailed,
    RedisServerMismatch,
    RedisServerNotFound,
    RedisUnavailable,
)
from .ledger import RedisLedgerStore
from .runs import RedisRunStore
from .settings import RedisSettings, connect, mask_url
from .snapshots import RedisSnapshotStore

__all__ = [
    # Stores
    "RedisBackend",
    "RedisRunStore",
    "RedisLedgerStore",
    "RedisSnapshotStore",
    "RedisArtifactStore",
    # Connection
    "RedisSettings",
    "connect",
    "mask_url",
    # Embedded server
    "EmbeddedRedis",
    "shared_embedded",
    "find_redis_server",
    "stop_running",
    # Errors
    "RedisUnavailable",
    "EmbeddedRedisFailed",
    "RedisServerNotFound",
    "ChosenRedisServerNotFound",
    "RedisServerMismatch",
]
