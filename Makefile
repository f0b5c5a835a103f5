# fm-operator: common tasks. `make setup` then `make test` is all a fresh machine needs.
SHELL := /bin/bash
PY := .venv/bin/python
CACHE ?= $(or $(FMOP_CACHE),$(HOME)/.cache/fm-operator)
KUBECONFIG_LOCAL := $(CACHE)/cluster/kubeconfig
export PATH := $(CACHE)/bin:$(PATH)

.PHONY: help setup lint test fuzz bench tune bench-report bench-rollouts bench-experiments bench-webhook bench-alert demo test-e2e test-chaos train-fm finetune cold export serve-bench consolidation-bench test-unit test-integration crds check-crds cluster-up cluster-down cluster-status run examples operator-image clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: ## install everything: Debian packages, Python venv, Kubernetes/etcd/helm/KServe/Argo from Go modules, CRDs
	bash hack/setup.sh

lint: ## strict type check, import contracts (.importlinter: layers, pure core, operator alone), CRDs in sync with the API types
	$(PY) -m mypy
	.venv/bin/lint-imports --no-cache
	$(PY) -m fmop.crdgen --check

test: ## all tests: fast unit tests, then integration tests against the real local control plane
	$(PY) -m pytest tests

test-unit: ## fast tests only (no processes started)
	$(PY) -m pytest tests/unit

test-integration: ## integration tests only
	$(PY) -m pytest tests/integration

crds: ## regenerate crds/ and the chart's crds/ from the pydantic API types
	$(PY) -m fmop.crdgen

check-crds: ## fail if the committed CRDs differ from the API types
	$(PY) -m fmop.crdgen --check

cluster-up: ## start the local single-node Kubernetes: control plane, kubelet + containerd, KServe, Argo (root)
	$(PY) -m fmdev up

cluster-down: ## stop it and remove every process, container, netns, bridge and mount it made
	$(PY) -m fmdev down

cluster-status: ## show what runs and where
	$(PY) -m fmdev status

run: ## run the operator against the local cluster (make cluster-up first), with its Prometheus and Alertmanager webhook
	eval "$$($(PY) -m fmdev env)" && $(PY) -m fmop --log-format=plain --bind-address=127.0.0.1

examples: ## apply the examples to the local control plane and show them
	kubectl --kubeconfig=$(KUBECONFIG_LOCAL) apply -f examples/
	kubectl --kubeconfig=$(KUBECONFIG_LOCAL) get fmops

bench-rollouts: ## 500 Rollouts on the local control plane: operator CPU/RSS, reconcile p50/p99, API requests/s (~5 min)
	$(PY) -m fmdev.bench.rollouts --rollouts 500 --steady 60

bench-experiments: ## the A/B experiment statistics: A/A false positives vs a peeking z-test, power, exposures to decision, SRM (seeded simulations, ~10 s)
	$(PY) -m fmdev.bench.experiments

bench-webhook: ## Alertmanager webhook -> traffic patched, 20 trials on the local control plane (p50/p99; ~2 min)
	$(PY) -m fmdev.bench.webhook --trials 20

bench-alert: ## alert fired in Prometheus -> traffic restored, 20 trials on the local node (real KServe, Triton, Traefik, Alertmanager; ~9 min; root)
	$(PY) -m fmdev up
	$(PY) -m fmdev bench-alert --trials 20

demo: ## the whole product on the local node: train through Argo, fine-tune, serve, shadow + canary, alert rollback (~20 min; root)
	$(PY) -m fmdev up
	$(PY) -m fmdev demo

test-e2e: ## the rollout scenarios end to end on the real node (Traefik, Prometheus, Alertmanager)
	$(PY) -m pytest tests/integration/test_rollouts_e2e.py

fuzz: ## longer fuzzing than `make test` (hypothesis): the served model on real Triton and the Alertmanager webhook (~15 min)
	FMOP_FUZZ_EXAMPLES=5000 $(PY) -m pytest tests/integration/test_triton_fuzz.py tests/unit/test_webhook_fuzz.py

test-chaos: ## every crash point of the node sweep (make test runs a seeded sample of 2; FMOP_CHAOS_SEED=n picks one; ~30 min; root)
	FMOP_CHAOS=all $(PY) -m pytest tests/integration/test_rollouts_e2e.py -k "test_a_good or test_h_" -s

bench: ## the tuned configurations (benchmarks/tuning.json) of our FM and RecTools SASRec/BERT4Rec/HSTU, 3 seeds: table + bootstrap interval (hours on 2 cores; resumes)
	$(PY) -m fmdev.bench bench

tune: ## the grid behind benchmarks/tuning.json, chosen on validation (hours on 2 cores; resumes from the file)
	$(PY) -m fmdev.bench tune

bench-report: ## print the benchmark table from benchmarks/results.json without training
	$(PY) -m fmdev.bench report

train-fm: ## train the FM (the recipe the benchmark chose, fmrec.train.recipe) on ML-100K on CPU into runs/fm (~2 min on 2 idle cores, 7-15 min beside other jobs)
	$(PY) -m fmrec train --data movielens100k --out runs/fm --threads 2

finetune: ## fine-tune a "liked items" task adapter (next item rated >= 4) on the frozen FM in runs/fm (make train-fm first)
	$(PY) -m fmrec finetune --model runs/fm --min-action 4 $(if $(SLICE),--slice $(SLICE)) --out runs/adapter --threads 2

cold: ## cold-start evaluation: items withheld from training, scored from metadata only
	$(PY) -m fmrec cold --threads 2

export: ## write a Triton model repository for runs/fm into runs/triton (fp32 and int8)
	$(PY) -m fmrec export --model runs/fm --repo runs/triton --name fmrec
	$(PY) -m fmrec export --model runs/fm --repo runs/triton --name fmrec_int8 --int8

serve-bench: ## real Triton on runs/fm: p50/p99/throughput at concurrency 1, 8, 32, fp32 vs int8 (make train-fm first)
	$(PY) -m fmdev.bench serve-bench --model runs/fm --threads 2

consolidation-bench: ## real Triton: 1/4/16 tasks as one model with adapters vs separate models (memory, size, req/s, p99; make train-fm first)
	$(PY) -m fmdev.bench consolidation-bench --model runs/fm --requests 1000

IMAGE ?= ghcr.io/fm-operator/fm-operator:0.1.0
operator-image: ## the operator image: wheelhouse on the host (hack/operator-wheels.sh), then `docker build` (BASE=..., IMAGE=...)
	PYTHON=$(PY) bash hack/operator-wheels.sh build/wheels
	docker build $(if $(BASE),--build-arg BASE=$(BASE)) -t $(IMAGE) .

clean: ## remove the virtualenv (the Go-built binaries stay cached in $(CACHE))
	rm -rf .venv *.egg-info .pytest_cache
