//go:build linux

package tests

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestEBPFValidateFromOutsideTheCgroupRoot: the network-namespace scope's
// programs attach to DETOUR_EBPF_CGROUP_ROOT and see only sockets made below
// it. `detour validate` (and `explain --live`) run from a process outside it
// — an operator's shell on a node whose eBPF root is not the hierarchy's —
// reported "not redirected" (exit 5) while the pod's capture worked. They
// now join it first, as they join --cgroup's cgroup, and prove the capture.
func TestEBPFValidateFromOutsideTheCgroupRoot(t *testing.T) {
	privtest.Require(t, "ip", "setpriv")
	p := newPod(t, variant{family: lab.IPv4, backend: ebpfBackend, mode: "redirect"})
	if r := p.detourCmd(nil, p.withFlags("install", "--inbound=false")...); r.code != 0 {
		t.Fatalf("install:\n%s", r)
	}
	outside, err := os.Open(ebpfNode.origin)
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	run := func(args ...string) result {
		t.Helper()
		args = append([]string{args[0], "--netns", p.lab.Pod.Name}, args[1:]...)
		cmd := exec.CommandContext(p.ctx, detourBin, args...)
		cmd.Env = append(os.Environ(), p.env...)
		// Born outside the eBPF root (the test process is below it).
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(outside.Fd())}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Exited() {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run detour %s: %v", strings.Join(args, " "), err)
		}
		return r
	}
	r := run(p.withFlags("validate", "--inbound=false")...)
	if r.code != 0 || !strings.Contains(r.stdout, "probing from inside "+ebpfNode.cgroup) {
		t.Errorf("validate from outside the eBPF cgroup root: want exit 0, probing from inside %s:\n%s", ebpfNode.cgroup, r)
	}
	// Explain's live connection too (explain takes no --inbound flag).
	args := p.withFlags("explain", "--live", "--to", "192.0.2.10:80", "--uid", "1000")
	p.env = append(p.env, "DETOUR_INBOUND=false")
	r = run(args...)
	if r.code != 0 || !strings.Contains(r.stdout, "original destination 192.0.2.10:80") {
		t.Errorf("explain --live from outside the eBPF cgroup root: want the connection to arrive with its original destination:\n%s", r)
	}
	if r := p.detourCmd(nil, "uninstall"); r.code != 0 {
		t.Fatalf("uninstall:\n%s", r)
	}
}
