package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/privtest"
)

// inode returns the network namespace identity of a path, as readlink shows it.
func inode(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

func TestDoEntersAndLeaves(t *testing.T) {
	ns := privtest.NetNS(t)
	want := inode(t, ns.Path)
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if before == want {
		t.Fatal("the test already runs in the new namespace")
	}
	var inside, child string
	err = Do(ns.Path, func() error {
		var err error
		if inside, err = os.Readlink("/proc/thread-self/ns/net"); err != nil {
			return err
		}
		out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
		child = strings.TrimSpace(string(out))
		return err
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if inside != want {
		t.Errorf("fn ran in %s, want %s", inside, want)
	}
	if child != want {
		t.Errorf("a child process ran in %s, want %s", child, want)
	}
	// Do ran fn on its own goroutine: this one never moved.
	if after, _ := os.Readlink("/proc/thread-self/ns/net"); after != before {
		t.Errorf("the caller's thread is in %s after Do, want %s", after, before)
	}
}

func TestDoConcurrentNamespaces(t *testing.T) {
	privtest.Require(t)
	const n = 8
	paths := make([]string, n)
	for i := range paths {
		paths[i] = privtest.NetNS(t).Path
	}
	var wg sync.WaitGroup
	errs := make(chan error, n*20)
	for i := range n {
		wg.Go(func() {
			want := inode(t, paths[i])
			for range 20 {
				err := Do(paths[i], func() error {
					got, err := os.Readlink("/proc/thread-self/ns/net")
					if err == nil && got != want {
						err = fmt.Errorf("in %s, want %s", got, want)
					}
					return err
				})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDoErrors(t *testing.T) {
	privtest.Require(t)
	if err := Do("/nonexistent/netns", func() error { return nil }); err == nil || !strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Errorf("Do on a missing path = %v, want an error naming it", err)
	}
	// A file that is not a network namespace.
	if err := Do("/proc/self/ns/uts", func() error { t.Error("fn ran"); return nil }); err == nil {
		t.Error("Do on a UTS namespace succeeded")
	}
	ns := privtest.NetNS(t)
	want := fmt.Errorf("boom")
	if err := Do(ns.Path, func() error { return want }); err != want {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	defer func() {
		if p := recover(); p != "fn panicked" {
			t.Errorf("recovered %v, want fn's panic", p)
		}
	}()
	_ = Do(ns.Path, func() error { panic("fn panicked") })
}

func TestDoEmptyPathRunsHere(t *testing.T) {
	t.Parallel()
	ran := false
	if err := Do("", func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("Do(\"\") = %v, ran %v", err, ran)
	}
}

func TestCheck(t *testing.T) {
	ns := privtest.NetNS(t)
	if err := Check(ns.Path); err != nil {
		t.Errorf("Check(%s) = %v, want nil", ns.Path, err)
	}
	if err := Check("/proc/self/ns/net"); err != nil {
		t.Errorf("Check(/proc/self/ns/net) = %v, want nil", err)
	}
	if err := Check("/proc/self/ns/mnt"); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("Check(a mount namespace) = %v, want ErrNotNetNS", err)
	}
	file := filepath.Join(t.TempDir(), "regular")
	os.WriteFile(file, nil, 0o644)
	if err := Check(file); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("Check(a regular file) = %v, want ErrNotNetNS", err)
	}
	if err := Check(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check(a missing path) = %v, want fs.ErrNotExist", err)
	}
}

// TestFIFO: `detour status --netns /path/to/a/fifo` hung in open(2), waiting
// for a writer, and SIGTERM did not end it; so did detour-cni's ADD and DEL
// with CNI_NETNS naming a FIFO. A FIFO is not a network namespace: Check says
// so (exit 2) and Do fails.
func TestFIFO(t *testing.T) {
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"Check", func() error { return Check(fifo) }, ErrNotNetNS},
		{"Do", func() error { return Do(fifo, func() error { return errors.New("fn ran") }) }, unix.EINVAL},
	} {
		done := make(chan error, 1)
		go func() { done <- tc.call() }()
		select {
		case err := <-done:
			if !errors.Is(err, tc.want) {
				t.Errorf("%s(a FIFO) = %v, want %v", tc.name, err, tc.want)
			}
		case <-time.After(5 * time.Second):
			// Unblock the open so the test binary can exit.
			if f, err := os.OpenFile(fifo, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
			t.Fatalf("%s(a FIFO) still waits after 5s", tc.name)
		}
	}
}
