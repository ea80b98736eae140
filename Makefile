# Strata: `make demo` and `make test` are the only set-up commands a fresh machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
PHASE := hack/phase.sh
BESIDE := hack/beside.sh
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: help venv lock binaries images image-tools demo up down env lint format types imports check test test-fast test-unit test-cluster \
        test-e2e monitoring-tools bench-cluster bench-scheduler bench-workloads bench-serving bench-operator simulate chart-sync verify clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) -q --compile-bytecode -e '.[dev]' -c requirements.lock
	@touch $@

lock: venv ## Re-resolve requirements.lock (every transitive version) from pyproject.toml's pins
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -q -o requirements.lock

venv: $(VENV)/.installed ## Create the virtualenv and install Strata with pinned dependencies

binaries: ## Build (or find cached) etcd, kube-*, kubelet, kube-proxy, kubectl, kwok, helm, coredns from pinned Go modules
	@PYTHONPATH=hack $(PYTHON) -m strata_dev.binaries ensure

# The real node is on by default; REAL_NODE=0 runs the kwok fleet only (for a host that cannot run containers).
# The demo builds (or finds cached) only the images the real node runs, workloads and serving, as `make images` would.
REAL_NODE ?= 1
NO_REAL_NODE := $(filter 0,$(REAL_NODE))

demo: venv binaries $(if $(NO_REAL_NODE),,node-deps image-tools) ## Local cluster + GPU fleet + a real node, then Strata; the examples queue, run, survive a spot reclaim, finish; cpu-tiny trains in real pods and the example InferenceService serves it, scaling up under load (REAL_NODE=0: kwok only)
	$(PY) -m strata_dev demo $(if $(NO_REAL_NODE),--no-real-node)

up: venv binaries $(if $(NO_REAL_NODE),,node-deps) ## Keep a dev cluster running in the background with a real node that runs pods (NODES=n scales the fleet; REAL_NODE=0: kwok only)
	$(PY) -m strata_dev up --nodes $(or $(NODES),0) $(if $(NO_REAL_NODE),--no-real-node)

.PHONY: node-deps
node-deps: ## Install the real node's runtime from Debian, pinned: containerd, runc, CNI plugins, iptables, conntrack, busybox-static (root)
	@hack/install-node-deps.sh

images: venv binaries $(if $(filter docker,$(IMAGE_BUILDER)),,image-tools) ## Build the operator, scheduler, serving, kube-scheduler and workloads images (buildah here, cached by content hash; IMAGE_BUILDER=docker, IMAGE_TAG=tag)
	$(PY) -m strata_dev images $(IMAGES)

image-tools: ## Install the pinned image builder (buildah, debootstrap; Debian packages, needs root)
	hack/install-image-tools.sh

down: ## Stop the dev cluster
	@$(PY) -m strata_dev down

env: ## Print the export line that points kubectl at the dev cluster
	@$(PY) -m strata_dev env

