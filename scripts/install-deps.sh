#!/usr/bin/env bash
# Installs what building and testing podpath needs on a fresh Debian/Ubuntu
# machine, as root. Safe to run again: it only installs what is missing.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
want() { dpkg -s "$1" >/dev/null 2>&1 || need_pkgs+=("$1"); }

for p in clang-19 llvm-19 libbpf-dev bpftool iproute2 iptables containerd runc \
	busybox-static iperf3 nftables qemu-system-x86 netcat-openbsd ca-certificates \
	ethtool util-linux strace xz-utils debian-archive-keyring; do
	want "$p"
done
if ((${#need_pkgs[@]})); then
	echo "installing: ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! have go; then
	echo "Go is required (1.26 or newer) and was not found on PATH" >&2
	exit 1
fi

# cnitool drives the plugin the way a runtime's libcni does.
gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/cnitool" ]; then
	echo "building cnitool"
	GOFLAGS=-mod=mod go install github.com/containernetworking/cni/cnitool@v1.3.1
fi

# Pins live on a BPF filesystem.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
	mount -t bpf bpf /sys/fs/bpf
fi

# Named network namespaces live in /run/netns, which `ip netns add` makes a
# shared mount point of its own. Set it up before tests in parallel binaries
# add namespaces there: a helper that does it later binds the directory
# onto itself with the namespaces already in it, and those can then never
# be removed (EBUSY).
if ! mountpoint -q /run/netns; then
	mkdir -p /run/netns
	mount --bind /run/netns /run/netns
	mount --make-shared /run/netns
fi
