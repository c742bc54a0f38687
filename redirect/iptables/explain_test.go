package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// TestExplainSaveAgreesWithDecide follows connections through the rendered
// rules of every plan case with internal/xtables and checks that the rules do
// what Decide says, for the reason's rule: the two readings of one capture
// (the rule text, the decision) cannot drift apart unnoticed.
func TestExplainSaveAgreesWithDecide(t *testing.T) {
	t.Parallel()
	for _, tc := range planCases() {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			p, err := redirect.NewPlan(cfgWith(t, tc.Preset, tc.Sets...), tc.Facts)
			if err != nil {
				t.Fatal(err)
			}
			checked, captured := 0, 0
			for _, conn := range probeConns(p) {
				want := p.Capture.Decide(conn)
				save := ""
				for _, fr := range Rules(p.Capture) {
					if fr.Family == familyOfConn(conn) {
						save = renderTables(fr.Tables)
					}
				}
				got, err := explainSave(redirect.BackendIPTablesNFT, save, conn)
				if err != nil {
					t.Fatal(err)
				}
				checked++
				if got.Captured {
					captured++
				}
				if got.Uncertain != "" || got.Captured != want.Captured || got.Port != want.Port {
					t.Errorf("%+v:\n decide: captured %v port %d (%s)\n rules:  captured %v port %d by %q (uncertain %q)\n path: %q",
						conn, want.Captured, want.Port, want.Reason, got.Captured, got.Port, got.Rule, got.Uncertain, got.Path)
				}
			}
			if checked < 100 || (captured == 0 && len(p.Capture.Families) > 0 && (p.Config.Outbound.Enabled || p.Config.Inbound.Enabled)) {
				t.Errorf("%d connections checked, %d captured: the probes miss what the plan captures", checked, captured)
			}
		})
	}
}

// probeConns are connections around every value the configuration names:
// inside and just outside each prefix, each port range's ends and neighbours,
// each excluded or proxy id, for both directions, both protocols and both
// families.
func probeConns(p redirect.Plan) []redirect.Conn {
	c := p.Config
	var addrs []netip.Addr
	for _, s := range []string{"192.0.2.1", "203.0.113.5", "2001:db8::1", "2001:db8:ffff::5", "127.0.0.1", "::1", "0.0.0.0", "::"} {
		addrs = append(addrs, netip.MustParseAddr(s))
	}
	var prefixes []netip.Prefix
	prefixes = append(prefixes, c.Outbound.IncludeCIDRs...)
	prefixes = append(prefixes, c.Outbound.ExcludeCIDRs...)
	prefixes = append(prefixes, c.Inbound.ExcludeSourceCIDRs...)
	for _, pr := range prefixes {
		a := pr.Masked().Addr()
		addrs = append(addrs, a, a.Next(), a.Prev())
	}
	ports := []uint16{80, 53, 443, c.Proxy.InboundPort, c.Proxy.OutboundPort, c.DNS.Port}
	for _, rs := range [][]redirect.PortRange{c.Outbound.IncludePorts, c.Outbound.ExcludePorts, c.Inbound.IncludePorts, c.Inbound.ExcludePorts} {
		for _, r := range rs {
			ports = append(ports, r.First, r.Last, r.First-1, r.Last+1)
		}
	}
	ids := []uint32{60000, c.Proxy.UID}
	if c.Proxy.GID != nil {
		ids = append(ids, *c.Proxy.GID)
	}
	for _, rs := range [][]redirect.IDRange{c.Outbound.ExcludeUIDs, c.Outbound.ExcludeGIDs} {
		for _, r := range rs {
			ids = append(ids, r.First, r.Last, r.Last+1)
		}
	}
	for _, r := range c.Outbound.ExcludePortsForUIDs {
		for _, pr := range r.Ports {
			ports = append(ports, pr.First, pr.Last+1)
		}
		for _, u := range r.UIDs {
			ids = append(ids, u.First, u.Last)
		}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	self := map[bool]netip.Addr{false: netip.MustParseAddr("203.0.113.2"), true: netip.MustParseAddr("2001:db8:1::2")}
	var out []redirect.Conn
	for _, port := range ports {
		if port == 0 {
			continue
		}
		for _, dst := range addrs {
			for _, uid := range ids {
				for _, proto := range []redirect.Protocol{redirect.TCP, redirect.UDP} {
					out = append(out, redirect.Conn{Direction: redirect.DirOutbound, Protocol: proto, Dst: dst, Port: port, UID: uid, GID: uid})
					out = append(out, redirect.Conn{Direction: redirect.DirOutbound, Protocol: proto, Dst: dst, Port: port, UID: 60001, GID: uid})
				}
			}
			if !dst.IsLoopback() && !dst.IsUnspecified() {
				// Inbound from dst (loopback and unspecified sources never
				// arrive from outside; an unspecified destination is a
				// connect() to the loopback address).
				out = append(out, redirect.Conn{Direction: redirect.DirInbound, Protocol: redirect.TCP, Src: dst, Dst: self[dst.Is6()], Port: port, ToSelf: true})
			}
		}
		for _, v6 := range []bool{false, true} {
			own := self[v6]
			pt := c.Proxy.InboundPassthroughSource.IPv4
			if v6 {
				pt = c.Proxy.InboundPassthroughSource.IPv6
			}
			for _, uid := range ids {
				out = append(out,
					redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Src: own, Dst: own, Port: port, UID: uid, GID: uid, ToSelf: true},
					redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Src: pt, Dst: own, Port: port, UID: uid, GID: uid, ToSelf: true})
			}
		}
	}
	return out
}

