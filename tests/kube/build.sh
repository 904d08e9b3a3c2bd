#!/usr/bin/env bash
# Builds the test suite's Kubernetes control plane (issue 31) from the Go
# module in this directory, once per release, into
#   ${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar}/kube-vX.Y.Z/
# kube-apiserver and kubectl from k8s.io/kubernetes at the release go.mod
# pins, etcd embedded from go.etcd.io/etcd/server/v3 (cmd/etcd), and the
# tests' second mutating webhook (cmd/second-webhook), kube-controller-manager,
# the kubelet stand-in that runs an admitted pod's containers (cmd/pod-runner),
# and kube-up (cmd/kube-up: starts them all, the one place for their flags,
# for `make kube-up` and for each test); the Helm CLI of helm.sh/helm/v4 at
# $helm_version (go install, outside this module: its own dependency graph),
# which installs and upgrades the chart in the tests; and cert-manager's CRDs
# (deploy/crds of its Go module at $cert_manager_version), so that the API
# server validates manifests/'s Issuers and Certificates.
#
# A later run does nothing when every binary is there and the stamp file holds
# the hash of go.mod, go.sum, this script and our Go sources. Test
# infrastructure only: nothing here is part of the product.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

release=$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes \(v[0-9.]*\).*/\1/p' go.mod | head -n1)
[ -n "$release" ] || { echo "build.sh: no k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
out="${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-sidecar}/kube-$release"
helm_version=v4.3.2
bins=(kube-apiserver kube-controller-manager kubectl etcd second-webhook kube-up pod-runner helm)
cert_manager_version=v1.21.2
stamp=$(cat go.mod go.sum build.sh cmd/*/*.go | sha256sum | cut -d' ' -f1)

# --print-dir: where the binaries are (or go), for `make kube-up`.
if [ "${1:-}" = --print-dir ]; then
	echo "$out"
	exit 0
fi

all_there() {
	for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
	[ -f "$out/crds/cert-manager.io_certificates.yaml" ] || return 1
	[ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]
}
if all_there; then
	echo "kube-bin: $out is up to date (${bins[*]})"
	exit 0
fi

command -v go >/dev/null || {
	echo "build.sh: needs Go (>= the go line of $here/go.mod) on PATH to build the test control plane" >&2
	exit 1
}

echo "kube-bin: building ${bins[*]} of Kubernetes $release into $out"
echo "kube-bin: the first build downloads the modules and compiles for a long while (see README, Testing)"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The version the binaries report (kubectl version, /version, Helm's
# kubeVersion checks), as Kubernetes' own build stamps it.
minor=${release#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$release -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

start=$(date +%s)
nice -n 10 go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl \
	./cmd/etcd \
	./cmd/second-webhook \
	./cmd/kube-up \
	./cmd/pod-runner
GOBIN="$tmp" nice -n 10 go install -trimpath -buildvcs=false \
	-ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
	"helm.sh/helm/v4/cmd/helm@$helm_version"
cm_dir=$(go mod download -json "github.com/cert-manager/cert-manager@$cert_manager_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$cm_dir/deploy/crds" ] || { echo "build.sh: no deploy/crds in cert-manager $cert_manager_version ($cm_dir)" >&2; exit 1; }
mkdir -p "$tmp/crds"
cp "$cm_dir"/deploy/crds/cert-manager.io_*.yaml "$tmp/crds/"
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$out/$b"; done
rm -rf "$out/crds" && mv "$tmp/crds" "$out/crds"
echo "$stamp" >"$out/stamp"
echo "kube-bin: built in $(($(date +%s) - start))s: $out"
