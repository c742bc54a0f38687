package privtest

import (
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFS mounts a bpffs of the test's own on a temporary directory, unmounted
// when the test ends, and returns its path: pins there are the test's alone.
func BPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount private bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}
