package plancases

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// Config returns the default config (or a preset) with fields set from
// "path=value" strings, failing the test on a bad one.
func Config(t testing.TB, preset string, sets ...string) redirect.Config {
	t.Helper()
	c := redirect.Default()
	if preset != "" {
		var err error
		if c, err = redirect.Preset(preset); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range sets {
		path, value, _ := strings.Cut(s, "=")
		if err := c.Set(path, value); err != nil {
			t.Fatalf("set %s: %v", s, err)
		}
	}
	return c
}

var (
	// DualStack, V4Only and Resolvers are the facts the cases are planned with.
	DualStack = redirect.Facts{IPv6: true}
	V4Only    = redirect.Facts{}
	Resolvers = redirect.Facts{IPv6: true, Nameservers: []netip.Addr{
		netip.MustParseAddr("127.0.0.53"),
		netip.MustParseAddr("192.0.2.53"),
		netip.MustParseAddr("2001:db8::53"),
		netip.MustParseAddr("192.0.2.53"), // listed twice: one rule
	}}
)

// Case is one configuration the golden plan tests and the privileged install
// tests of every backend share.
type Case struct {
	Name   string
	Preset string
	Sets   []string
	Facts  redirect.Facts
}

// All returns every case, in the order of the golden files.
func All() []Case {
	return []Case{
		{Name: "default-ipv4", Facts: V4Only},
		{Name: "default-dual", Facts: DualStack},
		{Name: "preset-istio", Preset: "istio", Facts: DualStack},
		{Name: "preset-kuma", Preset: "kuma", Facts: DualStack},
		{Name: "families-ipv4-forced", Sets: []string{"ipFamilies=ipv4"}, Facts: DualStack},
		{Name: "families-ipv6-only", Sets: []string{"ipFamilies=ipv6"}, Facts: DualStack},
		{Name: "families-dual", Sets: []string{"ipFamilies=dual"}, Facts: DualStack},
		{Name: "proxy-gid-and-ports", Sets: []string{"proxy.gid=5679", "proxy.inboundPort=16006", "proxy.outboundPort=16001",
			"proxy.inboundPassthroughSource.ipv4=127.0.0.7", "proxy.inboundPassthroughSource.ipv6=::7"}, Facts: DualStack},
		{Name: "inbound-disabled", Sets: []string{"inbound.enabled=false"}, Facts: DualStack},
		{Name: "outbound-disabled", Sets: []string{"outbound.enabled=false"}, Facts: DualStack},
		{Name: "both-disabled", Sets: []string{"inbound.enabled=false", "outbound.enabled=false"}, Facts: DualStack},
		{Name: "inbound-exclude-ports", Sets: []string{"inbound.excludePorts=22,8000-8100"}, Facts: DualStack},
		{Name: "inbound-include-beats-exclude", Sets: []string{"inbound.includePorts=80,443,9000-9100", "inbound.excludePorts=80"}, Facts: DualStack},
		{Name: "inbound-exclude-source-cidrs", Sets: []string{"inbound.excludeSourceCIDRs=192.0.2.0/24,2001:db8:1::/48,198.51.100.7"}, Facts: DualStack},
		{Name: "outbound-exclude-ports", Sets: []string{"outbound.excludePorts=25,6000-6100"}, Facts: DualStack},
		{Name: "outbound-include-beats-exclude-ports", Sets: []string{"outbound.includePorts=80,443", "outbound.excludePorts=443,8080"}, Facts: DualStack},
		{Name: "outbound-exclude-cidrs", Sets: []string{"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48"}, Facts: DualStack},
		{Name: "outbound-include-cidrs-ipv4-only", Sets: []string{"outbound.includeCIDRs=198.51.100.0/24,203.0.113.0/24",
			"outbound.excludeCIDRs=198.51.100.128/25,2001:db8::/32"}, Facts: DualStack},
		{Name: "outbound-include-ports-and-cidrs", Sets: []string{"outbound.includePorts=443", "outbound.includeCIDRs=198.51.100.0/24,2001:db8:3::/48"}, Facts: DualStack},
		{Name: "outbound-include-ports-exclude-cidrs", Sets: []string{"outbound.includePorts=443", "outbound.excludeCIDRs=198.51.100.0/24,2001:db8:3::/48"}, Facts: DualStack},
		{Name: "outbound-exclude-ports-include-cidrs", Sets: []string{"outbound.excludePorts=443", "outbound.includeCIDRs=198.51.100.0/24,2001:db8:3::/48"}, Facts: DualStack},
		{Name: "notes-no-op-exclusions", Sets: []string{"outbound.includeCIDRs=198.51.100.0/24,2001:db8::/48", "outbound.excludeCIDRs=198.51.100.7,2001:db8::/32",
			"outbound.includePorts=80,443,8000-9000", "outbound.excludePorts=443,8080", "inbound.includePorts=9000-9100", "inbound.excludePorts=9050-9200"}, Facts: DualStack},
		{Name: "outbound-many-ports", Sets: []string{"outbound.excludePorts=1,2,3,4,5,6,7,8,9,10,11,12,13,14,100-200,15,16,300-400,17"}, Facts: DualStack},
		{Name: "exclude-uids-gids", Sets: []string{"outbound.excludeUIDs=0,106-108", "outbound.excludeGIDs=33"}, Facts: DualStack},
		{Name: "exclude-ports-for-uids", Sets: []string{"outbound.excludePortsForUIDs=tcp:53,3000-5000:106-108,udp:53:107,udp:5353:109,tcp:22:0"}, Facts: DualStack},
		{Name: "dns-all", Sets: []string{"dns.capture=all"}, Facts: DualStack},
		{Name: "dns-all-no-zone-split", Sets: []string{"dns.capture=all", "dns.conntrackZoneSplit=false"}, Facts: DualStack},
		{Name: "dns-all-excluded-users", Sets: []string{"dns.capture=all", "proxy.gid=5678", "outbound.excludeUIDs=106-108",
			"outbound.excludeGIDs=33", "outbound.excludePortsForUIDs=udp:53:107"}, Facts: DualStack},
		{Name: "dns-resolvconf", Sets: []string{"dns.capture=resolvconf"}, Facts: Resolvers},
		{Name: "dns-resolvconf-no-ipv6-nameserver", Sets: []string{"dns.capture=resolvconf", "dns.port=5353"},
			Facts: redirect.Facts{IPv6: true, Nameservers: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}},
		{Name: "dns-resolvconf-no-nameserver", Sets: []string{"dns.capture=resolvconf"}, Facts: DualStack},
		{Name: "log", Sets: []string{"log.enabled=true", "dns.capture=all"}, Facts: DualStack},
		{Name: "log-prefix-quoted", Sets: []string{"log.enabled=true", "log.prefix=detour: "}, Facts: V4Only},
		{Name: "log-no-prefix", Sets: []string{"log.enabled=true", "log.prefix="}, Facts: V4Only},
		{Name: "drop-invalid", Sets: []string{"dropInvalidPackets=true"}, Facts: DualStack},
		{Name: "tproxy", Sets: []string{"mode=tproxy"}, Facts: DualStack},
		{Name: "tproxy-inbound-disabled", Sets: []string{"mode=tproxy", "inbound.enabled=false"}, Facts: DualStack},
		{Name: "tproxy-everything", Preset: "istio", Sets: []string{"mode=tproxy", "proxy.gid=1337", "dropInvalidPackets=true",
			"log.enabled=true", "dns.capture=resolvconf", "inbound.includePorts=80,8080", "inbound.excludeSourceCIDRs=192.0.2.0/24",
			"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48", "outbound.excludePorts=25", "outbound.excludeUIDs=0",
			"outbound.excludePortsForUIDs=tcp:3306:106"}, Facts: Resolvers},
		{Name: "redirect-everything", Preset: "kuma", Sets: []string{"proxy.gid=5678", "dropInvalidPackets=true",
			"log.enabled=true", "dns.capture=all", "inbound.excludePorts=22", "inbound.excludeSourceCIDRs=2001:db8:9::/48",
			"outbound.includeCIDRs=198.51.100.0/24,2001:db8::/32", "outbound.includePorts=80,443", "outbound.excludeGIDs=10-20"}, Facts: DualStack},
	}
}
