//go:build linux

package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestLifecycle covers SCENARIOS.md "Modes and lifecycle", L1–L11.
func TestLifecycle(t *testing.T) {
	t.Parallel()

	t.Run("L1", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			excluded := p.appPort(netip.Addr{})
			excludedOut := p.remotePort()
			p.install("--exclude-inbound-ports", csv(excluded), "--exclude-outbound-ports", csv(excludedOut))
			for i := range cases() {
				p.outbound("L1 O1 any address:port", p.app(i, p.remoteDest()), srvOutbound)
				p.inbound("L1 I1 any port of the workload", p.client(i, p.appPort(netip.Addr{})), srvInbound)
				p.inbound("L1 I2 excluded inbound port", p.client(i, excluded), srvApp)
				// Connections opened from the pod that stay uncaptured need their
				// replies: under TPROXY those arrive through the inbound rules.
				p.outbound("L1 O7 the proxy's own connection", lab.DialOptions{To: p.remoteDest(), Cred: p.proxyCred()}, srvRemote)
				p.outbound("L1 O2 the app to an excluded port", p.app(i, netip.AddrPortFrom(p.remoteAddr(), excludedOut)), srvRemote)
			}
		})
	})

	t.Run("L2", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			first := p.install()
			if strings.Contains(strings.ToLower(first.stdout), "no changes") {
				t.Errorf("the first install reports no changes:\n%s", first)
			}
			s1 := p.snapshot()
			if len(ours(s1)) == 0 {
				t.Fatalf("install left no rules of detour's:\n%s", s1)
			}
			noDuplicates(t, p)
			second := p.install()
			if !strings.Contains(strings.ToLower(second.stdout), "no changes") {
				t.Errorf("a second identical install does not report \"no changes\":\n%s", second)
			}
			if s2 := p.snapshot(); s2 != s1 {
				t.Errorf("a second identical install changed the namespace:\n%s", diffLines(s1, s2))
			}
			// A changed config replaces the rules; it never adds a second copy.
			port := p.remotePort()
			third := p.install("--exclude-outbound-ports", csv(port))
			if strings.Contains(strings.ToLower(third.stdout), "no changes") {
				t.Errorf("an install with a new excluded port reports no changes:\n%s", third)
			}
			noDuplicates(t, p)
			if len(hooks(s1)) == 0 {
				t.Fatalf("found no hook of detour's in the first install's state:\n%s", s1)
			}
			if v.backend == ebpfBackend && !slices.ContainsFunc(hooks(s1), func(h string) bool { return strings.HasPrefix(h, "ebpf link ") }) {
				t.Fatalf("found no pinned link of the ebpf programs in the first install's state:\n%s", s1)
			}
			if got, want := hooks(p.snapshot()), hooks(s1); !slices.Equal(got, want) {
				t.Errorf("hooks in built-in chains after a changed install:\n%s\nwant the same as after the first:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if r := p.detour(p.withFlags("check", "--exclude-outbound-ports", csv(port))...); r.code != 0 {
				t.Errorf("check after the changed install:\n%s", r)
			}
			p.outbound("L2 newly excluded port", p.app(0, netip.AddrPortFrom(p.remoteAddr(), port)), srvRemote)
			p.outbound("L2 other ports still captured", p.app(1, p.remoteDest()), srvOutbound)
		})
	})

	// L3: someone else's chains and rules in nat, mangle, raw and filter, and a policy
	// routing rule, are there before; uninstall leaves every save byte-identical. The
	// ipv4 and ipv6 subtests install that family only (--ip-families); dual seeds and
	// installs both.
	t.Run("L3", func(t *testing.T) {
		for _, fam := range []string{"ipv4", "ipv6", "dual"} {
			t.Run(fam, func(t *testing.T) {
				for _, b := range backends {
					t.Run(b, func(t *testing.T) {
						for _, m := range []string{"redirect", "tproxy"} {
							t.Run(m, func(t *testing.T) {
								t.Parallel()
								families, ipFamilies := lab.Families, "auto"
								if fam != "dual" {
									families, ipFamilies = []lab.Family{lab.Family(fam)}, fam
								}
								uninstallRestores(t, variant{family: families[0], backend: b, mode: m}, families, ipFamilies)
							})
						}
					})
				}
			})
		}
	})

	t.Run("L4", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			before := p.snapshot()
			for i := range 2 {
				if r := p.detour("uninstall"); r.code != 0 {
					t.Errorf("uninstall #%d without an install:\n%s", i+1, r)
				}
			}
			if after := p.snapshot(); after != before {
				t.Errorf("uninstall without an install changed the namespace:\n%s", diffLines(before, after))
			}
			p.install()
			p.uninstall()
			once := p.snapshot()
			switch {
			case withoutEmptyTables(once) != withoutEmptyTables(before):
				t.Errorf("install then uninstall in a fresh namespace left changes:\n%s", diffLines(before, once))
			case once != before && v.backend != legacy:
				// Only legacy iptables cannot delete a table once used;
				// detour deletes iptables-nft's emptied chains and tables.
				t.Errorf("install then uninstall in a fresh namespace left empty tables behind:\n%s", diffLines(before, once))
			case once != before:
				t.Logf("install then uninstall in a fresh namespace left empty tables behind (iptables-legacy keeps a table once used):\n%s", diffLines(before, once))
			}
			if o := ours(once); len(o) != 0 {
				t.Errorf("uninstall left rules of detour's:\n%s", strings.Join(o, "\n"))
			}
			if r := p.detour("uninstall"); r.code != 0 {
				t.Errorf("a second uninstall:\n%s", r)
			}
			if twice := p.snapshot(); twice != once {
				t.Errorf("a second uninstall changed the namespace:\n%s", diffLines(once, twice))
			}
		})
	})

	t.Run("L5", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			if v.backend == nftNative {
				t.Skip("iptables-legacy and iptables-nft stickiness; switching to and from nftables is L11")
			}
			skipLimit(t, v.backend)
			other := nft
			if v.backend == nft {
				other = legacy
			}
			t.Run("foreign-rules", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				restore(t, p, v.backend, v.family, "*nat\n:FOREIGN_NAT - [0:0]\n-A FOREIGN_NAT -p tcp --dport 8080 -j RETURN\n-A OUTPUT -p udp -j FOREIGN_NAT\nCOMMIT\n")
				r := p.detour(append([]string{"install"}, p.flagsWith("auto")...)...)
				if r.code != 0 {
					t.Fatalf("install with backend auto:\n%s", r)
				}
				onlyIn(t, p, v.backend, other)
				if got := statusBackend(t, p); got != v.backend {
					t.Errorf("status reports backend %q, want %q", got, v.backend)
				}
				again := p.detour(append([]string{"install"}, p.flagsWith("auto")...)...)
				if again.code != 0 || !strings.Contains(strings.ToLower(again.stdout), "no changes") {
					t.Errorf("a second install with backend auto:\n%s", again)
				}
				onlyIn(t, p, v.backend, other)
				p.outbound("L5 captured", p.app(0, p.remoteDest()), srvOutbound)
			})
			t.Run("sticky", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				p.install()
				r := p.detour(append([]string{"install"}, p.flagsWith("auto")...)...)
				if r.code != 0 || !strings.Contains(strings.ToLower(r.stdout), "no changes") {
					t.Errorf("install with backend auto over an install with %s: want \"no changes\":\n%s", v.backend, r)
				}
				onlyIn(t, p, v.backend, other)
			})
			t.Run("switch", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				p.install()
				// Switching in place: the other backend's rules are applied, then
				// these removed; never both, never neither.
				r := p.detour(append([]string{"install"}, p.flagsWith(other)...)...)
				if r.code != 0 || !strings.Contains(r.stdout, "switched from "+v.backend) {
					t.Errorf("install with %s over an install with %s: want a switch:\n%s", other, v.backend, r)
				}
				onlyIn(t, p, other, v.backend)
				if got := statusBackend(t, p); got != other {
					t.Errorf("status after the switch reports backend %q, want %q", got, other)
				}
				p.outbound("L5 still captured", p.app(0, p.remoteDest()), srvOutbound)
			})
		})
	})

	t.Run("L6", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			invalid := invalidCases(t, v.family)
			runInvalid := func(stage string) {
				before := p.snapshot()
				for _, c := range invalid {
					args := []string{"install", "--backend", v.backend}
					if slices.Contains(c.args, "--backend") {
						args = args[:1]
					}
					args = append(args, c.args...)
					r := p.detourCmd(c.env, args...)
					msg := r.stdout + r.stderr
					if r.code != 2 {
						t.Errorf("%s: %s: want exit 2:\n%s", stage, c.name, r)
						continue
					}
					if !slices.ContainsFunc(c.field, func(f string) bool { return strings.Contains(msg, f) }) || !strings.Contains(msg, c.value) {
						t.Errorf("%s: %s: the message does not name the field (one of %q) and the value %q:\n%s", stage, c.name, c.field, c.value, r)
					}
				}
				if after := p.snapshot(); after != before {
					t.Errorf("%s: invalid installs changed the namespace:\n%s", stage, diffLines(before, after))
				}
			}
			runInvalid("nothing installed")
			p.install()
			runInvalid("over a valid install")
		})
	})

	t.Run("L7", func(t *testing.T) {
		for _, b := range backends {
			t.Run("ipv6/"+b, func(t *testing.T) {
				t.Parallel()
				if b == nftNative {
					t.Skip("ip6tables missing is an iptables failure: nftables installs both families in one netlink batch, with no tool")
				}
				v := variant{family: lab.IPv6, backend: b, mode: "redirect"}
				p := newPod(t, v)
				p.startProxies()
				shims := t.TempDir()
				names := []string{ip6(b) + "-restore"}
				if b == nft {
					names = append(names, "ip6tables-restore")
				}
				for _, n := range names {
					script := "#!/bin/sh\necho \"" + n + ": IPv6 rules are impossible here (e2e shim)\" >&2\nexit 1\n"
					if err := os.WriteFile(filepath.Join(shims, n), []byte(script), 0o755); err != nil {
						t.Fatal(err)
					}
				}
				env := []string{"PATH=" + shims + ":" + os.Getenv("PATH")}
				before := p.snapshot()
				r := p.detourCmd(env, p.withFlags("install")...)
				if r.code != 1 || !strings.Contains(strings.ToLower(r.stdout+r.stderr), "ipv6") {
					t.Errorf("install with IPv6 rules impossible: want exit 1 and an error about IPv6:\n%s", r)
				}
				if after := p.snapshot(); withoutEmptyTables(after) != withoutEmptyTables(before) {
					t.Errorf("a failed install left changes (IPv4 not rolled back?):\n%s", diffLines(before, after))
				} else if after != before {
					t.Logf("a failed install left empty tables behind (no rule, no chain of ours):\n%s", diffLines(before, after))
				}
				r = p.detourCmd(env, p.withFlags("install", "--ip-families", "ipv4")...)
				if r.code != 0 {
					t.Fatalf("install with --ip-families ipv4 and IPv6 rules impossible:\n%s", r)
				}
				if len(ours(p.save(b, lab.IPv4))) == 0 {
					t.Errorf("--ip-families ipv4 installed no IPv4 rules")
				}
				if o := ours(p.save(b, lab.IPv6)); len(o) != 0 {
					t.Errorf("--ip-families ipv4 installed IPv6 rules:\n%s", strings.Join(o, "\n"))
				}
				v4 := &pod{t: t, v: variant{family: lab.IPv4, backend: b, mode: "redirect"}, ctx: p.ctx, lab: p.lab, rnd: p.rnd, uid: p.uid, inPort: p.inPort, outPort: p.outPort, dnsPort: p.dnsPort}
				v4.startProxies()
				v4.outbound("L7 IPv4 captured", v4.app(0, v4.remoteDest()), srvOutbound)
				p.outbound("L7 IPv6 left alone as asked", p.app(0, p.remoteDest()), srvRemote)
			})
		}
	})

	t.Run("L8", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.install("--dns-capture", "all")
			check := func() result { return p.detour(p.withFlags("check", "--dns-capture", "all")...) }
			if r := check(); r.code != 0 {
				t.Fatalf("check right after install:\n%s", r)
			}
			if v.backend == ebpfBackend {
				ebpfDrift(t, p, check)
				return
			}
			if v.backend == nftNative {
				nftablesDrift(t, p, check)
				return
			}
			for i := range cases() {
				rules := chainRules(p.save(v.backend, v.family))
				if len(rules) == 0 {
					t.Fatalf("no rules in detour's chains in %s %s", v.backend, v.family)
				}
				var want, what string
				if i%2 == 0 {
					rule := rules[p.rnd.IntN(len(rules))]
					if _, err := p.lab.Pod.Run(p.ctx, p.iptables(), "-t", rule.table, "-D", rule.chain, strconv.Itoa(rule.index)); err != nil {
						t.Fatal(err)
					}
					want, what = rule.spec, "deleted "+rule.String()
				} else {
					rule := rules[p.rnd.IntN(len(rules))]
					port := strconv.Itoa(int(p.rnd.Port()))
					if _, err := p.lab.Pod.Run(p.ctx, p.iptables(), "-t", rule.table, "-I", rule.chain, "1", "-p", "tcp", "--dport", port, "-j", "RETURN"); err != nil {
						t.Fatal(err)
					}
					want, what = "--dport "+port, "added -p tcp --dport "+port+" -j RETURN to "+rule.table+" "+rule.chain
				}
				driftRepaired(t, p, check, want, what)
			}
			uninstalledCheck(t, p, check)
		})
	})

	t.Run("L9", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			validate := func() result { return p.detour(p.withFlags("validate")...) }
			if r := validate(); r.code != 5 {
				t.Errorf("validate before install: want exit 5:\n%s", r)
			}
			p.install()
			if r := validate(); r.code != 0 {
				t.Errorf("validate with the rules installed: want exit 0:\n%s", r)
			}
			// The order on a VM: install, start the proxy, validate. The kernel
			// says where the probe landed: the proxy's socket.
			p.startProxies()
			if r := validate(); r.code != 0 || !strings.Contains(r.stdout, "held by the proxy's socket") {
				t.Errorf("validate while the proxy owns the outbound port: want exit 0 naming the proxy's socket:\n%s", r)
			}
			p.uninstall()
			if r := validate(); r.code != 5 {
				t.Errorf("validate after uninstall, the proxy still running: want exit 5:\n%s", r)
			}
			// Rules that do not capture outbound traffic fail validation too.
			p.install("--outbound=false")
			if r := validate(); r.code != 5 {
				t.Errorf("validate with outbound capture off: want exit 5:\n%s", r)
			}
		})
	})

	t.Run("L11", switchUnderLoad)

	t.Run("L10", func(t *testing.T) {
		for _, b := range backends {
			t.Run("dual/"+b, func(t *testing.T) {
				t.Parallel()
				parallelInstalls(t, b, 50)
			})
		}
	})
}

