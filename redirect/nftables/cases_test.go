//go:build linux

package nftables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// The configurations of redirect's TestPlan goldens (redirect/plan_test.go),
// under the same names, so both backends' renderings of one configuration
// sit side by side.

func cfgWith(t testing.TB, preset string, sets ...string) redirect.Config {
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
	dualStack = redirect.Facts{IPv6: true}
	v4Only    = redirect.Facts{}
	resolvers = redirect.Facts{IPv6: true, Nameservers: []netip.Addr{
		netip.MustParseAddr("127.0.0.53"),
		netip.MustParseAddr("192.0.2.53"),
		netip.MustParseAddr("2001:db8::53"),
		netip.MustParseAddr("192.0.2.53"), // listed twice: one rule
	}}
)

type planCase struct {
	name   string
	preset string
	sets   []string
	facts  redirect.Facts
}

func planCases() []planCase {
	return []planCase{
		{name: "default-ipv4", facts: v4Only},
		{name: "default-dual", facts: dualStack},
		{name: "preset-istio", preset: "istio", facts: dualStack},
		{name: "preset-kuma", preset: "kuma", facts: dualStack},
		{name: "families-ipv4-forced", sets: []string{"ipFamilies=ipv4"}, facts: dualStack},
		{name: "families-ipv6-only", sets: []string{"ipFamilies=ipv6"}, facts: dualStack},
		{name: "families-dual", sets: []string{"ipFamilies=dual"}, facts: dualStack},
		{name: "proxy-gid-and-ports", sets: []string{"proxy.gid=5679", "proxy.inboundPort=16006", "proxy.outboundPort=16001",
			"proxy.inboundPassthroughSource.ipv4=127.0.0.7", "proxy.inboundPassthroughSource.ipv6=::7"}, facts: dualStack},
		{name: "inbound-disabled", sets: []string{"inbound.enabled=false"}, facts: dualStack},
		{name: "outbound-disabled", sets: []string{"outbound.enabled=false"}, facts: dualStack},
		{name: "both-disabled", sets: []string{"inbound.enabled=false", "outbound.enabled=false"}, facts: dualStack},
		{name: "inbound-exclude-ports", sets: []string{"inbound.excludePorts=22,8000-8100"}, facts: dualStack},
		{name: "inbound-include-beats-exclude", sets: []string{"inbound.includePorts=80,443,9000-9100", "inbound.excludePorts=80"}, facts: dualStack},
		{name: "inbound-exclude-source-cidrs", sets: []string{"inbound.excludeSourceCIDRs=192.0.2.0/24,2001:db8:1::/48,198.51.100.7"}, facts: dualStack},
		{name: "outbound-exclude-ports", sets: []string{"outbound.excludePorts=25,6000-6100"}, facts: dualStack},
		{name: "outbound-include-beats-exclude-ports", sets: []string{"outbound.includePorts=80,443", "outbound.excludePorts=443,8080"}, facts: dualStack},
		{name: "outbound-exclude-cidrs", sets: []string{"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48"}, facts: dualStack},
		{name: "outbound-include-cidrs-ipv4-only", sets: []string{"outbound.includeCIDRs=198.51.100.0/24,203.0.113.0/24",
			"outbound.excludeCIDRs=198.51.100.128/25,2001:db8::/32"}, facts: dualStack},
		{name: "outbound-include-ports-and-cidrs", sets: []string{"outbound.includePorts=443", "outbound.includeCIDRs=198.51.100.0/24,2001:db8:3::/48"}, facts: dualStack},
		{name: "outbound-include-ports-exclude-cidrs", sets: []string{"outbound.includePorts=443", "outbound.excludeCIDRs=198.51.100.0/24,2001:db8:3::/48"}, facts: dualStack},
		{name: "outbound-exclude-ports-include-cidrs", sets: []string{"outbound.excludePorts=443", "outbound.includeCIDRs=198.51.100.0/24,2001:db8:3::/48"}, facts: dualStack},
		{name: "notes-no-op-exclusions", sets: []string{"outbound.includeCIDRs=198.51.100.0/24,2001:db8::/48", "outbound.excludeCIDRs=198.51.100.7,2001:db8::/32",
			"outbound.includePorts=80,443,8000-9000", "outbound.excludePorts=443,8080", "inbound.includePorts=9000-9100", "inbound.excludePorts=9050-9200"}, facts: dualStack},
		{name: "outbound-many-ports", sets: []string{"outbound.excludePorts=1,2,3,4,5,6,7,8,9,10,11,12,13,14,100-200,15,16,300-400,17"}, facts: dualStack},
		{name: "exclude-uids-gids", sets: []string{"outbound.excludeUIDs=0,106-108", "outbound.excludeGIDs=33"}, facts: dualStack},
		{name: "exclude-ports-for-uids", sets: []string{"outbound.excludePortsForUIDs=tcp:53,3000-5000:106-108,udp:53:107,udp:5353:109,tcp:22:0"}, facts: dualStack},
		{name: "dns-all", sets: []string{"dns.capture=all"}, facts: dualStack},
		{name: "dns-all-no-zone-split", sets: []string{"dns.capture=all", "dns.conntrackZoneSplit=false"}, facts: dualStack},
		{name: "dns-all-excluded-users", sets: []string{"dns.capture=all", "proxy.gid=5678", "outbound.excludeUIDs=106-108",
			"outbound.excludeGIDs=33", "outbound.excludePortsForUIDs=udp:53:107"}, facts: dualStack},
		{name: "dns-resolvconf", sets: []string{"dns.capture=resolvconf"}, facts: resolvers},
		{name: "dns-resolvconf-no-ipv6-nameserver", sets: []string{"dns.capture=resolvconf", "dns.port=5353"},
			facts: redirect.Facts{IPv6: true, Nameservers: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}},
		{name: "dns-resolvconf-no-nameserver", sets: []string{"dns.capture=resolvconf"}, facts: dualStack},
		{name: "log", sets: []string{"log.enabled=true", "dns.capture=all"}, facts: dualStack},
		{name: "log-prefix-quoted", sets: []string{"log.enabled=true", "log.prefix=detour: "}, facts: v4Only},
		{name: "log-no-prefix", sets: []string{"log.enabled=true", "log.prefix="}, facts: v4Only},
		{name: "drop-invalid", sets: []string{"dropInvalidPackets=true"}, facts: dualStack},
		{name: "tproxy", sets: []string{"mode=tproxy"}, facts: dualStack},
		{name: "tproxy-inbound-disabled", sets: []string{"mode=tproxy", "inbound.enabled=false"}, facts: dualStack},
		{name: "tproxy-everything", preset: "istio", sets: []string{"mode=tproxy", "proxy.gid=1337", "dropInvalidPackets=true",
			"log.enabled=true", "dns.capture=resolvconf", "inbound.includePorts=80,8080", "inbound.excludeSourceCIDRs=192.0.2.0/24",
			"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48", "outbound.excludePorts=25", "outbound.excludeUIDs=0",
			"outbound.excludePortsForUIDs=tcp:3306:106"}, facts: resolvers},
		{name: "redirect-everything", preset: "kuma", sets: []string{"proxy.gid=5678", "dropInvalidPackets=true",
			"log.enabled=true", "dns.capture=all", "inbound.excludePorts=22", "inbound.excludeSourceCIDRs=2001:db8:9::/48",
			"outbound.includeCIDRs=198.51.100.0/24,2001:db8::/32", "outbound.includePorts=80,443", "outbound.excludeGIDs=10-20"}, facts: dualStack},
	}
}
