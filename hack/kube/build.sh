#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the module proxy into $1 (a cache folder
# keyed by their versions), for the tests that need a real API server. Skips the
# build of any binary already there. About 12 minutes cold on 2 cores.
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
if [ ! -x "$out/etcd" ]; then
	(cd "$here/etcd" && go build -trimpath -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3)
	mv "$out/etcd.tmp" "$out/etcd"
fi
if [ ! -x "$out/kube-apiserver" ]; then
	(cd "$here/apiserver" && go build -trimpath -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
	mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
fi
