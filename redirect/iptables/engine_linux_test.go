package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// Privileged tests: each runs in its own network namespace and, unless it
// says otherwise, on both iptables backends.

var backendTools = []string{
	"ip", "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore",
	"iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore",
}

// newNS makes a fresh namespace for one test and an Engine bound to it.
func newNS(t testing.TB) (privtest.NS, *redirect.Engine) {
	t.Helper()
	privtest.Require(t, backendTools...)
	ns := privtest.NetNS(t)
	return ns, &redirect.Engine{NetNS: ns.Path, Drivers: Drivers(0, nil)}
}

// forEachBackend runs f as a parallel subtest per iptables backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b redirect.Backend)) {
	for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			f(t, b)
		})
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save is `iptables-save` and `ip6tables-save` of every table of a backend,
// without the header/date comment lines and with counters zeroed: the text
// uninstall must leave byte-identical.
func save(t testing.TB, ns privtest.NS, b redirect.Backend) string {
	t.Helper()
	var out strings.Builder
	for _, f := range allFamilies {
		out.WriteString("### " + string(f) + "\n")
		out.WriteString(saveFamily(t, ns, b, f))
	}
	return out.String()
}

func saveFamily(t testing.TB, ns privtest.NS, b redirect.Backend, f redirect.Family) string {
	t.Helper()
	raw, err := exec.Command("ip", "netns", "exec", ns.Name, toolName(b, f, "save")).Output()
	if err != nil {
		t.Fatalf("%s: %v", toolName(b, f, "save"), err)
	}
	var out strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out.WriteString(counters.ReplaceAllString(line, "[0:0]") + "\n")
	}
	return out.String()
}

// cliName is the rule-editing command of a backend: iptables-nft, ip6tables-legacy, ….
func cliName(b redirect.Backend, f redirect.Family) string {
	return strings.TrimSuffix(toolName(b, f, "save"), "-save")
}

func restoreText(t testing.TB, ns privtest.NS, b redirect.Backend, f redirect.Family, text string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, toolName(b, f, "restore"), "--noflush")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", toolName(b, f, "restore"), err, out)
	}
}

// seedForeign fills nat, mangle, raw and filter of both families with rules
// and chains that are not ours, some in the built-in chains we hook into and
// some carrying comments that merely look like ours.
func seedForeign(t testing.TB, ns privtest.NS, b redirect.Backend) {
	t.Helper()
	seed := func(src, dst string) string {
		return `*nat
:FOREIGN_NAT - [0:0]
-A PREROUTING -s ` + src + ` -j RETURN
-A OUTPUT -d ` + dst + ` -m comment --comment "detour other" -j RETURN
-A POSTROUTING -j FOREIGN_NAT
-A FOREIGN_NAT -p tcp -m comment --comment detourx -j RETURN
COMMIT
*mangle
:FOREIGN_MANGLE - [0:0]
-A PREROUTING -j FOREIGN_MANGLE
-A FOREIGN_MANGLE -p tcp -j MARK --set-xmark 0x1/0x1
COMMIT
*raw
:FOREIGN_RAW - [0:0]
-A PREROUTING -j FOREIGN_RAW
-A OUTPUT -p udp -j FOREIGN_RAW
-A FOREIGN_RAW -j RETURN
COMMIT
*filter
:FOREIGN_FILTER - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A FOREIGN_FILTER -j RETURN
COMMIT
`
	}
	restoreText(t, ns, b, redirect.IPv4, seed("192.0.2.1/32", "198.51.100.9/32"))
	restoreText(t, ns, b, redirect.IPv6, seed("2001:db8::1/128", "2001:db8::9/128"))
}

func mustPlan(t testing.TB, cfg redirect.Config, facts redirect.Facts) redirect.Plan {
	t.Helper()
	p, err := redirect.NewPlan(cfg, facts)
	if err != nil {
		t.Fatalf("NewPlan: %v", err)
	}
	return p
}

func mustInstall(t testing.TB, e *redirect.Engine, p redirect.Plan) redirect.Result {
	t.Helper()
	res, err := e.Install(context.Background(), p)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	return res
}

func mustUninstall(t testing.TB, e *redirect.Engine) redirect.Result {
	t.Helper()
	res, err := e.Uninstall(context.Background())
	if err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	return res
}

// assertNoDrift checks that the namespace holds exactly p.
func assertNoDrift(t testing.TB, e *redirect.Engine, p redirect.Plan) {
	t.Helper()
	d, err := e.Check(context.Background(), p)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if !d.Empty() {
		t.Fatalf("installed rules differ from the plan:\n%s", d)
	}
}

func withBackend(t testing.TB, c redirect.Config, b redirect.Backend) redirect.Config {
	t.Helper()
	c.Backend = b
	return c
}

// TestInstallMatchesPlan installs every golden plan on both backends: what
// iptables-save then shows of ours is the plan, byte for byte (so re-runs see
// "no changes"), and uninstall leaves every table as it was.
func TestInstallMatchesPlan(t *testing.T) {
	privtest.Require(t, backendTools...)
	for _, tc := range planCases() {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, b redirect.Backend) {
				ns, e := newNS(t)
				seedForeign(t, ns, b)
				before := save(t, ns, b)
				p := mustPlan(t, withBackend(t, cfgWith(t, tc.Preset, tc.Sets...), b), tc.Facts)
				res := mustInstall(t, e, p)
				if planIsEmpty(p) {
					// A plan that captures nothing installs nothing.
					if _, err := e.Check(context.Background(), p); res.Changed || !errors.Is(err, redirect.ErrNotInstalled) {
						t.Fatalf("empty plan: Install = %+v, Check = %v; want no change and ErrNotInstalled", res, err)
					}
					return
				}
				if !res.Changed || res.Backend != b {
					t.Errorf("Install = %+v, want Changed with backend %s", res, b)
				}
				assertNoDrift(t, e, p)
				st, err := e.Status(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range Rules(p.Capture) {
					fc, _ := p.Family(f.Family)
					want := renderTables(f.Tables)
					for _, l := range fc.NetLines() {
						want += l + "\n"
					}
					if want == "" {
						want = "<nothing>"
					}
					got := st.Rules[f.Family]
					if got == "" {
						got = "<nothing>"
					}
					if got != want {
						t.Errorf("Status %s:\n%s\nwant the plan:\n%s", f.Family, got, want)
					}
				}
				if again := mustInstall(t, e, p); again.Changed {
					t.Errorf("second Install changed something: %+v", again)
				}
				mustUninstall(t, e)
				if after := save(t, ns, b); after != before {
					t.Errorf("after uninstall iptables-save differs from before install:\n--- before\n%s\n--- after\n%s", before, after)
				}
			})
		})
	}
}

// shimPATH puts logging wrappers of the named tools first on PATH: each call
// is appended to the returned log file, then the real tool runs.
func shimPATH(t *testing.T, tools ...string) (logFile string) {
	t.Helper()
	dir := t.TempDir()
	logFile = filepath.Join(dir, "calls.log")
	for _, tool := range tools {
		real, err := exec.LookPath(tool)
		if err != nil {
			privtest.Skip(t, "needs "+tool)
		}
		script := "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> " + logFile + "\nexec " + real + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return logFile
}

// calls returns the engine's calls in a shim log: those with the -w lock
// flag, which the test's own helpers do not pass.
func calls(t *testing.T, logFile string) []string {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, " -w ") {
			out = append(out, line)
		}
	}
	return out
}

