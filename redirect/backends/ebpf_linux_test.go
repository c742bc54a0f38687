package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// ebpfLab is a private bpffs, a cgroup of the test's own (the
// network-namespace scope's attach point, with two cgroup scopes below it)
// and a network namespace: nothing of the machine's is attached to.
type ebpfLab struct {
	pinDir, root string
	ns           privtest.NS
	lockDir      string
}

func newEBPFLab(t *testing.T) ebpfLab {
	t.Helper()
	privtest.Require(t, "ip", "nft")
	if err := EBPFReady(); err != nil {
		privtest.Skip(t, err.Error())
	}
	cgroot, err := bpf.CgroupRoot()
	if err != nil {
		privtest.Skip(t, err.Error())
	}
	bpffs := privtest.BPFFS(t)
	root := filepath.Join(cgroot, fmt.Sprintf("detour-backends-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	for _, d := range []string{root, filepath.Join(root, "a"), filepath.Join(root, "b")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("create test cgroup: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{filepath.Join(root, "a"), filepath.Join(root, "b"), root} {
			if err := os.Remove(d); err != nil {
				t.Errorf("remove test cgroup: %v", err)
			}
		}
	})
	return ebpfLab{pinDir: filepath.Join(bpffs, "detour"), root: root, ns: privtest.NetNS(t), lockDir: t.TempDir()}
}

// engine is an Engine for the lab's namespace whose eBPF scope is cgroup
// ("" = the network-namespace scope).
func (l ebpfLab) engine(cgroup string) *redirect.Engine {
	e := Engine(l.ns.Path, Options{EBPF: bpf.DriverOptions{Loader: bpf.Options{PinDir: l.pinDir, Root: l.root}, Cgroup: cgroup}})
	e.LockDir = l.lockDir
	return e
}

func ebpfPlan(t *testing.T, inbound bool) redirect.Plan {
	t.Helper()
	return dualPlan(t, redirect.BackendEBPF, inbound)
}

// dualPlan is detour's default config for both families with backend b,
// inbound capture on or off.
func dualPlan(t *testing.T, b redirect.Backend, inbound bool) redirect.Plan {
	t.Helper()
	cfg := redirect.Default()
	cfg.Backend = b
	cfg.IPFamilies = redirect.IPFamiliesDual
	cfg.Inbound.Enabled = inbound
	p, err := redirect.NewPlan(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// inboundTables lists the eBPF inbound tables in the lab's namespace.
func (l ebpfLab) inboundTables(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(l.ns.Run(t, "nft", "list", "tables"), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "table inet "); ok && strings.HasPrefix(name, EBPFInboundTable) {
			out = append(out, name)
		}
	}
	return out
}

// TestEBPFOneInboundScopePerNamespace: a second eBPF scope that would
// capture inbound in a namespace where another already does is refused
// before anything changes, naming the other scope and what to do; the scope
// that holds inbound re-installs as before, a scope without inbound installs
// beside it, and once the first is gone the next may take inbound.
func TestEBPFOneInboundScopePerNamespace(t *testing.T) {
	l := newEBPFLab(t)
	ctx := context.Background()
	cgA, cgB := filepath.Join(l.root, "a"), filepath.Join(l.root, "b")
	netns, a, b := l.engine(""), l.engine(cgA), l.engine(cgB)
	withIn, noIn := ebpfPlan(t, true), ebpfPlan(t, false)
	t.Cleanup(func() {
		for _, e := range []*redirect.Engine{a, b, netns} {
			if _, err := e.Uninstall(ctx); err != nil {
				t.Errorf("uninstall: %v", err)
			}
		}
		if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
			t.Errorf("pins left after every uninstall: %q", left)
		}
	})
	scopes := func() int {
		t.Helper()
		st, err := bpf.New(bpf.Options{PinDir: l.pinDir, Root: l.root}).Observe()
		if err != nil {
			t.Fatal(err)
		}
		return len(st.Scopes)
	}
	refused := func(what string, e *redirect.Engine, p redirect.Plan, names ...string) {
		t.Helper()
		tablesBefore, scopesBefore := l.inboundTables(t), scopes()
		_, err := e.Install(ctx, p)
		if !errors.Is(err, bpf.ErrInboundTaken) {
			t.Fatalf("%s: Install = %v, want ErrInboundTaken", what, err)
		}
		for _, n := range append(names, "--inbound=false") {
			if !strings.Contains(err.Error(), n) {
				t.Errorf("%s: the error does not name %q: %v", what, n, err)
			}
		}
		if got := l.inboundTables(t); strings.Join(got, " ") != strings.Join(tablesBefore, " ") {
			t.Errorf("%s: a refused install changed the inbound tables: %q, was %q", what, got, tablesBefore)
		}
		if got := scopes(); got != scopesBefore {
			t.Errorf("%s: a refused install changed the enrolled scopes: %d, was %d", what, got, scopesBefore)
		}
	}

	// The network-namespace scope captures inbound; its re-install works.
	if _, err := netns.Install(ctx, withIn); err != nil {
		t.Fatal(err)
	}
	if res, err := netns.Install(ctx, withIn); err != nil || res.Changed {
		t.Fatalf("re-install of the scope that holds inbound = %+v, %v; want no changes", res, err)
	}
	// A cgroup scope with inbound in the same namespace: refused.
	refused("cgroup scope beside the namespace scope", a, withIn, "the network-namespace scope", "table inet "+EBPFInboundTable)
	// (The namespace's ::6 on lo is the namespace scope's.)
	if st, err := a.Status(ctx); err != nil || st.Backend != "" {
		t.Errorf("the refused cgroup scope: Status = %+v, %v; want no backend holding it", st, err)
	}
	// Without inbound it installs beside it, and a later switch to inbound
	// is refused with its maps left as they were.
	if _, err := a.Install(ctx, noIn); err != nil {
		t.Fatalf("cgroup scope with --inbound=false beside the namespace scope: %v", err)
	}
	refused("cgroup scope re-installed with inbound", a, withIn, "the network-namespace scope")
	if d, err := a.Check(ctx, noIn); err != nil || !d.Empty() {
		t.Errorf("after the refused re-install, the cgroup scope's check: %v, %v; want in sync with its old config", d, err)
	}

	// The namespace scope leaves; cgroup scope a takes inbound; b is refused,
	// naming a's cgroup, and a's re-install goes on.
	if _, err := netns.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Install(ctx, withIn); err != nil {
		t.Fatalf("cgroup scope a with inbound, alone: %v", err)
	}
	if res, err := a.Install(ctx, withIn); err != nil || res.Changed {
		t.Fatalf("re-install of cgroup scope a = %+v, %v; want no changes", res, err)
	}
	refused("a second cgroup scope", b, withIn, "the cgroup scope "+cgA, EBPFInboundTableFor(cgA))
	refused("the namespace scope beside a cgroup scope", netns, withIn, "the cgroup scope "+cgA)
	if got := l.inboundTables(t); len(got) != 1 || got[0] != EBPFInboundTableFor(cgA) {
		t.Errorf("inbound tables = %q, want only cgroup scope a's", got)
	}
}

