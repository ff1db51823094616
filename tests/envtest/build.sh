#!/usr/bin/env bash
# Builds the test API server binaries (kube-apiserver, kube-controller-manager, etcd) at the
# versions pinned in go.mod/go.sum next to this script, into a cache folder, reusing what is
# already there. This is the recipe behind `make -C tests/envtest` and behind
# keyrotor_sandbox.kube when it finds no binaries (it calls this script with the folder).
#
#   tests/envtest/build.sh [OUT_DIR]
#
# OUT_DIR defaults to $KEYROTOR_ENVTEST_CACHE (or ~/.cache/keyrotor/envtest) /k8s-<v>-etcd-<v>.
# Needs Go >= the go line in go.mod and the Go module proxy (or a filled module cache).
# Cold, on 2 CPUs: about 4 minutes and up to ~2.3 GB of memory for one process.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

k8s=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' go.mod)
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2; exit }' go.mod)
if [[ -z "$k8s" || -z "$etcd" ]]; then
    echo "envtest: cannot read the k8s.io/kubernetes and etcd versions from $here/go.mod" >&2
    exit 2
fi

cache=${KEYROTOR_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyrotor/envtest}
out=${1:-$cache/k8s-${k8s#v}-etcd-${etcd#v}}

if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/etcd" ]]; then
    echo "envtest: up to date: $out" >&2
    exit 0
fi

# One build at a time per cache folder (make and the Python launcher both come through here).
mkdir -p "$(dirname "$out")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$(dirname "$out")/.build.lock"
    if ! flock -n 9; then
        echo "envtest: another build of $out is running; waiting for it" >&2
        flock 9
    fi
    if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/etcd" ]]; then
        echo "envtest: up to date: $out" >&2
        exit 0
    fi
fi

if ! command -v go >/dev/null 2>&1; then
    echo "envtest: 'go' is not on PATH; install Go, or set KUBEBUILDER_ASSETS to a folder holding kube-apiserver and etcd" >&2
    exit 3
fi

tmp=$(mktemp -d "$out.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# What Kubernetes' own build stamps (hack/lib/version.sh), so /version reports the release.
major=${k8s#v}; major=${major%%.*}
minor=${k8s#v}; minor=${minor#*.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
done

echo "envtest: building kube-apiserver, kube-controller-manager $k8s and etcd $etcd into $out" >&2
echo "envtest: ($(go version); a cold build takes several minutes)" >&2
# -mod=readonly: go.sum is complete and checked in; the pin must not drift during a build.
# ${ENVTEST_GO_BUILD_FLAGS:-} lets a caller add e.g. -v for per-package progress.
# shellcheck disable=SC2086
GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -buildvcs=false ${ENVTEST_GO_BUILD_FLAGS:-} \
    -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    go.etcd.io/etcd/server/v3

# The etcd main package is go.etcd.io/etcd/server/v3: go names that binary "server".
for name in server v3; do
    if [[ -f "$tmp/$name" ]]; then mv "$tmp/$name" "$tmp/etcd"; fi
done
for bin in kube-apiserver kube-controller-manager etcd; do
    [[ -x "$tmp/$bin" ]] || { echo "envtest: build produced no $bin" >&2; exit 4; }
done
printf 'kubernetes %s\netcd %s\n' "$k8s" "$etcd" >"$tmp/VERSIONS"

# Publish by rename. If another build finished meanwhile, keep that one and drop this one.
if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/etcd" ]]; then
    echo "envtest: $out appeared meanwhile; keeping it" >&2
    exit 0
fi
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "envtest: done: $out" >&2
