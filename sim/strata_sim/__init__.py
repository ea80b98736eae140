"""Trace-replay simulation of Strata's admission and placement against the schedulers users would pick instead
(docs/simulation.md). It drives the operator's and the extender's own pure functions from a discrete-event loop."""
