package redirect

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
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

// TestFamilyDriftOfLongLists: a configuration with thousands of CIDRs, ports
// or ids renders thousands of lines per family (one per eBPF map entry), and
// check compares them in memory about their size. Before, the diff built an
// n×m table: 5,000 lines a family took 200 MB and seconds, in sync or not.
// Not parallel: it reads the process's allocations.
func TestFamilyDriftOfLongLists(t *testing.T) {
	const n = 5000
	planned := make([]string, n)
	for i := range planned {
		planned[i] = fmt.Sprintf("cidrs4 exclude 198.18.%d.%d/32", i/256, i%256)
	}
	installed := slices.Clone(planned)
	installed[2] = "cidrs4 exclude 203.0.113.0/24"          // changed near the start
	installed = slices.Delete(installed, 2500, 2501)        // one gone from the middle
	installed = append(installed[:n-3], installed[n-2:]...) // and one near the end
	installed = append(installed, "ports outbound 9999")    // one added at the end

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, inSync := familyDrift(IPv4, planned, planned)
	d, differs := familyDrift(IPv4, installed, planned)
	runtime.ReadMemStats(&after)
	if inSync {
		t.Error("equal lines reported as drift")
	}
	if !differs {
		t.Fatal("drift not reported")
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 32<<20 {
		t.Errorf("two diffs of %d lines allocated %d MB, want at most 32 MB", n, got>>20)
	}
	if diff := cmp.Diff([]string{planned[2], planned[2500], planned[n-2]}, d.Missing); diff != "" {
		t.Errorf("missing (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cidrs4 exclude 203.0.113.0/24", "ports outbound 9999"}, d.Unexpected); diff != "" {
		t.Errorf("unexpected (-want +got):\n%s", diff)
	}
}

// TestDiffLinesIsAnEditScript: whichever way it is made (a table, or one
// pass for long lists), the diff's kept and removed lines are the installed
// lines in order and its kept and added lines the planned ones, so the text
// check prints is a true patch; moved lines are drift.
func TestDiffLinesIsAnEditScript(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 5, 40, 3000} {
		for range 5 {
			a := make([]string, size)
			for i := range a {
				a[i] = strconv.Itoa(rng.IntN(size + 1)) // duplicates too
			}
			b := slices.Clone(a)
			for range 1 + size/10 {
				if len(b) == 0 {
					break
				}
				i, j := rng.IntN(len(b)), rng.IntN(len(b))
				switch rng.IntN(3) {
				case 0:
					b[i], b[j] = b[j], b[i] // a move
				case 1:
					b = slices.Delete(b, i, i+1)
				default:
					b = slices.Insert(b, i, "new"+strconv.Itoa(j))
				}
			}
			var gotA, gotB []string
			for _, op := range diffLines(a, b) {
				if op.kind != '+' {
					gotA = append(gotA, op.line)
				}
				if op.kind != '-' {
					gotB = append(gotB, op.line)
				}
			}
			if !slices.Equal(gotA, a) || !slices.Equal(gotB, b) {
				t.Fatalf("size %d: the diff does not turn the installed lines into the planned ones", size)
			}
			if _, differs := familyDrift(IPv4, a, b); differs == slices.Equal(a, b) {
				t.Fatalf("size %d: drift %v for lines that are equal: %v", size, differs, slices.Equal(a, b))
			}
		}
	}
}
