package controlplane

import (
	"testing"

	"github.com/detour-mesh/detour/internal/golden"
)

// checkGolden compares got with testdata/<test>/<name>.golden; UPDATE_GOLDEN=1
// rewrites the file instead.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden.Check(t, golden.Path(t, name), got)
}

func loadMesh(t testing.TB, path string) *Mesh {
	t.Helper()
	m, err := LoadMesh(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
