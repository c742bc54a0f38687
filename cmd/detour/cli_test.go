package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/redirect"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// TestUsageErrorsExit2 covers the mistakes that must exit 2 before touching
// anything: none of these runs needs root, because nothing gets that far.
func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"instal"}, `unknown command "instal"`},
		{"unknown flag", []string{"install", "--exclude-outbund-ports", "1"}, "unknown flag: --exclude-outbund-ports"},
		{"bad port", []string{"install", "--exclude-outbound-ports", "80,70000"}, `outbound.excludePorts[1]: "70000" is not a port`},
		{"bad cidr", []string{"install", "--exclude-outbound-cidrs", "abc"}, `outbound.excludeCIDRs[0]: "abc" is not a CIDR`},
		{"bad mode", []string{"check", "--mode", "bounce"}, `mode: "bounce" is not one of redirect, tproxy`},
		// An unknown name, never a valid one: a valid backend would install
		// into the namespace the test runs in (the host's, as root).
		{"unknown backend", []string{"install", "--backend", "bogus"}, `backend: "bogus" is not one of`},
		{"ebpf has no tproxy", []string{"install", "--backend", "ebpf", "--mode", "tproxy"}, `mode: "tproxy" is not available with backend ebpf`},
		{"acceleration needs ebpf", []string{"install", "--backend", "iptables", "--ebpf-accelerate"}, `ebpf.accelerate: "true" needs backend ebpf (--ebpf-accelerate`},
		{"acceleration is not auto", []string{"install", "--ebpf-accelerate"}, `ebpf.accelerate: "true" needs backend ebpf`},
		{"missing netns", []string{"uninstall", "--netns", "dt-does-not-exist"}, `--netns: "dt-does-not-exist" is not a network namespace`},
		{"netns is a regular file", []string{"status", "--netns", "/proc/self/status"}, `--netns: "/proc/self/status" is not a network namespace`},
		{"bad output", []string{"status", "-o", "yaml"}, `--output: "yaml" is not one of text, json`},
		// --stale acts on the whole node's stale scopes, never a unit's.
		{"stale with persist", []string{"uninstall", "--stale", "--persist"}, `--stale: not with --cgroup or --persist`},
		{"extra argument", []string{"install", "now"}, `unknown command "now"`},
		// cobra showed the help of a command that groups others and exited 0.
		{"unknown completion shell", []string{"completion", "nope"}, `unknown command "nope" for "detour completion"`},
		{"empty include cidrs", []string{"plan", "--include-outbound-cidrs="}, `--include-outbound-cidrs: outbound.includeCIDRs: "" is empty, which would capture every destination (an unset variable?)`},
		{"bad timeout", []string{"validate", "--timeout", "0s"}, `--timeout: "0s" is not a positive duration`},
		// 1ms timed the probe out before it was sent, reported as "not
		// redirected" (exit 5).
		{"timeout below the floor", []string{"validate", "--timeout", "1ms"}, `--timeout: "1ms" is below 100ms`},
		{"timeout above the ceiling", []string{"validate", "--timeout", "1h"}, `--timeout: "1h0m0s" is above 5m0s`},
		{"explain timeout below the floor", []string{"explain", "--to", "192.0.2.1:80", "--live", "--timeout", "99ms"}, `--timeout: "99ms" is below 100ms`},
		{"empty netns", []string{"install", "--netns", ""}, `"--netns" flag: an empty value names no network namespace`},
		{"empty netns, = form", []string{"uninstall", "--netns="}, `"--netns" flag: an empty value`},
		{"negative lock wait", []string{"install", "--lock-wait", "-1s"}, `"--lock-wait" flag: a wait cannot be negative`},
		{"empty list element", []string{"plan", "--exclude-outbound-ports", "80,,90"}, `outbound.excludePorts: "80,,90" has an empty list element`},
		// (uid_t)-1 is no user: the kernel never gives a socket that owner
		// and iptables' owner match refuses it (an install failed with exit 1).
		{"uid 4294967295", []string{"plan", "--exclude-outbound-uids", "4294967295"}, `outbound.excludeUIDs[0]: "4294967295" is not a numeric id or id range`},
		{"uid range to 4294967295", []string{"plan", "--exclude-outbound-uids", "0-4294967295"}, `outbound.excludeUIDs[0]: "0-4294967295"`},
		{"proxy uid 4294967295", []string{"plan", "--proxy-uid", "4294967295"}, `proxy.uid: "4294967295" is not a numeric id (0-4294967294`},
		{"proxy gid 4294967295", []string{"plan", "--proxy-gid", "4294967295"}, `proxy.gid: "4294967295"`},
		// The proxy binds the passthrough source: `::` failed the install
		// with exit 1 ("ip -6 addr add ::/128 dev lo …: cannot assign
		// requested address"), 0.0.0.0 installed a rule matching nothing.
		{"passthrough source ::", []string{"plan", "--inbound-passthrough-source-ipv6", "::"}, `proxy.inboundPassthroughSource.ipv6: "::" is not an address the proxy can bind`},
		{"passthrough source 0.0.0.0", []string{"plan", "--inbound-passthrough-source-ipv4", "0.0.0.0"}, `proxy.inboundPassthroughSource.ipv4: "0.0.0.0" is not an address the proxy can bind`},
		{"passthrough source multicast", []string{"plan", "--inbound-passthrough-source-ipv6", "ff02::1"}, `proxy.inboundPassthroughSource.ipv6: "ff02::1" is not an address`},
		{"passthrough source broadcast", []string{"plan", "--inbound-passthrough-source-ipv4", "255.255.255.255"}, `proxy.inboundPassthroughSource.ipv4: "255.255.255.255" is not an address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, stderr := runCLI(t, tt.args...)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d; stderr: %s", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
		})
	}
}

func TestPlanNeedsNoRoot(t *testing.T) {
	t.Parallel()
	code, out, stderr := runCLI(t, "plan", "--ip-families", "ipv4", "--exclude-outbound-ports", "80")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"### ipv4", "--dports 80 -j RETURN", "REDIRECT --to-ports 15001", "REDIRECT --to-ports 15006"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "### ipv6") {
		t.Errorf("ipFamilies ipv4 planned IPv6:\n%s", out)
	}
}

func TestPlanFromConfigFileAndStdin(t *testing.T) {
	t.Parallel()
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("ipFamilies: ipv4\nproxy:\n  outboundPort: 16001\n"), 0o644)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"plan", "--config", f, "--config", "-"}, strings.NewReader(`{"proxy":{"inboundPort":16006}}`), &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "--to-ports 16001") || !strings.Contains(out.String(), "--to-ports 16006") {
		t.Errorf("plan does not use both documents:\n%s", out.String())
	}
}

func TestPlanProbes(t *testing.T) {
	t.Parallel()
	plan := func(mutate func(*redirect.Config)) redirect.Plan {
		c := redirect.Default()
		mutate(&c)
		p, err := redirect.NewPlan(c, redirect.Facts{IPv6: true})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name   string
		mutate func(*redirect.Config)
		want   []string // family dst uid
	}{
		{"defaults", func(*redirect.Config) {}, []string{"ipv4 192.0.2.1:15999 65534", "ipv6 [2001:db8::1]:15999 65534"}},
		{"excluded port and cidr", func(c *redirect.Config) {
			c.Outbound.ExcludePorts = []redirect.PortRange{{First: 15000, Last: 15999}}
			c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		}, []string{"ipv4 198.51.100.1:14999 65534", "ipv6 [2001:db8::1]:14999 65534"}},
		{"include lists", func(c *redirect.Config) {
			c.Outbound.IncludePorts = []redirect.PortRange{{First: 443, Last: 443}}
			c.Outbound.IncludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		}, []string{"ipv4 198.51.100.1:443 65534"}},
		{"excluded users", func(c *redirect.Config) {
			c.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 65534, Last: 65534}}
			c.Outbound.ExcludeGIDs = []redirect.IDRange{{First: 65533, Last: 65533}}
		}, []string{"ipv4 192.0.2.1:15999 65532", "ipv6 [2001:db8::1]:15999 65532"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			probes, err := planProbes(plan(tt.mutate), runner{uid: 0, gid: 0, canSwitch: true})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range probes {
				got = append(got, strings.Join([]string{string(p.family), p.dst.String(), itoa(p.uid)}, " "))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("probes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestPlanProbesAsNonRoot(t *testing.T) {
	t.Parallel()
	c := redirect.Default()
	c.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 2000, Last: 2000}}
	p, err := redirect.NewPlan(c, redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	probes, err := planProbes(p, runner{uid: 1000, gid: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(probes) != 1 || probes[0].uid != 1000 || probes[0].become {
		t.Errorf("probes as uid 1000 = %+v, want one probe dialing as itself", probes)
	}
	for _, self := range []runner{{uid: 2000, gid: 2000}, {uid: 5678, gid: 5678}} {
		if _, err := planProbes(p, self); err == nil || !strings.Contains(err.Error(), "does not capture") {
			t.Errorf("planProbes as uncaptured uid %d: %v", self.uid, err)
		}
	}
}

// TestPlanProbesRootWithoutSetuid: uid 0 without CAP_SETUID/CAP_SETGID (the
// restricted Pod Security standard) probes as itself when uid 0 is captured,
// and otherwise says the probe cannot run (exit 1), never "not redirected".
func TestPlanProbesRootWithoutSetuid(t *testing.T) {
	t.Parallel()
	self := runner{uid: 0, gid: 0, canSwitch: false}
	p, err := redirect.NewPlan(redirect.Default(), redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	probes, err := planProbes(p, self)
	if err != nil || len(probes) != 1 || probes[0].uid != 0 || probes[0].become {
		t.Errorf("probes as uid 0 without SETUID = %+v, %v; want one probe dialing as itself", probes, err)
	}
	c := redirect.Default()
	c.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 0, Last: 0}}
	if p, err = redirect.NewPlan(c, redirect.Facts{}); err != nil {
		t.Fatal(err)
	}
	_, err = planProbes(p, self)
	if err == nil || !strings.Contains(err.Error(), "the probe cannot run") || !strings.Contains(err.Error(), "CAP_SETUID") {
		t.Errorf("planProbes as uid 0 without SETUID, uid 0 excluded = %v; want the probe-cannot-run error naming the capability", err)
	}
	if code := exitCode(err, io.Discard); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}

func itoa(u uint32) string { return strconv.FormatUint(uint64(u), 10) }

func TestSummary(t *testing.T) {
	t.Parallel()
	c := redirect.Default()
	c.Outbound.ExcludePorts = []redirect.PortRange{{First: 80, Last: 80}}
	c.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 106, Last: 108}}
	c.DNS.Capture = redirect.DNSCaptureAll
	ssh := sshOptions{sshConnection: "198.51.100.9 50000 203.0.113.2 22", procRoot: t.TempDir()}
	cfg, ports := excludeSSH(c, ssh.sshPorts())
	got := summary(cfg, redirect.Result{Backend: redirect.BackendIPTablesNFT, Families: []redirect.Family{redirect.IPv4, redirect.IPv6}, Changed: true, Processes: 6}, ports)
	want := `detour installed (iptables-nft; ipv4, ipv6; mode redirect)
  outbound  TCP → :15001  all ports except 80, any address
              left alone: proxy uid 5678, loopback, uids 106-108
  inbound   TCP → :15006  all ports except 22
              port 22 is excluded: SSH (--capture-ssh captures it)
  dns       UDP/53 → :15053  every destination (TCP/53 follows outbound)
  cost      6 child processes
`
	if got != want {
		t.Errorf("summary:\n%s\nwant:\n%s", got, want)
	}
}

// TestPlanJSONCarriesTheRendering: `detour plan -o json` is the
// backend-neutral plan and the rendering of the backend the config asks for.
func TestPlanJSONCarriesTheRendering(t *testing.T) {
	t.Parallel()
	code, out, stderr := runCLI(t, "plan", "--ip-families", "ipv4", "--backend", "iptables-legacy", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{`"capture":`, `"facts":`, `"rendering":`, `"backend": "iptables-legacy"`, `-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001`, `"lines":`} {
		if !strings.Contains(out, want) {
			t.Errorf("plan -o json lacks %s:\n%s", want, out)
		}
	}
}

// TestFlagsOfEveryCommand: the configuration flags, bound only for the
// command that runs, are there wherever a user looks for them: the command
// itself (with flags before and after its name), its help, `detour help
// COMMAND` and shell completion.
func TestFlagsOfEveryCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"plan with a config flag", []string{"plan", "--backend", "nftables", "--ip-families", "ipv4"}, "table inet detour"},
		{"root flag first", []string{"-v", "plan", "--ip-families", "ipv4", "--outbound-port", "15099"}, "15099"},
		{"command help", []string{"install", "--help"}, "--exclude-outbound-ports"},
		{"help command", []string{"help", "check"}, "--exclude-outbound-ports"},
		{"completion", []string{"__complete", "validate", "--exclude-outbound-p"}, "--exclude-outbound-ports"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, stderr := runCLI(t, tt.args...)
			if code != exitOK || !strings.Contains(out, tt.want) {
				t.Errorf("detour %s: exit %d, stdout lacks %q:\n%s\nstderr: %s", strings.Join(tt.args, " "), code, tt.want, out, stderr)
			}
		})
	}
	// uninstall never took a configuration.
	if code, _, stderr := runCLI(t, "uninstall", "--preset", "istio"); code != exitUsage || !strings.Contains(stderr, "unknown flag: --preset") {
		t.Errorf("uninstall --preset: exit %d, %s; want exit 2, unknown flag", code, stderr)
	}
}