// uninstallRestores seeds foreign rules in families, installs with --ip-families
// ipFamilies and checks that uninstall restores everything.
func uninstallRestores(t *testing.T, v variant, families []lab.Family, ipFamilies string) {
	p := newPod(t, v)
	// Connections to a seeded address are routed to "unreachable" by the foreign
	// policy routing, before any nat rule: the checks below dial other addresses.
	seeded := map[netip.Addr]bool{}
	for _, f := range families {
		seeded[seedForeign(t, p, f)] = true
	}
	dest := func(fp *pod) netip.AddrPort {
		for {
			if to := fp.remoteDest(); !seeded[to.Addr()] {
				return to
			}
		}
	}
	if len(families) == 2 {
		// Someone else's ::6 on lo: detour uses it and must leave it there.
		if err := p.lab.Pod.IPBatch(p.ctx, "addr add ::6/128 dev lo nodad"); err != nil {
			t.Fatal(err)
		}
	}
	before := p.snapshot()
	p.install("--ip-families", ipFamilies, "--dns-capture", "all", "--log", "--drop-invalid-packets", "--exclude-outbound-ports", "22")
	for _, f := range families {
		if len(p.detourState(v.backend, f)) == 0 {
			t.Fatalf("install left no rules of detour's in %s %s", v.backend, f)
		}
		fp := *p
		fp.v.family = f
		fp.startProxies()
		fp.outbound("L3 installed", fp.app(0, dest(&fp)), srvOutbound)
	}
	p.uninstall()
	if after := p.snapshot(); after != before {
		t.Errorf("uninstall did not restore the namespace (- before, + after):\n%s", diffLines(before, after))
	}
	for _, f := range families {
		fp := *p
		fp.v.family = f
		fp.outbound("L3 uninstalled", fp.app(1, dest(&fp)), srvRemote)
	}
}