func planIsEmpty(p redirect.Plan) bool {
	for _, f := range Rules(p.Capture) {
		if fc, _ := p.Family(f.Family); len(f.Tables) > 0 || fc.TProxy != nil {
			return false
		}
	}
	return true
}

// TestInstallIdempotent is L2 and L4 with the process counts: a re-run spawns
// no restore, a config change one restore per family, uninstall twice is fine.
// Not parallel: it wraps the tools through PATH.
func TestInstallIdempotent(t *testing.T) {
	privtest.Require(t, backendTools...)
	for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		t.Run(string(b), func(t *testing.T) {
			log := shimPATH(t, toolName(b, redirect.IPv4, "restore"), toolName(b, redirect.IPv6, "restore"))
			ns, e := newNS(t)
			seedForeign(t, ns, b)
			before := save(t, ns, b)

			if res := mustUninstall(t, e); res.Changed || len(calls(t, log)) != 0 {
				t.Errorf("Uninstall without install = %+v, restores %q; want no change, no restore", res, calls(t, log))
			}
			cfgA := withBackend(t, cfgWith(t, "", "dns.capture=all", "dropInvalidPackets=true"), b)
			pA := mustPlan(t, cfgA, dualStack)
			res := mustInstall(t, e, pA)
			// The other iptables backend holds nothing, and its glance tells
			// that without a save: the processes are this backend's own.
			if !res.Changed || res.Processes != 4 {
				t.Errorf("first Install = %+v, want Changed with 4 processes (2 saves, 2 restores)", res)
			}
			if got := calls(t, log); len(got) != 2 {
				t.Errorf("first Install ran %d restores, want one per family: %q", len(got), got)
			}
			os.Remove(log)

			res = mustInstall(t, e, pA)
			if res.Changed || res.Processes != 2 {
				t.Errorf("second Install = %+v, want no change and only the 2 saves", res)
			}
			if got := calls(t, log); len(got) != 0 {
				t.Errorf("second Install ran restores: %q", got)
			}

			// A foreign rule appended after our hook stays after it when the
			// config changes: our hooks keep their place.
			restoreText(t, ns, b, redirect.IPv4, "*nat\n-A OUTPUT -d 203.0.113.7/32 -j RETURN\nCOMMIT\n")
			cfgB := withBackend(t, cfgWith(t, "", "outbound.excludePorts=25", "log.enabled=true"), b)
			pB := mustPlan(t, cfgB, dualStack)
			res = mustInstall(t, e, pB)
			if !res.Changed || res.Processes != 4 {
				t.Errorf("Install of a changed config = %+v, want Changed with 4 processes", res)
			}
			if got := calls(t, log); len(got) != 2 || !strings.Contains(got[0], "--noflush") {
				t.Errorf("changed config ran restores %q, want one --noflush per family", got)
			}
			assertNoDrift(t, e, pB) // the old redirect.DNS, raw and mangle rules are gone
			nat := saveFamily(t, ns, b, redirect.IPv4)
			hook := strings.Index(nat, "-A OUTPUT -p tcp -m comment --comment detour -j DETOUR_OUTPUT")
			foreign := strings.Index(nat, "-A OUTPUT -d 203.0.113.7/32 -j RETURN")
			if hook < 0 || foreign < 0 || hook > foreign {
				t.Errorf("our OUTPUT hook moved behind the foreign rule:\n%s", nat)
			}
			restoreText(t, ns, b, redirect.IPv4, "*nat\n-D OUTPUT -d 203.0.113.7/32 -j RETURN\nCOMMIT\n")

			os.Remove(log)
			if res := mustUninstall(t, e); !res.Changed || len(res.Families) != 2 || res.Backend != b {
				t.Errorf("Uninstall = %+v, want both families removed from %s", res, b)
			}
			if got := calls(t, log); len(got) != 2 {
				t.Errorf("Uninstall ran %d restores, want one per family: %q", len(got), got)
			}
			if after := save(t, ns, b); after != before {
				t.Errorf("after uninstall iptables-save differs from before install:\n--- before\n%s\n--- after\n%s", before, after)
			}
			os.Remove(log)
			// The seeded foreign rules make this backend's glance say "maybe":
			// it is read with its saves; the other one is not.
			if res := mustUninstall(t, e); res.Changed || res.Processes != 2 || len(calls(t, log)) != 0 {
				t.Errorf("second Uninstall = %+v, restores %q; want no change and only the 2 saves", res, calls(t, log))
			}
			if _, err := e.Check(context.Background(), pA); !errors.Is(err, redirect.ErrNotInstalled) {
				t.Errorf("Check after uninstall = %v, want ErrNotInstalled", err)
			}
		})
	}
}

func TestCheckReportsDrift(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		ns, e := newNS(t)
		p := mustPlan(t, withBackend(t, cfgWith(t, "", "outbound.excludePorts=25"), b), dualStack)
		if _, err := e.Check(context.Background(), p); !errors.Is(err, redirect.ErrNotInstalled) {
			t.Fatalf("Check before install = %v, want ErrNotInstalled", err)
		}
		mustInstall(t, e, p)
		assertNoDrift(t, e, p)

		// Someone deletes a rule from our chain in IPv4 …
		ns.Run(t, cliName(b, redirect.IPv4), "-t", "nat", "-D", "DETOUR_OUTPUT", "-p", "tcp", "-m", "multiport", "--dports", "25", "-j", "RETURN")
		// … and adds one to our chain in IPv6.
		ns.Run(t, cliName(b, redirect.IPv6), "-t", "nat", "-I", "DETOUR_OUTPUT", "1", "-d", "2001:db8::77/128", "-j", "RETURN")
		d, err := e.Check(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Families) != 2 {
			t.Fatalf("drift in %d families, want 2:\n%s", len(d.Families), d)
		}
		v4, v6 := d.Families[0], d.Families[1]
		if v4.Family != redirect.IPv4 || len(v4.Missing) != 1 || v4.Missing[0] != "-t nat -A DETOUR_OUTPUT -p tcp -m multiport --dports 25 -j RETURN" || len(v4.Unexpected) != 0 {
			t.Errorf("ipv4 drift = %+v, want the deleted rule missing", v4)
		}
		if v6.Family != redirect.IPv6 || len(v6.Unexpected) != 1 || v6.Unexpected[0] != "-t nat -A DETOUR_OUTPUT -d 2001:db8::77/128 -j RETURN" || len(v6.Missing) != 0 {
			t.Errorf("ipv6 drift = %+v, want the added rule unexpected", v6)
		}
		text := d.String()
		for _, want := range []string{"--- installed ipv4", "+++ planned ipv4", "+-t nat -A DETOUR_OUTPUT -p tcp -m multiport --dports 25 -j RETURN", "--t nat -A DETOUR_OUTPUT -d 2001:db8::77/128 -j RETURN"} {
			if !strings.Contains(text, want) {
				t.Errorf("drift text lacks %q:\n%s", want, text)
			}
		}
		// Install repairs it.
		if res := mustInstall(t, e, p); !res.Changed {
			t.Error("Install over drift reported no change")
		}
		assertNoDrift(t, e, p)
	})
}