// TestCgroupNeedsEBPF: --cgroup is the eBPF backend's scope. With another
// backend it used to be ignored, and the install captured the whole network
// namespace instead of the cgroup the user named: exit 2, naming both.
func TestCgroupNeedsEBPF(t *testing.T) {
	t.Parallel()
	cg := childCgroup(t)
	for _, backend := range []string{"nftables", "iptables", "auto"} {
		for _, cmd := range []string{"plan", "check", "explain"} {
			args := []string{cmd, "--cgroup", cg, "--backend", backend}
			if cmd == "explain" {
				args = append(args, "--to", "192.0.2.1:80")
			}
			code, _, stderr := runCLI(t, args...)
			want := `--cgroup: only backend ebpf has a cgroup scope; backend is "` + backend + `"`
			if code != exitUsage || !strings.Contains(stderr, want) {
				t.Errorf("detour %s: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), code, stderr, exitUsage, want)
			}
		}
	}
	gone := filepath.Join(cg, "detour-cli-test-no-such-cgroup")
	if code, _, stderr := runCLI(t, "status", "--cgroup", gone); code != exitUsage || !strings.Contains(stderr, "does not exist (what the eBPF scope of a cgroup that was removed left goes with `detour uninstall --cgroup` of its path,") {
		t.Errorf("status --cgroup of a cgroup that is gone: exit %d, stderr %q; want exit 2 saying how to remove its scope", code, stderr)
	}
	code, _, stderr := runCLI(t, "plan", "--cgroup", cg, "--backend", "ebpf", "--inbound=false")
	switch {
	case leanBuild:
		// No detour-ebpf beside the test binary: the lean build says so
		// rather than planning without the eBPF backend.
		if code != exitFailure || !strings.Contains(stderr, "served by detour-ebpf: detour-ebpf is neither next to detour") {
			t.Errorf("lean plan --cgroup --backend ebpf without detour-ebpf: exit %d, stderr %q; want exit %d naming detour-ebpf", code, stderr, exitFailure)
		}
	case code != 0:
		t.Errorf("plan --cgroup --backend ebpf: exit %d: %s", code, stderr)
	}
}

// TestInstallNotes: install's summary ends with the plan's notes, the
// settings that do nothing (an exclusion an inclusion overrides, a
// resolv.conf without nameservers of a family). `plan` printed them, but
// install said "UDP/53 → :15053  the nameservers in …" and captured none.
func TestInstallNotes(t *testing.T) {
	t.Parallel()
	c := redirect.Default()
	c.Outbound.IncludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}
	c.DNS.Capture = redirect.DNSCaptureResolvConf
	c.DNS.ResolvConf = "/etc/resolv.conf.test"
	p, err := redirect.NewPlan(c, redirect.Facts{IPv6: true, Nameservers: []netip.Addr{netip.MustParseAddr("192.0.2.53")}})
	if err != nil {
		t.Fatal(err)
	}
	got := installNotes(p)
	for _, want := range []string{
		"  note      outbound.excludeCIDRs[0] 198.51.100.7/32 has no effect: outbound.includeCIDRs[0] 198.51.100.0/24 includes it",
		"  note      outbound.includeCIDRs lists no IPv6 CIDR, so no outbound IPv6 TCP is captured\n",
		"  note      dns.resolvConf (/etc/resolv.conf.test) lists no IPv6 nameserver, so no IPv6 DNS query is captured\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("install notes lack %q:\n%s", want, got)
		}
	}
	if n := installNotes(func() redirect.Plan {
		p, _ := redirect.NewPlan(redirect.Default(), redirect.Facts{IPv6: true})
		return p
	}()); n != "" {
		t.Errorf("notes of the default plan = %q, want none", n)
	}
}

