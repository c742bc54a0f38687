package nftables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/redirect"
)

// TestLargeLists installs 10,000 excluded CIDRs, 1,000 excluded ports and
// 1,000 excluded uids (L13): one set each, the same number of rules as with
// one entry, read back equal. The time is logged, not asserted.
func TestLargeLists(t *testing.T) {
	ctx := context.Background()
	d, _ := driverIn(t)
	var cidrs, ports, uids []string
	for i := range 10000 {
		// 198.18.0.0/15 is benchmarking space, never routed here; every
		// other /32 so no two merge.
		cidrs = append(cidrs, fmt.Sprintf("198.18.%d.%d/32", i/128, (i%128)*2))
	}
	for i := range 1000 {
		ports = append(ports, fmt.Sprint(20000+2*i))
		uids = append(uids, fmt.Sprint(100000+2*i))
	}
	small, err := Render(mustCapture(t, plancases.Case{Sets: []string{"outbound.excludeCIDRs=198.18.0.0/32", "outbound.excludePorts=20000", "outbound.excludeUIDs=100000"}, Facts: v4Only}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := redirect.NewCapture(cfgWith(t, "", "outbound.excludeCIDRs="+strings.Join(cidrs, ","),
		"outbound.excludePorts="+strings.Join(ports, ","), "outbound.excludeUIDs="+strings.Join(uids, ",")), v4Only)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ruleCount(rs), ruleCount(small); got != want {
		t.Errorf("%d rules for the long lists, %d for one entry each: the rule count grows with the lists", got, want)
	}
	start := time.Now()
	changed, err := d.ApplyRuleset(ctx, rs, observe(t, d))
	took := time.Since(start)
	if err != nil || !changed {
		t.Fatalf("Apply: changed %v, err %v", changed, err)
	}
	t.Logf("installed 10,000 CIDRs, 1,000 ports, 1,000 uids in %v", took)
	start = time.Now()
	have := observe(t, d)
	t.Logf("observed in %v", time.Since(start))
	if !slices.Equal(have.Lines(""), rs.Lines("")) {
		t.Fatalf("installed differs from the plan (%d lines installed, %d planned)", len(have.Lines("")), len(rs.Lines("")))
	}
}

func ruleCount(rs *Ruleset) int {
	n := 0
	for _, ch := range rs.Chains {
		n += len(ch.Rules)
	}
	return n
}