func TestPacketOfNeverGuessesTheInterface(t *testing.T) {
	t.Parallel()
	p := packetOf(redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("192.0.2.1"), Port: 80})
	if p.Out != "" || p.DstLocal {
		t.Errorf("a remote destination went out %q local %v, want an unnamed interface that is not lo", p.Out, p.DstLocal)
	}
	p = packetOf(redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("::1"), Port: 80})
	if p.Out != "lo" || !p.DstLocal || !strings.HasPrefix(p.Src.String(), "::1") {
		t.Errorf("loopback: out %q local %v src %s", p.Out, p.DstLocal, p.Src)
	}
}

// TestExplainSaysWhoseRuleDecides: a rule of another tool that decides is
// marked Foreign (`detour check` compares only detour's rules and reports
// nothing for it); detour's own rules, in its chains or hooked with its
// comment, are not.
func TestExplainSaysWhoseRuleDecides(t *testing.T) {
	t.Parallel()
	p, err := redirect.NewPlan(cfgWith(t, ""), redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	var save string
	for _, fr := range Rules(p.Capture) {
		if fr.Family == redirect.IPv4 {
			save = renderTables(fr.Tables)
		}
	}
	foreign := strings.Replace(save, "-A OUTPUT ", "-A OUTPUT -d 198.51.100.0/24 -p tcp -j ACCEPT\n-A OUTPUT ", 1)
	conn := func(port uint16, uid uint32) redirect.Conn {
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("198.51.100.1"), Port: port, UID: uid, GID: uid}
	}
	tests := []struct {
		name    string
		save    string
		conn    redirect.Conn
		foreign bool
	}{
		{"detour's redirect", save, conn(80, 1000), false},
		{"detour's return for the proxy", save, conn(80, 5678), false},
		{"another tool's accept first", foreign, conn(80, 1000), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			kv, err := explainSave(redirect.BackendIPTablesNFT, tt.save, tt.conn)
			if err != nil {
				t.Fatal(err)
			}
			if kv.Rule == "" || kv.Foreign != tt.foreign {
				t.Errorf("rule %q foreign %v, want foreign %v", kv.Rule, kv.Foreign, tt.foreign)
			}
		})
	}
}
