# vmshift: `make demo` runs the demo on the embedded control plane; `make test` runs every check.
# Both set up what they need on a fresh machine: a virtualenv in .venv and the control plane's
# binaries and Alertmanager (the webhook tests' peer), built once from the Go module proxy into
# ~/.cache/vmshift/ (10-20 min cold, seconds warm).
# `make test` also builds and runs the image (tests marked `image`), so it needs a running Docker, and
# installs it into a real one-node cluster (tests marked `cluster`, `make cluster`), so it runs as root.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: all venv controlplane alertmanager promtool guest-image docs docs-check krew image cluster cluster-down kind lint crds \
	crds-check test unit demo bench clean

all: test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

controlplane: venv
	$(BIN)/vmshift dev build

# Prometheus Alertmanager, the real peer of the webhook receiver's end-to-end test (cached, built once)
alertmanager: venv
	$(BIN)/vmshift dev alertmanager

# Prometheus' promtool: checks and unit-tests manifests/monitoring/prometheusrule.yaml (cached, built once)
promtool: venv
	$(BIN)/vmshift dev promtool

# The real guest the QEMU driver boots (tests/qemu): a Debian kernel and a busybox initramfs made from
# Debian's .debs, cached in ~/.cache/vmshift/guest/<versions>/ (about 15 s, once)
guest-image: venv
	$(BIN)/vmshift dev guest-image

# docs/api.md and the Argo CD health ConfigMap, generated from the code (a test fails on drift)
docs: venv
	$(BIN)/vmshift docs --write

docs-check: venv
	$(BIN)/vmshift docs

# The kubectl plugin's krew archive (dist/kubectl-vmshift-v<version>.tar.gz), whose sha256
# manifests/krew/vmshift.yaml carries. The plugin itself comes with the package: .venv/bin/kubectl-vmshift.
krew: venv
	$(BIN)/vmshift docs --krew-archive dist

# The one image of the operator and the agents: vmshift:<version> and vmshift:dev. Needs Docker and,
# the first time, mmdebstrap (the Debian base is made locally); cached in ~/.cache/vmshift/image.
image: venv
	$(BIN)/vmshift dev image

# A one-node cluster with real pods on this machine (root, no registry, no kind): the embedded control
# plane on the node's bridge address, containerd, kubelet, kube-scheduler, kube-proxy and CoreDNS,
# with vmshift:dev loaded. Node binaries are cached in ~/.cache/vmshift (about 6 min cold, 6 s warm).
# Then: eval "$$(.venv/bin/vmshift dev node env)"; kubectl apply -k manifests/install/kind
cluster: venv controlplane image
	$(BIN)/vmshift dev node up
	$(BIN)/vmshift dev node load vmshift:dev

cluster-down: venv
	$(BIN)/vmshift dev node down

# kind, on a machine with Docker, kind and kubectl (the node image comes from kind's registry): a
# cluster named vmshift, the image loaded, vmshift and the samples installed, the fleet Ready, one
# live migration (manifests/samples/migration.yaml). Not runnable on a machine without a registry:
# use `make cluster` there.
KIND_CLUSTER ?= vmshift
KUBECTL_KIND := kubectl --context kind-$(KIND_CLUSTER)
kind: image
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name $(KIND_CLUSTER) --wait 120s
	kind load docker-image vmshift:dev --name $(KIND_CLUSTER)
	$(KUBECTL_KIND) apply -k manifests/install/kind
	$(KUBECTL_KIND) -n vmshift-system rollout status deployment/vmshift-operator --timeout=300s
	$(KUBECTL_KIND) -n vmshift-system rollout status statefulset/vmshift-agent --timeout=300s
	$(KUBECTL_KIND) apply -k manifests/samples
	$(KUBECTL_KIND) wait --for=condition=Ready hosts --all --timeout=300s
	$(KUBECTL_KIND) wait --for=jsonpath='{.status.phase}'=Running -n vmshift-demo vsvm --all --timeout=300s
	$(KUBECTL_KIND) get hosts
	$(KUBECTL_KIND) wait --for=jsonpath='{.status.phase}'=Succeeded -n vmshift-demo vsmig --all --timeout=300s
	@echo "watch it: $(KUBECTL_KIND) get hosts,vsvm,vsmig -A -w"

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy

crds: venv
	$(BIN)/vmshift crds --write

crds-check: venv
	$(BIN)/vmshift crds --check

test: venv controlplane alertmanager promtool guest-image lint crds-check docs-check cluster
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not e2e and not image and not cluster and not qemu" $(PYTEST_ARGS)

demo: venv controlplane
	$(BIN)/vmshift demo

bench: venv controlplane
	$(BIN)/python bench/migration.py
	$(BIN)/python bench/drain.py
	$(BIN)/python bench/scale.py

chaos: venv controlplane
	$(BIN)/python bench/chaos.py --trials 500 --seed 1 --lanes 3

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