func TestForeignChainsRefused(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		ns, e := newNS(t)
		p := mustPlan(t, withBackend(t, redirect.Default(), b), dualStack)
		mustInstall(t, e, p)
		restoreText(t, ns, b, redirect.IPv6, "*mangle\n:DETOUR_SOMEONE_ELSE - [0:0]\n-A DETOUR_SOMEONE_ELSE -j RETURN\nCOMMIT\n")
		before := save(t, ns, b)
		_, err := e.Uninstall(context.Background())
		if !errors.Is(err, redirect.ErrForeignChains) || !strings.Contains(err.Error(), "DETOUR_SOMEONE_ELSE") {
			t.Fatalf("Uninstall = %v, want ErrForeignChains naming DETOUR_SOMEONE_ELSE", err)
		}
		p2 := mustPlan(t, withBackend(t, cfgWith(t, "", "outbound.excludePorts=25"), b), dualStack)
		if _, err := e.Install(context.Background(), p2); !errors.Is(err, redirect.ErrForeignChains) {
			t.Fatalf("Install = %v, want ErrForeignChains", err)
		}
		if after := save(t, ns, b); after != before {
			t.Errorf("a refused call changed the rules:\n--- before\n%s\n--- after\n%s", before, after)
		}
		restoreText(t, ns, b, redirect.IPv6, "*mangle\n:DETOUR_SOMEONE_ELSE - [0:0]\n-X DETOUR_SOMEONE_ELSE\nCOMMIT\n")

		// A rule without our comment that jumps to our chain: we could not
		// delete the chain, so we refuse before touching anything.
		restoreText(t, ns, b, redirect.IPv4, "*nat\n-A OUTPUT -d 203.0.113.5/32 -j DETOUR_OUTPUT\nCOMMIT\n")
		before = save(t, ns, b)
		if _, err := e.Uninstall(context.Background()); err == nil || !strings.Contains(err.Error(), "-A OUTPUT -d 203.0.113.5/32 -j DETOUR_OUTPUT") {
			t.Fatalf("Uninstall with a foreign jump to our chain = %v, want an error quoting the rule", err)
		}
		if after := save(t, ns, b); after != before {
			t.Errorf("a refused uninstall changed the rules:\n%s", after)
		}
		restoreText(t, ns, b, redirect.IPv4, "*nat\n-D OUTPUT -d 203.0.113.5/32 -j DETOUR_OUTPUT\nCOMMIT\n")
		mustUninstall(t, e)
	})
}

// TestBackendChoice is L5 and the mixed-install refusal.
func TestBackendChoice(t *testing.T) {
	t.Parallel()
	auto := redirect.Default()
	t.Run("legacy rules keep legacy", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		restoreText(t, ns, redirect.BackendIPTablesLegacy, redirect.IPv4, "*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n")
		res := mustInstall(t, e, mustPlan(t, auto, dualStack))
		if res.Backend != redirect.BackendIPTablesLegacy {
			t.Fatalf("auto chose %s in a namespace with legacy rules, want iptables-legacy", res.Backend)
		}
		if s := saveFamily(t, ns, redirect.BackendIPTablesNFT, redirect.IPv4) + saveFamily(t, ns, redirect.BackendIPTablesNFT, redirect.IPv6); strings.Contains(s, "DETOUR") {
			t.Errorf("rules landed in iptables-nft too:\n%s", s)
		}
	})
	t.Run("nft rules keep nft", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		restoreText(t, ns, redirect.BackendIPTablesNFT, redirect.IPv6, "*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n")
		if res := mustInstall(t, e, mustPlan(t, auto, dualStack)); res.Backend != redirect.BackendIPTablesNFT {
			t.Fatalf("auto chose %s in a namespace with nft rules, want iptables-nft", res.Backend)
		}
	})
	t.Run("ours win over foreign rules", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		mustInstall(t, e, mustPlan(t, withBackend(t, auto, redirect.BackendIPTablesNFT), dualStack))
		restoreText(t, ns, redirect.BackendIPTablesLegacy, redirect.IPv4, "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
		res := mustInstall(t, e, mustPlan(t, cfgWith(t, "", "outbound.excludePorts=25"), dualStack))
		if res.Backend != redirect.BackendIPTablesNFT || !res.Changed {
			t.Fatalf("auto re-install = %+v, want it to stay on iptables-nft", res)
		}
	})
	t.Run("empty namespace takes the host default", func(t *testing.T) {
		t.Parallel()
		_, e := newNS(t)
		want := redirect.BackendIPTablesLegacy
		if out, _ := exec.Command("iptables", "-V").Output(); strings.Contains(string(out), "nf_tables") {
			want = redirect.BackendIPTablesNFT
		}
		for _, c := range []redirect.Config{auto, withBackend(t, auto, redirect.BackendIPTables)} {
			res := mustInstall(t, e, mustPlan(t, c, dualStack))
			if res.Backend != want {
				t.Errorf("backend %s chose %s, want the host default %s", c.Backend, res.Backend, want)
			}
		}
	})
	t.Run("switch in place, never mixed", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		mustInstall(t, e, mustPlan(t, withBackend(t, auto, redirect.BackendIPTablesLegacy), dualStack))
		p := mustPlan(t, withBackend(t, auto, redirect.BackendIPTablesNFT), dualStack)
		res := mustInstall(t, e, p)
		if res.Backend != redirect.BackendIPTablesNFT || !res.Changed || len(res.Replaced) != 1 || res.Replaced[0] != redirect.BackendIPTablesLegacy {
			t.Fatalf("Install with nft over a legacy install = %+v, want a switch from iptables-legacy", res)
		}
		if s := save(t, ns, redirect.BackendIPTablesLegacy); strings.Contains(s, "DETOUR") {
			t.Errorf("iptables-legacy still holds our rules after the switch:\n%s", s)
		}
		assertNoDrift(t, e, p)
		mustInstall(t, e, mustPlan(t, withBackend(t, auto, redirect.BackendIPTablesLegacy), dualStack))
		// Someone else made a mixed install: install refuses, uninstall cleans both.
		restoreText(t, ns, redirect.BackendIPTablesNFT, redirect.IPv4, renderTables(firstFamily(t, redirect.Default(), dualStack).Tables))
		if _, err := e.Install(context.Background(), mustPlan(t, auto, dualStack)); !errors.Is(err, redirect.ErrBackendConflict) {
			t.Fatalf("Install over a mixed install = %v, want ErrBackendConflict", err)
		}
		if st, err := e.Status(context.Background()); err != nil || len(st.Others) != 1 || !slices.Equal(slices.Sorted(slices.Values([]redirect.Backend{st.Backend, st.Others[0]})), []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT}) {
			t.Errorf("Status over a mixed install = %+v, %v; want both iptables backends named", st, err)
		}
		mustUninstall(t, e)
		for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
			if s := save(t, ns, b); strings.Contains(s, "DETOUR") {
				t.Errorf("%s still holds our rules after uninstall:\n%s", b, s)
			}
		}
	})
}