lint: venv actionlint ## ruff lint and format check, actionlint on the CI workflows
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: actionlint
actionlint: ## Lint .github/workflows with actionlint (pinned Go module, built once into ~/.cache/strata/tools)
	@PYTHONPATH=hack $(PYTHON) -m strata_dev.binaries tool actionlint .github/workflows/*.yaml

format: venv ## Format the code with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

types: venv ## mypy, strict on every package
	$(VENV)/bin/mypy

imports: venv ## import-linter: strata_api a leaf, no component imports another, the layers inside each (docs/development.md)
	$(VENV)/bin/lint-imports

check: lint types imports ## All static checks

# The chart's unit tests render it with the pinned helm: built (or found) here, outside the tests' timeouts.
HELM_TOOL := @PYTHONPATH=hack $(PYTHON) -m strata_dev.binaries tool helm version --short >/dev/null

test-unit: venv ## Unit tests (no cluster)
	$(HELM_TOOL)
	$(PYTEST) tests -m "not cluster and not e2e and not bench and not prometheus"

test-cluster: venv binaries node-deps ## Cluster tests on the local control plane and its kwok GPU fleet (or KUBECONFIG, see README)
	$(PYTEST) tests -m "cluster and not bench and not prometheus"

# Locally the tier imports the images into the real node and installs the chart with them; on an existing cluster
# (STRATA_USE_EXISTING_CLUSTER=1) Strata is installed already and the images are on its nodes.
test-e2e: venv binaries $(if $(filter 1,$(STRATA_USE_EXISTING_CLUSTER)),,node-deps images) ## End-to-end tier: the chart's components and real training pods in containers on a real node (the local cluster, or KUBECONFIG with STRATA_USE_EXISTING_CLUSTER=1)
	$(PYTEST) tests -m "e2e and not bench"

test-fast: venv ## Unit tests without the slow matrices
	$(HELM_TOOL)
	$(PYTEST) tests -m "not cluster and not e2e and not slow and not bench and not prometheus"

monitoring-tools: ## Build (or find cached) prometheus and promtool for the monitoring tier, into ~/.cache/strata/tools
	@PYTHONPATH=hack $(PYTHON) -m strata_dev.binaries tool promtool --version
	@PYTHONPATH=hack $(PYTHON) -m strata_dev.binaries tool prometheus --version

test-prometheus: venv binaries monitoring-tools ## Monitoring tier: promtool checks the chart's alert rules; a real Prometheus scrapes the operator, the extender and a training process, and every dashboard query and alert evaluates
	$(PYTEST) tests -m "prometheus and not bench"

test: ## Everything: install, binaries, lint, types, import layering, every test tier
	@$(PHASE) venv $(MAKE) --no-print-directory venv
	@$(PHASE) binaries $(MAKE) --no-print-directory binaries
	@$(PHASE) node-deps $(MAKE) --no-print-directory node-deps
	@$(PHASE) lint $(MAKE) --no-print-directory lint
	@$(PHASE) types $(MAKE) --no-print-directory types
	@$(PHASE) imports $(MAKE) --no-print-directory imports
	@$(PHASE) unit-tests $(MAKE) --no-print-directory test-unit
	@$(BESIDE) start images-and-tools $(MAKE) --no-print-directory images monitoring-tools
	@$(PHASE) cluster-tests $(MAKE) --no-print-directory test-cluster
	@$(BESIDE) wait images-and-tools
	@$(PHASE) e2e-tests $(MAKE) --no-print-directory test-e2e
	@$(PHASE) prometheus-tests $(MAKE) --no-print-directory test-prometheus

CHART := charts/strata
chart-sync: ## Copy crds/, the price catalog and the kube-scheduler config into the chart (checked by a test)
	@rm -f $(CHART)/crds/*.yaml && cp crds/*.yaml $(CHART)/crds/
	@cp api/strata_api/catalog.yaml scheduler/config/kube-scheduler-config.yaml $(CHART)/files/

verify: chart-sync ## Regenerate generated files and fail if the tree changed
	@git diff --exit-code -- $(CHART) || { echo "error: generated files were stale; commit the result of make chart-sync"; exit 1; }
	@test -z "$$(git status --porcelain -- $(CHART))" || { echo "error: untracked generated files in $(CHART)"; exit 1; }

bench-cluster: venv binaries ## Measure cold build, cache size, warm start, control-plane memory, 1,000-node fleet
	$(PY) bench/cluster/bench_cluster.py

bench-scheduler: venv binaries ## Extender latency (1,000/5,000 nodes), kube-scheduler throughput with/without it and with a null extender, forecast quality and its hindsight bound
	$(PY) bench/scheduler/extender_latency.py --nodes 1000 5000
	$(PY) bench/scheduler/scheduler_throughput.py --nodes 1000 --pods 400 --floor
	$(PY) bench/scheduler/forecast_quality.py
	$(PY) bench/scheduler/forecast_bound.py

simulate: venv ## Trace replay of a month of Alibaba GPU jobs: Strata's admission and placement vs default, Kueue-like, Karpenter-like (table; plots in /tmp/strata-sim; docs/simulation.md)
	$(PY) -m strata_sim --trace alibaba --days 30 --scale 0.5 --policies all --out /tmp/strata-sim

bench-operator: venv binaries ## Operator pod-creation rate against a plain client, admission and start latency
	$(PY) tests/cluster/operator/bench_operator.py

bench-workloads: venv ## Pipeline efficiency vs the bound, TP memory, layouts (tokens/s, MFU), INT8 serving, batching, PowerSGD, dataset preparation
	$(PY) bench/workloads/pipeline_efficiency.py --stages 2 4 --microbatches 1 2 4 8
	$(PY) bench/workloads/tp_memory.py --preset small --tp 2 4
	$(PY) bench/workloads/layout_throughput.py --preset small-moe --steps 8
	$(PY) bench/workloads/serving_bench.py --train-steps 150
	$(PY) bench/workloads/grad_compression.py --steps 80 --rank 4
	$(PY) bench/workloads/prepare_bench.py

bench-serving: venv ## Autoscaler trace replay (predictive vs HPA-like vs a peak-sized fleet, PNGs); router p50/p99 with a slow replica and failover
	$(PY) bench/serving/autoscale_replay.py
	$(PY) bench/serving/router_bench.py

clean: ## Remove the virtualenv and caches in the repo (the binary cache in ~/.cache/strata stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
