#!/usr/bin/env bash
# Builds Istio's pilot-agent (whose `istio-iptables` subcommand is the
# benchmark peer of `make bench-cli`) from the module proxy into $1, a cache
# folder keyed by the version. About 4 minutes cold on 2 cores; skipped when
# the binary is there.
set -euo pipefail
out=${1:?usage: istio.sh OUT_DIR}
version=v0.0.0-20260827124520-eed52ebb66ad
mkdir -p "$out"
[ -x "$out/pilot-agent" ] && exit 0
CGO_ENABLED=0 GOBIN="$out" go install "istio.io/istio/pilot/cmd/pilot-agent@$version"