// nftablesDrift is L8 for the nftables backend: someone deletes a rule of
// table inet detour, or inserts one, with nft; check exits 3 with a diff that
// shows the chain, and a re-install repairs it.
func nftablesDrift(t *testing.T, p *pod, check func() result) {
	t.Helper()
	privtest.Require(t, "nft")
	suffix := "4"
	if p.v.family == lab.IPv6 {
		suffix = "6"
	}
	for i := range cases() {
		out, err := p.lab.Pod.Run(p.ctx, "nft", "-a", "list", "table", "inet", "detour")
		if err != nil {
			t.Fatal(err)
		}
		type rule struct{ chain, handle string }
		var rules []rule
		chain := ""
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && f[0] == "chain":
				chain = f[1]
			case chain != "" && strings.HasSuffix(chain, suffix) && len(f) > 3 && f[len(f)-3] == "#" && f[len(f)-2] == "handle":
				rules = append(rules, rule{chain, f[len(f)-1]})
			}
		}
		if len(rules) == 0 {
			t.Fatalf("no rules in table inet detour's ipv%s chains:\n%s", suffix, out)
		}
		r := rules[p.rnd.IntN(len(rules))]
		var want, what string
		if i%2 == 0 {
			if _, err := p.lab.Pod.Run(p.ctx, "nft", "delete", "rule", "inet", "detour", r.chain, "handle", r.handle); err != nil {
				t.Fatal(err)
			}
			want, what = "+add rule inet detour "+r.chain+" ", "deleted rule "+r.handle+" of "+r.chain
		} else {
			port := strconv.Itoa(int(p.rnd.Port()))
			if _, err := p.lab.Pod.Run(p.ctx, "nft", "insert", "rule", "inet", "detour", r.chain, "tcp", "dport", port, "return"); err != nil {
				t.Fatal(err)
			}
			want, what = "-add rule inet detour "+r.chain+" # rule handle", "inserted tcp dport "+port+" return into "+r.chain
		}
		driftRepaired(t, p, check, want, what)
	}
	uninstalledCheck(t, p, check)
}

