package main

import (
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestStatusOfRoutingOnly: an install killed after it made the TPROXY
// routing (the first thing it changes) and before any backend applied its
// rules leaves only the routing. status said "detour is installed (; ipv4)",
// an empty backend name; it says what uninstall says of the same state.
func TestStatusOfRoutingOnly(t *testing.T) {
	ns := privtest.NetNS(t)
	ns.Run(t, "ip", "rule", "add", "fwmark", "0x2000/0x2000", "lookup", "2000", "priority", "2000", "protocol", "215")
	code, out, stderr := runCLI(t, "status", "--netns", ns.Path)
	if want := "detour is installed (routing and addresses only; ipv4)\n"; code != 0 || !strings.HasPrefix(out, want) {
		t.Errorf("status: exit %d, stdout %q, stderr %q; want exit 0 and %q first", code, out, stderr, want)
	}
	code, out, stderr = runCLI(t, "uninstall", "--netns", ns.Path)
	if want := "detour removed (routing and addresses only; ipv4)\n"; code != 0 || out != want {
		t.Errorf("uninstall: exit %d, stdout %q, stderr %q; want exit 0 and %q", code, out, stderr, want)
	}
	if rules := ns.Run(t, "ip", "rule"); strings.Contains(rules, "2000") {
		t.Errorf("uninstall left the rule:\n%s", rules)
	}
}
