"""Developer tooling for Strata: pinned control-plane binaries, the local cluster launcher, the simulated GPU fleet,
Strata's own components as local processes, and ``make demo`` / ``make up``.

Tests, benchmarks and ``make demo`` all start clusters through :mod:`strata_dev.cluster`. Test support lives with
the tests (``tests/support``), not here.
"""