// driftRepaired is L8 after someone changed detour's rules (what): check
// exits 3 with a diff that shows want, and a re-install repairs it.
func driftRepaired(t *testing.T, p *pod, check func() result, want, what string) {
	t.Helper()
	if r := check(); r.code != 3 || !strings.Contains(r.stdout+r.stderr, want) {
		t.Errorf("check after someone %s: want exit 3 and a diff showing %q:\n%s", what, want, r)
	}
	p.install("--dns-capture", "all")
	if r := check(); r.code != 0 {
		t.Errorf("check after re-install repaired what someone %s:\n%s", what, r)
	}
}

// uninstalledCheck: after uninstall, check exits 4 (nothing installed).
func uninstalledCheck(t *testing.T, p *pod, check func() result) {
	t.Helper()
	p.uninstall()
	if r := check(); r.code != 4 {
		t.Errorf("check with nothing installed: want exit 4:\n%s", r)
	}
}

// ebpfDrift is L8 for the ebpf backend: its state is its inbound table,
// which someone can delete or flush with nft, and the entries of its pinned
// maps, which someone can edit or delete with bpftool (the pod has a pin
// directory of its own, so each map holds only its entries); check reports
// each (exit 3), status says the maps differ from what detour wrote, and a
// re-install repairs them.
func ebpfDrift(t *testing.T, p *pod, check func() result) {
	t.Helper()
	privtest.Require(t, "bpftool")
	maps := filepath.Join(pinDir(p.env), "maps")
	for i, c := range []struct {
		what, want string
		nft        []string
		bpf        func() // edits a map with bpftool
		status     string // in status's drift note
	}{
		{what: "deleted the inbound table", want: "detour_ebpf_inbound", nft: []string{"delete", "table", "inet", "detour_ebpf_inbound"}},
		{what: "flushed the inbound table's chains", want: "detour_ebpf_inbound", nft: []string{"flush", "table", "inet", "detour_ebpf_inbound"}},
		{
			what: "changed the config's outbound port with bpftool", want: "outbound_port=" + strconv.Itoa(int(p.outPort)),
			status: "the entries of config",
			bpf: func() {
				key, value := bpftoolEntry(t, filepath.Join(maps, "configs"))
				b, err := strconv.ParseUint(value[12], 16, 8) // out_port's low byte (little-endian)
				if err != nil {
					t.Fatal(err)
				}
				value[12] = fmt.Sprintf("%02x", b^1)
				bpftool(t, append(append(append([]string{"map", "update", "pinned", filepath.Join(maps, "configs"), "key", "hex"}, key...), "value", "hex"), value...)...)
			},
		},
		{
			what: "deleted the enrolment with bpftool", want: "scopes: no entry for this scope",
			status: "the scopes map has no entry for this scope",
			bpf: func() {
				key, _ := bpftoolEntry(t, filepath.Join(maps, "scopes"))
				bpftool(t, append([]string{"map", "delete", "pinned", filepath.Join(maps, "scopes"), "key", "hex"}, key...)...)
			},
		},
	} {
		if c.nft != nil {
			if _, err := p.lab.Pod.Run(p.ctx, "nft", c.nft...); err != nil {
				t.Fatal(err)
			}
		} else {
			c.bpf()
		}
		r := check()
		if r.code != 3 || !strings.Contains(r.stdout+r.stderr, c.want) {
			t.Errorf("check after someone %s: want exit 3 and a diff naming %q:\n%s", c.what, c.want, r)
		}
		if c.status != "" {
			if r := p.detour("status"); r.code != 0 || !strings.Contains(r.stdout, "# ebpf: drift: "+c.status) {
				t.Errorf("status after someone %s: want exit 0 and the drift note %q:\n%s", c.what, c.status, r)
			}
		}
		p.install("--dns-capture", "all")
		if r := check(); r.code != 0 {
			t.Errorf("check after re-install #%d repaired what someone %s:\n%s", i+1, c.what, r)
		}
		if r := p.detour("status"); r.code != 0 || strings.Contains(r.stdout, "drift") {
			t.Errorf("status after re-install #%d repaired what someone %s: want no drift note:\n%s", i+1, c.what, r)
		}
	}
	uninstalledCheck(t, p, check)
	if left := pinsLeft(t, p.env); len(left) != 0 {
		t.Errorf("uninstall left pins: %q", left)
	}
}

