package privtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Required reports whether privileged tests must run instead of skipping.
func Required() bool { return os.Getenv("DETOUR_REQUIRE_PRIVILEGED") == "1" }

// Require skips t unless the test runs as root with the given commands on PATH;
// under DETOUR_REQUIRE_PRIVILEGED=1 it fails instead of skipping.
func Require(t testing.TB, commands ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			Skip(t, "needs "+c+" on PATH (make deps installs it)")
		}
	}
}

// Skip skips t with the reason, or fails it when privileged tests are required.
// Use it for a missing kernel feature or tool.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("privileged test cannot run: %s (DETOUR_REQUIRE_PRIVILEGED=1 forbids skipping)", reason)
	}
	t.Skip(reason)
}

// NS is a named network namespace made for one test.
type NS struct {
	Name string // for `ip netns exec NAME`
	Path string // /run/netns/NAME, for setns
}

// NetNS creates a network namespace with loopback up and deletes it when t ends.
// It calls Require first.
func NetNS(t testing.TB) NS {
	t.Helper()
	Require(t, "ip")
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	ns := NS{Name: "dt-" + hex.EncodeToString(b)}
	ns.Path = "/run/netns/" + ns.Name
	Run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns.Name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and returns its combined output,
// failing t when it fails.
func (ns NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, append([]string{"ip", "netns", "exec", ns.Name}, args...)...)
}

// Run runs a command and returns its combined output, failing t when it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
