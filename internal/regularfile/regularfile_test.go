package regularfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/detour-mesh/detour/internal/regularfile"
)

// TestOpen: a regular file opens; a directory and a FIFO without a writer are
// refused at once (the FIFO's open does not wait), naming what they are.
func TestOpen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := regularfile.Open(file)
	if err != nil {
		t.Fatalf("regular file: %v", err)
	}
	f.Close()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, kind := range map[string]string{dir: "a directory", fifo: "a named pipe"} {
		_, err := regularfile.Open(path)
		if !errors.Is(err, regularfile.ErrNotRegular) || regularfile.Kind(err) != kind {
			t.Errorf("Open(%s) = %v (kind %q), want ErrNotRegular, %s", path, err, regularfile.Kind(err), kind)
		}
	}
	if _, err := regularfile.Open(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) || regularfile.Kind(err) != "" {
		t.Errorf("missing file: %v, want ErrNotExist and no kind", err)
	}
}
