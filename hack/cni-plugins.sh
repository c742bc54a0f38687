#!/usr/bin/env bash
# Builds the reference CNI plugins and cnitool from the module proxy into $1 (a
# cache folder keyed by their versions). Skips binaries already there.
set -euo pipefail
out=${1:?usage: cni-plugins.sh OUT_DIR}
plugins_version=v1.10.0
cni_version=v1.3.1
mkdir -p "$out"
for p in main/bridge ipam/host-local main/loopback meta/portmap meta/tuning; do
	name=${p##*/}
	[ -x "$out/$name" ] && continue
	GOBIN="$out" go install "github.com/containernetworking/plugins/plugins/$p@$plugins_version"
done
[ -x "$out/cnitool" ] || GOBIN="$out" go install "github.com/containernetworking/cni/cnitool@$cni_version"
