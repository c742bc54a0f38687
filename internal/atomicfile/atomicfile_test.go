package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: both writers replace the file with the new content and mode,
// and leave no temporary file behind.
func TestWrite(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		write func(path string, data []byte, mode os.FileMode) error
	}{
		{"Write", Write},
		{"WriteVolatile", WriteVolatile},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if err := os.WriteFile(path, []byte("old content, longer than the new"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := tt.write(path, []byte("new\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) != "new\n" {
				t.Errorf("content = %q, %v; want %q", b, err, "new\n")
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("mode = %v, %v; want 0600", fi.Mode().Perm(), err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("directory holds %d entries, want only the file", len(entries))
			}
			if err := tt.write(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
				t.Error("writing into a missing directory succeeded")
			}
		})
	}
}
