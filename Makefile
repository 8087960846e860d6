# podpath build, test and demo. Every target that needs system packages runs
# scripts/install-deps.sh first, so a fresh Debian/Ubuntu machine needs only
# Go, make and root.
GO      ?= go
BIN     := bin
GOPATH  := $(shell $(GO) env GOPATH)
export PATH := $(PATH):/usr/local/go/bin:$(GOPATH)/bin

.PHONY: all build generate deps test vmtest demo vet bench bench-quick soak clean image fuzz

all: build

deps:
	@bash scripts/install-deps.sh

build:
	$(GO) build -o $(BIN)/podpath ./cmd/podpath
	$(GO) build -o $(BIN)/podpath-cni ./cmd/podpath-cni

# The container image (deploy/podpath.yaml runs it), built without Docker
# as an OCI archive: `ctr -n k8s.io images import bin/podpath-image.tar`.
VERSION ?= dev
image:
	$(GO) run ./deploy/image -o $(BIN)/podpath-image.tar -tag $(VERSION)

# Rebuild the BPF objects and their Go bindings (needs clang-19).
generate: deps
	$(GO) generate ./maps

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'); echo 'gofmt needed'; exit 1; }
	$(GO) vet ./...

# Every test, as root: BPF_PROG_RUN, loader, CNI end-to-end in network
# namespaces, real runtimes (cnitool, containerd + runc), the agent against
# a real kube-apiserver (etcd and Kubernetes built from the Go module proxy
# by scripts/kube-bins.sh, cached by version) on this machine's kernel; then the same tests inside Debian's 6.1 and 5.10 kernels under
# qemu (scripts/vmtest.sh, which prints its total time and regenerates
# docs/kernels.md).
test: deps vet build
	PODPATH_KUBE_BIN=$$(bash scripts/kube-bins.sh) $(GO) test -count=1 -timeout 20m ./...
	bash scripts/vmtest.sh

# Fuzz each target of test/fuzz for FUZZTIME (go test -fuzztime: a
# duration, or a count such as 100000x), one after the other, as root. An
# input that breaks an invariant is written to
# test/fuzz/testdata/fuzz/<target>/ and stops the run; `make test` runs
# only the committed corpus. Go 1.26's fuzzing now and then ends a timed
# run with "context deadline exceeded" and no failing input
# (a race in its coordinator, fixed in Go 1.27): that is said, not failed.
FUZZTIME ?= 60s
fuzz:
	@log=$$(mktemp); trap 'rm -f $$log $$log.rc' EXIT; \
	for t in $$($(GO) test ./test/fuzz -list '^Fuzz' | grep '^Fuzz'); do \
		echo "== $$t for $(FUZZTIME)"; \
		{ $(GO) test ./test/fuzz -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME); echo $$? >$$log.rc; } 2>&1 | tee $$log; \
		[ "$$(cat $$log.rc)" = 0 ] && continue; \
		if grep -q 'context deadline exceeded' $$log && ! grep -q 'Failing input written' $$log; then \
			echo "== $$t: no input failed; Go 1.26 fuzzing stopped on its own deadline race"; continue; \
		fi; \
		exit 1; \
	done

# Only the tests inside Debian's LTS kernels under qemu (kernels fetched and
# cached by test/vm/runner); regenerates docs/kernels.md.
vmtest:
	bash scripts/vmtest.sh

# A throwaway node with three pods in network namespaces on this machine.
demo: deps build
	$(BIN)/podpath demo

# Benchmarks against the peers (bare veth, Docker's bridge + iptables,
# kube-proxy-shaped iptables, MASQUERADE); JSON, Markdown and PNG charts in
# bench/results/.
bench: deps
	$(GO) run ./bench

bench-quick: deps
	$(GO) run ./bench -quick

# A SNAT soak, as root: new masqueraded connections from one pod to a host
# outside the node, as fast as this machine sets them up, for 10 minutes,
# with no agent to reap the snat map (SOAKFLAGS, e.g. -soak-time 1m, passes
# through). It fails unless no new flow was dropped for lack of ports or map
# space and no connection failed once the rate was steady; results in
# bench/results/soak/. Not part of `make test`: it holds the machine.
SOAKFLAGS ?=
soak: deps
	$(GO) run ./bench -only soak $(SOAKFLAGS)

clean:
	rm -rf $(BIN)
