//go:build linux

package cni

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// saveTools print every table of both iptables backends and both families.
var saveTools = []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"}

// rootRules reads the rules of the namespace the test runs in (the root one):
// read-only save commands, never anything that writes.
func rootRules(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range saveTools {
		out, err := exec.Command(tool).Output()
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		b.WriteString("== " + tool + "\n")
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") {
				continue // timestamps
			}
			if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
				l = l[:i] // packet counters
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// savedRule is one line of a save output that mentions DETOUR.
type savedRule struct {
	tool, table, line string
}

func (r savedRule) String() string { return r.tool + " " + r.table + ": " + r.line }

// detourLines returns the save lines of the namespace that mention DETOUR.
func detourLines(t *testing.T, ns privtest.NS) []savedRule {
	t.Helper()
	var rules []savedRule
	for _, tool := range saveTools {
		table := ""
		for _, l := range strings.Split(ns.Run(t, tool), "\n") {
			if strings.HasPrefix(l, "*") {
				table = l[1:]
			}
			if strings.Contains(l, "DETOUR") {
				rules = append(rules, savedRule{tool: tool, table: table, line: l})
			}
		}
	}
	return rules
}

func joinRules(rs []savedRule) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String() + "\n")
	}
	return b.String()
}

// realEnv is a plugin with the fake API but the real redirect engine.
func realEnv(t *testing.T, annotations map[string]string) *env {
	t.Helper()
	e := newEnv(t, pod("plain", "web", annotations), namespace("plain", nil))
	e.p.o.NewRedirector = EngineRedirector
	return e
}

// TestPluginInNetNS runs the plugin in-process against a real network
// namespace: the rules land there and nowhere else, CHECK catches a deleted
// rule, DEL removes everything and succeeds twice.
func TestPluginInNetNS(t *testing.T) {
	ns := privtest.NetNS(t)
	privtest.Require(t, append(saveTools, "iptables-restore", "iptables-legacy-restore", "sh")...)
	rootBefore := rootRules(t)

	e := realEnv(t, map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled, "detour.io/exclude-outbound-ports": "5432"})
	args := e.args("c1", podArgs("plain", "web"), e.conf("1.1.0", prevResults["1.1.0"], nil))
	args.Netns = ns.Path
	if err := e.p.Add(args); err != nil {
		t.Fatalf("ADD: %v\n%s", err, e.stderr.String())
	}
	if e.stdout.String() != prevResults["1.1.0"] {
		t.Errorf("stdout = %q, want the prevResult", e.stdout.String())
	}
	installed := detourLines(t, ns)
	if len(installed) == 0 {
		t.Fatal("no DETOUR rules in the pod namespace after ADD")
	}
	if !strings.Contains(joinRules(installed), "5432") {
		t.Errorf("the annotation's excluded port 5432 is not in the rules:\n%s", joinRules(installed))
	}
	if after := rootRules(t); after != rootBefore {
		t.Errorf("ADD changed the root namespace's rules:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
	}

	if err := e.p.Check(args); err != nil {
		t.Fatalf("CHECK right after ADD: %v", err)
	}
	// Delete one of our rules, in the backend and table that hold it.
	var victim *savedRule
	for i, r := range installed {
		if strings.HasPrefix(r.line, "-A DETOUR_") {
			victim = &installed[i]
			break
		}
	}
	if victim == nil {
		t.Fatalf("no rule in a DETOUR chain:\n%s", joinRules(installed))
	}
	ns.Run(t, "sh", "-c", strings.TrimSuffix(victim.tool, "-save")+" -t "+victim.table+" -D "+strings.TrimPrefix(victim.line, "-A "))
	err := e.p.Check(args)
	if ErrorCode(err) != CodeDrift {
		t.Fatalf("CHECK after deleting %v: %v (code %d), want code %d", victim, err, ErrorCode(err), CodeDrift)
	}

	for i := range 2 {
		if err := e.p.Del(args); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
		if l := detourLines(t, ns); len(l) != 0 {
			t.Fatalf("rules left after DEL #%d:\n%s", i+1, joinRules(l))
		}
	}
	if after := rootRules(t); after != rootBefore {
		t.Errorf("the plugin changed the root namespace's rules:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
	}
}

// TestPluginDelWithNetNSGone adds a pod, deletes its namespace, then DELs.
func TestPluginDelWithNetNSGone(t *testing.T) {
	privtest.Require(t, "ip", "iptables-restore")
	name := "dt-gone-" + randName(t)
	privtest.Run(t, "ip", "netns", "add", name)
	path := "/run/netns/" + name
	t.Cleanup(func() {
		if _, err := os.Stat(path); err == nil {
			_ = exec.Command("ip", "netns", "delete", name).Run()
		}
	})

	e := realEnv(t, map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled})
	args := e.args("c1", podArgs("plain", "web"), e.conf("1.1.0", "", nil))
	args.Netns = path
	if err := e.p.Add(args); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	privtest.Run(t, "ip", "netns", "delete", name)
	for i := range 2 {
		if err := e.p.Del(args); err != nil {
			t.Fatalf("DEL #%d with the netns gone: %v", i+1, err)
		}
	}
	if _, ok := e.state("c1"); ok {
		t.Error("state left after DEL")
	}
}

func randName(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/random/uuid")
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")[:10]
}
