#!/usr/bin/env bash
# Installs the Debian packages detour's tests, benchmarks and demo need.
# Idempotent: does nothing when every command is already present.
set -euo pipefail

need=()
command -v iptables-restore >/dev/null || need+=(iptables)
command -v iptables-legacy-restore >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
# bpftool: the ebpf L8 test edits detour's pinned maps with it, as a person would.
command -v bpftool >/dev/null || need+=(bpftool)
# curl with HTTP/2 (nghttp2): the control plane's transport is tested with a client
# that shares no code with gRPC-go (controlplane/xds/h2curl_test.go).
curl -V 2>/dev/null | grep -q HTTP2 || need+=(curl)
# nghttp (nghttp2's client): curl cannot set SETTINGS_HEADER_TABLE_SIZE, which Envoy
# lowers (controlplane/xds/h2hpack_test.go).
command -v nghttp >/dev/null || need+=(nghttp2-client)
if [ "${DETOUR_BPF_TOOLCHAIN:-0}" = 1 ]; then
	command -v clang >/dev/null || need+=(clang llvm)
	[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
fi
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "deps-apt: need root to install: ${need[*]}" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -q
apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}"
