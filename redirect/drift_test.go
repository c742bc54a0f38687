package redirect

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFamilyDrift(t *testing.T) {
	t.Parallel()
	planned := []string{"-t nat -N DETOUR_OUTPUT", "-t nat -A DETOUR_OUTPUT -o lo -j RETURN", "-t nat -A DETOUR_OUTPUT -p tcp -j DETOUR_OUT_REDIRECT"}
	installed := []string{"-t nat -N DETOUR_OUTPUT", "-t nat -A DETOUR_OUTPUT -d 192.0.2.9/32 -j RETURN", "-t nat -A DETOUR_OUTPUT -p tcp -j DETOUR_OUT_REDIRECT"}
	if _, differs := familyDrift(IPv4, planned, planned); differs {
		t.Error("equal lines reported as drift")
	}
	d, differs := familyDrift(IPv4, installed, planned)
	if !differs {
		t.Fatal("drift not reported")
	}
	if diff := cmp.Diff([]string{"-t nat -A DETOUR_OUTPUT -o lo -j RETURN"}, d.Missing); diff != "" {
		t.Errorf("missing (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"-t nat -A DETOUR_OUTPUT -d 192.0.2.9/32 -j RETURN"}, d.Unexpected); diff != "" {
		t.Errorf("unexpected (-want +got):\n%s", diff)
	}
	want := `--- installed ipv4
+++ planned ipv4
@@ -1,3 +1,3 @@
 -t nat -N DETOUR_OUTPUT
--t nat -A DETOUR_OUTPUT -d 192.0.2.9/32 -j RETURN
+-t nat -A DETOUR_OUTPUT -o lo -j RETURN
 -t nat -A DETOUR_OUTPUT -p tcp -j DETOUR_OUT_REDIRECT
`
	if got := (Drift{Families: []FamilyDrift{d}}).String(); got != want {
		t.Errorf("drift text:\n%s\nwant:\n%s", got, want)
	}
	// Reordering our rules is drift too.
	if _, differs := familyDrift(IPv4, []string{"a", "b"}, []string{"b", "a"}); !differs {
		t.Error("reordered rules not reported as drift")
	}
}
