package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestStatusOfRoutingOnly: an install killed after it made the TPROXY
// routing (the first thing it changes) and before any backend applied its
// rules leaves only the routing. status said "detour is installed (; ipv4)",
// an empty backend name; it says what uninstall says of the same state.
func TestStatusOfRoutingOnly(t *testing.T) {
	ns := privtest.NetNS(t)
	ns.Run(t, "ip", "rule", "add", "fwmark", "0x2000/0x2000", "lookup", "2000", "priority", "2000", "protocol", "215")
	code, out, stderr := runCLI(t, "status", "--netns", ns.Path)
	if want := "detour is installed (routing and addresses only; ipv4)\n"; code != 0 || !strings.HasPrefix(out, want) {
		t.Errorf("status: exit %d, stdout %q, stderr %q; want exit 0 and %q first", code, out, stderr, want)
	}
	code, out, stderr = runCLI(t, "uninstall", "--netns", ns.Path)
	if want := "detour removed (routing and addresses only; ipv4)\n"; code != 0 || out != want {
		t.Errorf("uninstall: exit %d, stdout %q, stderr %q; want exit 0 and %q", code, out, stderr, want)
	}
	if rules := ns.Run(t, "ip", "rule"); strings.Contains(rules, "2000") {
		t.Errorf("uninstall left the rule:\n%s", rules)
	}
}

// TestCheckJSONExitCodes: `check -o json` exits as `check` does — 0 in sync,
// 3 drift, 4 nothing installed — and prints its document in each case
// (`installed` says which). With drift it exited 1, as for a failure; with
// nothing installed it printed nothing.
func TestCheckJSONExitCodes(t *testing.T) {
	privtest.Require(t, "nft")
	ns := privtest.NetNS(t)
	flags := []string{"--netns", ns.Path, "--backend", "nftables", "--ip-families", "ipv4"}
	runIn := func(args ...string) (int, string, string) { return runCLI(t, append(args, flags...)...) }
	// A script reads stdout whatever the exit code: it printed nothing here.
	if code, out, stderr := runIn("check", "-o", "json"); code != exitAbsent || !strings.Contains(out, `"installed": false`) || !strings.Contains(out, `"families": []`) {
		t.Errorf("check -o json, nothing installed: exit %d, stdout %q, stderr %s; want %d, installed false and families []", code, out, stderr, exitAbsent)
	}
	if code, _, stderr := runIn("install"); code != 0 {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	t.Cleanup(func() { runIn("uninstall") })
	if code, out, stderr := runIn("check", "-o", "json"); code != 0 || !strings.Contains(out, `"families": []`) || !strings.Contains(out, `"installed": true`) {
		t.Errorf("check -o json, in sync: exit %d, stdout %s, stderr %s; want 0 and no family", code, out, stderr)
	}
	ns.Run(t, "nft", "add", "rule", "inet", "detour", "output4", "return")
	for _, o := range []string{"text", "json"} {
		if code, out, stderr := runIn("check", "-o", o); code != exitDrift || !strings.Contains(out, "not made by detour") {
			t.Errorf("check -o %s after a rule was added: exit %d, stdout %s, stderr %s; want %d and the rule", o, code, out, stderr, exitDrift)
		}
	}
}

// TestStatusJSONOfNothing: `status -o json` and `uninstall -o json` where
// nothing is installed say so with an empty list of families, not null.
func TestStatusJSONOfNothing(t *testing.T) {
	ns := privtest.NetNS(t)
	code, out, stderr := runCLI(t, "status", "--netns", ns.Path, "-o", "json")
	if code != 0 || !strings.Contains(out, `"installed": false`) || !strings.Contains(out, `"families": []`) {
		t.Errorf("status -o json, nothing installed: exit %d, stdout %s, stderr %s; want 0, installed false and families []", code, out, stderr)
	}
	// uninstall -o json of nothing said "families": null.
	code, out, stderr = runCLI(t, "uninstall", "--netns", ns.Path, "-o", "json")
	if code != 0 || !strings.Contains(out, `"changed": false`) || !strings.Contains(out, `"families": []`) {
		t.Errorf("uninstall -o json, nothing installed: exit %d, stdout %s, stderr %s; want 0, changed false and families []", code, out, stderr)
	}
}

// TestUninstallJSONNamesRemovedBackends: `uninstall -o json` lists the
// backends it removed detour's rules from under "removed". It used to say
// only "replaced" (install's word for the backends it switched away from),
// which it keeps, the same list, for scripts written against it; install's
// document has no "removed".
func TestUninstallJSONNamesRemovedBackends(t *testing.T) {
	privtest.Require(t, "nft")
	ns := privtest.NetNS(t)
	flags := []string{"--netns", ns.Path, "--backend", "nftables", "--ip-families", "ipv4"}
	code, out, stderr := runCLI(t, append([]string{"install", "-o", "json"}, flags...)...)
	if code != 0 {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	t.Cleanup(func() { runCLI(t, "uninstall", "--netns", ns.Path) })
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("install -o json: %v\n%s", err, out)
	}
	if _, ok := doc["removed"]; ok {
		t.Errorf("install -o json has a \"removed\" key:\n%s", out)
	}

	type report struct {
		Backend  string   `json:"backend"`
		Removed  []string `json:"removed"`
		Replaced []string `json:"replaced"`
		Changed  bool     `json:"changed"`
	}
	uninstall := func() (report, string) {
		t.Helper()
		code, out, stderr := runCLI(t, "uninstall", "--netns", ns.Path, "-o", "json")
		if code != 0 {
			t.Fatalf("uninstall -o json: exit %d: %s", code, stderr)
		}
		var r report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("uninstall -o json: %v\n%s", err, out)
		}
		return r, out
	}
	r, out := uninstall()
	if !r.Changed || !slices.Equal(r.Removed, []string{"nftables"}) || !slices.Equal(r.Replaced, r.Removed) {
		t.Errorf("uninstall -o json after an nftables install: want changed, removed [nftables] and replaced the same:\n%s", out)
	}
	r, out = uninstall()
	if r.Changed || r.Removed == nil || len(r.Removed) != 0 || !strings.Contains(out, `"removed": []`) {
		t.Errorf("uninstall -o json of nothing: want changed false and \"removed\": []:\n%s", out)
	}
}

