"""Strata workloads: hybrid-parallel training and the inference server."""
