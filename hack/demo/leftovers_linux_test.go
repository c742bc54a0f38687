package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestLeftoversOfALiveDemoStay: `make demo` first removes the namespaces an
// earlier run left behind — it removed every namespace starting with
// "dt-demo", so a second demo started on the same machine (two users, or a
// second terminal) deleted the lab of the one still running, whose connections
// then failed half way. Only the namespaces of a demo whose process is gone
// are leftovers, and those named before the pid was in the name
// ("dt-demo-<hex>-app": no demo of this version runs them).
func TestLeftoversOfALiveDemoStay(t *testing.T) {
	privtest.Require(t)
	ctx := context.Background()
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })
	// A pid above pid_max: no process has it (the pid of a process that
	// exited may be given to another one before the check).
	pidMax, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	deadPid, err := strconv.Atoi(strings.TrimSpace(string(pidMax)))
	if err != nil {
		t.Fatal(err)
	}
	deadPid++
	liveNS := fmt.Sprintf("%s-%d-0000test-app", prefix, live.Process.Pid)
	deadNS := fmt.Sprintf("%s-%d-0000test-app", prefix, deadPid)
	oldNS := fmt.Sprintf("%s-0a0b0c0d-app", prefix) // the format before the pid
	for _, n := range []string{liveNS, deadNS, oldNS} {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", n, err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "delete", n).Run() })
	}
	gone, err := removeLeftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + liveNS); err != nil {
		t.Errorf("the namespace %s of a running demo (pid %d) was removed as a leftover (removed: %v)", liveNS, live.Process.Pid, gone)
	}
	if _, err := os.Stat("/run/netns/" + deadNS); err == nil {
		t.Errorf("the namespace %s of a demo that is gone was not removed (removed: %v)", deadNS, gone)
	}
	if _, err := os.Stat("/run/netns/" + oldNS); err == nil {
		t.Errorf("the namespace %s of a demo run before the pid was in the name was not removed (removed: %v)", oldNS, gone)
	}
}
