//go:build linux

package nftables

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// TestRenderingMatchesDecide is the decision cross-check without a kernel:
// for thousands of generated (configuration, connection) pairs, what the
// rendered table does with the connection (evaluated rule by rule) equals
// Capture.Decide's verdict and port.
func TestRenderingMatchesDecide(t *testing.T) {
	t.Parallel()
	rnd := rand.New(rand.NewPCG(1, 7))
	pick := func(pool ...string) string {
		var out []string
		for _, p := range pool {
			if rnd.IntN(3) == 0 {
				out = append(out, p)
			}
		}
		return strings.Join(out, ",")
	}
	ports := []string{"22", "80", "443", "8000-8100", "15001", "53", "5432"}
	cidrs := []string{"192.0.2.0/24", "198.51.100.0/25", "203.0.113.7", "2001:db8::/48", "2001:db8:1::/64", "2001:db8:2::7"}
	addrs := []string{"192.0.2.10", "198.51.100.5", "198.51.100.200", "203.0.113.7", "203.0.113.8", "2001:db8::1", "2001:db8:1::9", "2001:db8:2::7", "2001:db8:3::1", "127.0.0.1", "::1", "127.0.0.53", "0.0.0.0", "::"}
	owners := []uint32{0, 5678, 1000, 106, 107, 33, 1337}
	checked := 0
	for range 150 {
		var sets []string
		add := func(field, v string) {
			if v != "" {
				sets = append(sets, field+"="+v)
			}
		}
		if rnd.IntN(3) == 0 {
			add("mode", "tproxy")
		}
		if rnd.IntN(6) == 0 {
			add("inbound.enabled", "false")
		}
		if rnd.IntN(6) == 0 {
			add("outbound.enabled", "false")
		}
		if rnd.IntN(3) == 0 {
			add("proxy.gid", "5679")
		}
		add("inbound.excludePorts", pick(ports...))
		if rnd.IntN(3) == 0 {
			add("inbound.includePorts", pick(ports...))
		}
		add("inbound.excludeSourceCIDRs", pick(cidrs...))
		add("outbound.excludePorts", pick(ports...))
		if rnd.IntN(3) == 0 {
			add("outbound.includePorts", pick(ports...))
		}
		if rnd.IntN(3) == 0 {
			add("outbound.includeCIDRs", pick(cidrs...))
		}
		add("outbound.excludeCIDRs", pick(cidrs...))
		add("outbound.excludeUIDs", pick("0", "106-108"))
		add("outbound.excludeGIDs", pick("33", "40-50"))
		add("outbound.excludePortsForUIDs", pick("tcp:53,3000-5000:106-108", "udp:53:107", "tcp:443:1000"))
		add("dns.capture", []string{"off", "all", "resolvconf"}[rnd.IntN(3)])
		add("ipFamilies", []string{"auto", "ipv4", "dual"}[rnd.IntN(3)])
		facts := redirect.Facts{IPv6: true, Nameservers: []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("2001:db8::1")}}
		c, err := redirect.NewCapture(cfgWith(t, "", sets...), facts)
		if err != nil {
			t.Fatalf("%v: %v", sets, err)
		}
		rs, err := Render(c)
		if err != nil {
			t.Fatalf("%v: %v", sets, err)
		}
		for range 60 {
			conn := redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP,
				Dst: netip.MustParseAddr(addrs[rnd.IntN(len(addrs))]), UID: owners[rnd.IntN(len(owners))], GID: owners[rnd.IntN(len(owners))]}
			conn.Port = []uint16{22, 80, 443, 8050, 15001, 15006, 53, 3306, 4000}[rnd.IntN(9)]
			switch rnd.IntN(4) {
			case 0:
				conn.Direction = redirect.DirInbound
				conn.Src = conn.Dst
				conn.ToSelf = rnd.IntN(4) != 0 // else forwarded: never captured
				if conn.Src.IsLoopback() || conn.Src.IsUnspecified() {
					continue // never arrives from outside
				}
			case 1:
				conn.Protocol = redirect.UDP
				conn.Port = 53
			case 2:
				conn.ToSelf = !conn.Dst.IsLoopback() && !conn.Dst.IsUnspecified()
			}
			want := c.Decide(conn)
			got := newEvaluator(rs).conn(conn)
			if got.captured != want.Captured || got.port != want.Port {
				t.Fatalf("config %v\nconnection %+v\nDecide: captured %v port %d (%s)\ntable:  captured %v port %d (rule %q, path %q)\n%s",
					sets, conn, want.Captured, want.Port, want.Reason, got.captured, got.port, got.rule, got.path, rs.Text())
			}
			checked++
		}
	}
	t.Logf("%d connections agree", checked)
	if checked < 5000 {
		t.Errorf("only %d connections checked", checked)
	}
}

func ExampleRuleset_Text() {
	c, _ := redirect.NewCapture(redirect.Default(), redirect.Facts{})
	rs, _ := Render(c)
	fmt.Print(strings.Join(rs.Lines(redirect.IPv4)[:3], "\n"))
	// Output:
	// add table inet detour
	// add chain inet detour nat_prerouting { type nat hook prerouting priority -100; policy accept; }
	// add chain inet detour nat_output { type nat hook output priority -100; policy accept; }
}

// TestEvaluatorQuotesDecidingRule: explain quotes the rule that decides, also
// when it leaves the connection alone (an excluded port's return, as the
// iptables evaluator does), and never quotes a rule for a connection no rule
// of detour's matched.
func TestEvaluatorQuotesDecidingRule(t *testing.T) {
	t.Parallel()
	c, err := redirect.NewCapture(cfgWith(t, "", "outbound.excludePorts=5432"), redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddr("198.51.100.1")
	tests := []struct {
		name     string
		conn     redirect.Conn
		captured bool
		rule     string
		action   string
		path     int
	}{
		{"redirected", redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: dst, Port: 80, UID: 1000, GID: 1000},
			true, "out_redirect4 meta l4proto tcp redirect to :15001", "redirect", 2},
		{"excluded port", redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: dst, Port: 5432, UID: 1000, GID: 1000},
			false, "output4 meta l4proto tcp tcp dport @out_exclude_ports4 return", "return", 1},
		{"udp, no dns capture", redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.UDP, Dst: dst, Port: 53, UID: 1000, GID: 1000},
			false, "", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := newEvaluator(rs).conn(tc.conn)
			if got.captured != tc.captured || got.rule != tc.rule || got.action != tc.action || len(got.path) != tc.path {
				t.Errorf("captured %v, rule %q, action %q, path %q; want captured %v, rule %q, action %q, %d rules before it",
					got.captured, got.rule, got.action, got.path, tc.captured, tc.rule, tc.action, tc.path)
			}
		})
	}
}
