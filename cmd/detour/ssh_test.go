package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeProc builds a /proc with an sshd listening on 22 (IPv4) and 2222 (IPv6),
// holding an accepted connection on 22, and another process listening on 80.
func fakeProc(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	proc := func(pid, comm string, sockets ...string) {
		fd := filepath.Join(root, pid, "fd")
		if err := os.MkdirAll(fd, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(root, pid, "comm"), []byte(comm+"\n"), 0o644)
		for i, inode := range sockets {
			if err := os.Symlink("socket:["+inode+"]", filepath.Join(fd, string(rune('3'+i)))); err != nil {
				t.Fatal(err)
			}
		}
		os.Symlink("/dev/null", filepath.Join(fd, "0"))
	}
	proc("712", "sshd", "1001", "1002", "1003")
	proc("900", "nginx", "2001")
	os.MkdirAll(filepath.Join(root, "net"), 0o755)
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 020071CB:0016 090064C6:C350 01 00000000:00000000 02:000A7C4A 00000000     0        0 1003 2 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
`
	tcp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:08AE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
`
	os.WriteFile(filepath.Join(root, "net", "tcp"), []byte(tcp), 0o644)
	os.WriteFile(filepath.Join(root, "net", "tcp6"), []byte(tcp6), 0o644)
	return root
}

func TestSSHPorts(t *testing.T) {
	t.Parallel()
	proc := fakeProc(t)
	tests := []struct {
		name string
		o    sshOptions
		want []uint16
	}{
		{"sshd listening ports, no session (sudo drops SSH_CONNECTION)", sshOptions{procRoot: proc}, []uint16{22, 2222}},
		{"session on another port too", sshOptions{procRoot: proc, sshConnection: "198.51.100.9 50000 203.0.113.2 8022"}, []uint16{22, 2222, 8022}},
		{"session port already known", sshOptions{procRoot: proc, sshConnection: "198.51.100.9 50000 203.0.113.2 22"}, []uint16{22, 2222}},
		{"no sshd", sshOptions{procRoot: t.TempDir(), sshConnection: "198.51.100.9 50000 203.0.113.2 22"}, []uint16{22}},
		{"capture-ssh", sshOptions{procRoot: proc, sshConnection: "198.51.100.9 50000 203.0.113.2 22", captureSSH: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.o.sshPorts(); !slices.Equal(got, tt.want) {
				t.Errorf("sshPorts() = %v, want %v", got, tt.want)
			}
		})
	}
}
