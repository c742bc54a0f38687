package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"time"
)

// istioArgs is Istio's default sidecar install (ENVIRONMENT.md).
var istioArgs = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}

// runIstio measures `pilot-agent istio-iptables` (install, re-run) and
// `istio-iptables --cleanup-only` in a fresh namespace per run, through `ip netns
// exec`, whose own cost (`ip netns exec NS true`) is measured alongside and
// subtracted. It prints each detour backend's install beside Istio's as a ratio.
func runIstio(ctx context.Context, agent string, runs int, installs map[string]time.Duration) error {
	steps := []*step{
		{name: "install", args: append([]string{"istio-iptables"}, istioArgs...)},
		{name: "re-run, no change", args: append([]string{"istio-iptables"}, istioArgs...)},
		{name: "uninstall", args: append([]string{"istio-iptables", "--cleanup-only"}, istioArgs...)},
	}
	var base []time.Duration
	for i := 0; i < runs; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		ns := fmt.Sprintf("dt-bench-istio-%d", os.Getpid())
		if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add: %v: %s", err, out)
		}
		err := func() error {
			defer exec.Command("ip", "netns", "delete", ns).Run()
			if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
				return fmt.Errorf("ip link set lo up: %v: %s", err, out)
			}
			// pilot-agent refuses to run without a non-loopback address ("no
			// valid local IP address found"): give the namespace a veth pair of
			// its own with a documentation address, inside the namespace only.
			for _, args := range [][]string{
				{"-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"},
				{"-n", ns, "addr", "add", "192.0.2.10/24", "dev", "d0"},
				{"-n", ns, "link", "set", "d0", "up"},
			} {
				if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
					return fmt.Errorf("ip %v: %v: %s", args, err, out)
				}
			}
			start := time.Now()
			if err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "true").Run(); err != nil {
				return err
			}
			base = append(base, time.Since(start))
			for _, s := range steps {
				start := time.Now()
				out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, agent}, s.args...)...).CombinedOutput()
				if err != nil {
					return fmt.Errorf("pilot-agent %s: %v: %s", s.args[0], err, out)
				}
				s.times = append(s.times, time.Since(start))
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	b := percentile(base, 50)
	fmt.Printf("\nIstio's pilot-agent istio-iptables (%d runs, `ip netns exec NS true` = %s subtracted):\n", runs, b.Round(10*time.Microsecond))
	for _, s := range steps {
		fmt.Printf("%-16s %-22s %12s %12s\n", "istio-iptables", s.name,
			(percentile(s.times, 50) - b).Round(10*time.Microsecond), (percentile(s.times, 90) - b).Round(10*time.Microsecond))
	}
	istio := percentile(steps[0].times, 50) - b
	names := make([]string, 0, len(installs))
	for n := range installs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("install ratio %s / istio-iptables: %.3f\n", n, float64(installs[n])/float64(istio))
	}
	return nil
}
