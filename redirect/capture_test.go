package redirect

import (
	"net/netip"
	"testing"
)

// TestDecideReasons checks that Decide names the setting that decides, in the
// user's terms, for each kind of decision.
func TestDecideReasons(t *testing.T) {
	t.Parallel()
	a := netip.MustParseAddr
	base := func(mut func(c *Config)) Config {
		c := Default()
		c.Outbound.ExcludePorts = []PortRange{{5432, 5432}}
		c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		c.Outbound.ExcludeUIDs = []IDRange{{1000, 1000}}
		c.Inbound.ExcludePorts = []PortRange{{22, 22}}
		c.DNS.Capture = DNSCaptureAll
		if mut != nil {
			mut(&c)
		}
		return c
	}
	app := uint32(60000)
	tests := []struct {
		name     string
		cfg      Config
		conn     Conn
		captured bool
		to       string
		field    string
		value    string
	}{
		{"outbound captured", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("192.0.2.1"), Port: 80, UID: app, GID: app}, true, "outbound", "outbound.enabled", "true"},
		{"excluded port", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("192.0.2.1"), Port: 5432, UID: app, GID: app}, false, "", "outbound.excludePorts", "5432"},
		{"excluded cidr", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("198.51.100.7"), Port: 80, UID: app, GID: app}, false, "", "outbound.excludeCIDRs", "198.51.100.0/24"},
		{"proxy uid", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("192.0.2.1"), Port: 80, UID: 5678, GID: app}, false, "", "proxy.uid", "5678"},
		{"excluded uid", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("192.0.2.1"), Port: 80, UID: 1000, GID: app}, false, "", "outbound.excludeUIDs", "1000"},
		{"loopback", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("127.0.0.1"), Port: 80, UID: app, GID: app}, false, "", "", ""},
		{"include cidrs miss", base(func(c *Config) { c.Outbound.IncludeCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")} }),
			Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("192.0.2.1"), Port: 80, UID: app, GID: app}, false, "", "outbound.includeCIDRs", ""},
		{"include beats exclude", base(func(c *Config) { c.Outbound.IncludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.0.0/16")} }),
			Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("198.51.100.7"), Port: 80, UID: app, GID: app}, true, "outbound", "outbound.includeCIDRs", "198.51.0.0/16"},
		{"ipv4 only", base(func(c *Config) { c.IPFamilies = IPFamiliesIPv4 }), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("2001:db8::1"), Port: 80, UID: app, GID: app}, false, "", "ipFamilies", ""},
		{"inbound captured", base(nil), Conn{Direction: DirInbound, Protocol: TCP, Src: a("203.0.113.9"), Port: 8080}, true, "inbound", "inbound.enabled", "true"},
		{"inbound excluded port", base(nil), Conn{Direction: DirInbound, Protocol: TCP, Src: a("203.0.113.9"), Port: 22}, false, "", "inbound.excludePorts", "22"},
		{"inbound to the workload's address", base(nil), Conn{Direction: DirInbound, Protocol: TCP, Src: a("203.0.113.9"), Dst: a("192.0.2.10"), Port: 8080, ToSelf: true}, true, "inbound", "inbound.enabled", "true"},
		{"inbound forwarded elsewhere", base(nil), Conn{Direction: DirInbound, Protocol: TCP, Src: a("203.0.113.9"), Dst: a("192.0.2.99"), Port: 8080}, false, "", "", ""},
		{"inbound loop guard", base(nil), Conn{Direction: DirInbound, Protocol: TCP, Src: a("203.0.113.9"), Port: 15001}, false, "", "proxy.outboundPort", "15001"},
		{"hairpin", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Src: a("203.0.113.2"), Dst: a("203.0.113.2"), Port: 8080, UID: 5678, GID: 5678, ToSelf: true}, true, "inbound", "proxy.uid", "5678"},
		{"passthrough", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Src: a("127.0.0.6"), Dst: a("203.0.113.2"), Port: 8080, UID: 5678, GID: 5678, ToSelf: true}, false, "", "proxy.inboundPassthroughSource", "127.0.0.6"},
		{"app to itself", base(nil), Conn{Direction: DirOutbound, Protocol: TCP, Dst: a("203.0.113.2"), Port: 8080, UID: app, GID: app, ToSelf: true}, false, "", "", ""},
		{"dns captured", base(nil), Conn{Direction: DirOutbound, Protocol: UDP, Dst: a("192.0.2.53"), Port: 53, UID: app, GID: app}, true, "dns", "dns.capture", "all"},
		{"dns of the proxy", base(nil), Conn{Direction: DirOutbound, Protocol: UDP, Dst: a("192.0.2.53"), Port: 53, UID: 5678, GID: app}, false, "", "proxy.uid", "5678"},
		// The kernel sends to 127.0.0.1 / ::1 what is addressed to 0.0.0.0 / ::.
		{"dns to a nameserver 0.0.0.0 arrives at 127.0.0.1", base(func(c *Config) { c.DNS.Capture = DNSCaptureResolvConf }), Conn{Direction: DirOutbound, Protocol: UDP, Dst: a("127.0.0.1"), Port: 53, UID: app, GID: app}, true, "dns", "dns.capture", "resolvconf"},
		{"dns to a nameserver :: arrives at ::1", base(func(c *Config) { c.DNS.Capture = DNSCaptureResolvConf }), Conn{Direction: DirOutbound, Protocol: UDP, Dst: a("::1"), Port: 53, UID: app, GID: app}, true, "dns", "dns.capture", "resolvconf"},
		{"dns to 0.0.0.0 as the resolver wrote it", base(func(c *Config) { c.DNS.Capture = DNSCaptureResolvConf }), Conn{Direction: DirOutbound, Protocol: UDP, Dst: a("0.0.0.0"), Port: 53, UID: app, GID: app}, true, "dns", "dns.capture", "resolvconf"},
		{"dns off", base(func(c *Config) { c.DNS.Capture = DNSCaptureOff }), Conn{Direction: DirOutbound, Protocol: UDP, Dst: a("192.0.2.53"), Port: 53, UID: app, GID: app}, false, "", "dns.capture", "off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := NewCapture(tt.cfg, Facts{IPv6: true, Nameservers: []netip.Addr{a("0.0.0.0"), a("::")}})
			if err != nil {
				t.Fatal(err)
			}
			v := c.Decide(tt.conn)
			if v.Captured != tt.captured || v.To != tt.to || v.Reason.Field != tt.field || v.Reason.Value != tt.value {
				t.Errorf("Decide(%+v) = %+v (%s), want captured %v to %q by %q %q", tt.conn, v, v.Reason, tt.captured, tt.to, tt.field, tt.value)
			}
			if v.Reason.Text == "" {
				t.Errorf("verdict %+v has no reason text", v)
			}
		})
	}
}
