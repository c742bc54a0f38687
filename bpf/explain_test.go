package bpf

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// TestExplainAgreesWithDecide renders configs into map entries and checks,
// for many connections, that the programs' checks (as explain mirrors them)
// capture exactly what Capture.Decide captures, to the same port.
func TestExplainAgreesWithDecide(t *testing.T) {
	t.Parallel()
	gid := uint32(5679)
	p := netip.MustParsePrefix
	configs := []struct {
		name string
		mut  func(*redirect.Config)
	}{
		{"default", func(*redirect.Config) {}},
		{"exclusions", func(c *redirect.Config) {
			c.Proxy.GID = &gid
			c.Outbound.ExcludeCIDRs = []netip.Prefix{p("198.51.100.0/25"), p("192.0.2.128/26"), p("2001:db8:ffff:1::/64")}
			c.Outbound.ExcludePorts = []redirect.PortRange{{First: 5000, Last: 5999}, {First: 22, Last: 22}}
			c.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 1000, Last: 1003}}
			c.Outbound.ExcludeGIDs = []redirect.IDRange{{First: 2000, Last: 2000}}
			c.Outbound.ExcludePortsForUIDs = []redirect.UIDPortRule{
				{Protocol: redirect.TCP, Ports: []redirect.PortRange{{First: 3000, Last: 3100}}, UIDs: []redirect.IDRange{{First: 500, Last: 600}}},
				{Protocol: redirect.UDP, Ports: []redirect.PortRange{{First: 53, Last: 53}}, UIDs: []redirect.IDRange{{First: 700, Last: 700}}},
			}
			c.DNS.Capture = redirect.DNSCaptureAll
		}},
		{"includes", func(c *redirect.Config) {
			c.Outbound.IncludeCIDRs = []netip.Prefix{p("198.51.100.0/24"), p("2001:db8:ffff::/48")}
			c.Outbound.ExcludeCIDRs = []netip.Prefix{p("198.51.100.0/28")}
			c.Outbound.IncludePorts = []redirect.PortRange{{First: 80, Last: 90}, {First: 443, Last: 443}}
			c.DNS.Capture = redirect.DNSCaptureResolvConf
		}},
		{"ipv4 only includes", func(c *redirect.Config) {
			c.Outbound.IncludeCIDRs = []netip.Prefix{p("192.0.2.0/24")}
		}},
	}
	addrs := []string{"198.51.100.1", "198.51.100.200", "192.0.2.130", "192.0.2.1", "203.0.113.9", "127.0.0.1", "0.0.0.0",
		"2001:db8:ffff::1", "2001:db8:ffff:1::9", "2001:db8:abcd::1", "::1", "::ffff:198.51.100.1", "::ffff:192.0.2.1"}
	for _, tc := range configs {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := redirect.Default()
			cfg.Inbound.Enabled = false
			cfg.IPFamilies = redirect.IPFamiliesDual
			tc.mut(&cfg)
			facts := redirect.Facts{IPv6: true, Nameservers: []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8:ffff::53")}}
			capture, err := redirect.NewCapture(cfg, facts)
			if err != nil {
				t.Fatal(err)
			}
			e, err := render(3, capture)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			for range 4000 {
				c := redirect.Conn{
					Direction: redirect.DirOutbound,
					Dst:       netip.MustParseAddr(addrs[r.IntN(len(addrs))]),
					UID:       []uint32{0, 5678, 1000, 1003, 1004, 550, 700, 9}[r.IntN(8)],
					GID:       []uint32{0, 5679, 2000, 7}[r.IntN(4)],
				}
				if r.IntN(4) == 0 {
					c.Protocol, c.Port = redirect.UDP, []uint16{53, 53, 54}[r.IntN(3)]
					c.Dst = []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8:ffff::53"), netip.MustParseAddr("198.51.100.1")}[r.IntN(3)]
				} else {
					c.Protocol, c.Port = redirect.TCP, []uint16{80, 85, 443, 22, 3000, 3050, 5432, 8080}[r.IntN(8)]
				}
				want := capture.Decide(c)
				got := e.explain(c)
				if got.captured != want.Captured || got.port != want.Port {
					t.Errorf("%+v: maps say captured=%v port %d (%s %s), Decide says %v port %d (%s)",
						c, got.captured, got.port, got.rule, got.why, want.Captured, want.Port, want.Reason)
				}
			}
		})
	}
}

// TestExplainShowsAcceleration: a captured TCP connection of a scope with
// acceleration says so; without it, or for DNS, nothing is said.
func TestExplainShowsAcceleration(t *testing.T) {
	t.Parallel()
	cfg := redirect.Default()
	cfg.Inbound.Enabled = false
	cfg.DNS.Capture = redirect.DNSCaptureAll
	capture, err := redirect.NewCapture(cfg, redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	tcp := redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("198.51.100.1"), Port: 443, UID: 1000}
	dns := redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.UDP, Dst: netip.MustParseAddr("198.51.100.1"), Port: 53, UID: 1000}
	for _, tc := range []struct {
		name  string
		accel bool
		conn  redirect.Conn
		want  bool
	}{
		{"tcp, accelerated", true, tcp, true},
		{"tcp, default", false, tcp, false},
		{"dns, accelerated scope", true, dns, false},
	} {
		e, err := renderWith(1, capture, Settings{Accelerate: tc.accel})
		if err != nil {
			t.Fatal(err)
		}
		v := e.explain(tc.conn)
		if !v.captured {
			t.Fatalf("%s: not captured", tc.name)
		}
		if got := strings.Contains(v.why, accelNote); got != tc.want {
			t.Errorf("%s: explain says %q, want the acceleration note: %v", tc.name, v.why, tc.want)
		}
		if got := strings.Contains(e.lines()[0], "accelerate"); got != tc.accel {
			t.Errorf("%s: config line %q", tc.name, e.lines()[0])
		}
	}
}
