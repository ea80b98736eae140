"""Developer tooling for Strata: pinned control-plane binaries, the local cluster launcher and the GPU fleet.

Tests, benchmarks and ``make demo`` all start clusters through :mod:`strata_dev.cluster`.
"""