// TestCgroupPathSpellings: --cgroup names one scope however the path is
// spelled. A relative path named the cgroup scope's inbound table after the
// text given (`detour_ebpf_inbound_cg_…` is a hash of the path), so an
// install run from the cgroup's parent with `--cgroup svc` made a table that
// `check --cgroup /…/svc` reported missing and `uninstall --cgroup /…/svc`
// left behind, redirecting every inbound connection of the namespace.
func TestCgroupPathSpellings(t *testing.T) {
	if leanBuild {
		t.Skip("the lean build hands plan --backend ebpf to detour-ebpf (tests/ runs both)")
	}
	cg := childCgroup(t)
	table := func(path string) string {
		t.Helper()
		code, out, stderr := runCLI(t, "plan", "--backend", "ebpf", "--ip-families", "ipv4", "--cgroup", path)
		if code != 0 {
			t.Fatalf("plan --cgroup %s: exit %d: %s", path, code, stderr)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "add table inet detour_ebpf_inbound_cg_") {
				return l
			}
		}
		t.Fatalf("plan --cgroup %s names no inbound table:\n%s", path, out)
		return ""
	}
	want := table(cg)
	// A symlink to it: before 2026-12-05 its lexical parent (the symlink's
	// directory, outside the cgroup hierarchy) made it "the root of the
	// hierarchy", refused.
	link := filepath.Join(t.TempDir(), "svc-link")
	if err := os.Symlink(cg, link); err != nil {
		t.Fatal(err)
	}
	t.Chdir(filepath.Dir(cg))
	for _, spelling := range []string{filepath.Base(cg), "./" + filepath.Base(cg), cg + "/", filepath.Dir(cg) + "//" + filepath.Base(cg), link} {
		if got := table(spelling); got != want {
			t.Errorf("plan --cgroup %s: %q; want %q, as for %s", spelling, got, want, cg)
		}
	}
}

