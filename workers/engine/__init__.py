"""The Celery driver's logic, without Celery: what a tick, an effect task, a wake and a sweep do.

Every entry point loads the run from Redis (the truth), decides with the kernel step
(``runtime.step``), commits with the version it loaded (one atomic script call), and only
then asks its :class:`Dispatcher` to send the follow-up message. Messages only nudge: a
message that finds the run moved on (stale, duplicate, redelivered, cancelled) does nothing.

What a run expects next is kept with its state, its *dispatch*
(:class:`stores.redis.dispatch.Dispatch`, field ``d`` of the run hash), written by the same
commit: a tick, an effect task, the notification of a parent, or nothing. Each commit that
expects a message also puts the run in the lease index; :meth:`Engine.sweep` (beat) re-sends
what expired leases name and wakes due timers.

:class:`Engine` is assembled from one part per kind of message, each a module here:

* ``tick.py`` — :meth:`~Engine.tick` and :meth:`~Engine.wake`, and the landing of a transition;
* ``effects.py`` — :meth:`~Engine.effect` and the effect handlers;
* ``children.py`` — subworkflows: child runs and their parents;
* ``sweep.py`` — :meth:`~Engine.sweep` and the dead letters;
* ``producer.py`` — :meth:`~Engine.create`, :meth:`~Engine.resume`, :meth:`~Engine.emit`,
  :meth:`~Engine.force_wake`, :meth:`~Engine.cancel`;
* ``operator.py`` — :meth:`~Engine.retry` of a failed run;
* ``waits.py`` — named waits: :meth:`~Engine.answer`, parking on a set, firing its timers;
* ``schedules.py`` — cron schedules: setting them, and :meth:`~Engine.fire_schedules` (the sweep's step);
* ``base.py`` — what they share: the state, the :class:`Dispatcher`, the commit, a run's failure.
"""

from __future__ import annotations

from .base import EFFECT_QUEUES, Dispatcher
from .children import Subworkflows
from .effects import Effects
from .operator import OperatorActions
from .schedules import Schedules
from .sweep import DEAD_LETTERS_MAX, Recovery
from .tick import Ticks
from .waits import NamedWaits

__all__ = ["Dispatcher", "Engine", "EFFECT_QUEUES", "DEAD_LETTERS_MAX"]


class Engine(Ticks, Effects, Subworkflows, Recovery, OperatorActions, NamedWaits, Schedules):
    """Ticks, effects, wakes and sweeps of runs kept in one :class:`~stores.redis.RedisBackend`.

    ``Engine(backend, registry, settings, dispatcher)``; each Celery task calls one method.
    """
