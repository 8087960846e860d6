#!/usr/bin/env bash
# Runs podpath's tests inside Debian LTS kernels under qemu (test/vm/runner),
# so the datapath is tested on the kernels it supports and not only on this
# machine's. Everything is compiled here on the host; each kernel boots one
# VM that runs every package's test binary in turn, from the package's
# directory, exactly as `go test` would (the guest has no toolchain use and
# no VM-only skips). Then docs/kernels.md is regenerated from the loader's
# probe and the tests' output.
#
#   scripts/vmtest.sh            # Debian's 6.1 and 5.10 kernels, one VM each
#   scripts/vmtest.sh 6.1        # one kernel
#
# Environment:
#   PODPATH_VM_KERNELS  kernel series when none are given (default: 6.1 5.10)
#   PODPATH_VM_PROBE_KERNELS  series whose features are only probed, for
#                       docs/kernels.md (default: none; best effort: a kernel
#                       that cannot be fetched is left out, not a failure)
#   PODPATH_VM_CACHE    where kernels are kept (default /var/cache/podpath-vm)
#   PODPATH_VM_STALL    how long a guest may write nothing before it is taken
#                       as hung (default 10m)
#   PODPATH_VMTEST_OUT  where binaries, logs and results go (default: a new
#                       directory under /tmp, printed at the end)
#   PODPATH_CNI_BIN     set by this script for the tests: podpath-cni,
#   PODPATH_BIN         podpath, the pause program and the loopback plugin
#   PODPATH_PAUSE_BIN   built on the host, so no test builds in the guest
#   PODPATH_LOOPBACK_BIN
#   VMTEST_VERBOSE=1    stream every test's output, not only per-package lines
set -euo pipefail

# Packages with tests that do not run in the VM, with the reason. Patterns
# are module-relative package paths; a trailing /... takes the subtree.
VM_EXCLUDE=(
	"test/vm/...|the VM tooling itself, which runs on the host (make test covers it)"
	"test/image|builds the container image (compiling in the guest) and checks the artifact, the same on every kernel"
	"test/agent|runs a real kube-apiserver and etcd (minutes of emulated CPU to start); what it drives in the kernel (node init, service maps, CNI) is the code test/services, test/cni and loader run in every guest"
	"test/kubelet|runs a whole node (control plane, containerd, kubelet: minutes of emulated CPU); what it drives in the kernel is what test/runtime, test/services, test/socklb and test/cni run in every guest"
)

# Tests that do not run in the VM, with the reason: they check the build or
# the plugin's own bookkeeping rather than the kernel, and what they drive in
# the kernel other tests of their package run in every guest (make test runs
# them on the host). One regular expression each, anchored, as -test.skip
# takes it.
VM_SKIP_TESTS=(
	"TestGeneratedReproducible|rebuilds every BPF object with clang and compares bytes: the compiler's output, not the kernel's behaviour (a minute of emulated CPU)"
	"TestKubeProxyRulesAsKubeProxyWrites|runs a real kube-apiserver, etcd and kube-proxy to check the benchmarks' generated kube-proxy rules against kube-proxy's own: the rules' text, not podpath's kernel paths"
	"TestEndurance|1,000 pods through the CNI plugin with kills and GCs: two minutes on the host, past the package's 20-minute limit emulated; it tests the plugin's locking and cleanup, and every kernel path it takes (veth, tcx or cls_bpf attach, endpoint map, a killed ADD cleaned by DEL and by GC) runs in the guests in test/cni's other tests"
)

# Each package's test binary gets this long in the guest, where the CPU is
# emulated and several times slower than the host's.
PKG_TIMEOUT=20m
# The whole VM, per kernel.
VM_TIMEOUT=45m
# A guest in which no test has written a line for this long is taken as
# hung: its kernel's blocked tasks and CPU stacks go to the console log
# (kept in the kernel's results), and the packages it did not finish run
# again, once, in a new VM. The longest single test takes a few minutes.
VM_STALL=${PODPATH_VM_STALL:-10m}
# Guest memory in MiB. A node's maps at their default sizes take about
# 140 MiB of kernel memory, and two packages run at once, each with up to
# three nodes: 1.5 GiB ran out. A test the OOM killer ends leaves its pins
# (and their memory) behind for the rest of the VM.
VM_MEM=${PODPATH_VM_MEM:-4096}

