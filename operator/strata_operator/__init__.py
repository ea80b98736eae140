"""Strata operator: kopf handlers for TrainingJob and ResourcePool.

Three rooms, each importing only the ones below it (import-linter keeps this true, see pyproject.toml):

- :mod:`strata_operator.handlers`: one module per reconciled resource, thin ``@kopf`` handlers that read, call
  the core, apply and return; only :mod:`strata_operator.main` imports them (to register them).
- :mod:`strata_operator.runtime`: what the handlers share while the operator runs: the Kubernetes client, the pod
  and node watch caches, the job store and status writer, the admission pass, metrics, quotes.
- :mod:`strata_operator.core`: pure decisions and builders (admission, a job's life cycle, worker pods, status
  drafts, views of pods and nodes); no I/O, so unit tests need no cluster.

:mod:`strata_operator.settings` sits under all three: one settings object, built at start-up and passed down.
"""
