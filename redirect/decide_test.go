package redirect

import (
	"net/netip"
	"testing"
)

func TestCapturesOutbound(t *testing.T) {
	t.Parallel()
	a := netip.MustParseAddr
	const app = 1000
	tests := []struct {
		name     string
		sets     []string
		dst      string
		port     uint16
		uid, gid uint32
		want     bool
	}{
		{name: "default captures everything elsewhere", dst: "198.51.100.1", port: 80, uid: app, gid: app, want: true},
		{name: "default captures IPv6", dst: "2001:db8::1", port: 443, uid: app, gid: app, want: true},
		{name: "IPv4-mapped is IPv4", sets: []string{"outbound.excludeCIDRs=198.51.100.0/24"}, dst: "::ffff:198.51.100.1", port: 80, uid: app, gid: app, want: false},
		{name: "the outbound port itself is captured", dst: "198.51.100.1", port: 15001, uid: app, gid: app, want: true},
		{name: "root is captured", dst: "198.51.100.1", port: 80, uid: 0, gid: 0, want: true},
		{name: "outbound disabled", sets: []string{"outbound.enabled=false"}, dst: "198.51.100.1", port: 80, uid: app, gid: app, want: false},
		{name: "IPv4 loopback", dst: "127.0.0.1", port: 80, uid: app, gid: app, want: false},
		{name: "other IPv4 loopback", dst: "127.1.2.3", port: 80, uid: app, gid: app, want: false},
		{name: "IPv6 loopback", dst: "::1", port: 80, uid: app, gid: app, want: false},
		{name: "unspecified", dst: "0.0.0.0", port: 80, uid: app, gid: app, want: false},
		{name: "proxy uid", dst: "198.51.100.1", port: 80, uid: 5678, gid: app, want: false},
		{name: "proxy gid", sets: []string{"proxy.gid=5679"}, dst: "198.51.100.1", port: 80, uid: app, gid: 5679, want: false},
		{name: "proxy gid unset: a gid equal to the uid is nothing special", dst: "198.51.100.1", port: 80, uid: app, gid: 5678, want: true},
		{name: "excluded uid range", sets: []string{"outbound.excludeUIDs=106-108"}, dst: "198.51.100.1", port: 80, uid: 107, gid: app, want: false},
		{name: "uid outside the excluded range", sets: []string{"outbound.excludeUIDs=106-108"}, dst: "198.51.100.1", port: 80, uid: 109, gid: app, want: true},
		{name: "excluded gid", sets: []string{"outbound.excludeGIDs=33"}, dst: "198.51.100.1", port: 80, uid: app, gid: 33, want: false},
		{name: "ports for uids: that port and uid", sets: []string{"outbound.excludePortsForUIDs=tcp:53,3000-5000:106-108"}, dst: "198.51.100.1", port: 4000, uid: 106, gid: app, want: false},
		{name: "ports for uids: other port", sets: []string{"outbound.excludePortsForUIDs=tcp:53,3000-5000:106-108"}, dst: "198.51.100.1", port: 80, uid: 106, gid: app, want: true},
		{name: "ports for uids: other uid", sets: []string{"outbound.excludePortsForUIDs=tcp:53,3000-5000:106-108"}, dst: "198.51.100.1", port: 53, uid: 109, gid: app, want: true},
		{name: "ports for uids: a udp rule leaves TCP alone", sets: []string{"outbound.excludePortsForUIDs=udp:53:106"}, dst: "198.51.100.1", port: 53, uid: 106, gid: app, want: true},
		{name: "excluded port", sets: []string{"outbound.excludePorts=25,6000-6100"}, dst: "198.51.100.1", port: 6050, uid: app, gid: app, want: false},
		{name: "other port", sets: []string{"outbound.excludePorts=25,6000-6100"}, dst: "198.51.100.1", port: 26, uid: app, gid: app, want: true},
		{name: "included port", sets: []string{"outbound.includePorts=80,443"}, dst: "198.51.100.1", port: 443, uid: app, gid: app, want: true},
		{name: "port not included", sets: []string{"outbound.includePorts=80,443"}, dst: "198.51.100.1", port: 8080, uid: app, gid: app, want: false},
		{name: "include port beats exclude port", sets: []string{"outbound.includePorts=80,443", "outbound.excludePorts=443"}, dst: "198.51.100.1", port: 443, uid: app, gid: app, want: true},
		{name: "excluded CIDR", sets: []string{"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48"}, dst: "2001:db8:2::9", port: 80, uid: app, gid: app, want: false},
		{name: "outside the excluded CIDRs", sets: []string{"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48"}, dst: "203.0.114.1", port: 80, uid: app, gid: app, want: true},
		{name: "included CIDR", sets: []string{"outbound.includeCIDRs=198.51.100.0/24"}, dst: "198.51.100.200", port: 80, uid: app, gid: app, want: true},
		{name: "not included CIDR", sets: []string{"outbound.includeCIDRs=198.51.100.0/24"}, dst: "203.0.113.1", port: 80, uid: app, gid: app, want: false},
		{name: "include CIDR beats exclude CIDR", sets: []string{"outbound.includeCIDRs=10.0.0.0/8", "outbound.excludeCIDRs=10.96.0.1/32"}, dst: "10.96.0.1", port: 80, uid: app, gid: app, want: true},
		{name: "include CIDRs without IPv6 capture no IPv6", sets: []string{"outbound.includeCIDRs=198.51.100.0/24"}, dst: "2001:db8::1", port: 80, uid: app, gid: app, want: false},
		{name: "include CIDRs without IPv4 capture no IPv4, whatever excludeCIDRs say", sets: []string{"outbound.includeCIDRs=2001:db8::/32", "outbound.excludeCIDRs=198.51.100.0/24"}, dst: "203.0.113.1", port: 80, uid: app, gid: app, want: false},
		{name: "included CIDR but not an included port", sets: []string{"outbound.includeCIDRs=198.51.100.0/24", "outbound.includePorts=443"}, dst: "198.51.100.9", port: 80, uid: app, gid: app, want: false},
		{name: "included CIDR and port", sets: []string{"outbound.includeCIDRs=198.51.100.0/24", "outbound.includePorts=443"}, dst: "198.51.100.9", port: 443, uid: app, gid: app, want: true},
		{name: "inbound disabled changes nothing outbound", sets: []string{"inbound.enabled=false"}, dst: "198.51.100.1", port: 80, uid: app, gid: app, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := cfgWith(t, "", tt.sets...)
			if got := c.CapturesOutbound(a(tt.dst), tt.port, tt.uid, tt.gid); got != tt.want {
				t.Errorf("CapturesOutbound(%s, %d, uid %d, gid %d) = %v, want %v", tt.dst, tt.port, tt.uid, tt.gid, got, tt.want)
			}
		})
	}
}

