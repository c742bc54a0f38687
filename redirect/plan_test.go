package redirect

import (
	"errors"
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
)

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
