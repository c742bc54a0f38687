package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// TestLockWaitZeroDoesNotWait: `--lock-wait 0` fails at once, with nothing
// applied, while another detour run holds the namespace's lock. It waited
// the default 10s instead (the engine's zero value), so here it installed
// once the holder let go two seconds later.
func TestLockWaitZeroDoesNotWait(t *testing.T) {
	privtest.Require(t, "nft")
	ns := privtest.NetNS(t)
	// The lock of that namespace, as another detour run holds it.
	path, err := redirect.NetNSLockFile(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	release := time.AfterFunc(2*time.Second, func() { os.Remove(path); f.Close() })
	t.Cleanup(func() {
		if release.Stop() {
			os.Remove(path)
			f.Close()
		}
		runCLI(t, "uninstall", "--netns", ns.Path)
	})
	code, _, stderr := runCLI(t, "install", "--netns", ns.Path, "--backend", "nftables", "--ip-families", "ipv4", "--lock-wait", "0")
	if code != exitFailure || !strings.Contains(stderr, "holds the lock") {
		t.Errorf("install --lock-wait 0 with the lock held: exit %d, stderr %q; want %d and the lock named", code, stderr, exitFailure)
	}
	if out := ns.Run(t, "nft", "list", "tables"); strings.Contains(out, "detour") {
		t.Errorf("install --lock-wait 0 with the lock held applied rules: %s", out)
	}
}
