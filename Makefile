# detour's developer and CI interface. CI calls `make test` (through .ci/run) and
# nothing else; every tool the tests need is installed by the deps targets below,
# idempotently, and cached outside the clone.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO ?= go
BIN := $(CURDIR)/bin
# Built tools live outside the clone so a fresh clone reuses them.
CACHE ?= $(HOME)/.cache/detour
KUBE_BIN := $(CACHE)/kube-v1.37.2-etcd-v3.7.3/bin
CNI_PLUGINS_BIN := $(CACHE)/cni-plugins-v1.10.0/bin
ISTIO_BIN := $(CACHE)/istio-eed52ebb66ad/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Tests find the cached tools through these.
export DETOUR_KUBE_BIN := $(KUBE_BIN)
export KUBEBUILDER_ASSETS := $(KUBE_BIN)
export DETOUR_CNI_PLUGINS_BIN := $(CNI_PLUGINS_BIN)

.PHONY: help build test test-unit test-e2e lint verify generate bench bench-cli demo deps deps-apt deps-bpf deps-kube deps-cni-plugins fuzz clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/detour (lean CLI), bin/detour-ebpf (the CLI with the eBPF backend), bin/detour-cp (control plane), bin/detour-cni (lean plugin) and bin/detour-cni-ebpf (the plugin with the eBPF backend)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $$($(GO) list ./cmd/... | grep -v '/cmd/detour$$' | grep -v '/cmd/detour-cni$$')
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/detour-ebpf ./cmd/detour
	CGO_ENABLED=0 $(GO) build -trimpath -tags detour_lean -ldflags '$(LDFLAGS)' -o $(BIN)/detour ./cmd/detour
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/detour-cni-ebpf ./cmd/detour-cni
	CGO_ENABLED=0 $(GO) build -trimpath -tags detour_lean -ldflags '$(LDFLAGS)' -o $(BIN)/detour-cni ./cmd/detour-cni

deps: deps-apt deps-kube deps-cni-plugins ## install everything the tests need (idempotent, cached)

deps-apt: ## Debian packages: iptables, nftables, iproute2, util-linux, systemd (systemd-analyze), bpftool, curl, nghttp2-client
	hack/deps-apt.sh

deps-kube: ## build kube-apiserver and etcd into the cache (12 min cold, then instant)
	hack/kube/build.sh $(KUBE_BIN)

deps-cni-plugins: ## build the reference CNI plugins and cnitool into the cache
	hack/cni-plugins.sh $(CNI_PLUGINS_BIN)

.PHONY: deps-istio
deps-istio: ## build Istio's pilot-agent (istio-iptables, the bench-cli peer) into the cache (4 min cold, then instant)
	hack/istio.sh $(ISTIO_BIN)

test: deps ## everything: vet, the docs' references (hack/docscheck), unit, privileged and end-to-end tests (run as root)
	$(GO) vet ./...
	$(GO) run ./hack/docscheck
	$(GO) test -count=1 -timeout 80m ./...
	$(GO) test -count=1 -tags detour_lean ./cmd/detour/ ./cmd/detour-cni/

bench: deps-apt deps-kube deps-cni-plugins ## every benchmark with its figures (as root): CLI, engine, CNI ADD latency, xDS fan-out, admission latency, redirect backends
	$(MAKE) --no-print-directory bench-cli bench-engine bench-cni bench-controlplane bench-inject bench-redirect

bench-cli: deps-apt deps-istio build ## start-up CPU and memory of detour, detour-cni, detour-cp; detour install / re-run / uninstall through the binary per backend, beside Istio's istio-iptables (root)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/go-floor ./hack/bench/floor
	$(GO) run ./hack/bench --detour $(BIN)/detour --floor $(BIN)/go-floor --runs $${BENCH_RUNS:-25} --backends $${BENCH_BACKENDS:-iptables-nft,iptables-legacy,nftables} --istio $(ISTIO_BIN)/pilot-agent

test-unit: ## the unprivileged unit tests only
	$(GO) test -count=1 ./redirect/... ./controlplane/... ./cni/... ./cmd/... ./internal/...
	$(GO) test -count=1 -tags detour_lean ./cmd/detour/ ./cmd/detour-cni/

test-e2e: deps ## the end-to-end tests in tests/ only
	$(GO) test -count=1 -timeout 60m ./tests/...

