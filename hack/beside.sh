#!/usr/bin/env bash
# Run one phase of `make test` beside the phases after it.
#   hack/beside.sh start NAME CMD...  runs CMD in the background (its output to .local/make-test/NAME.log)
#   hack/beside.sh wait NAME          waits for it, prints its output and how long it took, exits with its status
# `make test` builds the images and the monitoring tier's tools this way while the cluster tier runs: that tier
# waits on the control plane most of the time (load under 1 on 2 cores), and on a cold machine the builds take
# about 10 minutes (docs/benchmarks.md). A warm machine finds both cached in seconds. A phase that fails stops
# `make test` before the wait, and a build still running beside it then finishes on its own (the caches are locked
# per item).
set -u
dir=.local/make-test
action=$1 name=$2
shift 2
case $action in
start)
    mkdir -p "$dir"
    rm -f "$dir/$name".{log,rc}
    date +%s >"$dir/$name.start"
    echo "==> ${name}: started beside the next phases (output: $dir/$name.log)"
    (
        "$@" >"$dir/$name.log" 2>&1
        echo $? >"$dir/$name.rc.tmp" && mv "$dir/$name.rc.tmp" "$dir/$name.rc"
    ) </dev/null &
    ;;
wait)
    if [ ! -f "$dir/$name.start" ]; then
        echo "error: nothing named $name was started beside (hack/beside.sh start $name ...)" >&2
        exit 2
    fi
    while [ ! -f "$dir/$name.rc" ]; do sleep 1; done
    rc=$(cat "$dir/$name.rc")
    echo "==> ${name}: ran beside the phases before; its output:"
    cat "$dir/$name.log"
    echo "==> ${name}: $(($(date +%s) - $(cat "$dir/$name.start")))s from its start (exit ${rc})"
    exit "$rc"
    ;;
*)
    echo "usage: $0 start NAME CMD... | wait NAME" >&2
    exit 2
    ;;
esac
