package nftables

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// driverIn returns a Driver for a fresh namespace, addressed by fd.
func driverIn(t *testing.T) (*Driver, privtest.NS) {
	t.Helper()
	ns := privtest.NetNS(t)
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return New(Options{NetNSFd: int(f.Fd())}), ns
}

func observe(t *testing.T, d *Driver) *Observed {
	t.Helper()
	o, err := d.ObserveTable(context.Background())
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	return o
}

// TestApplyEveryPlan installs the rendering of every golden configuration in
// a fresh namespace: what is read back equals the plan line by line, a second
// apply writes nothing, nft itself reads the table, and removing it leaves no
// table behind.
func TestApplyEveryPlan(t *testing.T) {
	privtest.Require(t, "nft")
	ctx := context.Background()
	for _, tc := range planCases() {
		t.Run(tc.Name, func(t *testing.T) {
			d, ns := driverIn(t)
			if err := d.Ready(ctx); err != nil {
				t.Fatalf("Ready: %v", err)
			}
			rs, err := Render(mustCapture(t, tc))
			if err != nil {
				t.Fatal(err)
			}
			changed, err := d.ApplyRuleset(ctx, rs, observe(t, d))
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if changed != !rs.Empty() {
				t.Errorf("Apply changed = %v, want %v", changed, !rs.Empty())
			}
			have := observe(t, d)
			if diff := cmp.Diff(rs.Lines(""), have.Lines("")); diff != "" {
				t.Fatalf("installed differs from the plan (-plan +installed):\n%s", diff)
			}
			for _, f := range rs.Families {
				if diff := cmp.Diff(rs.Lines(f), have.Lines(f)); diff != "" {
					t.Errorf("%s: installed differs from the plan (-plan +installed):\n%s", f, diff)
				}
			}
			// Explain reads the installed table: it answers as the plan does.
			for _, c := range sampleConns {
				got, err := have.explain(c)
				if err != nil {
					t.Fatalf("explain %+v: %v", c, err)
				}
				if want := newEvaluator(rs).conn(c); got.captured != want.captured || got.port != want.port || got.rule != want.rule {
					t.Errorf("explain %+v: installed says %+v, plan says %+v", c, got, want)
				}
			}
			changed, err = d.ApplyRuleset(ctx, rs, have)
			if err != nil || changed {
				t.Fatalf("second Apply: changed %v, err %v; want no change", changed, err)
			}
			if !rs.Empty() {
				// The rendering is nft's own input language: nft accepts it.
				cmd := exec.Command("ip", "netns", "exec", ns.Name, "nft", "-c", "-f", "-")
				cmd.Stdin = strings.NewReader("delete table inet " + TableName + "\n" + rs.Text())
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("nft -c -f refuses the rendering: %v\n%s", err, out)
				}
				out := ns.Run(t, "nft", "list", "table", "inet", TableName)
				if !strings.Contains(out, "chain ") {
					t.Errorf("nft list table shows no chain:\n%s", out)
				}
			}
			if err := d.RemoveTable(ctx, have); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if o := observe(t, d); !o.Empty() {
				t.Errorf("after Remove the table is still there:\n%s", strings.Join(o.Lines(""), "\n"))
			}
			if err := d.RemoveTable(ctx, observe(t, d)); err != nil {
				t.Errorf("second Remove: %v", err)
			}
		})
	}
}

var sampleConns = []redirect.Conn{
	{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("198.51.100.5"), Port: 80, UID: 1000},
	{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("2001:db8:3::1"), Port: 443, UID: 1000},
	{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("203.0.113.9"), Port: 25, UID: 5678},
	{Direction: redirect.DirOutbound, Protocol: redirect.UDP, Dst: netip.MustParseAddr("127.0.0.53"), Port: 53, UID: 1000},
	{Direction: redirect.DirOutbound, Protocol: redirect.UDP, Dst: netip.MustParseAddr("2001:db8::53"), Port: 53, UID: 107},
	{Direction: redirect.DirInbound, Protocol: redirect.TCP, Src: netip.MustParseAddr("192.0.2.7"), Port: 8080},
	{Direction: redirect.DirInbound, Protocol: redirect.TCP, Src: netip.MustParseAddr("2001:db8:1::7"), Port: 22},
	{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("192.0.2.1"), Port: 9000, UID: 5678, ToSelf: true},
}

