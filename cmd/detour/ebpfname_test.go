//go:build !detour_lean

package main

import (
	"testing"

	"github.com/detour-mesh/detour/redirect/backends"
)

// TestEBPFInboundTableName: the lean detour finds the eBPF backend's inbound
// tables by the name the backend gives them.
func TestEBPFInboundTableName(t *testing.T) {
	t.Parallel()
	if ebpfInboundTable != backends.EBPFInboundTable {
		t.Errorf("ebpfInboundTable = %q, backends.EBPFInboundTable = %q", ebpfInboundTable, backends.EBPFInboundTable)
	}
	for _, cg := range []string{"", "/sys/fs/cgroup/system.slice/web.service"} {
		if got := backends.EBPFInboundTableFor(cg); len(got) < len(ebpfInboundTable) || got[:len(ebpfInboundTable)] != ebpfInboundTable {
			t.Errorf("EBPFInboundTableFor(%q) = %q: not found by its prefix %q", cg, got, ebpfInboundTable)
		}
	}
}
