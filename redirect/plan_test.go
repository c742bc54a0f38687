package redirect

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cfgWith returns the default config (or a preset) with fields set from
// "path=value" strings, failing the test on a bad one.
func cfgWith(t testing.TB, preset string, sets ...string) Config {
	t.Helper()
	c := Default()
	if preset != "" {
		var err error
		if c, err = Preset(preset); err != nil {
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
	dualStack = Facts{IPv6: true}
	v4Only    = Facts{}
	resolvers = Facts{IPv6: true, Nameservers: []netip.Addr{
		netip.MustParseAddr("127.0.0.53"),
		netip.MustParseAddr("192.0.2.53"),
		netip.MustParseAddr("2001:db8::53"),
		netip.MustParseAddr("192.0.2.53"), // listed twice: one rule
	}}
)

// planCase is one configuration the golden plan tests and the privileged
// install tests share.
type planCase struct {
	name   string
	preset string
	sets   []string
	facts  Facts
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
			facts: Facts{IPv6: true, Nameservers: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}},
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

func TestPlanErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		sets    []string
		facts   Facts
		want    error
		message string
	}{
		{name: "dual without ipv6", sets: []string{"ipFamilies=dual"}, facts: v4Only, want: ErrIPv6Unavailable, message: "ipFamilies is dual"},
		{name: "ipv6 without ipv6", sets: []string{"ipFamilies=ipv6"}, facts: v4Only, want: ErrIPv6Unavailable, message: "ipFamilies is ipv6"},
		{name: "auto with ipv6 disabled on lo", facts: Facts{IPv6: true, LoIPv6Disabled: true}, want: ErrIPv6Unavailable, message: "IPv6 is disabled on lo"},
		{name: "dual with ipv6 disabled on lo", sets: []string{"ipFamilies=dual"}, facts: Facts{IPv6: true, LoIPv6Disabled: true}, want: ErrIPv6Unavailable, message: "--ip-families ipv4"},
		{name: "same ports", sets: []string{"proxy.outboundPort=15006"}, facts: dualStack, want: ErrInvalid, message: `proxy.outboundPort: "15006"`},
		{name: "ebpf without tproxy", sets: []string{"backend=ebpf", "mode=tproxy"}, facts: dualStack, want: ErrInvalid, message: `mode: "tproxy" is not available with backend ebpf`},
		{name: "log prefix newline", sets: []string{"log.enabled=true", "log.prefix=a\nb"}, facts: dualStack, want: ErrInvalid, message: "log.prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewPlan(cfgWith(t, "", tt.sets...), tt.facts)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewPlan error = %v, want one matching %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not say %q", err, tt.message)
			}
		})
	}
}

func TestExclusionNotes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		sets  []string
		facts Facts
		want  []string
	}{
		{name: "nothing to say", sets: []string{"outbound.excludeCIDRs=198.51.100.0/24", "outbound.excludePorts=25", "inbound.excludePorts=22"}, facts: dualStack},
		{name: "exclude CIDR inside include CIDR", sets: []string{"outbound.includeCIDRs=10.0.0.0/8", "outbound.excludeCIDRs=10.96.0.1/32"}, facts: dualStack,
			want: []string{"outbound.excludeCIDRs[0] 10.96.0.1/32 has no effect: outbound.includeCIDRs[0] 10.0.0.0/8 includes it, and include beats exclude"}},
		{name: "exclude CIDR around an include CIDR", sets: []string{"outbound.includeCIDRs=2001:db8::/64,198.51.100.0/24", "outbound.excludeCIDRs=2001:db8::/32"}, facts: dualStack,
			want: []string{"outbound.excludeCIDRs[0] 2001:db8::/32 does not exclude outbound.includeCIDRs[0] 2001:db8::/64 inside it: include beats exclude"}},
		{name: "disjoint CIDRs and other families say nothing", sets: []string{"outbound.includeCIDRs=198.51.100.0/24", "outbound.excludeCIDRs=203.0.113.0/24,2001:db8::/32"}, facts: dualStack},
		{name: "a family that is not planned says nothing", sets: []string{"ipFamilies=ipv4", "outbound.includeCIDRs=2001:db8::/32", "outbound.excludeCIDRs=2001:db8::1"}, facts: dualStack},
		{name: "exclude ports inside include ports", sets: []string{"outbound.includePorts=80,443,8000-9000", "outbound.excludePorts=443,8080-8081,25"}, facts: dualStack,
			want: []string{
				"outbound.excludePorts[0] 443 has no effect: outbound.includePorts[1] 443 includes it, and include beats exclude",
				"outbound.excludePorts[1] 8080-8081 has no effect: outbound.includePorts[2] 8000-9000 includes it, and include beats exclude",
			}},
		{name: "exclude ports partly included", sets: []string{"inbound.includePorts=9000-9100", "inbound.excludePorts=9050-9200"}, facts: dualStack,
			want: []string{"inbound.excludePorts[0] 9050-9200 does not exclude the ports it shares with inbound.includePorts[0] 9000-9100: include beats exclude"}},
		{name: "disabled directions say nothing", sets: []string{"inbound.enabled=false", "outbound.enabled=false", "inbound.includePorts=80", "inbound.excludePorts=80",
			"outbound.includePorts=80", "outbound.excludePorts=80"}, facts: dualStack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := NewPlan(cfgWith(t, "", tt.sets...), tt.facts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, p.Notes); diff != "" {
				t.Errorf("notes (-want +got):\n%s", diff)
			}
			text := p.Format(Rendering{})
			for _, n := range tt.want {
				if !strings.Contains(text, "# note: "+n+"\n") {
					t.Errorf("the plan text lacks the note %q:\n%s", n, text)
				}
			}
		})
	}
}
