#!/usr/bin/env bash
# Builds the helm binary that the chart tests run, at the version pinned in go.mod/go.sum next to
# this script, into a cache folder, reusing what is already there. The recipe behind
# `make -C tests/helm` and the test suite's `helm` fixture (tests/fixtures/helm.py), which calls
# this script when neither HELM nor the cache names a binary.
#
#   tests/helm/build.sh [OUT_DIR]
#
# OUT_DIR defaults to $KEYROTOR_HELM_CACHE (or ~/.cache/keyrotor/helm) /helm-<v>; the binary is
# OUT_DIR/helm. Needs Go >= the go line in go.mod and the Go module proxy (or a filled module
# cache). Cold, on 2 CPUs: about 2-3 minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

version=$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ { print $2; exit }' go.mod)
if [[ -z "$version" ]]; then
    echo "helm: cannot read the helm.sh/helm/v3 version from $here/go.mod" >&2
    exit 2
fi

cache=${KEYROTOR_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyrotor/helm}
out=${1:-$cache/helm-${version#v}}

if [[ -x "$out/helm" ]]; then
    echo "helm: up to date: $out/helm" >&2
    exit 0
fi

# One build at a time per cache folder (make and the test fixture both come through here).
mkdir -p "$(dirname "$out")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$(dirname "$out")/.build.lock"
    if ! flock -n 9; then
        echo "helm: another build of $out is running; waiting for it" >&2
        flock 9
    fi
    if [[ -x "$out/helm" ]]; then
        echo "helm: up to date: $out/helm" >&2
        exit 0
    fi
fi

if ! command -v go >/dev/null 2>&1; then
    echo "helm: 'go' is not on PATH; install Go, or set HELM to a helm binary" >&2
    exit 3
fi

tmp=$(mktemp -d "$out.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# What helm's own Makefile stamps, so `helm version` reports the release.
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

echo "helm: building helm $version into $out ($(go version))" >&2
# -mod=readonly: go.sum is complete and checked in; the pin must not drift during a build.
GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -buildvcs=false \
    -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
[[ -x "$tmp/helm" ]] || { echo "helm: build produced no binary" >&2; exit 4; }
"$tmp/helm" version --short >/dev/null

# Publish by rename. If another build finished meanwhile, keep that one and drop this one.
if [[ -x "$out/helm" ]]; then
    echo "helm: $out appeared meanwhile; keeping it" >&2
    exit 0
fi
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "helm: done: $out/helm" >&2
