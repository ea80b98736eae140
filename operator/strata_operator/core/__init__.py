"""The operator's pure core: decisions and builders from typed views, with no I/O (no API calls, no clock reads,
no kopf), so unit tests assert exact results without a cluster.

``admission`` (which queued gangs get GPUs, which running ones give way), ``lifecycle`` (one job's next step),
``follow`` (what a job's daemon does again or holds back between passes), ``pods`` (worker pods and their
Service and access), ``status`` (status drafts: merge patch, conditions, events), ``observed`` (pods and nodes as
the operator sees them), ``quotes`` (the extender quote's request and answer).
"""
