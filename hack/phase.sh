#!/usr/bin/env bash
# Run one phase of `make test`, printing its name and how long it took (also when it fails).
name=$1; shift
start=$(date +%s)
echo "==> ${name}"
"$@"; rc=$?
echo "==> ${name}: $(( $(date +%s) - start ))s (exit ${rc})"
exit $rc