// bpftoolEntry is the only entry of the pinned map at pin, as the hex bytes
// of its key and value (`bpftool -j map dump`).
func bpftoolEntry(t *testing.T, pin string) (key, value []string) {
	t.Helper()
	var entries []struct {
		Key   []string `json:"key"`
		Value []string `json:"value"`
	}
	if err := json.Unmarshal([]byte(bpftool(t, "-j", "map", "dump", "pinned", pin)), &entries); err != nil {
		t.Fatalf("bpftool map dump %s: %v", pin, err)
	}
	if len(entries) != 1 {
		t.Fatalf("map %s holds %d entries, want the pod's one", pin, len(entries))
	}
	hex := func(bs []string) []string {
		out := make([]string, len(bs))
		for i, b := range bs {
			out[i] = strings.TrimPrefix(b, "0x")
		}
		return out
	}
	return hex(entries[0].Key), hex(entries[0].Value)
}

// bpftool runs bpftool (on the host: the pins are on a private bpffs of the
// suite, not in the pod) and returns its output.
func bpftool(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("bpftool", args...).Output()
	if err != nil {
		t.Fatalf("bpftool %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// noDuplicates fails t when a save output of the pod holds a rule of detour's twice.
func noDuplicates(t *testing.T, p *pod) {
	t.Helper()
	for _, f := range lab.Families {
		seen := map[string]bool{}
		for _, line := range p.detourState(p.v.backend, f) {
			if seen[line] {
				t.Errorf("%s %s holds this rule twice: %s", p.v.backend, f, line)
			}
			seen[line] = true
		}
	}
}

// hooks returns detour's rules in built-in chains, in every save of a snapshot.
func hooks(snapshot string) []string {
	var out []string
	for _, line := range ours(snapshot) {
		if strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A DETOUR") {
			out = append(out, line)
		}
	}
	// In an nft ruleset the hooks are the base chains of detour's tables: the
	// "type … hook …" line under each "chain NAME {". For ebpf they are also
	// its programs' pinned links (links/<kind>@<cgroup id>/<program>).
	var table, chain, section string
	for _, line := range strings.Split(snapshot, "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(line, "== ") {
			section = line
		}
		switch {
		case section == "== ebpf pins" && strings.HasPrefix(l, "links/") && strings.Count(l, "/") == 2:
			out = append(out, "ebpf link "+l)
		case strings.HasPrefix(line, "table "):
			table, chain = strings.TrimSuffix(l, " {"), ""
		case strings.HasPrefix(l, "chain "):
			chain = strings.TrimSuffix(l, " {")
		case strings.HasPrefix(l, "type ") && strings.Contains(l, " hook ") && strings.Contains(table, "detour"):
			out = append(out, table+" "+chain+": "+l)
		}
	}
	return out
}

// restore feeds rules to `<backend>-restore --noflush` in the pod.
func restore(t *testing.T, p *pod, backend string, f lab.Family, rules string) {
	t.Helper()
	cmd := backend + "-restore"
	if f == lab.IPv6 {
		cmd = ip6(backend) + "-restore"
	}
	c := p.lab.Pod.Command(p.ctx, nil, cmd, "--noflush")
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s\n%s", cmd, err, out, rules)
	}
}