// TestEBPFCgroupScopeLeavesTheNamespaceCaptureAlone: a cgroup scope (a VM
// service: `--cgroup PATH`) is a scope of its own beside the namespace's
// capture with another backend. Installing it neither switches the
// namespace away from nftables nor removes its table, its status shows only
// itself, a cgroup scope with inbound beside the namespace's inbound capture
// is refused naming it, and uninstalling the cgroup scope leaves the
// namespace's capture in place (before, `uninstall --cgroup` deleted
// `table inet detour`: every other process of the namespace lost capture).
func TestEBPFCgroupScopeLeavesTheNamespaceCaptureAlone(t *testing.T) {
	l := newEBPFLab(t)
	ctx := context.Background()
	cg := filepath.Join(l.root, "a")
	netns, scope := l.engine(""), l.engine(cg)
	t.Cleanup(func() {
		for _, e := range []*redirect.Engine{scope, netns} {
			if _, err := e.Uninstall(ctx); err != nil {
				t.Errorf("uninstall: %v", err)
			}
		}
	})
	nft := dualPlan(t, redirect.BackendNFTables, true)
	if _, err := netns.Install(ctx, nft); err != nil {
		t.Fatal(err)
	}
	inSync := func(what string) {
		t.Helper()
		if d, err := netns.Check(ctx, nft); err != nil || !d.Empty() {
			t.Errorf("%s: the namespace's nftables capture: Check = %v, %v; want in sync", what, d, err)
		}
		if st, err := netns.Status(ctx); err != nil || st.Backend != redirect.BackendNFTables || len(st.Others) != 0 {
			t.Errorf("%s: the namespace's Status = %+v, %v; want nftables alone", what, st, err)
		}
	}

	// Nothing of the cgroup scope yet: check says so, whatever it plans
	// (with inbound the plan wants ::6 on lo, which is the namespace's).
	for _, p := range []redirect.Plan{ebpfPlan(t, false), ebpfPlan(t, true)} {
		if d, err := scope.Check(ctx, p); !errors.Is(err, redirect.ErrNotInstalled) {
			t.Errorf("check of the cgroup scope before its install = %v, %v; want ErrNotInstalled", d, err)
		}
	}
	res, err := scope.Install(ctx, ebpfPlan(t, false))
	if err != nil {
		t.Fatalf("cgroup scope without inbound beside the namespace's nftables capture: %v", err)
	}
	if res.Backend != redirect.BackendEBPF || len(res.Replaced) != 0 {
		t.Errorf("cgroup scope install = %+v; want ebpf, replacing nothing", res)
	}
	inSync("after the cgroup scope's install")
	st, err := scope.Status(ctx)
	if err != nil || st.Backend != redirect.BackendEBPF || len(st.Others) != 0 {
		t.Errorf("the cgroup scope's Status = %+v, %v; want ebpf alone", st, err)
	}
	if d, err := scope.Check(ctx, ebpfPlan(t, false)); err != nil || !d.Empty() {
		t.Errorf("the cgroup scope's Check = %v, %v; want in sync", d, err)
	}

	// Inbound in a namespace whose own capture takes inbound: refused, naming it.
	_, err = scope.Install(ctx, ebpfPlan(t, true))
	if !errors.Is(err, bpf.ErrInboundTaken) || !strings.Contains(err.Error(), "nftables") {
		t.Errorf("cgroup scope with inbound beside the namespace's nftables inbound capture: Install = %v; want ErrInboundTaken naming nftables", err)
	}
	if got := l.inboundTables(t); len(got) != 0 {
		t.Errorf("the refused install made inbound tables %q", got)
	}
	inSync("after the refused inbound install")

	res, err = scope.Uninstall(ctx)
	if err != nil || !res.Changed || len(res.Replaced) != 1 || res.Replaced[0] != redirect.BackendEBPF {
		t.Errorf("uninstall of the cgroup scope = %+v, %v; want ebpf removed, nothing else", res, err)
	}
	inSync("after the cgroup scope's uninstall")
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("pins left after the only eBPF scope's uninstall: %q", left)
	}
}