// failingTool puts a tool that always fails first on PATH.
func failingTool(t *testing.T, name string) {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"" + name + ": simulated failure\" >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// TestIPv6FailureRollsBackIPv4 is L7: IPv6 present, IPv6 rules impossible →
// error, and IPv4 is exactly as before (our old hooks at their old places).
// Not parallel: it changes PATH.
func TestIPv6FailureRollsBackIPv4(t *testing.T) {
	privtest.Require(t, backendTools...)
	for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		t.Run(string(b), func(t *testing.T) {
			ns, e := newNS(t)
			seedForeign(t, ns, b)
			mustInstall(t, e, mustPlan(t, withBackend(t, cfgWith(t, "", "dropInvalidPackets=true"), b), dualStack))
			// Foreign rules after ours in the built-in chains: a rollback must put
			// our hooks back in front of them.
			restoreText(t, ns, b, redirect.IPv4, "*nat\n-A OUTPUT -d 203.0.113.7/32 -j RETURN\n-A PREROUTING -d 203.0.113.8/32 -j RETURN\nCOMMIT\n*mangle\n-A PREROUTING -d 203.0.113.9/32 -j RETURN\nCOMMIT\n")
			before := save(t, ns, b)

			failingTool(t, toolName(b, redirect.IPv6, "restore"))
			p := mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture=all", "mode=tproxy"), b), dualStack)
			_, err := e.Install(context.Background(), p)
			if !errors.Is(err, redirect.ErrIPv6Unavailable) || !strings.Contains(err.Error(), "simulated failure") {
				t.Fatalf("Install = %v, want ErrIPv6Unavailable with the tool's message", err)
			}
			if after := save(t, ns, b); after != before {
				t.Errorf("IPv4 was not rolled back exactly:\n--- before\n%s\n--- after\n%s", before, after)
			}
			if rules := ns.Run(t, "ip", "-4", "rule") + ns.Run(t, "ip", "-6", "rule"); strings.Contains(rules, "lookup 2000") {
				t.Errorf("the TPROXY routing stayed after the failed install:\n%s", rules)
			}
		})
	}
}

// TestIPv6ToolsMissing: no ip6tables at all → error before anything changes,
// unless ipFamilies is ipv4. Not parallel: it changes PATH.
func TestIPv6ToolsMissing(t *testing.T) {
	privtest.Require(t, backendTools...)
	dir := t.TempDir()
	for _, tool := range []string{"ip", "iptables", "iptables-legacy-save", "iptables-legacy-restore", "iptables-nft-save", "iptables-nft-restore"} {
		real, err := exec.LookPath(tool)
		if err != nil {
			privtest.Skip(t, "needs "+tool)
		}
		if err := os.Symlink(real, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	ns, e := newNS(t)
	t.Setenv("PATH", dir)
	for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		before := saveFamily(t, ns, b, redirect.IPv4)
		_, err := e.Install(context.Background(), mustPlan(t, withBackend(t, redirect.Default(), b), dualStack))
		if !errors.Is(err, redirect.ErrIPv6Unavailable) {
			t.Fatalf("%s: Install without ip6tables = %v, want ErrIPv6Unavailable", b, err)
		}
		if after := saveFamily(t, ns, b, redirect.IPv4); after != before {
			t.Errorf("%s: IPv4 changed although IPv6 was impossible:\n%s", b, after)
		}
	}
	p := mustPlan(t, cfgWith(t, "", "ipFamilies=ipv4"), dualStack)
	if res := mustInstall(t, e, p); !res.Changed || len(res.Families) != 1 {
		t.Errorf("ipv4-only Install = %+v, want IPv4 installed", res)
	}
	assertNoDrift(t, e, p)
	mustUninstall(t, e)
}

// TestLockTimeout holds the xtables lock: legacy iptables gives up after
// LockWait with ErrLockTimeout and nothing applied; iptables-nft takes no lock.
// Not parallel: the lock is host-wide, held for about a second.
func TestLockTimeout(t *testing.T) {
	privtest.Require(t, backendTools...)
	ns, e := newNS(t)
	e.LockWait = time.Second
	f, err := os.OpenFile("/run/xtables.lock", os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := save(t, ns, redirect.BackendIPTablesLegacy)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = e.Install(context.Background(), mustPlan(t, withBackend(t, redirect.Default(), redirect.BackendIPTablesLegacy), dualStack))
	waited := time.Since(start)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, redirect.ErrLockTimeout) {
		t.Fatalf("Install with the lock held = %v, want ErrLockTimeout", err)
	}
	if waited > 20*time.Second {
		t.Errorf("Install waited %s for the lock, far beyond LockWait", waited)
	}
	if after := save(t, ns, redirect.BackendIPTablesLegacy); after != before {
		t.Errorf("rules changed although the lock was never acquired:\n%s", after)
	}
	mustInstall(t, e, mustPlan(t, withBackend(t, redirect.Default(), redirect.BackendIPTablesLegacy), dualStack))
}

// TestParallelInstalls is L10: many namespaces installing at once all succeed
// (legacy ones queue on the host-wide xtables lock).
func TestParallelInstalls(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		const n = 50
		p := mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture=all"), b), dualStack)
		engines := make([]*redirect.Engine, n)
		for i := range engines {
			_, engines[i] = newNS(t)
		}
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, e := range engines {
			wg.Go(func() {
				_, errs[i] = e.Install(context.Background(), p)
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("install %d: %v", i, err)
			}
		}
		for _, e := range engines {
			assertNoDrift(t, e, p)
		}
	})
}

// TestTProxyRouting: the policy routing comes and goes with the rules.
func TestTProxyRouting(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		ns, e := newNS(t)
		rulesBefore := ns.Run(t, "ip", "-4", "rule") + ns.Run(t, "ip", "-6", "rule")
		p := mustPlan(t, withBackend(t, cfgWith(t, "", "mode=tproxy"), b), dualStack)
		mustInstall(t, e, p)
		for _, v := range []string{"-4", "-6"} {
			if out := ns.Run(t, "ip", v, "rule"); !strings.Contains(out, "2000:\tfrom all fwmark 0x2000/0x2000 lookup 2000") {
				t.Errorf("ip %s rule lacks ours:\n%s", v, out)
			}
			if out := ns.Run(t, "ip", v, "route", "show", "table", "2000"); !strings.Contains(out, "local default dev lo") {
				t.Errorf("ip %s route show table 2000 lacks the local route:\n%s", v, out)
			}
		}
		assertNoDrift(t, e, p)

		ns.Run(t, "ip", "-6", "route", "del", "local", "default", "dev", "lo", "table", "2000")
		d, err := e.Check(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Families) != 1 || d.Families[0].Family != redirect.IPv6 || len(d.Families[0].Missing) != 1 || !strings.Contains(d.Families[0].Missing[0], "route add local ::/0") {
			t.Errorf("Check after deleting the IPv6 route = %+v", d)
		}
		if res := mustInstall(t, e, p); !res.Changed || res.Processes != 2 {
			t.Errorf("Install restoring the route = %+v, want a change without restores (2 saves: the other backend is glanced at)", res)
		}
		assertNoDrift(t, e, p)

		// Back to redirect mode: the routing goes, the rules change.
		pr := mustPlan(t, withBackend(t, redirect.Default(), b), dualStack)
		mustInstall(t, e, pr)
		assertNoDrift(t, e, pr)
		mustInstall(t, e, p)
		mustUninstall(t, e)
		if after := ns.Run(t, "ip", "-4", "rule") + ns.Run(t, "ip", "-6", "rule"); after != rulesBefore {
			t.Errorf("ip rules after uninstall:\n%s\nwant\n%s", after, rulesBefore)
		}
		for _, v := range []string{"-4", "-6"} {
			if out := ns.Run(t, "ip", v, "route", "show", "table", "2000"); strings.TrimSpace(out) != "" {
				t.Errorf("table 2000 (%s) after uninstall: %s", v, out)
			}
		}
	})
}

