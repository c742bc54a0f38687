package redirect

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestFormatAroundRendering: Plan.Format around the iptables text of each
// family prints exactly what Plan.String prints, so a backend's rendering plus
// the backend-neutral routing and addresses is the whole plan.
func TestFormatAroundRendering(t *testing.T) {
	for _, tc := range planCases() {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPlan(cfgWith(t, tc.preset, tc.sets...), tc.facts)
			if err != nil {
				t.Fatal(err)
			}
			r := Rendering{Backend: BackendIPTablesLegacy}
			for _, fp := range p.Families {
				r.Families = append(r.Families, FamilyRendering{Family: fp.Family, Text: fp.Restore()})
			}
			if diff := cmp.Diff(p.String(), p.Format(r)); diff != "" {
				t.Errorf("Format differs from String (-String +Format):\n%s", diff)
			}
		})
	}
}
