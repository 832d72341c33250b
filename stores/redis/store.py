"""The Redis run and ledger stores, under the names they were first imported by.

The backend is :mod:`stores.redis.backend` (load and commit), :mod:`stores.redis.indexes`
(the cross-run keys), :mod:`stores.redis.runs` and :mod:`stores.redis.ledger` (the store
views); stored values are decoded in :mod:`stores.redis.codec`.
"""

from .backend import DEFAULT_CACHE_SIZE, DEFAULT_EVENTS_MAXLEN, Loaded, RedisBackend
from .codec import DEFAULT_MAX_VALUE_BYTES
from .codec import pack_record as _pack_record  # noqa: F401  (tests/bench/redis_store.py)
from .indexes import LAST_FAILURE_MAX_CHARS
from .ledger import RedisLedgerStore
from .runs import RedisRunStore

__all__ = ["RedisBackend", "RedisRunStore", "RedisLedgerStore", "Loaded", "DEFAULT_MAX_VALUE_BYTES",
           "DEFAULT_EVENTS_MAXLEN", "DEFAULT_CACHE_SIZE", "LAST_FAILURE_MAX_CHARS"]