# guest PLAN RESULTS PROBE: runs inside the VM. PLAN has one package a line:
# name, package directory, test binary, import path, tab-separated. Like
# `go test`, it runs as many packages at once as there are CPUs, so packages
# must not get in each other's way here any more than on the host.
guest() {
	local plan=$1 res=$2 probe=$3 jobs name dir bin
	# Temporary files on tmpfs, not on the guest's overlay root: containerd's
	# overlayfs snapshotter cannot stack another overlay on top of one.
	mkdir -p /run/tmp
	export TMPDIR=/run/tmp
	jobs=$(nproc)
	[ "${VMTEST_VERBOSE:-}" != 1 ] || jobs=1
	mkdir -p "$res/logs"
	"$probe" >"$res/probe.json" || true
	while IFS=$'\t' read -r name dir bin _; do
		while (($(jobs -rp | wc -l) >= jobs)); do
			wait -n || true
		done
		run_package "$name" "$dir" "$bin" "$res" &
	done <"$plan"
	wait
}

run_package() { # NAME DIR BIN RESULTS, in the guest
	local name=$1 dir=$2 bin=$3 res=$4 start rc ms
	local log=$res/logs/$name.log
	local args=(-test.v -test.count=1 -test.timeout="$PKG_TIMEOUT" -test.skip="$(skip_regexp)")
	start=${EPOCHREALTIME/./}
	if [ "${VMTEST_VERBOSE:-}" = 1 ]; then
		(cd "$dir" && exec "$bin" "${args[@]}") 2>&1 | tee "$log"
		rc=${PIPESTATUS[0]}
	elif (cd "$dir" && exec "$bin" "${args[@]}") >"$log" 2>&1; then
		rc=0
	else
		rc=$?
	fi
	ms=$(((${EPOCHREALTIME/./} - start) / 1000))
	echo "$rc $ms" >"$res/logs/$name.rc"
	printf '  %-4s %-28s %6d.%01ds\n' "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$name" $((ms / 1000)) $((ms % 1000 / 100))
}

skip_regexp() { # the -test.skip pattern of VM_SKIP_TESTS
	local e re=
	for e in "${VM_SKIP_TESTS[@]}"; do
		re+="${re:+|}${e%%|*}"
	done
	echo "^(${re})\$"
}

