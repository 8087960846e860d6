#!/usr/bin/env bash
# Builds etcd and the Kubernetes components that the cluster tests and the
# kube-proxy benchmark run (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) from the Go module proxy,
# and caches them by version. Prints the directory that holds them.
#
#   scripts/kube-bins.sh            # build what is missing, print the dir
#   KUBE_VERSION=v1.37.2 ETCD_VERSION=v3.7.3 scripts/kube-bins.sh
#
# A cold build takes about 8 minutes on 2 cores; a warm cache, no time.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
cache=${PODPATH_KUBE_CACHE:-/var/cache/podpath-kube}
out=$cache/kube-$KUBE_VERSION-etcd-$ETCD_VERSION
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
export PATH="$PATH:/usr/local/go/bin"

complete() {
	for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}
if complete; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if complete; then
	echo "$out"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out.tmp"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

# etcd's own go.mod has relative replace directives, so `go install pkg@v`
# is refused; a scratch module that requires it builds it.
if [ ! -x "$out.tmp/etcd" ]; then
	echo "kube-bins: building etcd $ETCD_VERSION" >&2
	mkdir "$work/etcd"
	(
		cd "$work/etcd"
		go mod init podpath.local/etcd >/dev/null 2>&1
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 ||
			go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
		go build -trimpath -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
	)
fi

# k8s.io/kubernetes replaces its staging repos with local paths; the
# scratch module points each at its published v0 twin instead.
echo "kube-bins: building Kubernetes $KUBE_VERSION" >&2
mkdir "$work/kube"
cd "$work/kube"
go mod init podpath.local/kube >/dev/null 2>&1
kmod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
staging_version=v0.${KUBE_VERSION#v1.}
replaces=()
while read -r mod; do
	case "$mod" in
	k8s.io/sample-cli-plugin | k8s.io/sample-controller) continue ;;
	esac
	replaces+=("-replace=$mod=$mod@$staging_version")
done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$kmod")
go mod edit "${replaces[@]}"
pkgs=()
for b in "${bins[@]}"; do
	[ "$b" = etcd ] && continue
	pkgs+=("k8s.io/kubernetes/cmd/$b")
done
go get "${pkgs[@]/%/@$KUBE_VERSION}" >/dev/null
minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
for p in "${pkgs[@]}"; do
	echo "kube-bins: go build $p" >&2
	go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "$p"
done
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
