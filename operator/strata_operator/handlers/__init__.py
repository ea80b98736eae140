"""kopf handlers, one module per reconciled resource: ``trainingjob.py``, ``resourcepool.py``.

Each module declares its handlers and one ``register(registry, ...)`` that :func:`strata_operator.main.build_registry`
calls; nothing else imports a handler module, and handler modules do not import each other (import-linter's
"protected" contract). A handler stays thin: it reads its object and memory, asks :mod:`strata_operator.core` what
to do, applies that through :mod:`strata_operator.runtime`, and returns.

InferenceService's handlers go here as ``inferenceservice.py`` (its pure builders and decisions in
:mod:`strata_operator.core`, anything it shares with TrainingJob at run time in :mod:`strata_operator.runtime`),
registered by one more line in :func:`strata_operator.main.build_registry`.
"""
