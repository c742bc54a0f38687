package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/privtest"
)

// status runs bin with CNI_COMMAND=STATUS and conf on stdin, and returns
// the CNI error it printed (code 0 when none).
func status(t *testing.T, bin string, conf []byte, cniPath string) (code uint, msg string) {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + cniPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = bytes.NewReader(conf)
	var out bytes.Buffer
	cmd.Stdout = &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("%s did not finish within a minute (a hand-over loop?)", bin)
	}
	if out.Len() == 0 {
		return 0, ""
	}
	var e struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal(out.Bytes(), &e); err != nil {
		t.Fatalf("%s printed %q: %v", bin, out.String(), err)
	}
	return e.Code, e.Msg
}

// TestHandOverLayout builds the plugin as make build does and runs STATUS
// of a network whose config says backend ebpf: the lean detour-cni hands it
// to detour-cni-ebpf next to it (which answers for the kubeconfig, not for
// a missing backend); without detour-cni-ebpf, or with a lean build
// installed under that name, the call fails with code 50 saying so, and
// never loops.
func TestHandOverLayout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin twice")
	}
	t.Parallel()
	dir := t.TempDir()
	const pkg = "github.com/detour-mesh/detour/cmd/detour-cni"
	lean, err := privtest.BuildAs(dir, pkg, "detour-cni", "detour_lean")
	if err != nil {
		t.Fatal(err)
	}
	conf := []byte(`{"cniVersion":"1.1.0","name":"n","type":"detour-cni","kubeconfig":"/nonexistent/kubeconfig","stateDir":"` + filepath.Join(dir, "state") + `","config":{"backend":"ebpf"}}`)

	// Alone: code 50 naming the missing binary.
	code, msg := status(t, lean, conf, filepath.Join(dir, "none"))
	if code != 50 || !strings.Contains(msg, "detour-cni-ebpf is neither next to detour-cni nor in CNI_PATH") {
		t.Errorf("STATUS without detour-cni-ebpf: code %d %q, want 50 naming detour-cni-ebpf", code, msg)
	}

	// A lean build installed as detour-cni-ebpf: no loop, code 50.
	data, err := os.ReadFile(lean)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "detour-cni-ebpf"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	code, msg = status(t, lean, conf, filepath.Join(dir, "none"))
	if code != 50 || !strings.Contains(msg, "built without the eBPF backend too") {
		t.Errorf("STATUS with a lean detour-cni-ebpf: code %d %q, want 50 saying it is lean too", code, msg)
	}

	// The whole plugin next to it: the call is served there (STATUS of the
	// eBPF backend; the missing kubeconfig is what it reports).
	if _, err := privtest.BuildAs(dir, pkg, "detour-cni-ebpf", ""); err != nil {
		t.Fatal(err)
	}
	code, msg = status(t, lean, conf, filepath.Join(dir, "none"))
	if code != 50 || !strings.Contains(msg, "kubeconfig /nonexistent/kubeconfig") || strings.Contains(msg, "needs the eBPF backend") {
		t.Errorf("STATUS through detour-cni-ebpf: code %d %q, want detour-cni-ebpf's readiness report (the kubeconfig)", code, msg)
	}
}