// TestPassthroughAddress: the IPv6 passthrough source goes on lo with the
// install and leaves with the uninstall; one that was already there is used
// and left alone. A non-loopback IPv4 source is handled the same way.
func TestPassthroughAddress(t *testing.T) {
	t.Parallel()
	addrs := func(ns privtest.NS) string { return ns.Run(t, "ip", "addr", "show", "dev", "lo") }
	t.Run("ours", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		before := addrs(ns)
		p := mustPlan(t, cfgWith(t, "", "proxy.inboundPassthroughSource.ipv4=169.254.7.7"), dualStack)
		mustInstall(t, e, p)
		got := addrs(ns)
		for _, want := range []string{"inet6 ::6/128 scope global nodad noprefixroute", "inet 169.254.7.7/32 scope host noprefixroute lo:detour"} {
			if !strings.Contains(got, want) {
				t.Errorf("lo lacks %q:\n%s", want, got)
			}
		}
		assertNoDrift(t, e, p)
		ns.Run(t, "ip", "-6", "addr", "del", "::6/128", "dev", "lo")
		if d, err := e.Check(context.Background(), p); err != nil || len(d.Families) != 1 || !strings.Contains(strings.Join(d.Families[0].Missing, ""), "::6/128") {
			t.Errorf("Check after deleting ::6 = %+v, %v; want it missing", d, err)
		}
		mustInstall(t, e, p)
		// Inbound off: the address goes.
		mustInstall(t, e, mustPlan(t, cfgWith(t, "", "inbound.enabled=false"), dualStack))
		if got := addrs(ns); strings.Contains(got, "::6") || strings.Contains(got, "169.254.7.7") {
			t.Errorf("the passthrough addresses stayed with inbound off:\n%s", got)
		}
		mustInstall(t, e, p)
		mustUninstall(t, e)
		if after := addrs(ns); after != before {
			t.Errorf("lo after uninstall:\n%s\nwant\n%s", after, before)
		}
	})
	t.Run("already there", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		ns.Run(t, "ip", "-6", "addr", "add", "::6/128", "dev", "lo")
		before := addrs(ns)
		p := mustPlan(t, redirect.Default(), dualStack)
		mustInstall(t, e, p)
		assertNoDrift(t, e, p)
		mustUninstall(t, e)
		if after := addrs(ns); after != before {
			t.Errorf("lo after uninstall:\n%s\nwant the address someone else added, untouched:\n%s", after, before)
		}
	})
}

// TestPassthroughRoute: in a pod sandbox (Facts.LoByRuntime) the IPv6
// passthrough source is made local by a route on lo, never an address, so the
// runtime's loopback network (which refuses any address on lo but 127.0.0.0/8
// and ::1) may run before or after; lo found down is set up (the kernel
// refuses IPv6 routes on a down device: the TPROXY routes too). An address an
// older detour-cni put there goes with the next install; uninstall removes the
// route.
func TestPassthroughRoute(t *testing.T) {
	t.Parallel()
	pod := dualStack
	pod.LoByRuntime = true
	localRoutes := func(ns privtest.NS) string {
		return ns.Run(t, "ip", "-6", "route", "show", "table", "local", "proto", "215")
	}
	loAddrs := func(ns privtest.NS) string { return ns.Run(t, "ip", "addr", "show", "dev", "lo") }
	t.Run("lo down, tproxy", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		ns.Run(t, "ip", "link", "set", "lo", "down")
		p := mustPlan(t, cfgWith(t, "", "mode=tproxy"), pod)
		mustInstall(t, e, p)
		if got := loAddrs(ns); !strings.Contains(got, "UP") || strings.Contains(got, "::6") {
			t.Errorf("lo after install: want it up, without ::6:\n%s", got)
		}
		if got := localRoutes(ns); !strings.Contains(got, "local ::6 dev lo") {
			t.Errorf("table local lacks our route to ::6: %q", got)
		}
		if out := ns.Run(t, "ip", "-6", "route", "show", "table", "2000"); !strings.Contains(out, "local default dev lo") {
			t.Errorf("table 2000 lacks the TPROXY route:\n%s", out)
		}
		assertNoDrift(t, e, p)
		ns.Run(t, "ip", "-6", "route", "del", "local", "::6/128", "dev", "lo", "table", "local", "proto", "215")
		if d, err := e.Check(context.Background(), p); err != nil || len(d.Families) != 1 || !strings.Contains(strings.Join(d.Families[0].Missing, ""), "route add local ::6/128 dev lo table local") {
			t.Errorf("Check after deleting the route = %+v, %v; want it missing", d, err)
		}
		mustInstall(t, e, p)
		assertNoDrift(t, e, p)
		mustUninstall(t, e)
		if got := localRoutes(ns); strings.TrimSpace(got) != "" {
			t.Errorf("table local after uninstall: %q", got)
		}
	})
	t.Run("upgrade from the address", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		before := loAddrs(ns)
		old := mustPlan(t, redirect.Default(), dualStack)
		mustInstall(t, e, old)
		if got := loAddrs(ns); !strings.Contains(got, "::6/128") {
			t.Fatalf("the address install put no ::6 on lo:\n%s", got)
		}
		p := mustPlan(t, redirect.Default(), pod)
		mustInstall(t, e, p)
		if got := loAddrs(ns); got != before {
			t.Errorf("lo after the route install:\n%s\nwant the address gone:\n%s", got, before)
		}
		if got := localRoutes(ns); !strings.Contains(got, "local ::6 dev lo") {
			t.Errorf("table local lacks our route to ::6: %q", got)
		}
		assertNoDrift(t, e, p)
		// The address plan (the CLI's: detour check --netns of a CNI pod) on
		// a route install: the route is the installed form of ::6, no drift;
		// an install of that plan keeps the route and adds no address.
		assertNoDrift(t, e, old)
		if res := mustInstall(t, e, old); res.Changed {
			t.Errorf("install of the address plan on the route install changed something: %+v", res)
		}
		if got := loAddrs(ns); got != before {
			t.Errorf("lo after the address plan's install:\n%s\nwant no ::6:\n%s", got, before)
		}
		if got := localRoutes(ns); !strings.Contains(got, "local ::6 dev lo") {
			t.Errorf("the address plan's install removed our route to ::6: %q", got)
		}
		// Both forms there (the address someone else's): the address plan
		// keeps the address, our route goes.
		ns.Run(t, "ip", "-6", "addr", "add", "::6/128", "dev", "lo", "nodad")
		if d, err := e.Check(context.Background(), old); err != nil || d.Empty() {
			t.Errorf("Check of the address plan with the address and the route = %+v, %v; want the route as drift", d, err)
		}
		mustInstall(t, e, old)
		assertNoDrift(t, e, old)
		if got := localRoutes(ns); strings.TrimSpace(got) != "" {
			t.Errorf("table local after the address plan's install over both forms: %q", got)
		}
		ns.Run(t, "ip", "-6", "addr", "del", "::6/128", "dev", "lo")
		mustInstall(t, e, p)
		assertNoDrift(t, e, p)
		mustUninstall(t, e)
		if got := localRoutes(ns); strings.TrimSpace(got) != "" {
			t.Errorf("table local after uninstall: %q", got)
		}
		if got := loAddrs(ns); got != before {
			t.Errorf("lo after uninstall:\n%s\nwant\n%s", got, before)
		}
	})
	t.Run("uninstall of an older address install", func(t *testing.T) {
		t.Parallel()
		ns, e := newNS(t)
		before := loAddrs(ns)
		mustInstall(t, e, mustPlan(t, redirect.Default(), dualStack))
		mustUninstall(t, e)
		if got := loAddrs(ns); got != before {
			t.Errorf("lo after uninstall:\n%s\nwant\n%s", got, before)
		}
	})
}