// seedForeign installs someone else's chains and rules in nat, mangle, raw and
// filter, and a policy routing rule with its table, for family f.
func seedForeign(t *testing.T, p *pod, f lab.Family) netip.Addr {
	t.Helper()
	seeded := p.rnd.RemoteAddr(f)
	addr := seeded.String()
	rules := `*raw
:FOREIGN_RAW - [0:0]
-A FOREIGN_RAW -p udp --dport 4789 -j CT --notrack
-A PREROUTING -j FOREIGN_RAW
-A OUTPUT -p udp -m comment --comment "someone else's rule" -j FOREIGN_RAW
COMMIT
*mangle
:FOREIGN_MANGLE - [0:0]
-A FOREIGN_MANGLE -j MARK --set-xmark 0x4200/0xff00
-A PREROUTING -p tcp --dport 9000 -j FOREIGN_MANGLE
-A OUTPUT -d ` + addr + ` -j FOREIGN_MANGLE
COMMIT
*nat
:FOREIGN_NAT - [0:0]
-A FOREIGN_NAT -p tcp --dport 8080 -j RETURN
-A PREROUTING -p tcp -j FOREIGN_NAT
-A OUTPUT -p tcp -d ` + addr + ` -j FOREIGN_NAT
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
*filter
:FOREIGN_FILTER - [0:0]
-A FOREIGN_FILTER -p tcp --dport 22 -j ACCEPT
-A INPUT -j FOREIGN_FILTER
COMMIT
`
	if p.v.backend == nftNative || p.v.backend == ebpfBackend {
		// The ebpf backend's inbound share is an nftables table: another
		// tool's table is the neighbour to leave alone.
		nftForeign(t, p, f, seeded)
	} else {
		restore(t, p, p.v.backend, f, rules)
	}
	fam := "-4"
	unreachable := "192.0.2.0/24"
	if f == lab.IPv6 {
		fam, unreachable = "-6", "2001:db8:ffff::/48"
	}
	for _, c := range [][]string{
		{fam, "rule", "add", "fwmark", "0x4200/0xff00", "lookup", "4242", "pref", "4242"},
		{fam, "route", "add", "unreachable", unreachable, "table", "4242"},
	} {
		if _, err := p.lab.Pod.Run(p.ctx, "ip", c...); err != nil {
			t.Fatal(err)
		}
	}
	return seeded
}

// nftForeign installs someone else's native nftables table for family f (a
// table of its own per family): notrack in raw, a mark for the seeded address
// in a route chain, a nat prerouting chain and a masquerade, and a filter
// input chain — the nftables counterpart of seedForeign's iptables rules.
func nftForeign(t *testing.T, p *pod, f lab.Family, seeded netip.Addr) {
	t.Helper()
	ip, name := "ip", "foreign4"
	if f == lab.IPv6 {
		ip, name = "ip6", "foreign6"
	}
	ruleset := fmt.Sprintf(`table inet %[1]s {
	chain raw_out {
		type filter hook output priority raw; policy accept;
		udp dport 4789 notrack comment "someone else's rule"
	}
	chain mangle_out {
		type route hook output priority mangle; policy accept;
		%[2]s daddr %[3]s meta mark set 0x4200
	}
	chain nat_pre {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8080 return
	}
	chain nat_post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
	chain filter_in {
		type filter hook input priority filter; policy accept;
		tcp dport 22 accept
	}
}
`, name, ip, seeded)
	c := p.lab.Pod.Command(p.ctx, nil, "nft", "-f", "-")
	c.Stdin = strings.NewReader(ruleset)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, ruleset)
	}
}

// onlyIn fails t unless backend holds detour's rules and other holds none.
func onlyIn(t *testing.T, p *pod, backend, other string) {
	t.Helper()
	if len(p.detourState(backend, p.v.family)) == 0 {
		t.Errorf("no rules of detour's in %s %s", backend, p.v.family)
	}
	for _, f := range lab.Families {
		if o := p.detourState(other, f); len(o) != 0 {
			t.Errorf("detour's rules are in %s %s too (mixed install):\n%s", other, f, strings.Join(o, "\n"))
		}
	}
}