excluded() { # PKG (module-relative): prints the reason if excluded
	local e pat
	for e in "${VM_EXCLUDE[@]}"; do
		pat=${e%%|*}
		if [ "$1" = "$pat" ] || { [[ $pat == */... ]] && [[ $1 == "${pat%/...}" || $1 == "${pat%/...}"/* ]]; }; then
			echo "${e#*|}"
			return 0
		fi
	done
	return 1
}

# longest_first PLAN TIMES: PLAN ordered by the packages' durations in the
# last run (TIMES: name and milliseconds), longest and new ones first, so
# that a long package does not start last and leave a CPU idle.
longest_first() {
	# FILENAME, not NR == FNR: that test is true throughout an empty
	# first file's successor too.
	awk -F '\t' 'FILENAME == ARGV[1] { ms[$1] = $2; next }
		{ printf "%d\t%s\n", ($1 in ms) ? ms[$1] : 1e9, $0 }' "$2" "$1" |
		sort -t $'\t' -k1,1 -rn | cut -f2-
}

run_vm() { # KERNEL_DIR RESULTS PLAN CONSOLE OUT: one VM running PLAN's packages
	"$5/bin/vm-runner" -kernel-dir "$1" -rw "$2" -timeout "$VM_TIMEOUT" -mem "$VM_MEM" \
		-console "$4" -stall-dir "$2/logs" -stall "$VM_STALL" -- \
		bash "$PWD/scripts/vmtest.sh" --guest "$3" "$2" "$5/bin/probe"
}

unfinished() { # PLAN RESULTS: PLAN's lines whose package wrote no exit code
	local name rest
	while IFS=$'\t' read -r name rest; do
		[ -s "$2/logs/$name.rc" ] || printf '%s\t%s\n' "$name" "$rest"
	done <"$1"
}

run_vms() { # KERNEL KERNEL_DIR RESULTS OUT: the kernel's plan in a VM; the
	# packages a failed VM left unfinished (it hung or ran out of time) run
	# once more, each from the start, in a new VM. Appends to restarted; the
	# status is the last VM's.
	local k=$1 kdir=$2 res=$3 out=$4 vm_rc name again
	run_vm "$kdir" "$res" "$res/plan" "$res/console.log" "$out" && return 0 || vm_rc=$?
	unfinished "$res/plan" "$res" >"$res/plan-again"
	[ -s "$res/plan-again" ] || return "$vm_rc"
	again=$(cut -f1 "$res/plan-again" | paste -sd' ')
	echo "kernel $k: the VM failed (exit $vm_rc) before $again finished (its console log: $res/console.log); running them again in a new VM"
	mkdir -p "$res/first-vm"
	while IFS=$'\t' read -r name _; do
		[ ! -e "$res/logs/$name.log" ] || mv "$res/logs/$name.log" "$res/first-vm/"
	done <"$res/plan-again"
	restarted+=("kernel $k: the first VM hung or failed before $again finished; they ran again in a new VM (the first VM's console log, with the guest kernel's stacks when it hung: $res/console.log; their first logs: $res/first-vm)")
	run_vm "$kdir" "$res" "$res/plan-again" "$res/console-again.log" "$out"
}

secs() { # elapsed seconds since an $EPOCHREALTIME
	awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

main() {
	local t0=$EPOCHREALTIME
	cd "$(dirname "$0")/.."
	export PATH="$PATH:/usr/local/go/bin"

	# The guests run the host's binaries (qemu aside, containerd, runc,
	# cnitool, busybox for modprobe...): the same packages as make test.
	bash scripts/install-deps.sh

	local kernels=("$@")
	((${#kernels[@]})) || read -ra kernels <<<"${PODPATH_VM_KERNELS:-6.1 5.10}"
	local out=${PODPATH_VMTEST_OUT:-}
	[ -n "$out" ] || out=$(mktemp -d /tmp/podpath-vmtest.XXXXXX)
	rm -rf "$out/bin" "$out/kernels" "$out/host"
	mkdir -p "$out/bin" "$out/kernels" "$out/host"
	out=$(cd "$out" && pwd)

	echo "building on the host into $out/bin"
	local module
	module=$(go list -m)
	go build -o "$out/bin/vm-runner" ./test/vm/runner
	go build -o "$out/bin/probe" ./test/vm/probe
	go build -o "$out/bin/kerneldoc" ./test/vm/kerneldoc
	if [ -d cmd/podpath-cni ]; then
		go build -o "$out/bin/podpath-cni" ./cmd/podpath-cni
		export PODPATH_CNI_BIN=$out/bin/podpath-cni
	fi
	if [ -d cmd/podpath ]; then
		go build -o "$out/bin/podpath" ./cmd/podpath
		export PODPATH_BIN=$out/bin/podpath
	fi
	# What test/runtime runs containerd's pods with: the pause program and
	# the reference loopback plugin at the version go.mod pins.
	if [ -d test/runtime/pause ]; then
		CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out/bin/pause" ./test/runtime/pause
		export PODPATH_PAUSE_BIN=$out/bin/pause
		local plugins
		plugins=$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins)
		(cd "$out" && CGO_ENABLED=0 GOBIN="$out/bin" GOFLAGS=-mod=mod \
			go install "github.com/containernetworking/plugins/plugins/main/loopback@$plugins")
		export PODPATH_LOOPBACK_BIN=$out/bin/loopback
	fi

	local pkg dir rel name reason plan=$out/plan
	: >"$plan"
	: >"$out/not-in-vm.tsv"
	while read -r pkg dir; do
		rel=${pkg#"$module"}
		rel=${rel#/}
		[ -n "$rel" ] || rel=.
		if reason=$(excluded "$rel"); then
			echo "  skip $rel: $reason"
			printf 'package %s\t%s\n' "$rel" "$reason" >>"$out/not-in-vm.tsv"
			continue
		fi
		name=${rel//\//-}
		go test -c -o "$out/bin/$name.test" "$pkg"
		printf '%s\t%s\t%s\t%s\n' "$name" "$dir" "$out/bin/$name.test" "$pkg" >>"$plan"
		echo "  built $rel"
	done < <(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' ./...)
	echo "built in $(secs "$t0")s"
	local e
	for e in "${VM_SKIP_TESTS[@]}"; do
		echo "  not in the VM: ${e%%|*}: ${e#*|}"
		printf '%s\t%s\n' "${e%%|*}" "${e#*|}" >>"$out/not-in-vm.tsv"
	done

	"$out/bin/probe" >"$out/host/probe.json"

	local k kdir res vm_rc failed=0 kernel_dirs=() times ms f restarted=()
	local cache=${PODPATH_VM_CACHE:-/var/cache/podpath-vm}
	for k in "${kernels[@]}"; do
		kdir=$("$out/bin/vm-runner" -kernel "$k" -print-kernel-dir)
		res=$out/kernels/$k
		mkdir -p "$res/logs" "$res/tests"
		cp "$kdir/kernel.json" "$res/"
		times=$cache/vmtest-durations-$k.tsv
		[ -f "$times" ] || : >"$times"
		longest_first "$plan" "$times" >"$res/plan"
		echo "kernel $k ($(basename "$kdir")): one VM for $(wc -l <"$plan") packages"
		local tk=$EPOCHREALTIME
		run_vms "$k" "$kdir" "$res" "$out" && vm_rc=0 || vm_rc=$?
		for f in "$res"/logs/*.rc; do
			[ -e "$f" ] || continue
			read -r _ ms <"$f"
			printf '%s\t%s\n' "$(basename "$f" .rc)" "$ms"
		done >"$times"
		echo "kernel $k: VM done in $(secs "$tk")s"
		if [ "$vm_rc" != 0 ]; then
			echo "kernel $k: the VM failed (exit $vm_rc)"
			failed=1
		fi
		[ -s "$res/probe.json" ] && kernel_dirs+=("$res")
	done

	# Kernels whose features go into docs/kernels.md without a test run.
	local pk
	for pk in ${PODPATH_VM_PROBE_KERNELS-}; do
		[[ " ${kernels[*]} " != *" $pk "* ]] || continue
		res=$out/kernels/$pk
		mkdir -p "$res"
		if kdir=$("$out/bin/vm-runner" -kernel "$pk" -print-kernel-dir) &&
			{ "$out/bin/vm-runner" -kernel-dir "$kdir" -timeout 5m -- "$out/bin/probe" >"$res/probe.json" || [ -s "$res/probe.json" ]; }; then
			cp "$kdir/kernel.json" "$res/"
			kernel_dirs+=("$res")
			echo "kernel $pk: features probed (tests not run there)"
		else
			echo "kernel $pk: could not be probed; left out of docs/kernels.md"
		fi
	done

	# Per-package results, from the logs the guest wrote back.
	local total_pass=0 total_fail=0 total_skip=0 rc f s
	echo
	echo "results:"
	for k in "${kernels[@]}"; do
		res=$out/kernels/$k
		while IFS=$'\t' read -r name _ _ pkg; do
			if [ ! -s "$res/logs/$name.rc" ]; then
				printf '  %-5s %-4s %-28s did not run\n' "$k" FAIL "$name"
				failed=1
				total_fail=$((total_fail + 1))
				continue
			fi
			read -r rc ms <"$res/logs/$name.rc"
			go tool test2json -p "$pkg" <"$res/logs/$name.log" >"$res/tests/$name.json"
			p=$(grep -c '^--- PASS' "$res/logs/$name.log" || true)
			f=$(grep -c '^--- FAIL' "$res/logs/$name.log" || true)
			s=$(grep -c '^--- SKIP' "$res/logs/$name.log" || true)
			total_pass=$((total_pass + p)) total_fail=$((total_fail + f)) total_skip=$((total_skip + s))
			if [ "$rc" != 0 ]; then
				failed=1
				# A binary that failed without a failing test (panic, timeout,
				# TestMain) still counts as one failure.
				((f > 0)) || total_fail=$((total_fail + 1))
			fi
			printf '  %-5s %-4s %-28s %3d passed %2d failed %2d skipped %6d.%01ds\n' "$k" \
				"$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$name" "$p" "$f" "$s" $((ms / 1000)) $((ms % 1000 / 100))
		done <"$plan"
	done

	if ((${#kernel_dirs[@]})); then
		"$out/bin/kerneldoc" -o docs/kernels.md -module "$module" -host "$out/host/probe.json" \
			-not-in-vm "$out/not-in-vm.tsv" "${kernel_dirs[@]}"
		echo "wrote docs/kernels.md"
	fi

	for k in "${kernels[@]}"; do
		res=$out/kernels/$k
		while IFS=$'\t' read -r name _; do
			[ -s "$res/logs/$name.rc" ] || continue
			read -r rc _ <"$res/logs/$name.rc"
			[ "$rc" = 0 ] && continue
			echo
			echo "=== $name on $k failed (exit $rc); the end of $res/logs/$name.log:"
			tail -n 60 "$res/logs/$name.log"
		done <"$plan"
	done

	local r
	for r in "${restarted[@]}"; do
		echo
		echo "$r"
	done
	for k in "${kernels[@]}"; do
		for f in "$out/kernels/$k"/console*.log; do
			[ -e "$f" ] && grep -q 'Out of memory' "$f" || continue
			echo
			echo "kernel $k: the guest ran out of memory ($VM_MEM MiB, PODPATH_VM_MEM); from $f:"
			grep 'Out of memory' "$f"
		done
	done

	echo
	echo "logs in $out"
	echo "vmtest: kernels ${kernels[*]}: $total_pass passed, $total_fail failed, $total_skip skipped; total time $(secs "$t0") s"
	return "$failed"
}

if [ "${1:-}" = --guest ]; then
	shift
	guest "$@"
else
	main "$@"
fi