// TestCgroupRootRefused: --cgroup naming the root of the cgroup v2 hierarchy
// is exit 2 on every command that takes a configuration. A cgroup scope at the
// root captures every process of the machine, in every network namespace
// (each container's too): what `--cgroup "/sys/fs/cgroup/$UNIT"` gives a
// script whose UNIT is unset. Before, it was taken, and install attached the
// programs there. Only read-only commands run here: a regression must not
// capture the machine the test runs on.
func TestCgroupRootRefused(t *testing.T) {
	if leanBuild {
		t.Skip("the lean build hands --cgroup to detour-ebpf (tests/ runs both)")
	}
	cg, err := bpf.CgroupRoot()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy here: %v", err)
	}
	for _, path := range []string{cg, cg + "/", cg + "/."} {
		for _, cmd := range [][]string{
			{"plan", "--backend", "ebpf"},
			{"check", "--backend", "ebpf"},
			{"install", "--dry-run", "--backend", "ebpf"},
		} {
			args := append(append([]string{}, cmd...), "--cgroup", path)
			code, _, stderr := runCLI(t, args...)
			want := strconv.Quote(path) + ` for "--cgroup" flag: is the root of the cgroup v2 hierarchy`
			if code != 2 || !strings.Contains(stderr, want) {
				t.Errorf("%s: exit %d, stderr %q; want exit 2 and %q", strings.Join(args, " "), code, stderr, want)
			}
		}
	}
}