// statusBackend returns the backend `detour status -o json` reports.
func statusBackend(t *testing.T, p *pod) string {
	t.Helper()
	r := p.detour("status", "-o", "json")
	if r.code != 0 {
		t.Fatalf("status:\n%s", r)
	}
	var st struct {
		Installed bool   `json:"installed"`
		Backend   string `json:"backend"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status -o json: %v:\n%s", err, r)
	}
	if !st.Installed {
		t.Errorf("status says nothing is installed:\n%s", r)
	}
	return st.Backend
}

// chainRule is one rule in one of detour's chains, as iptables-save shows it.
type chainRule struct {
	table, chain string
	index        int    // 1-based position in the chain
	spec         string // the text after "-A CHAIN "
}

func (r chainRule) String() string {
	return fmt.Sprintf("rule %d of %s %s (%s)", r.index, r.table, r.chain, r.spec)
}

// chainRules lists the rules of detour's chains (DETOUR_…) in a save output.
func chainRules(save string) []chainRule {
	var out []chainRule
	table := ""
	count := map[string]int{}
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, "*") {
			table = line[1:]
			continue
		}
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		chain, spec, _ := strings.Cut(line[3:], " ")
		count[table+" "+chain]++
		if strings.HasPrefix(chain, "DETOUR") {
			out = append(out, chainRule{table: table, chain: chain, index: count[table+" "+chain], spec: spec})
		}
	}
	return out
}

// invalidCase is one invalid install and what its error must name.
type invalidCase struct {
	name  string
	args  []string
	env   []string
	field []string // one of these must appear in the message
	value string   // and this
}

func invalidCases(t *testing.T, f lab.Family) []invalidCase {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	badYAML := write("bad.yaml", "proxy: [uid: 5678\n  inboundPort: {\n")
	badValue := write("bad-value.yaml", "outbound:\n  excludePorts: [80, 70000]\n")
	missing := filepath.Join(dir, "missing.yaml")
	long := strings.Repeat("x", 40)
	cs := []invalidCase{
		{"outbound port 70000", []string{"--outbound-port", "70000"}, nil, []string{"proxy.outboundPort", "--outbound-port"}, "70000"},
		{"inbound port abc", []string{"--inbound-port", "abc"}, nil, []string{"proxy.inboundPort", "--inbound-port"}, "abc"},
		{"same inbound and outbound port", []string{"--inbound-port", "15001", "--outbound-port", "15001"}, nil, []string{"proxy.outboundPort", "proxy.inboundPort"}, "15001"},
		{"unknown mode", []string{"--mode", "tunnel"}, nil, []string{"mode"}, "tunnel"},
		{"unknown ip family", []string{"--ip-families", "ipv7"}, nil, []string{"ipFamilies", "--ip-families"}, "ipv7"},
		{"unknown backend", []string{"--backend", "pf"}, nil, []string{"backend"}, "pf"},
		{"ebpf cannot tproxy", []string{"--backend", "ebpf", "--mode", "tproxy"}, nil, []string{"mode"}, "tproxy"},
		{"proxy uid not a number", []string{"--proxy-uid", "envoy"}, nil, []string{"proxy.uid", "--proxy-uid"}, "envoy"},
		{"port range past 65535", []string{"--exclude-inbound-ports", "80,1-70000"}, nil, []string{"inbound.excludePorts", "--exclude-inbound-ports"}, "70000"},
		{"uid port rule without uids", []string{"--exclude-outbound-ports-for-uids", "tcp:53"}, nil, []string{"outbound.excludePortsForUIDs", "--exclude-outbound-ports-for-uids"}, "tcp:53"},
		{"uid port rule with a bad protocol", []string{"--exclude-outbound-ports-for-uids", "sctp:53:106"}, nil, []string{"outbound.excludePortsForUIDs", "--exclude-outbound-ports-for-uids"}, "sctp"},
		{"unknown dns capture", []string{"--dns-capture", "sometimes"}, nil, []string{"dns.capture", "--dns-capture"}, "sometimes"},
		{"dns port equal to the outbound port", []string{"--dns-capture", "all", "--dns-port", "15001"}, nil, []string{"dns.port", "--dns-port"}, "15001"},
		{"log prefix too long", []string{"--log-prefix", long}, nil, []string{"log.prefix", "--log-prefix"}, long},
		{"exclude uids range reversed", []string{"--exclude-outbound-uids", "108-106"}, nil, []string{"outbound.excludeUIDs", "--exclude-outbound-uids"}, "108-106"},
		{"missing config file", []string{"--config", missing}, nil, []string{missing}, "missing.yaml"},
		{"malformed yaml", []string{"--config", badYAML}, nil, []string{badYAML}, "bad.yaml"},
		{"invalid value in a config file", []string{"--config", badValue}, nil, []string{"outbound.excludePorts"}, "70000"},
		{"invalid environment variable", nil, []string{"DETOUR_OUTBOUND_PORT=99999"}, []string{"proxy.outboundPort", "DETOUR_OUTBOUND_PORT", "--outbound-port"}, "99999"},
		{"unknown flag", []string{"--no-such-flag"}, nil, []string{"--no-such-flag", "no-such-flag"}, "no-such-flag"},
		{"unknown preset", []string{"--preset", "linkerd"}, nil, []string{"preset"}, "linkerd"},
		{"unreadable resolv.conf", []string{"--dns-capture", "resolvconf", "--dns-resolv-conf", filepath.Join(dir, "no-resolv.conf")}, nil, []string{"dns.resolvConf"}, "no-resolv.conf"},
	}
	if f == lab.IPv4 {
		cs = append(cs,
			invalidCase{"IPv4 prefix longer than 32", []string{"--exclude-outbound-cidrs", "192.0.2.0/24,198.51.100.0/33"}, nil, []string{"outbound.excludeCIDRs", "--exclude-outbound-cidrs"}, "198.51.100.0/33"},
			invalidCase{"IPv4 address out of range", []string{"--include-outbound-cidrs", "300.1.2.3/8"}, nil, []string{"outbound.includeCIDRs", "--include-outbound-cidrs"}, "300.1.2.3/8"},
			invalidCase{"source CIDR not an address", []string{"--exclude-inbound-source-cidrs", "abc"}, nil, []string{"inbound.excludeSourceCIDRs", "--exclude-inbound-source-cidrs"}, "abc"},
			invalidCase{"IPv6 passthrough source given as IPv4", []string{"--inbound-passthrough-source-ipv4", "::6"}, nil, []string{"proxy.inboundPassthroughSource.ipv4", "--inbound-passthrough-source-ipv4"}, "::6"},
		)
	} else {
		cs = append(cs,
			invalidCase{"IPv6 prefix longer than 128", []string{"--exclude-outbound-cidrs", "2001:db8::/32,2001:db8::/129"}, nil, []string{"outbound.excludeCIDRs", "--exclude-outbound-cidrs"}, "2001:db8::/129"},
			invalidCase{"IPv6 address malformed", []string{"--include-outbound-cidrs", "2001:db8::zz/64"}, nil, []string{"outbound.includeCIDRs", "--include-outbound-cidrs"}, "2001:db8::zz/64"},
			invalidCase{"IPv6 source prefix length", []string{"--exclude-inbound-source-cidrs", "::1/200"}, nil, []string{"inbound.excludeSourceCIDRs", "--exclude-inbound-source-cidrs"}, "::1/200"},
			invalidCase{"IPv4 passthrough source given as IPv6", []string{"--inbound-passthrough-source-ipv6", "127.0.0.6"}, nil, []string{"proxy.inboundPassthroughSource.ipv6", "--inbound-passthrough-source-ipv6"}, "127.0.0.6"},
		)
	}
	return cs
}

// parallelInstalls installs detour with backend into n fresh namespaces at once; all
// must succeed, hold one copy of the rules and pass check.
func parallelInstalls(t *testing.T, backend string, n int) {
	var env []string
	switch backend {
	case nftNative:
		privtest.Require(t, "ip", "nft")
	case ebpfBackend:
		// Every namespace is enrolled in the same maps: the installs
		// contend for the pin directory's lock and the config ids.
		privtest.Require(t, "ip", "nft")
		env = ebpfEnv(t)
	default:
		privtest.Require(t, "ip", backend+"-save", ip6(backend)+"-save")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	id := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	nss := make([]*lab.NetNS, n)
	t.Cleanup(func() {
		for _, ns := range nss {
			if ns != nil {
				if err := ns.Close(); err != nil {
					t.Error(err)
				}
			}
		}
	})
	forAll := func(fn func(i int) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() { errs[i] = fn(i) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	}
	forAll(func(i int) error {
		var err error
		nss[i], err = lab.CreateNetNS(ctx, fmt.Sprintf("dt-l10-%s-%s-%d", id, backend, i))
		return err
	})
	if t.Failed() {
		t.FailNow()
	}
	for _, step := range []string{"install", "check"} {
		forAll(func(i int) error {
			// As in the rest of the suite, a 60 s lock wait: iptables-legacy's
			// restores queue on the one host-wide xtables lock, and 50 of them
			// on a loaded 2-core machine can take longer than the 10 s default.
			r := runDetour(t, ctx, env, step, "--netns", nss[i].Name, "--backend", backend, "--lock-wait", "60s")
			if r.code != 0 {
				return fmt.Errorf("%s #%d of %d at once:\n%s", step, i, n, r)
			}
			return nil
		})
	}
	forAll(func(i int) error {
		for _, f := range lab.Families {
			cmd, args := backend+"-save", []string{}
			if f == lab.IPv6 {
				cmd = ip6(backend) + "-save"
			}
			table := "detour"
			if backend == ebpfBackend {
				table = "detour_ebpf_inbound"
			}
			if backend == nftNative || backend == ebpfBackend {
				cmd, args = "nft", []string{"list", "table", "inet", table}
			}
			out, err := nss[i].Run(ctx, cmd, args...)
			if err != nil {
				return err
			}
			if backend == nftNative || backend == ebpfBackend {
				// One table: a second copy cannot exist (the batch replaces
				// it, and check above compared it with the plan, and for
				// ebpf the namespace's map entries too).
				if !strings.Contains(out, "table inet "+table) {
					return fmt.Errorf("namespace #%d: no table inet %s", i, table)
				}
				break
			}
			o := ours(out)
			if len(o) == 0 {
				return fmt.Errorf("namespace #%d: no rules of detour's in %s", i, cmd)
			}
			seen := map[string]bool{}
			for _, l := range o {
				if seen[l] {
					return fmt.Errorf("namespace #%d: %s holds a rule twice: %s", i, cmd, l)
				}
				seen[l] = true
			}
		}
		return nil
	})
	if backend != ebpfBackend {
		return
	}
	// The enrolments live in the maps, not in the namespaces: uninstall
	// each, at once; the last one leaves no pin.
	forAll(func(i int) error {
		if r := runDetour(t, ctx, env, "uninstall", "--netns", nss[i].Name); r.code != 0 {
			return fmt.Errorf("uninstall #%d of %d at once:\n%s", i, n, r)
		}
		return nil
	})
	if left := pinsLeft(t, env); len(left) != 0 {
		t.Errorf("after every namespace's uninstall, pins remain: %q", left)
	}
}
