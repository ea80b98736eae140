"""``python -m strata_operator [--flags]``: run the operator (see ``--help`` and docs/operator.md)."""

from strata_operator.main import main

main()