func TestFacts(t *testing.T) {
	t.Parallel()
	ns, e := newNS(t)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	content := "# generated\nsearch example.test\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\nnameserver 2001:db8::53\n"
	if err := os.WriteFile(resolv, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := cfgWith(t, "", "dns.capture=resolvconf", "dns.resolvConf="+resolv)
	f, err := e.Facts(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !f.IPv6 {
		t.Error("Facts says a fresh namespace has no IPv6")
	}
	var got []string
	for _, a := range f.Nameservers {
		got = append(got, a.String())
	}
	if strings.Join(got, " ") != "127.0.0.53 fe80::1 2001:db8::53" {
		t.Errorf("nameservers = %v", got)
	}
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
	if f, err := e.Facts(context.Background(), redirect.Default()); err != nil || f.IPv6 || f.Nameservers != nil {
		t.Errorf("Facts with IPv6 disabled = %+v, %v; want no IPv6 and no nameservers read", f, err)
	}
	// An unreadable resolv.conf is invalid input (exit 2), naming the field
	// and the path.
	for _, path := range []string{filepath.Join(t.TempDir(), "missing"), t.TempDir()} {
		cfg.DNS.ResolvConf = path
		_, err := e.Facts(context.Background(), cfg)
		var fe *redirect.FieldError
		if !errors.Is(err, redirect.ErrInvalid) || !errors.As(err, &fe) || fe.Field != "dns.resolvConf" || fe.Value != path {
			t.Errorf("Facts with resolv.conf %s = %#v, want a *FieldError for dns.resolvConf with the path, matching ErrInvalid", path, err)
		}
	}
}

// Benchmarks of the engine in a fresh namespace per backend, with the istio
// preset and DNS capture on both families: time per call and child processes
// per call (procs/op).

func benchEngine(b *testing.B, run func(b *testing.B, e *redirect.Engine, p redirect.Plan)) {
	for _, backend := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		b.Run(string(backend), func(b *testing.B) {
			_, e := newNS(b)
			p := mustPlan(b, withBackend(b, cfgWith(b, "istio", "dns.capture=all"), backend), dualStack)
			run(b, e, p)
		})
	}
}

func BenchmarkInstall(b *testing.B) {
	benchEngine(b, func(b *testing.B, e *redirect.Engine, p redirect.Plan) {
		procs := 0
		for b.Loop() {
			b.StopTimer()
			mustUninstall(b, e)
			b.StartTimer()
			procs += mustInstall(b, e, p).Processes
		}
		b.ReportMetric(float64(procs)/float64(b.N), "procs/op")
	})
}

func BenchmarkInstallNoChange(b *testing.B) {
	benchEngine(b, func(b *testing.B, e *redirect.Engine, p redirect.Plan) {
		mustInstall(b, e, p)
		procs := 0
		for b.Loop() {
			res := mustInstall(b, e, p)
			if res.Changed {
				b.Fatal("a re-install changed something")
			}
			procs += res.Processes
		}
		b.ReportMetric(float64(procs)/float64(b.N), "procs/op")
	})
}

func BenchmarkUninstall(b *testing.B) {
	benchEngine(b, func(b *testing.B, e *redirect.Engine, p redirect.Plan) {
		procs := 0
		for b.Loop() {
			b.StopTimer()
			mustInstall(b, e, p)
			b.StartTimer()
			procs += mustUninstall(b, e).Processes
		}
		b.ReportMetric(float64(procs)/float64(b.N), "procs/op")
	})
}

// partialRestore puts a shim of tool first on PATH whose first call applies
// only the first table of its input (iptables-restore commits each table at
// its COMMIT line) and then, when hold is set, tells the test through the
// returned FIFO and waits to be killed, else fails. Later calls run the real
// tool. Not for parallel tests: it changes PATH.
func partialRestore(t *testing.T, tool string, hold bool) (fifo string) {
	t.Helper()
	real, err := exec.LookPath(tool)
	if err != nil {
		privtest.Skip(t, "needs "+tool)
	}
	dir := t.TempDir()
	fifo = filepath.Join(dir, "committed")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	after := `echo "` + tool + `: simulated failure after the first table" >&2
exit 1`
	if hold {
		after = `echo committed > ` + fifo + `
exec sleep 60`
	}
	script := `#!/bin/sh
if [ -e ` + dir + `/called ]; then exec ` + real + ` "$@"; fi
touch ` + dir + `/called
cat > ` + dir + `/input
awk '{ print } /^COMMIT$/ { exit }' ` + dir + `/input | ` + real + ` "$@" || exit 2
` + after + "\n"
	if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return fifo
}

// TestFailedFamilyRolledBack: a restore that commits its first table (raw) and
// then fails, or is cancelled, leaves every table of both families as it was,
// the failing family included. Not parallel: it changes PATH.
func TestFailedFamilyRolledBack(t *testing.T) {
	privtest.Require(t, backendTools...)
	for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		for _, f := range allFamilies {
			for _, cancel := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/fails", b, f)
				if cancel {
					name = fmt.Sprintf("%s/%s/cancelled", b, f)
				}
				t.Run(name, func(t *testing.T) {
					ns, e := newNS(t)
					seedForeign(t, ns, b)
					// raw (DNS zones), mangle (drop-invalid) and nat of ours, with a
					// foreign rule after our hooks in each built-in chain we use.
					from := mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture=all", "dropInvalidPackets=true"), b), dualStack)
					mustInstall(t, e, from)
					foreign := "*raw\n-A OUTPUT -d 203.0.113.7/32 -j RETURN\nCOMMIT\n*nat\n-A OUTPUT -d 203.0.113.7/32 -j RETURN\nCOMMIT\n"
					if f == redirect.IPv6 {
						foreign = strings.ReplaceAll(foreign, "203.0.113.7/32", "2001:db8::7/128")
					}
					restoreText(t, ns, b, f, foreign)
					before := save(t, ns, b)

					// The new plan changes raw, mangle and nat of both families.
					to := mustPlan(t, withBackend(t, cfgWith(t, "", "outbound.excludePorts=25", "mode=tproxy"), b), dualStack)
					fifo := partialRestore(t, toolName(b, f, "restore"), cancel)
					ctx, stop := context.WithCancel(context.Background())
					defer stop()
					if cancel {
						go func() {
							// Opening the FIFO blocks until the shim has committed raw.
							if _, err := os.ReadFile(fifo); err == nil {
								stop()
							}
						}()
					}
					_, err := e.Install(ctx, to)
					if err == nil {
						t.Fatal("Install succeeded although the restore failed")
					}
					t.Logf("Install: %v", err)
					if after := save(t, ns, b); after != before {
						t.Errorf("the failed install left rules changed:\n%s", cmp.Diff(before, after))
					}
					assertNoDrift(t, e, from)
				})
			}
		}
	}
}