// childCgroup is a cgroup v2 directory below the root of the hierarchy (the
// root is no cgroup scope): one the test makes as root, else this process's
// own; the test skips when neither is there.
func childCgroup(t *testing.T) string {
	t.Helper()
	cg, why := findChildCgroup(t)
	if cg == "" {
		t.Skip(why)
	}
	return cg
}

// findChildCgroup is childCgroup's directory, or "" and why there is none.
func findChildCgroup(t *testing.T) (string, string) {
	t.Helper()
	root, err := bpf.CgroupRoot()
	if err != nil {
		return "", fmt.Sprintf("no cgroup v2 hierarchy here: %v", err)
	}
	dir, err := os.MkdirTemp(root, "detour-cli-test-")
	if err == nil {
		t.Cleanup(func() { os.Remove(dir) })
		return dir, ""
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Sprintf("no cgroup of this process: %v", err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if own, ok := strings.CutPrefix(l, "0::"); ok && own != "/" {
			return filepath.Join(root, own), ""
		}
	}
	return "", "no cgroup v2 directory below the root (not root, and this process is in the root cgroup)"
}

// TestSummaryLongLists: install's summary is one screen. With 10,000 excluded
// CIDRs it printed every one of them on one line of 160 KB (and 1,000 ports and
// uids each on another), which buried the summary in a terminal and in the
// journal of the boot unit. A long list shows its first entries and how many
// more there are; `detour plan` prints every one.
func TestSummaryLongLists(t *testing.T) {
	t.Parallel()
	c := redirect.Default()
	for i := range 10000 {
		c.Outbound.ExcludeCIDRs = append(c.Outbound.ExcludeCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
	}
	for i := range 1000 {
		c.Outbound.ExcludePorts = append(c.Outbound.ExcludePorts, redirect.PortRange{First: uint16(20000 + 2*i), Last: uint16(20000 + 2*i)})
		c.Outbound.ExcludeUIDs = append(c.Outbound.ExcludeUIDs, redirect.IDRange{First: uint32(2000 + 2*i), Last: uint32(2000 + 2*i)})
		c.Inbound.ExcludeSourceCIDRs = append(c.Inbound.ExcludeSourceCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32))
	}
	rule := redirect.UIDPortRule{Protocol: redirect.TCP}
	for i := range 100 {
		rule.Ports = append(rule.Ports, redirect.PortRange{First: uint16(30000 + 2*i), Last: uint16(30000 + 2*i)})
		rule.UIDs = append(rule.UIDs, redirect.IDRange{First: uint32(7000 + 2*i), Last: uint32(7000 + 2*i)})
	}
	c.Outbound.ExcludePortsForUIDs = []redirect.UIDPortRule{rule}
	got := summary(c, redirect.Result{Backend: redirect.BackendNFTables, Families: []redirect.Family{redirect.IPv4}, Changed: true}, nil)
	if want := "tcp ports 30000,30002,30004,30006,30008 and 95 more for uids 7000,7002,7004,7006,7008 and 95 more"; !strings.Contains(got, want) {
		t.Errorf("summary lacks %q:\n%s", want, got)
	}
	for _, line := range strings.Split(got, "\n") {
		if len(line) > 300 {
			t.Errorf("summary line of %d characters, want at most 300: %.300s…", len(line), line)
		}
	}
	for _, want := range []string{
		"all ports except 20000,20002,20004,20006,20008 and 995 more,",
		"any address except 10.0.0.0/24,10.0.1.0/24,10.0.2.0/24,10.0.3.0/24,10.0.4.0/24 and 9995 more",
		"uids 2000,2002,2004,2006,2008 and 995 more", "sources except 192.0.2.0/32,",
		"lists     shortened here (detour plan lists every one)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	// A short list is still printed whole.
	if got := joinStrings([]redirect.PortRange{{First: 80, Last: 80}, {First: 443, Last: 443}}); got != "80,443" {
		t.Errorf("joinStrings of two ports = %q, want 80,443", got)
	}
}