// TestDriftIsSeen changes detour's table behind its back, the ways a person
// with nft would: every change shows in what Observe reads, and Apply puts
// the plan back.
func TestDriftIsSeen(t *testing.T) {
	privtest.Require(t, "nft")
	ctx := context.Background()
	tc := plancases.Case{Name: "drift", Sets: []string{"outbound.excludePorts=25", "dns.capture=all"}, Facts: dualStack}
	rs, err := Render(mustCapture(t, tc))
	if err != nil {
		t.Fatal(err)
	}
	for _, change := range []struct{ name, cmd string }{
		{"element added", "add element inet detour out_exclude_ports4 { 26 }"},
		{"rule added", "add rule inet detour output4 meta l4proto tcp return"},
		{"rule deleted", "flush chain inet detour dns4"},
		{"chain deleted", "delete chain inet detour ct_output6"},
		{"zone changed", "replace rule inet detour ct_output4 handle HANDLE meta l4proto udp udp dport 53 ct zone set 2 return"},
	} {
		t.Run(change.name, func(t *testing.T) {
			d, ns := driverIn(t)
			if _, err := d.ApplyRuleset(ctx, rs, observe(t, d)); err != nil {
				t.Fatal(err)
			}
			cmdText := change.cmd
			if strings.Contains(cmdText, "HANDLE") {
				out := ns.Run(t, "nft", "-a", "list", "chain", "inet", "detour", "ct_output4")
				i := strings.Index(out, "original zone set 1")
				h := strings.Fields(out[i:])
				cmdText = strings.Replace(cmdText, "HANDLE", h[slices.Index(h, "handle")+1], 1)
			}
			if change.name == "chain deleted" { // a chain that is jumped to cannot go
				ns.Run(t, "nft", "flush", "chain", "inet", "detour", "raw_output")
			}
			ns.Run(t, "nft", cmdText)
			have := observe(t, d)
			if slices.Equal(have.Lines(""), rs.Lines("")) {
				t.Fatalf("Observe did not see %q", cmdText)
			}
			if change.name != "element added" && change.name != "rule deleted" && change.name != "chain deleted" {
				if _, err := have.explain(sampleConns[0]); err == nil {
					t.Errorf("explain answered from a table detour did not make")
				}
			}
			changed, err := d.ApplyRuleset(ctx, rs, have)
			if err != nil || !changed {
				t.Fatalf("Apply after drift: changed %v, err %v", changed, err)
			}
			if diff := cmp.Diff(rs.Lines(""), observe(t, d).Lines("")); diff != "" {
				t.Errorf("not repaired (-plan +installed):\n%s", diff)
			}
		})
	}
}

// TestConcurrentApplies runs 20 applies of one plan into one namespace at
// once, each having observed an empty namespace: exactly one copy results.
func TestConcurrentApplies(t *testing.T) {
	ctx := context.Background()
	d, _ := driverIn(t)
	rs, err := Render(mustCapture(t, plancases.Case{Preset: "istio", Sets: []string{"dns.capture=all", "outbound.excludeCIDRs=203.0.113.0/24"}, Facts: dualStack}))
	if err != nil {
		t.Fatal(err)
	}
	empty := observe(t, d)
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			_, err := d.ApplyRuleset(ctx, rs, empty)
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Errorf("ApplyRuleset: %v", err)
		}
	}
	if diff := cmp.Diff(rs.Lines(""), observe(t, d).Lines("")); diff != "" {
		t.Errorf("after 20 concurrent applies (-plan +installed):\n%s", diff)
	}
}

