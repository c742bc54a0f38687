//go:build linux

package nftables

import (
	"bytes"
	"slices"
	"testing"

	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/redirect"
)

func mustCapture(t testing.TB, tc plancases.Case) redirect.Capture {
	t.Helper()
	c, err := redirect.NewCapture(cfgWith(t, tc.Preset, tc.Sets...), tc.Facts)
	if err != nil {
		t.Fatalf("NewCapture: %v", err)
	}
	return c
}

func TestRender(t *testing.T) {
	t.Parallel()
	for _, tc := range planCases() {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			rs, err := Render(mustCapture(t, tc))
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			// The golden file is what `detour plan --backend nftables` prints.
			p, err := redirect.NewPlan(cfgWith(t, tc.Preset, tc.Sets...), tc.Facts)
			if err != nil {
				t.Fatal(err)
			}
			r, err := New(Options{}).Render(p)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, golden.Path(t, tc.Name), []byte(p.Format(r)))
			for _, fr := range r.Families {
				if !slices.Equal(fr.Lines, rs.Lines(fr.Family)) {
					t.Errorf("%s: Rendering lines differ from the ruleset's", fr.Family)
				}
			}
			again, err := Render(mustCapture(t, tc))
			if err != nil || again.Text() != rs.Text() {
				t.Errorf("Render is not deterministic (err %v)", err)
			}
			// Every rule must marshal: nothing is queued that could fail half-way.
			if _, err := rs.ruleMessages(); err != nil {
				t.Errorf("marshal: %v", err)
			}
			// What observation reads back (a rule's text) parses to the same
			// statements, the same expressions.
			for _, ch := range rs.Chains {
				for _, r := range ch.Rules {
					back, err := parseRule(r.Text(), r.Family)
					if err != nil {
						t.Fatalf("parse: %v", err)
					}
					want, _ := r.ruleExprs()
					got, err := back.ruleExprs()
					if err != nil || back.Text() != r.Text() || !slices.EqualFunc(want, got, bytes.Equal) {
						t.Errorf("rule %q parses back as %q (err %v)", r.Text(), back.Text(), err)
					}
				}
			}
		})
	}
}
