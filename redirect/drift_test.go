package redirect

import (
	"fmt"
	"runtime"
	"slices"
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

// TestDriftLongLists: `detour check` of a namespace in sync with 20,000
// excluded CIDRs (an nftables element or an iptables rule each) took 16 s
// and 1.8 GB: the line diff built a full LCS table of every installed line
// against every planned one. Lists that long are diffed within a bounded
// table now, and still name exactly what differs.
func TestDriftLongLists(t *testing.T) {
	const n = 6000
	lines := make([]string, n)
	for i := range lines {
		lines[i] = fmt.Sprintf("add element inet detour out_exclude_cidrs4 { 198.%d.%d.0/24 }", i>>8, i&255)
	}
	with := func(changes map[int]string) []string {
		out := slices.Clone(lines)
		for i, l := range changes {
			out[i] = l
		}
		return out
	}
	swapped := slices.Clone(lines)
	swapped[0], swapped[n-1] = swapped[n-1], swapped[0]
	tests := []struct {
		name                string
		installed, planned  []string
		missing, unexpected []string
	}{
		{"in sync", lines, lines, nil, nil},
		{"one element differs", with(map[int]string{n / 2: "x"}), lines, []string{lines[n/2]}, []string{"x"}},
		{"first and last differ", with(map[int]string{0: "x", n - 1: "y"}), lines, []string{lines[0], lines[n-1]}, []string{"x", "y"}},
		{"first and last swapped", swapped, lines, []string{lines[0], lines[n-1]}, []string{lines[n-1], lines[0]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			d, differs := familyDrift(IPv4, tc.installed, tc.planned)
			runtime.ReadMemStats(&after)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("the diff of %d lines allocated %d MiB", n, alloc>>20)
			}
			if differs != (tc.missing != nil) {
				t.Fatalf("drift reported: %v, want %v", differs, tc.missing != nil)
			}
			if !differs {
				return
			}
			slices.Sort(d.Missing)
			slices.Sort(d.Unexpected)
			slices.Sort(tc.missing)
			slices.Sort(tc.unexpected)
			if diff := cmp.Diff(tc.missing, d.Missing); diff != "" {
				t.Errorf("missing (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.unexpected, d.Unexpected); diff != "" {
				t.Errorf("unexpected (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDriftHunks: the line numbers of a diff with several hunks.
func TestDriftHunks(t *testing.T) {
	t.Parallel()
	var planned []string
	for i := 1; i <= 20; i++ {
		planned = append(planned, fmt.Sprint(i))
	}
	installed := slices.Clone(planned)
	installed[1] = "two"
	installed = slices.Insert(installed, 17, "extra")
	d, _ := familyDrift(IPv4, installed, planned)
	want := `--- installed ipv4
+++ planned ipv4
@@ -1,5 +1,5 @@
 1
-two
+2
 3
 4
 5
@@ -15,7 +15,6 @@
 15
 16
 17
-extra
 18
 19
 20
`
	if got := (Drift{Families: []FamilyDrift{d}}).String(); got != want {
		t.Errorf("drift text:\n%s\nwant:\n%s", got, want)
	}
}
