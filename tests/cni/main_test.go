package cni_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// hostNSEnv names the network namespace the test binary was re-executed in.
const hostNSEnv = "DETOUR_CNI_E2E_HOSTNS"

// TestMain runs the whole test binary inside a network namespace it creates
// (the "host" of the test cluster): the bridge plugin makes its bridge and veths
// there, the API server listens on its loopback, and the root namespace is
// never changed. Without root it runs the tests as they are, and each one skips
// (or fails under DETOUR_REQUIRE_PRIVILEGED=1) through privtest.
func TestMain(m *testing.M) {
	if os.Getenv(hostNSEnv) != "" {
		code := m.Run()
		suite.stop()
		os.Exit(code)
	}
	if _, err := exec.LookPath("ip"); os.Geteuid() != 0 || err != nil {
		os.Exit(m.Run())
	}
	os.Exit(reexecInHostNS())
}

func reexecInHostNS() int {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	name := "dt-cnihost-" + hex.EncodeToString(b)
	for _, args := range [][]string{{"netns", "add", name}, {"-n", name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip %s: %v\n%s", strings.Join(args, " "), err, out)
			_ = exec.Command("ip", "netns", "delete", name).Run()
			return 1
		}
	}
	defer func() {
		// Processes still in the namespace (an API server left by a crashed
		// test binary) were started by this test: end them by id.
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "delete netns %s: %v\n%s", name, err, out)
		}
	}()
	before := rootRules()
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), hostNSEnv+"="+name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	code := 0
	if err := cmd.Run(); err != nil {
		code = 1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, err)
	}
	// Nothing of the suite may reach the root namespace: its rules (read
	// only) and interfaces are as they were.
	if after := rootRules(); after != before {
		fmt.Fprintf(os.Stderr, "FAIL: the root namespace changed during the tests:\nbefore:\n%s\nafter:\n%s", before, after)
		code = 1
	}
	return code
}

// rootRules reads the root namespace's firewall rules of both iptables
// backends and families (without counters) and the bridge the tests use.
func rootRules() string {
	var b strings.Builder
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := exec.Command(tool).Output()
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", tool, err)
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
				l = l[:i]
			}
			b.WriteString(l + "\n")
		}
	}
	if err := exec.Command("ip", "link", "show", bridgeName).Run(); err == nil {
		b.WriteString("bridge " + bridgeName + " exists\n")
	}
	return b.String()
}