// TestStatusNamesForeignChains: a DETOUR_* chain detour did not make (another
// version's, a hand-made one) makes install and uninstall refuse to run (exit
// 1), but status said only "detour is not installed", exit 0: the user asking
// why install fails was not told. status names the chains, in text and in
// `-o json` (`conflicts`), and still exits 0 (it only reports).
func TestStatusNamesForeignChains(t *testing.T) {
	privtest.Require(t, "iptables-nft")
	ns := privtest.NetNS(t)
	ns.Run(t, "iptables-nft", "-t", "nat", "-N", "DETOUR_MINE")
	if code, _, stderr := runCLI(t, "install", "--netns", ns.Path, "--backend", "iptables-nft", "--ip-families", "ipv4"); code != 1 || !strings.Contains(stderr, "DETOUR_MINE") {
		t.Fatalf("install beside a foreign DETOUR_ chain: exit %d, stderr %q; want exit 1 naming it", code, stderr)
	}
	code, out, stderr := runCLI(t, "status", "--netns", ns.Path)
	if code != 0 || !strings.Contains(out, "DETOUR_MINE") || !strings.Contains(out, "install and uninstall refuse") {
		t.Errorf("status: exit %d, stdout %q, stderr %q; want exit 0 naming DETOUR_MINE and that install and uninstall refuse", code, out, stderr)
	}
	code, out, _ = runCLI(t, "status", "--netns", ns.Path, "-o", "json")
	var st struct {
		Conflicts []string `json:"conflicts"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st.Conflicts) != 1 || !strings.Contains(st.Conflicts[0], "DETOUR_MINE") {
		t.Errorf("status -o json: exit %d, %v, conflicts %q; want one naming DETOUR_MINE", code, err, st.Conflicts)
	}
}

// TestInstallTProxyLeavesLoDown: `detour install --mode tproxy` into a
// namespace whose lo is down leaves lo as it found it (lo belongs to whoever
// made the namespace; only detour-cni, in a pod sandbox, sets it up). IPv4
// installs, as before detour-cni learned to set lo up; IPv6 cannot (the kernel
// refuses a route on a device that is down): install fails naming the route
// and leaves the namespace as it was.
func TestInstallTProxyLeavesLoDown(t *testing.T) {
	privtest.Require(t, "nft")
	ns := privtest.NetNS(t)
	ns.Run(t, "ip", "link", "set", "lo", "down")
	loDown := func(when string) {
		t.Helper()
		if got := ns.Run(t, "ip", "link", "show", "lo"); strings.Contains(got, "<LOOPBACK,UP") {
			t.Errorf("lo after %s: up, want it down as it was:\n%s", when, got)
		}
	}
	v4 := []string{"--netns", ns.Path, "--backend", "nftables", "--mode", "tproxy", "--ip-families", "ipv4"}
	if code, _, stderr := runCLI(t, append([]string{"install"}, v4...)...); code != 0 {
		t.Fatalf("install ipv4: exit %d: %s", code, stderr)
	}
	loDown("an IPv4 install")
	if code, out, stderr := runCLI(t, "uninstall", "--netns", ns.Path); code != 0 {
		t.Fatalf("uninstall: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	before := ns.Run(t, "ip", "-6", "rule")
	dual := []string{"install", "--netns", ns.Path, "--backend", "nftables", "--mode", "tproxy", "--ip-families", "dual"}
	code, out, stderr := runCLI(t, dual...)
	if code == 0 || !strings.Contains(stderr, "local ::/0 dev lo table 2000") {
		t.Errorf("install dual with lo down: exit %d, stdout %q, stderr %q; want a failure naming the IPv6 route", code, out, stderr)
	}
	loDown("a failed dual install")
	if got := ns.Run(t, "ip", "-6", "rule"); got != before {
		t.Errorf("ip -6 rule after the failed install:\n%s\nwant\n%s", got, before)
	}
	if code, out, _ := runCLI(t, "status", "--netns", ns.Path); code != 0 || out != "detour is not installed\n" {
		t.Errorf("status after the failed install: exit %d, stdout %q; want 0 and nothing installed", code, out)
	}
}

// TestCheckOfAPodWithThePassthroughRoute: detour-cni makes ::6 local in a
// pod with a route on lo (table local, detour's protocol) instead of the
// address the CLI plans. `detour check --netns` and `status --netns` of such a
// pod: check finds no drift (it reported the address missing and the route
// extra), status lists the route, and uninstall removes it.
func TestCheckOfAPodWithThePassthroughRoute(t *testing.T) {
	privtest.Require(t, "nft")
	ns := privtest.NetNS(t)
	flags := []string{"--netns", ns.Path, "--backend", "nftables", "--ip-families", "dual"}
	if code, _, stderr := runCLI(t, append([]string{"install"}, flags...)...); code != 0 {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	t.Cleanup(func() { runCLI(t, "uninstall", "--netns", ns.Path) })
	// What a route-mode ADD leaves: the route, no address.
	ns.Run(t, "ip", "-6", "route", "add", "local", "::6/128", "dev", "lo", "table", "local", "proto", "215")
	ns.Run(t, "ip", "-6", "addr", "del", "::6/128", "dev", "lo")
	if code, out, stderr := runCLI(t, append([]string{"check"}, flags...)...); code != 0 {
		t.Errorf("check: exit %d, stdout %q, stderr %q; want 0 (in sync)", code, out, stderr)
	}
	// status lists what is there: the route, not an address.
	if code, out, stderr := runCLI(t, "status", "--netns", ns.Path); code != 0 || !strings.Contains(out, "# routing: ip -6 route add local ::6/128 dev lo table local proto 215\n") || strings.Contains(out, "# address:") {
		t.Errorf("status: exit %d, stdout %q, stderr %q; want exit 0 and the route to ::6", code, out, stderr)
	}
	if code, out, stderr := runCLI(t, "uninstall", "--netns", ns.Path); code != 0 {
		t.Fatalf("uninstall: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", "table", "local", "proto", "215"); strings.TrimSpace(got) != "" {
		t.Errorf("uninstall left the route: %q", got)
	}
}