// TestCoexistence (L12): another tool's nftables tables (with their own NAT
// and a set), iptables-nft and iptables-legacy rules stay as they are while
// detour's table is installed and are byte-identical after it is removed.
func TestCoexistence(t *testing.T) {
	privtest.Require(t, "nft", "iptables-nft", "iptables-legacy", "iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save")
	ctx := context.Background()
	d, ns := driverIn(t)
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(`table ip othertool {
	chain pre { type nat hook prerouting priority dstnat; policy accept; tcp dport 9999 dnat to 192.0.2.1:80; }
	chain post { type nat hook postrouting priority srcnat; policy accept; ip saddr 198.51.100.0/24 masquerade; }
}
table inet otherfilter {
	set allowed { type ipv4_addr; flags interval; elements = { 203.0.113.0/24 } }
	chain input { type filter hook input priority filter; policy accept; ip saddr @allowed counter accept; }
}
`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("seed nft: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"iptables-nft", "-t", "nat", "-N", "DOCKER"},
		{"iptables-nft", "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"},
		{"iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE"},
		{"ip6tables-nft", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "8443", "-j", "MARK", "--set-mark", "7"},
		{"iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "8080", "-j", "REDIRECT", "--to-ports", "18080"},
		{"iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"},
	} {
		ns.Run(t, args...)
	}
	snapshot := func() map[string]string {
		out := map[string]string{}
		for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
			var lines []string
			for _, l := range strings.Split(ns.Run(t, tool), "\n") {
				if !strings.HasPrefix(l, "#") { // header and date
					lines = append(lines, l)
				}
			}
			out[tool] = strings.Join(lines, "\n")
		}
		out["nft list ruleset"] = ns.Run(t, "nft", "list", "ruleset")
		return out
	}
	before := snapshot()
	rs, err := Render(mustCapture(t, plancases.Case{Preset: "istio", Sets: []string{"mode=tproxy", "dns.capture=all", "dropInvalidPackets=true", "outbound.excludeCIDRs=203.0.113.0/24"}, Facts: dualStack}))
	if err != nil {
		t.Fatal(err)
	}
	have := observe(t, d)
	if !have.Empty() || !have.Foreign() {
		t.Fatalf("before install: empty %v, foreign %v; want nothing of detour's and other tables", have.Empty(), have.Foreign())
	}
	if _, err := d.ApplyRuleset(ctx, rs, have); err != nil {
		t.Fatal(err)
	}
	during := ns.Run(t, "nft", "list", "ruleset")
	for _, want := range []string{"table ip othertool", "dnat to 192.0.2.1:80", "table inet otherfilter", "203.0.113.0/24", "table inet detour"} {
		if !strings.Contains(during, want) {
			t.Errorf("while installed, nft list ruleset lacks %q", want)
		}
	}
	if diff := cmp.Diff(rs.Lines(""), observe(t, d).Lines("")); diff != "" {
		t.Errorf("installed beside other tables (-plan +installed):\n%s", diff)
	}
	if err := d.RemoveTable(ctx, observe(t, d)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("other tools' state changed (-before +after):\n%s", diff)
	}
}

// TestDriverSeam drives the backend through redirect's Driver interface as
// Engine does: Render, Observe, Apply, Check's line comparison per family,
// Explain against Capture.Decide, Remove.
func TestDriverSeam(t *testing.T) {
	ctx := context.Background()
	for _, tc := range planCases() {
		if tc.Name != "tproxy-everything" && tc.Name != "redirect-everything" && tc.Name != "families-ipv4-forced" {
			continue
		}
		t.Run(tc.Name, func(t *testing.T) {
			d, _ := driverIn(t)
			var drv redirect.Driver = d
			if drv.Name() != redirect.BackendNFTables {
				t.Fatalf("Name = %s", drv.Name())
			}
			p, err := redirect.NewPlan(cfgWith(t, tc.Preset, tc.Sets...), tc.Facts)
			if err != nil {
				t.Fatal(err)
			}
			r, err := drv.Render(p)
			if err != nil {
				t.Fatal(err)
			}
			have, err := drv.Observe(ctx)
			if err != nil || !have.Empty() {
				t.Fatalf("Observe before: empty %v, err %v", have.Empty(), err)
			}
			if changed, err := drv.Apply(ctx, p, have); err != nil || !changed {
				t.Fatalf("Apply: changed %v, err %v", changed, err)
			}
			if have, err = drv.Observe(ctx); err != nil {
				t.Fatal(err)
			}
			for _, fr := range r.Families {
				if diff := cmp.Diff(fr.Lines, have.Lines(fr.Family)); diff != "" {
					t.Errorf("%s: check would report drift (-planned +installed):\n%s", fr.Family, diff)
				}
			}
			for _, c := range sampleConns {
				kv, err := d.Explain(have, c)
				if err != nil {
					t.Fatal(err)
				}
				if want := p.Capture.Decide(c); kv.Captured != want.Captured || kv.Port != want.Port {
					t.Errorf("explain %+v: kernel %+v, Decide %+v", c, kv, want)
				}
				if kv.Captured && !strings.HasPrefix(kv.Rule, "add rule inet detour ") {
					t.Errorf("explain %+v quotes no rule: %+v", c, kv)
				}
			}
			if changed, err := drv.Apply(ctx, p, have); err != nil || changed {
				t.Fatalf("second Apply: changed %v, err %v", changed, err)
			}
			if err := drv.Remove(ctx, have); err != nil {
				t.Fatal(err)
			}
			if have, _ = drv.Observe(ctx); !have.Empty() {
				t.Error("table left after Remove")
			}
		})
	}
}