lint: ## gofmt, go vet, a build for another OS (the non-Linux stubs still compile), and the docs' links, anchors, make targets, paths and test names (hack/docscheck)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags detour_lean ./cmd/detour ./cmd/detour-cni
	GOOS=darwin $(GO) build ./...
	GOOS=darwin $(GO) build -tags detour_lean -o /dev/null ./cmd/detour
	GOOS=darwin $(GO) build -tags detour_lean -o /dev/null ./cmd/detour-cni
	$(GO) run ./hack/docscheck

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@for t in FuzzDecode FuzzParsers FuzzAppendJSONString; do $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $${FUZZTIME:-30s} ./redirect/; done
	$(GO) test -run '^$$' -fuzz '^FuzzParseConf$$' -fuzztime $${FUZZTIME:-30s} ./cni/

verify: lint generate ## check that generated files (bpf2go output) and go.mod are up to date
	$(GO) mod tidy -diff
	@git diff --exit-code -- bpf/ || { echo "bpf/: generated files are stale: run make generate and commit"; exit 1; }

deps-bpf: ## the BPF toolchain for make generate: clang, llvm, libbpf-dev, bpftool (idempotent)
	DETOUR_BPF_TOOLCHAIN=1 hack/deps-apt.sh

generate: deps-bpf ## rebuild bpf/detour_bpfel.{go,o} from bpf/detour.c (vmlinux.h from this kernel's BTF)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h
	$(GO) generate ./bpf/

clean: ## remove build output (not the cache)
	rm -rf $(BIN)

# --- e2e helper: the demo (hack/demo) ---

demo: deps-apt build ## a throwaway lab: install detour, show what is intercepted, clean up (root)
	$(GO) build -o $(BIN)/detour-demo ./hack/demo
	$(BIN)/detour-demo --detour $(BIN)/detour

# --- deploy (issue 4): CNI installer, systemd unit, deploy/ manifests and Dockerfile ---
.PHONY: test-deploy
test-deploy: deps-kube ## the CNI installer, systemd and deploy/ tests (manifests against a real kube-apiserver)
	$(GO) test -count=1 ./cni/install/ ./internal/systemd/ ./cmd/detour/ ./tests/deploy/

# --- cni: the detour-cni plugin -----------------------------------------------
.PHONY: test-cni bench-cni

test-cni: deps-kube deps-cni-plugins ## detour-cni: unit, privileged and end-to-end tests (as root)
	$(GO) test -count=1 ./cni/ ./tests/cni/

bench-cni: deps-kube deps-cni-plugins ## detour-cni: median and p99 ADD latency, 100 samples (as root)
	$(GO) test -count=1 -run '^$$' -bench BenchmarkAdd -benchtime=100x ./tests/cni/

# --- engine (redirect/) ---
.PHONY: bench-engine
bench-engine: ## redirect engine in-process: install, no-change re-run, uninstall per backend through every Driver, the nftables driver alone, planning (time and procs/op; as root)
	$(GO) test -count=1 -run '^$$' -bench Engine -benchtime=50x ./redirect/backends/
	$(GO) test -count=1 -run '^$$' -bench 'Apply|Plan' -benchtime=50x ./redirect/nftables/ ./redirect/iptables/

# --- control plane (issue #3) ---
.PHONY: bench-inject
bench-inject: deps-kube ## sidecar injection webhook: p50/p99 admission latency of 1,000 pod creations against a real kube-apiserver
	$(GO) test -count=1 -run '^$$' -bench Admission -benchtime 1000x ./inject/webhook/

.PHONY: bench-controlplane
bench-controlplane: ## control-plane fan-out benchmark: 1000 ADS clients in a child process (DETOUR_BENCH_CLIENTS=N), SotW and delta; peak RSS, heap, time and CPU per change
	$(GO) test -timeout 60m -run '^$$' -bench 'FanOut|Build' -benchtime 3x ./controlplane/

# --- eBPF backend (issue 8) ---
.PHONY: bench-redirect
bench-redirect: deps-apt ## direct, the relay dialed directly (and the same asking SO_ORIGINAL_DST), iptables-nft, iptables-legacy, nftables, ebpf, ebpf --ebpf-accelerate through one relay proxy: conn/s and CPU/conn (relayed and proxy-answered; by process, with context switches), p50/p99, MB/s, medians of interleaved runs (root; BENCH_REPS, BENCH_WORKERS, BENCH_SECONDS, BENCH_RR, BENCH_STREAM_MIB, BENCH_ONLY, BENCH_INBOUND, BENCH_BPF_STATS=1 for each eBPF program's runs and ns per connection, BENCH_TOOLS=goroutines for the earlier goroutine-per-connection relay and client, BENCH_RELAY_THREADS, BENCH_SERVER_THREADS, BENCH_CLIENT_THREADS)
	DETOUR_BENCH=1 $(GO) test -count=1 -v -run TestCompareBackends ./tests/redirectbench/ | grep -E '^(\||$$)'
