"""The AbstractCore runtimes of 0.2.0 that keep their runs in JSON files.

``create_local_file_runtime`` and ``create_remote_file_runtime`` are
:func:`~runtime.integrations.abstractcore.create_local_runtime` and
:func:`~runtime.integrations.abstractcore.create_remote_runtime` with a
:class:`JsonFileRunStore` and a :class:`JsonlLedgerStore` in ``base_dir``. They live here,
not in the integration package, because the kernel never imports ``stores``: code written
for 0.2.0 imports them from ``stores.abstractcore`` instead (``docs/porting.md``).
AbstractCore itself is imported only when a local client is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from runtime import Runtime
from runtime.integrations.abstractcore import create_local_runtime, create_remote_runtime

from .jsonfile import JsonFileRunStore, JsonlLedgerStore

__all__ = ["create_local_file_runtime", "create_remote_file_runtime"]


def create_local_file_runtime(*, base_dir: str | os.PathLike[str], provider: str, model: str,
                              llm_kwargs: Mapping[str, Any] | None = None, tool_executor: Any = None,
                              context: Any = None, effect_policy: Any = None, config: Any = None) -> Runtime:
    """AbstractCore in this process, runs and ledgers as JSON files under ``base_dir``."""
    return create_local_runtime(provider=provider, model=model, llm_kwargs=llm_kwargs,
                                run_store=JsonFileRunStore(base_dir), ledger_store=JsonlLedgerStore(base_dir),
                                tool_executor=tool_executor, context=context, effect_policy=effect_policy,
                                config=config)


def create_remote_file_runtime(*, base_dir: str | os.PathLike[str], server_base_url: str, model: str,
                               headers: Mapping[str, str] | None = None, timeout_s: float = 60.0,
                               tool_executor: Any = None, context: Any = None) -> Runtime:
    """An AbstractCore server over HTTP, runs and ledgers as JSON files under ``base_dir``."""
    return create_remote_runtime(server_base_url=server_base_url, model=model, headers=headers,
                                 timeout_s=timeout_s, run_store=JsonFileRunStore(base_dir),
                                 ledger_store=JsonlLedgerStore(base_dir), tool_executor=tool_executor,
                                 context=context)