func TestCapturesInbound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sets []string
		src  string
		port uint16
		want bool
	}{
		{name: "default captures every port", src: "192.0.2.1", port: 8080, want: true},
		{name: "IPv6 client", src: "2001:db8::1", port: 22, want: true},
		{name: "the inbound port itself", src: "192.0.2.1", port: 15006, want: true},
		{name: "the outbound port is the loop guard", src: "192.0.2.1", port: 15001, want: false},
		{name: "the loop guard follows proxy.outboundPort", sets: []string{"proxy.outboundPort=16001"}, src: "192.0.2.1", port: 15001, want: true},
		{name: "inbound disabled", sets: []string{"inbound.enabled=false"}, src: "192.0.2.1", port: 8080, want: false},
		{name: "loopback source", src: "127.0.0.1", port: 8080, want: false},
		{name: "IPv4 passthrough source", src: "127.0.0.6", port: 8080, want: false},
		{name: "IPv6 passthrough source", src: "::6", port: 8080, want: false},
		{name: "configured passthrough source", sets: []string{"proxy.inboundPassthroughSource.ipv4=169.254.7.7"}, src: "169.254.7.7", port: 8080, want: false},
		{name: "excluded source", sets: []string{"inbound.excludeSourceCIDRs=192.0.2.0/24,2001:db8:1::/48"}, src: "2001:db8:1::5", port: 8080, want: false},
		{name: "other source", sets: []string{"inbound.excludeSourceCIDRs=192.0.2.0/24,2001:db8:1::/48"}, src: "198.51.100.5", port: 8080, want: true},
		{name: "IPv4-mapped source is IPv4", sets: []string{"inbound.excludeSourceCIDRs=192.0.2.0/24"}, src: "::ffff:192.0.2.9", port: 8080, want: false},
		{name: "excluded port", sets: []string{"inbound.excludePorts=22,8000-8100"}, src: "192.0.2.1", port: 8050, want: false},
		{name: "15090 is captured without the istio preset", src: "192.0.2.1", port: 15090, want: true},
		{name: "included port", sets: []string{"inbound.includePorts=80,9000-9100"}, src: "192.0.2.1", port: 9050, want: true},
		{name: "port not included", sets: []string{"inbound.includePorts=80,9000-9100"}, src: "192.0.2.1", port: 8080, want: false},
		{name: "include beats exclude", sets: []string{"inbound.includePorts=80", "inbound.excludePorts=80"}, src: "192.0.2.1", port: 80, want: true},
		{name: "outbound disabled changes nothing inbound", sets: []string{"outbound.enabled=false"}, src: "192.0.2.1", port: 80, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := cfgWith(t, "", tt.sets...)
			if got := c.CapturesInbound(netip.MustParseAddr(tt.src), tt.port); got != tt.want {
				t.Errorf("CapturesInbound(%s, %d) = %v, want %v", tt.src, tt.port, got, tt.want)
			}
		})
	}
	istio, err := Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	if istio.CapturesInbound(netip.MustParseAddr("192.0.2.1"), 15090) {
		t.Error("the istio preset captures its excluded port 15090")
	}
	if istio.CapturesInbound(netip.MustParseAddr("192.0.2.1"), 15008) {
		t.Error("the istio preset captures Istio's tunnel port 15008, which istio-iptables exempts")
	}
}

