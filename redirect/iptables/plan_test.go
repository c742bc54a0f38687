package iptables

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/redirect"
)

// The shared configurations (internal/plancases) under this package's names.
var (
	dualStack = plancases.DualStack
	v4Only    = plancases.V4Only
	resolvers = plancases.Resolvers
)

func cfgWith(t testing.TB, preset string, sets ...string) redirect.Config {
	t.Helper()
	return plancases.Config(t, preset, sets...)
}

// planCases are the shared configurations (internal/plancases).
func planCases() []plancases.Case { return plancases.All() }

func TestPlan(t *testing.T) {
	t.Parallel()
	tests := planCases()
	for _, tt := range tests {
		t.Run(tt.Name, func(t *testing.T) {
			t.Parallel()
			p, err := redirect.NewPlan(cfgWith(t, tt.Preset, tt.Sets...), tt.Facts)
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
