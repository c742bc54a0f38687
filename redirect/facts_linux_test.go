package redirect

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadNameserversOddFiles: `--dns-capture resolvconf --dns-resolv-conf`
// naming a FIFO hung the command (open waited for a writer, and SIGTERM did
// not end it), and /dev/zero ran it out of memory. Both are refused now,
// naming the field and the path (exit 2), as a missing file or a directory is.
func TestReadNameserversOddFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "resolv.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.conf")
	if err := os.WriteFile(big, []byte(strings.Repeat("# comment line\n", (1<<20)/15+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, reason string
	}{
		{"fifo", fifo, "is not a regular file"},
		{"endless device", "/dev/zero", "is not a regular file"},
		{"directory", dir, "is not a regular file"},
		{"missing", filepath.Join(dir, "missing"), "cannot be read"},
		{"larger than any resolv.conf", big, "is larger than 1 MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			done := make(chan error, 1)
			go func() {
				_, err := readNameservers(tc.path)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("readNameservers(%s) still runs after 5s", tc.path)
			}
			var fe *FieldError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "dns.resolvConf" || fe.Value != tc.path || !strings.Contains(fe.Reason, tc.reason) {
				t.Errorf("readNameservers(%s) = %v; want a dns.resolvConf error with the path saying %q", tc.path, err, tc.reason)
			}
		})
	}
	ok := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(ok, []byte("nameserver 192.0.2.53\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ns, err := readNameservers(ok); err != nil || len(ns) != 1 || ns[0].String() != "192.0.2.53" {
		t.Errorf("readNameservers of a resolv.conf = %v, %v", ns, err)
	}
}
