"""What the handlers share while the operator runs, over the pure core: I/O and process state, no decisions.

``shared`` (the :class:`~strata_operator.runtime.shared.Runtime` every handler gets through kopf's memo),
``kube`` (the async Kubernetes client), ``watches`` (the pod and node list-and-watch caches), ``jobs`` (a
TrainingJob as the index holds it, and the guarded status writer), ``gangs`` (creating, deleting and ungating a
gang's pods), ``admission_pass`` (reads the queue from memory, writes admission's decisions), ``quoter`` (asks the
scheduler extender for GPU type quotes), ``metrics`` (Prometheus).
"""
