package iptables

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/redirect"
)

// cfgWith returns the default config (or a preset) with fields set from
// "path=value" strings, failing the test on a bad one.
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

// planCase is one configuration the golden plan tests and the privileged
// install tests share.
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

func TestPlan(t *testing.T) {
	t.Parallel()
	tests := planCases()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := redirect.NewPlan(cfgWith(t, tt.preset, tt.sets...), tt.facts)
			if err != nil {
				t.Fatalf("NewPlan: %v", err)
			}
			golden.Check(t, filepath.Join("testdata", filepath.FromSlash(t.Name())+".golden"), []byte(planText(t, p)))
			for _, f := range Rules(p.Capture) {
				checkOwnership(t, f)
			}
		})
	}
}

// checkOwnership asserts the ownership contract on a family plan: every chain
// is a DETOUR_ chain detour knows as its own, every hook carries the comment and
// sits in a built-in chain, every jump goes to a chain of the same table.
func checkOwnership(t *testing.T, f FamilyRules) {
	t.Helper()
	for _, tb := range f.Tables {
		declared := map[string]bool{}
		for _, c := range tb.Chains {
			if !ownsChain(tb.Name, c.Name) {
				t.Errorf("%s %s: chain %s is not in ownedChains", f.Family, tb.Name, c.Name)
			}
			if len(c.Rules) == 0 {
				t.Errorf("%s %s: chain %s is empty", f.Family, tb.Name, c.Name)
			}
			declared[c.Name] = true
		}
		check := func(r Rule) {
			if _, target, ok := strings.Cut(r.Spec, "-j "+chainPrefix); ok {
				name := chainPrefix + strings.Fields(target)[0]
				if !declared[name] {
					t.Errorf("%s %s: rule %q jumps to undeclared chain %s", f.Family, tb.Name, r.Spec, name)
				}
			}
		}
		for _, h := range tb.Hooks {
			if !isBuiltin(h.Chain) {
				t.Errorf("%s %s: hook in %s, not a built-in chain", f.Family, tb.Name, h.Chain)
			}
			if !hasOwnerComment(h.Spec) {
				t.Errorf("%s %s: hook %q lacks the ownership comment", f.Family, tb.Name, h.Spec)
			}
			check(h)
		}
		for _, c := range tb.Chains {
			for _, r := range c.Rules {
				check(r)
			}
		}
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	t.Parallel()
	cfg := cfgWith(t, "istio", "mode=tproxy", "dns.capture=resolvconf", "log.enabled=true", "dropInvalidPackets=true",
		"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48", "outbound.excludePortsForUIDs=tcp:53:106,udp:53:107")
	first, err := redirect.NewPlan(cfg, resolvers)
	if err != nil {
		t.Fatal(err)
	}
	firstJSON, err := json.Marshal(renderOf(t, first))
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		p, err := redirect.NewPlan(cfg, resolvers)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := planText(t, first), planText(t, p); a != b {
			t.Fatalf("the plan rendered differently on a later run:\n%s", cmp.Diff(a, b))
		}
		js, _ := json.Marshal(renderOf(t, p))
		if string(js) != string(firstJSON) {
			t.Fatal("the rendering marshalled differently on a later run")
		}
	}
	// The plan owns its config: changing the caller's copy changes nothing.
	cfg.Outbound.ExcludeCIDRs[0] = netip.MustParsePrefix("192.0.2.0/24")
	if first.Config.Outbound.ExcludeCIDRs[0].String() != "203.0.113.0/24" {
		t.Error("the plan shares its config's slices with the caller")
	}
}

func TestPlanJSONKeys(t *testing.T) {
	t.Parallel()
	p, err := redirect.NewPlan(cfgWith(t, "", "mode=tproxy"), dualStack)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(renderOf(t, p))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"backend":"iptables-legacy"`, `"families":`, `"family":"ipv4"`, `"text":"# mode tproxy`, `"lines":["-t mangle -N DETOUR_DIVERT"`} {
		if !strings.Contains(string(js), key) {
			t.Errorf("rendering JSON lacks %s:\n%s", key, js)
		}
	}
}

func TestMultiport(t *testing.T) {
	t.Parallel()
	r := func(a, b uint16) redirect.PortRange { return redirect.PortRange{First: a, Last: b} }
	tests := []struct {
		name string
		in   []redirect.PortRange
		want []string
	}{
		{name: "one", in: []redirect.PortRange{r(80, 80)}, want: []string{"80"}},
		{name: "range", in: []redirect.PortRange{r(80, 80), r(3000, 5000)}, want: []string{"80,3000:5000"}},
		{name: "fifteen singles", in: []redirect.PortRange{r(1, 1), r(2, 2), r(3, 3), r(4, 4), r(5, 5), r(6, 6), r(7, 7), r(8, 8), r(9, 9), r(10, 10), r(11, 11), r(12, 12), r(13, 13), r(14, 14), r(15, 15)},
			want: []string{"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"}},
		{name: "range does not fit", in: []redirect.PortRange{r(1, 1), r(2, 2), r(3, 3), r(4, 4), r(5, 5), r(6, 6), r(7, 7), r(8, 8), r(9, 9), r(10, 10), r(11, 11), r(12, 12), r(13, 13), r(14, 14), r(20, 30)},
			want: []string{"1,2,3,4,5,6,7,8,9,10,11,12,13,14", "20:30"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, multiport(tt.in)); diff != "" {
				t.Errorf("multiport (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSaveString(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"detour":      "detour",
		"detour-in_1": "detour-in_1",
		"detour: ":    `"detour: "`,
		`a"b\c'd`:     `"a\"b\\c\'d"`,
	} {
		if got := saveString(in); got != want {
			t.Errorf("saveString(%q) = %s, want %s", in, got, want)
		}
	}
}

func BenchmarkPlan(b *testing.B) {
	cfg := cfgWith(b, "istio", "dns.capture=resolvconf", "log.enabled=true", "dropInvalidPackets=true",
		"outbound.excludeCIDRs=203.0.113.0/24,2001:db8:2::/48", "outbound.excludePortsForUIDs=tcp:53:106,udp:53:107")
	b.ReportAllocs()
	for b.Loop() {
		p, err := redirect.NewPlan(cfg, resolvers)
		if err != nil {
			b.Fatal(err)
		}
		_ = planText(b, p)
	}
}

var legacy = &Driver{Backend: redirect.BackendIPTablesLegacy}

func renderOf(t testing.TB, p redirect.Plan) redirect.Rendering {
	t.Helper()
	r, err := legacy.Render(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// planText is what `detour plan` prints for p with an iptables backend.
func planText(t testing.TB, p redirect.Plan) string { return p.Format(renderOf(t, p)) }
