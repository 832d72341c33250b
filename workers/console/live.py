"""Live updates: one reader of the events stream per console process, whatever the number of
browsers, fanning each commit out to the pages that follow its run (over SSE)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Hub"]


class Hub:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._subs: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, str]]]]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.reads = 0  # blocking reads made (one reader, however many browsers)
        self.error: str | None = None

    def subscribe(self, run_id: str) -> asyncio.Queue[dict[str, str]]:
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(maxsize=100)
        with self._lock:
            self._subs[run_id].add((asyncio.get_running_loop(), queue))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="console-events", daemon=True)
                self._thread.start()
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[dict[str, str]]) -> None:
        with self._lock:
            subs = self._subs.get(run_id, set())
            for entry in [e for e in subs if e[1] is queue]:
                subs.discard(entry)
            if not subs:
                self._subs.pop(run_id, None)

    def followers(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                if last is None:
                    last = self.client.backend.last_event_id()
                events = self.client.follow_events(last_id=last, block_ms=1000)
                self.reads += 1
                self.error = None
            except Exception as exc:  # Redis down: say so, and try again
                self.error = str(exc)
                logger.warning("console: the events stream cannot be read: %s", exc)
                self._stop.wait(2.0)
                continue
            for entry_id, event in events:
                last = entry_id
                with self._lock:
                    targets = list(self._subs.get(event.get("run_id", ""), ()))
                for loop, queue in targets:
                    loop.call_soon_threadsafe(_offer, queue, event)


def _offer(queue: asyncio.Queue[dict[str, str]], event: dict[str, str]) -> None:
    if not queue.full():  # a browser that does not read loses updates, not the console
        queue.put_nowait(event)
