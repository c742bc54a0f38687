package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestLeftoversOfALiveDemoStay: `make demo` first removes the namespaces an
// earlier run left behind — it removed every namespace starting with
// "dt-demo", so a second demo started on the same machine (two users, or a
// second terminal) deleted the lab of the one still running, whose connections
// then failed half way. Only the namespaces of a demo whose process is gone
// are leftovers.
func TestLeftoversOfALiveDemoStay(t *testing.T) {
	privtest.Require(t)
	ctx := context.Background()
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Process.Kill(); live.Wait() })
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	liveNS := fmt.Sprintf("%s-%d-0000test-app", prefix, live.Process.Pid)
	deadNS := fmt.Sprintf("%s-%d-0000test-app", prefix, dead.Process.Pid)
	for _, n := range []string{liveNS, deadNS} {
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
}