func TestCapturedUser(t *testing.T) {
	t.Parallel()
	dst := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name   string
		mutate func(*Config)
		port   uint16
		want   uint32
		ok     bool
	}{
		{"defaults", func(*Config) {}, 80, 65534, true},
		{"proxy is 65534", func(c *Config) { c.Proxy.UID = 65534 }, 80, 65533, true},
		{"uids and gids excluded", func(c *Config) {
			c.Outbound.ExcludeUIDs = []IDRange{{65530, 65534}}
			c.Outbound.ExcludeGIDs = []IDRange{{65529, 65529}}
		}, 80, 65528, true},
		{"per-uid port rule on that port", func(c *Config) {
			c.Outbound.ExcludePortsForUIDs = []UIDPortRule{{TCP, []PortRange{{80, 80}}, []IDRange{{65534, 65534}}}}
		}, 80, 65533, true},
		{"per-uid port rule on another port", func(c *Config) {
			c.Outbound.ExcludePortsForUIDs = []UIDPortRule{{TCP, []PortRange{{81, 81}}, []IDRange{{65534, 65534}}}}
		}, 80, 65534, true},
		{"excluded port", func(c *Config) { c.Outbound.ExcludePorts = []PortRange{{80, 80}} }, 80, 0, false},
		{"every candidate excluded", func(c *Config) { c.Outbound.ExcludeUIDs = []IDRange{{60000, 65534}} }, 80, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tt.mutate(&c)
			uid, gid, ok := c.CapturedUser(dst, tt.port)
			if ok != tt.ok || uid != tt.want || gid != tt.want {
				t.Errorf("CapturedUser = %d, %d, %v; want %d, %d, %v", uid, gid, ok, tt.want, tt.want, tt.ok)
			}
			if ok && !c.CapturesOutbound(dst, tt.port, uid, gid) {
				t.Errorf("CapturesOutbound disagrees with CapturedUser for uid %d", uid)
			}
		})
	}
}