// TestRestoreCommitsPerTable shows why a failed family must be read again:
// with the real tools, a restore whose raw table deletes our hook and whose nat
// table then fails (it deletes a rule that does not exist) commits raw anyway.
// apply puts raw back, so every table ends as it was.
func TestRestoreCommitsPerTable(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		ns, e := newNS(t)
		seedForeign(t, ns, b)
		mustInstall(t, e, mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture=all"), b), dualStack))
		before := save(t, ns, b)
		for _, f := range allFamilies {
			bad := "*raw\n-D OUTPUT -p udp -m comment --comment detour -j DETOUR_CT_OUTPUT\nCOMMIT\n*nat\n-D OUTPUT -d 203.0.113.99/32 -j RETURN\nCOMMIT\n"
			// Without apply: raw is committed although the restore fails.
			cmd := exec.Command("ip", "netns", "exec", ns.Name, toolName(b, f, "restore"), "--noflush")
			cmd.Stdin = strings.NewReader(strings.ReplaceAll(bad, "203.0.113.99/32", map[redirect.Family]string{redirect.IPv4: "203.0.113.99/32", redirect.IPv6: "2001:db8::99/128"}[f]))
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Fatalf("%s: the bad restore succeeded: %s", f, out)
			}
			if got := saveFamily(t, ns, b, f); strings.Contains(got, "-j DETOUR_CT_OUTPUT") {
				t.Fatalf("%s: raw was not committed before nat failed; the premise of this test is wrong:\n%s", f, got)
			}
			restoreText(t, ns, b, f, "*raw\n-I OUTPUT 2 -p udp -m comment --comment detour -j DETOUR_CT_OUTPUT\nCOMMIT\n")
			if after := save(t, ns, b); after != before {
				t.Fatalf("%s: could not put the hook back:\n%s", f, cmp.Diff(before, after))
			}

			// Through apply: the failed family is rolled back.
			err := netns.Do(ns.Path, func() error {
				r := (&Driver{Backend: b}).newRun(context.Background())
				fo := r.observeFamily(f)
				if fo.err != nil {
					return fo.err
				}
				return r.apply([]step{{family: f, from: fo.owned, to: fo.owned, script: bad}})
			})
			if err == nil {
				t.Fatalf("%s: apply of the bad script succeeded", f)
			}
			if after := save(t, ns, b); after != before {
				t.Errorf("%s: apply left the failed family changed (%v):\n%s", f, err, cmp.Diff(before, after))
			}
		}
	})
}

// TestForeignNetStateSurvives: addresses, rules and routes that look like
// ours but do not carry our protocol are someone else's — a VIP on lo with
// nodad and noprefixroute, an IPv4 address labelled lo:detour, an identical
// TPROXY rule, a local default route in table 2000 — and survive install,
// re-install and uninstall; ours come and go next to them.
func TestForeignNetStateSurvives(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		ns, e := newNS(t)
		for _, c := range [][]string{
			{"ip", "-6", "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad", "noprefixroute"},
			{"ip", "-4", "addr", "add", "192.0.2.77/32", "dev", "lo", "label", "lo:detour", "noprefixroute"},
			// The same numbers as ours, in both families.
			{"ip", "-4", "rule", "add", "fwmark", "0x2000/0x2000", "lookup", "2000", "priority", "2000", "protocol", "static"},
			{"ip", "-6", "rule", "add", "fwmark", "0x2000/0x2000", "lookup", "2000", "priority", "2000", "protocol", "static"},
			{"ip", "-4", "rule", "add", "from", "192.0.2.0/24", "lookup", "2000", "priority", "2000"},
			// IPv4: a route that takes our route's place; IPv6: another route in our table.
			{"ip", "-4", "route", "add", "local", "default", "dev", "lo", "table", "2000", "proto", "static"},
			{"ip", "-6", "route", "add", "local", "2001:db8:5::/64", "dev", "lo", "table", "2000"},
		} {
			ns.Run(t, c...)
		}
		state := func() string {
			var out strings.Builder
			for _, c := range [][]string{
				{"ip", "-d", "addr", "show"},
				{"ip", "-4", "rule"}, {"ip", "-6", "rule"},
				{"ip", "-4", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
			} {
				out.WriteString(ns.Run(t, c...))
			}
			return out.String()
		}
		before := state()
		if st, err := e.Status(context.Background()); err != nil || st.Installed {
			t.Fatalf("Status before install = %+v, %v; the foreign state is not ours", st, err)
		}

		p := mustPlan(t, withBackend(t, cfgWith(t, "", "mode=tproxy", "proxy.inboundPassthroughSource.ipv4=169.254.7.7"), b), dualStack)
		for i := range 2 {
			res := mustInstall(t, e, p)
			if res.Changed != (i == 0) {
				t.Errorf("install %d: Changed = %v", i+1, res.Changed)
			}
			assertNoDrift(t, e, p)
			got := state()
			for _, want := range []string{
				"inet6 2001:db8::1/128 scope global nodad noprefixroute",
				"inet 192.0.2.77/32 scope global noprefixroute lo:detour",
				"2000:\tfrom all fwmark 0x2000/0x2000 lookup 2000 proto static",
				"2000:\tfrom 192.0.2.0/24 lookup 2000",
				"local default dev lo table 2000 proto static",
				"local 2001:db8:5::/64 dev lo table 2000",
				// ours, next to them
				"2000:\tfrom all fwmark 0x2000/0x2000 lookup 2000 proto 215",
				"local default dev lo table 2000 proto 215 metric 1024",
				"inet6 ::6/128 scope global nodad noprefixroute",
				"inet 169.254.7.7/32 scope host noprefixroute lo:detour",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("install %d: lacks %q:\n%s", i+1, want, got)
				}
			}
		}
		// Another plan that needs no routing and no IPv4 address of ours: only
		// ours go.
		mustInstall(t, e, mustPlan(t, withBackend(t, redirect.Default(), b), dualStack))
		if got := state(); !strings.Contains(got, "2001:db8::1/128") || !strings.Contains(got, "proto static") || strings.Contains(got, "proto 215") {
			t.Errorf("after installing redirect mode:\n%s", got)
		}
		mustUninstall(t, e)
		if after := state(); after != before {
			t.Errorf("uninstall did not leave the foreign state as it was:\n%s", cmp.Diff(before, after))
		}
	})
}