// TestCheckAfterInstallOfOneFamily: with one IP family captured
// (`--ip-families ipv4`, or a namespace without IPv6), `check` right after
// `install` is in sync and uninstall names only that family, with every
// backend. nftables and ebpf showed the table, base chains, programs and
// config they share between families as installed IPv6 state: check
// exited 3 ("--- installed ipv6 … -add table inet detour") and uninstall
// said "ipv4, ipv6".
func TestCheckAfterInstallOfOneFamily(t *testing.T) {
	l := newEBPFLab(t)
	ctx := context.Background()
	e := l.engine("")
	for _, backend := range []redirect.Backend{redirect.BackendNFTables, redirect.BackendEBPF, redirect.BackendIPTablesNFT} {
		for _, fam := range []redirect.IPFamilies{redirect.IPFamiliesIPv4, redirect.IPFamiliesIPv6} {
			cfg := redirect.Default()
			cfg.Backend = backend
			cfg.IPFamilies = fam
			p, err := redirect.NewPlan(cfg, redirect.Facts{IPv6: true})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.Install(ctx, p); err != nil {
				t.Fatalf("%s %s: install: %v", backend, fam, err)
			}
			if d, err := e.Check(ctx, p); err != nil || !d.Empty() {
				t.Errorf("%s %s: check right after install = %v, %v; want in sync", backend, fam, d, err)
			}
			if st, err := e.Status(ctx); err != nil || len(st.Families) != 1 || string(st.Families[0]) != string(fam) {
				t.Errorf("%s %s: status families = %v, %v; want only %s", backend, fam, st.Families, err, fam)
			}
			res, err := e.Uninstall(ctx)
			if err != nil || len(res.Families) != 1 || string(res.Families[0]) != string(fam) {
				t.Errorf("%s %s: uninstall = %+v, %v; want only %s removed", backend, fam, res, err, fam)
			}
		}
	}
}

// TestInboundTableOfARemovedCgroup: a cgroup scope that captured inbound
// and whose cgroup was removed before `uninstall --cgroup` leaves its
// inbound table in the namespace, still redirecting every inbound
// connection. `status` names it, an install that captures inbound is refused
// naming it, and `uninstall` removes it with the scope's pins.
func TestInboundTableOfARemovedCgroup(t *testing.T) {
	l := newEBPFLab(t)
	ctx := context.Background()
	cg := filepath.Join(l.root, "a")
	if _, err := l.engine(cg).Install(ctx, ebpfPlan(t, true)); err != nil {
		t.Fatal(err)
	}
	table := EBPFInboundTableFor(cg)
	// The lab's cleanup removes a and b; remove a now and make it again at
	// the end for that cleanup.
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Mkdir(cg, 0o755) })
	netns := l.engine("")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := netns.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if left := strings.Join(st.Leftovers, " "); strings.Contains(left, "cgroup that is gone") {
			if !strings.Contains(left, table) {
				t.Errorf("status leftovers %q do not name the inbound table %s", left, table)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status after the scope's cgroup was removed: %+v; want the scope named as left behind", st)
		}
	}
	nft := dualPlan(t, redirect.BackendNFTables, true)
	if _, err := netns.Install(ctx, nft); !errors.Is(err, bpf.ErrInboundTaken) || !strings.Contains(err.Error(), table) {
		t.Errorf("nftables install with inbound beside the left table: %v; want ErrInboundTaken naming %s", err, table)
	}
	res, err := netns.Uninstall(ctx)
	if err != nil || !strings.Contains(strings.Join(res.Leftovers, " "), table) {
		t.Errorf("uninstall = %+v, %v; want the table %s removed as left behind", res, err, table)
	}
	if got := l.inboundTables(t); len(got) != 0 {
		t.Errorf("inbound tables after uninstall: %q", got)
	}
	if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
		t.Errorf("pins left after uninstall: %q", left)
	}
	if _, err := netns.Install(ctx, nft); err != nil {
		t.Errorf("nftables install with inbound after the uninstall: %v", err)
	}
	if _, err := netns.Uninstall(ctx); err != nil {
		t.Error(err)
	}
}