// TestFactsIPv6PerInterface: IPv6 is present when any interface has it, even
// with net.ipv6.conf.all.disable_ipv6=1 (an interface may turn it back on),
// and absent only when no interface has it.
func TestFactsIPv6PerInterface(t *testing.T) {
	t.Parallel()
	ns, e := newNS(t)
	ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
	ipv6 := func() bool {
		t.Helper()
		f, err := e.Facts(context.Background(), redirect.Default())
		if err != nil {
			t.Fatal(err)
		}
		return f.IPv6
	}
	if ipv6() {
		t.Errorf("Facts says IPv6 with IPv6 disabled on every interface:\n%s", ns.Run(t, "sysctl", "-a", "--pattern", "disable_ipv6"))
	}
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0")
	ns.Run(t, "ip", "link", "set", "eth0", "up")
	if !ipv6() {
		t.Errorf("Facts says no IPv6 although eth0 has it (all.disable_ipv6=1, eth0.disable_ipv6=0): an auto plan would let IPv6 bypass the proxy\n%s", ns.Run(t, "ip", "-6", "addr"))
	}
	// lo still has IPv6 disabled (all=1 set it): captured IPv6 could not be
	// delivered, so planning IPv6 is the IPv6-unavailable error with the fix,
	// before anything is applied.
	f, err := e.Facts(context.Background(), redirect.Default())
	if err != nil {
		t.Fatal(err)
	}
	if !f.LoIPv6Disabled {
		t.Errorf("Facts misses that lo has IPv6 disabled: %+v", f)
	}
	for _, c := range []redirect.Config{redirect.Default(), cfgWith(t, "", "ipFamilies=dual")} {
		_, err := redirect.NewPlan(c, f)
		if !errors.Is(err, redirect.ErrIPv6Unavailable) || !strings.Contains(err.Error(), "net.ipv6.conf.lo.disable_ipv6=0") || !strings.Contains(err.Error(), "--ip-families ipv4") {
			t.Errorf("plan %s with IPv6 disabled on lo = %v, want ErrIPv6Unavailable naming both fixes", c.IPFamilies, err)
		}
	}
	if _, err := redirect.NewPlan(cfgWith(t, "", "ipFamilies=ipv4"), f); err != nil {
		t.Errorf("ipFamilies ipv4 with IPv6 disabled on lo: %v", err)
	}
	// With IPv6 on lo, ipFamilies auto plans both families.
	ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0")
	if f, err = e.Facts(context.Background(), redirect.Default()); err != nil {
		t.Fatal(err)
	}
	if p := mustPlan(t, redirect.Default(), f); len(p.Families()) != 2 {
		t.Errorf("auto plan with IPv6 on eth0 and lo captures %d families, want 2", len(p.Families()))
	}
}

// barrierRestore puts shims of the restore tools first on PATH that hold each
// of the engine's restores until n of them have arrived (or about a second has passed),
// so that concurrent installs that both saw "nothing installed" really do
// restore at the same time. Not for parallel tests: it changes PATH.
func barrierRestore(t *testing.T, n int, tools ...string) {
	t.Helper()
	dir := t.TempDir()
	for _, tool := range tools {
		real, err := exec.LookPath(tool)
		if err != nil {
			privtest.Skip(t, "needs "+tool)
		}
		script := fmt.Sprintf(`#!/bin/sh
touch %[1]s/arrived.$$
i=0
while [ "$(ls %[1]s | grep -c '^arrived')" -lt %[2]d ] && [ $i -lt 100 ]; do sleep 0.01; i=$((i+1)); done
exec %[3]s "$@"
`, dir, n, real)
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// TestConcurrentInstallsOneNamespace: two installs of the same namespace at
// the same moment end with exactly one copy of the rules, the second seeing
// the first's work. Not parallel: it changes PATH.
func TestConcurrentInstallsOneNamespace(t *testing.T) {
	privtest.Require(t, backendTools...)
	for _, b := range []redirect.Backend{redirect.BackendIPTablesLegacy, redirect.BackendIPTablesNFT} {
		t.Run(string(b), func(t *testing.T) {
			barrierRestore(t, 2, toolName(b, redirect.IPv4, "restore"), toolName(b, redirect.IPv6, "restore"))
			ns, _ := newNS(t)
			p := mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture=all"), b), dualStack)
			var wg sync.WaitGroup
			results := make([]redirect.Result, 2)
			errs := make([]error, 2)
			for i := range 2 {
				// Separate engines, as two processes would be. The barrier holds the
				// first install's restore for up to 100 polls while the second waits
				// for the namespace lock: on a loaded machine that exceeds the default
				// 10s, so the wait here is long.
				e := &redirect.Engine{NetNS: ns.Path, Drivers: Drivers(0, nil), LockWait: 2 * time.Minute}
				wg.Go(func() { results[i], errs[i] = e.Install(context.Background(), p) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("install %d: %v", i, err)
				}
			}
			if results[0].Changed == results[1].Changed {
				t.Errorf("Changed = %v and %v, want exactly one install to change something", results[0].Changed, results[1].Changed)
			}
			for _, f := range allFamilies {
				got := saveFamily(t, ns, b, f)
				for _, h := range []string{"-A OUTPUT -p tcp -m comment --comment detour -j DETOUR_OUTPUT", "-A OUTPUT -p udp -m udp --dport 53 -m comment --comment detour -j DETOUR_DNS"} {
					if n := strings.Count(got, h+"\n"); n != 1 {
						t.Errorf("%s holds %d copies of %q, want 1:\n%s", f, n, h, got)
					}
				}
			}
			assertNoDrift(t, &redirect.Engine{NetNS: ns.Path, Drivers: Drivers(0, nil)}, p)
		})
	}
}

// TestNamespaceLockWait: while another run holds the namespace's lock,
// Install and Uninstall wait at most LockWait, then fail with ErrLockTimeout
// having run nothing; the lock file goes with its holder.
func TestNamespaceLockWait(t *testing.T) {
	t.Parallel()
	ns, e := newNS(t)
	e.LockDir = t.TempDir()
	e.LockWait = 300 * time.Millisecond
	// Another run holds the lock: an Uninstall whose only backend waits in
	// Ready until released.
	holder := *e
	entered, release := make(chan struct{}), make(chan struct{})
	holder.Drivers = []redirect.Driver{&waitingDriver{Driver: &Driver{Backend: redirect.BackendIPTablesNFT}, entered: entered, release: release}}
	holder.LockWait = time.Minute
	held := make(chan error, 1)
	go func() {
		_, err := holder.Uninstall(context.Background())
		held <- err
	}()
	<-entered
	before := save(t, ns, redirect.BackendIPTablesNFT)
	res, err := e.Install(context.Background(), mustPlan(t, withBackend(t, redirect.Default(), redirect.BackendIPTablesNFT), dualStack))
	if !errors.Is(err, redirect.ErrLockTimeout) || res.Processes != 0 {
		t.Fatalf("Install while the lock is held = %+v, %v; want ErrLockTimeout and no process", res, err)
	}
	if _, err := e.Uninstall(context.Background()); !errors.Is(err, redirect.ErrLockTimeout) {
		t.Fatalf("Uninstall while the lock is held = %v, want ErrLockTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e.LockWait = time.Minute
	if _, err := e.Install(ctx, mustPlan(t, redirect.Default(), dualStack)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Install with a cancelled context while the lock is held = %v, want context.Canceled", err)
	}
	if after := save(t, ns, redirect.BackendIPTablesNFT); after != before {
		t.Errorf("rules changed although the lock was never acquired:\n%s", after)
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatalf("the Uninstall holding the lock: %v", err)
	}
	mustInstall(t, e, mustPlan(t, withBackend(t, redirect.Default(), redirect.BackendIPTablesNFT), dualStack))
	mustUninstall(t, e)
	if left, _ := os.ReadDir(e.LockDir); len(left) != 0 {
		t.Errorf("lock files left behind: %v", left)
	}
}

// waitingDriver is a Driver whose Ready waits until release is closed (after
// closing entered), so an Engine call holds the namespace's lock meanwhile.
type waitingDriver struct {
	redirect.Driver
	entered, release chan struct{}
}

func (w *waitingDriver) Ready(ctx context.Context) error {
	close(w.entered)
	<-w.release
	return w.Driver.Ready(ctx)
}
