package bpf

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// doomedNS is a network namespace a test may delete itself (privtest.NetNS
// fails a test whose namespace is gone at its end): its name under
// /run/netns, cookie and nsfs inode.
type doomedNS struct {
	privtest.NS
	cookie uint64
	ino    uint64
}

func newDoomedNS(t *testing.T) doomedNS {
	t.Helper()
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	ns := doomedNS{NS: privtest.NS{Name: "dt-" + hex.EncodeToString(b)}}
	ns.Path = "/run/netns/" + ns.Name
	privtest.Run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns.Name).Run() })
	ns.Run(t, "ip", "link", "set", "lo", "up")
	if err := doNS(ns.Path, func() (err error) { ns.cookie, err = CurrentNetns(); return err }); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(ns.Path, &st); err != nil {
		t.Fatal(err)
	}
	ns.ino = st.Ino
	return ns
}

// unname deletes the namespace's name (`ip netns delete`): without another
// holder the namespace is gone.
func (ns doomedNS) unname(t *testing.T) { privtest.Run(t, "ip", "netns", "delete", ns.Name) }

// holdByProcess starts a process inside the namespace and returns a call
// that ends it (by its pid).
func (ns doomedNS) holdByProcess(t *testing.T) (stop func()) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop = func() {
		if cmd.Process != nil && cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	want := fmt.Sprintf("net:[%d]", ns.ino)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)); got == want {
			return stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not enter %s", cmd.Process.Pid, ns.Name)
		}
	}
}

// holdByMount bind-mounts the namespace on a file of the test's and
// returns a call that unmounts it.
func (ns doomedNS) holdByMount(t *testing.T) (unmount func()) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(ns.Path, f, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount %s: %v", ns.Path, err)
	}
	done := false
	unmount = func() {
		if !done {
			done = true
			if err := unix.Unmount(f, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", f, err)
			}
		}
	}
	t.Cleanup(unmount)
	return unmount
}

// engineIn is the Engine of `detour install --backend ebpf --netns PATH`
// for the lab.
func (l lab) engineIn(t *testing.T, path string) *redirect.Engine {
	return &redirect.Engine{
		NetNS:   path,
		LockDir: t.TempDir(),
		Drivers: []redirect.Driver{NewDriver(DriverOptions{Loader: Options{PinDir: l.pinDir, Root: l.cgroup}})},
	}
}

// staleCookies are the cookies of the stale network-namespace scopes Observe
// names, waiting (at most 5 s) until want is among them when want is not 0:
// the kernel tears a namespace down asynchronously after its last holder.
func staleCookies(t *testing.T, ld *Loader, want uint64) []uint64 {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := ld.Observe()
		if err != nil {
			t.Fatal(err)
		}
		if want == 0 || slices.Contains(st.goneNetns, want) || time.Now().After(deadline) {
			for _, c := range st.goneNetns {
				if !strings.Contains(st.Leftover(), fmt.Sprintf("stale network-namespace scope of netns cookie %d", c)) {
					t.Errorf("Leftover() = %q; it does not name the stale scope of cookie %d", st.Leftover(), c)
				}
			}
			return st.goneNetns
		}
	}
}

// TestScopeOfADeletedNamespaceIsStale: a network-namespace scope whose
// namespace is deleted without an uninstall (`ip netns delete`, a pod's
// namespace torn down) kept its enrolment, its entries and the pins, and the
// programs stayed on the cgroup root; no command named or removed them.
// Now status (from any namespace) names it as stale, `uninstall --stale`
// (Engine.Sweep), the next install and the next uninstall remove it, and a
// namespace that is alive — kept only by a bind mount, only by a process,
// or sharing the gone namespace's nsfs inode number — is never called stale.
func TestScopeOfADeletedNamespaceIsStale(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ctx := context.Background()
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	plan, err := redirect.NewPlan(outboundConfig(), redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	gone, byProc, byMount := newDoomedNS(t), newDoomedNS(t), newDoomedNS(t)
	for _, ns := range []doomedNS{gone, byProc, byMount} {
		if _, err := l.engineIn(t, ns.Path).Install(ctx, plan); err != nil {
			t.Fatalf("install in %s: %v", ns.Name, err)
		}
		if _, err := os.Stat(filepath.Join(l.pinDir, "links", aliveDir, fmt.Sprint(ns.cookie))); err != nil {
			t.Fatalf("the liveness mark of %s: %v", ns.Name, err)
		}
	}
	alive := l.engineIn(t, l.ns.Path) // the lab's namespace: enrolled and alive throughout
	if _, err := alive.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	aliveCookie := uint64(0)
	inNS(t, l.ns, func() (err error) { aliveCookie, err = CurrentNetns(); return err })
	before, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	objects := pinnedObjects(t, l.pinDir)

	// Each kept alive by one holder only, then the first deleted outright.
	stopProc := byProc.holdByProcess(t)
	byProc.unname(t)
	unmount := byMount.holdByMount(t)
	byMount.unname(t)
	gone.unname(t)

	if got := staleCookies(t, ld, gone.cookie); !slices.Equal(got, []uint64{gone.cookie}) {
		t.Fatalf("stale scopes = %v; want only the deleted namespace's %d (kept by a process: %d, by a bind mount: %d)", got, gone.cookie, byProc.cookie, byMount.cookie)
	}
	// status, from another namespace (and from one that holds nothing).
	for _, path := range []string{l.ns.Path, newLabNS(t).Path} {
		st, err := l.engineIn(t, path).Status(ctx)
		want := fmt.Sprintf("ebpf: the stale network-namespace scope of netns cookie %d", gone.cookie)
		if err != nil || !strings.Contains(strings.Join(st.Leftovers, "\n"), want) {
			t.Errorf("status in %s = %+v, %v; want a leftover %q", path, st.Leftovers, err, want)
		}
	}

	// nsfs inode numbers are reused: a new namespace that gets the gone
	// one's number is not the gone one, and does not make it alive.
	reused := false
	for range 20 {
		ns := newDoomedNS(t)
		if ns.ino == gone.ino {
			reused = true
			if got := staleCookies(t, ld, 0); !slices.Contains(got, gone.cookie) {
				t.Errorf("with namespace %s holding the gone namespace's inode %d: stale scopes = %v, want %d among them", ns.Name, ns.ino, got, gone.cookie)
			}
			break
		}
	}
	if !reused {
		t.Logf("no new namespace got the gone namespace's inode %d in 20 tries: the reuse case was not exercised", gone.ino)
	}

	// `uninstall --stale`: the stale scope goes, nothing else.
	res, err := alive.Sweep(ctx)
	if err != nil || !res.Changed || len(res.Leftovers) != 1 || !strings.Contains(res.Leftovers[0], fmt.Sprint(gone.cookie)) {
		t.Fatalf("sweep = %+v, %v; want the stale scope of cookie %d removed", res, err, gone.cookie)
	}
	after, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := after.Scopes[gone.cookie]; ok {
		t.Errorf("the stale scope is still enrolled after the sweep")
	}
	if _, ok := after.records[gone.cookie]; ok {
		t.Errorf("the stale scope is still recorded after the sweep")
	}
	if _, err := os.Stat(filepath.Join(l.pinDir, "links", aliveDir, fmt.Sprint(gone.cookie))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the gone namespace's liveness mark is still pinned: %v", err)
	}
	goneCfg := before.Scopes[gone.cookie].Config
	for _, sc := range after.Scopes {
		if sc.Config == goneCfg {
			t.Errorf("config %d of the stale scope is still in use", goneCfg)
		}
	}
	for _, c := range []uint64{aliveCookie, byProc.cookie, byMount.cookie} {
		if !slices.Equal(after.Scopes[c].Lines, before.Scopes[c].Lines) || after.Scopes[c].Config != before.Scopes[c].Config {
			t.Errorf("the living scope of cookie %d changed with the sweep: %v, was %v", c, after.Scopes[c], before.Scopes[c])
		}
	}
	if res, err := alive.Sweep(ctx); err != nil || res.Changed {
		t.Errorf("second sweep = %+v, %v; want nothing to remove", res, err)
	}
	// The living namespace is still redirected.
	assertProxied(t, l.ns, "from the living namespace after the sweep")

	// The process ends: that namespace is gone, and the next install (of
	// another scope, changing nothing) removes it and says so.
	stopProc()
	if got := staleCookies(t, ld, byProc.cookie); !slices.Equal(got, []uint64{byProc.cookie}) {
		t.Fatalf("stale scopes after the holding process ended = %v, want [%d]", got, byProc.cookie)
	}
	res, err = alive.Install(ctx, plan)
	if err != nil || res.Changed || len(res.Leftovers) != 1 || !strings.Contains(res.Leftovers[0], fmt.Sprintf("netns cookie %d", byProc.cookie)) {
		t.Errorf("re-install = %+v, %v; want no changes of its own and the stale scope of cookie %d removed", res, err, byProc.cookie)
	}

	// The bind mount goes: the next uninstall removes that scope with its
	// own, and nothing of detour's is left.
	unmount()
	if got := staleCookies(t, ld, byMount.cookie); !slices.Equal(got, []uint64{byMount.cookie}) {
		t.Fatalf("stale scopes after the bind mount went = %v, want [%d]", got, byMount.cookie)
	}
	res, err = alive.Uninstall(ctx)
	if err != nil || !res.Changed || len(res.Leftovers) != 1 || !strings.Contains(res.Leftovers[0], fmt.Sprintf("netns cookie %d", byMount.cookie)) {
		t.Errorf("uninstall = %+v, %v; want the scope removed and the stale scope of cookie %d with it", res, err, byMount.cookie)
	}
	l.assertNoResidue(t, "uninstall after the sweeps")
	// The proxy's sockets hold the socket storage a moment longer.
	assertFreed(t, objects, "uninstall")
}

// TestLastStaleNamespaceLeavesTheCgroupRoot: once the only
// network-namespace scopes left are stale, sweeping them detaches the
// programs from the cgroup root (they have nothing to act for), while a
// cgroup scope keeps its programs and entries.
func TestLastStaleNamespaceLeavesTheCgroupRoot(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	plan, err := redirect.NewPlan(outboundConfig(), redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	svc := filepath.Join(l.cgroup, "svc")
	if err := os.Mkdir(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(svc) })
	cgroup := l.engine(t, svc)
	if _, err := cgroup.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	gone := newDoomedNS(t)
	if _, err := l.engineIn(t, gone.Path).Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if len(attachedIDs(t, l.cgroup)) == 0 {
		t.Fatal("no program on the cgroup root after the network-namespace scope's install")
	}
	gone.unname(t)
	staleCookies(t, ld, gone.cookie)
	st, err := cgroup.Status(ctx)
	if err != nil || !st.Installed || !strings.Contains(strings.Join(st.Leftovers, "\n"), "the programs stay attached to the cgroup root for it") {
		t.Errorf("status of the cgroup scope = %+v, %v; want installed, naming the stale scope and the programs on the cgroup root", st, err)
	}
	// The cgroup scope's re-install sweeps it.
	res, err := cgroup.Install(ctx, plan)
	if err != nil || len(res.Leftovers) != 1 {
		t.Fatalf("re-install of the cgroup scope = %+v, %v; want the stale scope removed", res, err)
	}
	for attach, ids := range attachedIDs(t, l.cgroup) {
		t.Errorf("programs %v still attached to the cgroup root (%s) with no network-namespace scope left", ids, attach)
	}
	if len(attachedIDs(t, svc)) == 0 {
		t.Error("the cgroup scope lost its programs")
	}
	if dirs, _ := filepath.Glob(filepath.Join(l.pinDir, "links", kindNetns+"@*")); len(dirs) != 0 {
		t.Errorf("the network-namespace scope's links are still pinned: %q", dirs)
	}
	if _, err := cgroup.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	l.assertNoResidue(t, "uninstall of the cgroup scope")
	if _, err := os.Stat(l.pinDir); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("pin directory after the last uninstall: %v", err)
	}
}

// TestUnreadableMarkCountsAsAlive: a namespace is never called gone on a
// doubt. A mark that is not a namespace's link (here a map pinned in its
// place) or cannot be loaded counts as alive, and a scope without a mark
// (enrolled from outside its namespace, or by a detour that made none) is
// never stale.
func TestUnreadableMarkCountsAsAlive(t *testing.T) {
	l := newLab(t)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	ns := newDoomedNS(t)
	// Enrolled from outside the namespace: no mark.
	if _, err := ld.Apply(Scope{Netns: ns.cookie}, testCapture(t, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ld.alivePin(ns.cookie)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a scope enrolled from outside its namespace got a mark: %v", err)
	}
	if err := os.MkdirAll(ld.aliveDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	// Objects that are not a namespace's link, pinned in marks' places:
	// markInode reads their info as a link's would be; a map of the type
	// numbered as a netns link (percpu hash) and a program of that type
	// number (tracepoint) are told apart as well.
	var bogus []uint64
	pin := func(cookie uint64, obj interface{ Pin(string) error }) {
		t.Helper()
		if err := obj.Pin(ld.alivePin(cookie)); err != nil {
			t.Fatal(err)
		}
		if ino, err := markInode(ld.alivePin(cookie)); err == nil {
			t.Errorf("%T pinned as a mark reads inode %d; want an error", obj, ino)
		}
		bogus = append(bogus, cookie)
	}
	for i, spec := range []*ebpf.MapSpec{
		{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1},
		{Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 4, MaxEntries: 36},
	} {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		pin(4242424242+uint64(i), m)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	pin(4242424244, prog)
	ns.unname(t)
	time.Sleep(200 * time.Millisecond) // the namespace's teardown, were anything to see it
	if got := staleCookies(t, ld, 0); len(got) != 0 {
		t.Errorf("stale scopes = %v; want none (no mark for %d, unreadable ones for %d)", got, ns.cookie, bogus)
	}
	if removed, err := ld.Sweep(); err != nil || len(removed) != 0 {
		t.Errorf("sweep = %q, %v; want nothing removed", removed, err)
	}
	for _, cookie := range bogus {
		if _, err := os.Stat(ld.alivePin(cookie)); err != nil {
			t.Errorf("the unreadable mark %d was removed: %v", cookie, err)
		}
		os.Remove(ld.alivePin(cookie))
	}
	if err := ld.Remove(Scope{Netns: ns.cookie}); err != nil {
		t.Fatal(err)
	}
	l.assertNoResidue(t, "remove")
}

// BenchmarkLivenessMark: what the liveness mark costs — attaching and
// pinning it (a network-namespace scope's first install; it loads the
// program) and detaching it (its uninstall), alone on the machine (the
// kernel then turns its sk_lookup hook on and off) and beside another
// namespace's mark (every enrolment but the first); and reading it (every
// install, uninstall, status and sweep reads each enrolled namespace's mark).
//
//	sudo go test -run '^$' -bench LivenessMark -benchtime 200x ./bpf/
func BenchmarkLivenessMark(b *testing.B) {
	privtest.Require(b, "ip")
	ld := New(Options{PinDir: filepath.Join(privtest.BPFFS(b), "detour")})
	mark := func(b *testing.B, ns privtest.NS) uint64 {
		var cookie uint64
		err := doNS(ns.Path, func() (err error) {
			if cookie, err = CurrentNetns(); err != nil {
				return err
			}
			_, err = ld.markAlive(cookie)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return cookie
	}
	ns := privtest.NetNS(b)
	cookie := mark(b, ns)
	if err := ld.unmarkAlive(cookie); err != nil {
		b.Fatal(err)
	}
	cycle := func(b *testing.B) {
		err := doNS(ns.Path, func() error {
			for b.Loop() {
				if ok, err := ld.markAlive(cookie); err != nil || !ok {
					return fmt.Errorf("mark: %v, %v", ok, err)
				}
				if err := ld.unmarkAlive(cookie); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Run("attach+detach/alone", cycle)
	other := mark(b, privtest.NetNS(b))
	b.Cleanup(func() { ld.unmarkAlive(other) })
	b.Run("attach+detach/beside-another", cycle)
	b.Run("read", func(b *testing.B) {
		for b.Loop() {
			if gone, err := ld.goneNetns(); err != nil || len(gone) != 0 {
				b.Fatalf("goneNetns = %v, %v", gone, err)
			}
		}
	})
}

// BenchmarkLivenessMarksOf100Namespaces: what reading the marks costs on a
// node with 100 enrolled namespaces (100 pods): every eBPF install,
// uninstall, status, sweep and CNI ADD reads each of them once (goneNetns).
// ns/mark and cpu-ns/mark are the wall and CPU time per mark.
//
//	sudo go test -run '^$' -bench LivenessMarksOf100 -benchtime 100x ./bpf/
func BenchmarkLivenessMarksOf100Namespaces(b *testing.B) {
	privtest.Require(b, "ip")
	ld := New(Options{PinDir: filepath.Join(privtest.BPFFS(b), "detour")})
	const n = 100
	for range n {
		ns := privtest.NetNS(b)
		err := doNS(ns.Path, func() error {
			cookie, err := CurrentNetns()
			if err != nil {
				return err
			}
			if ok, err := ld.markAlive(cookie); err != nil || !ok {
				return fmt.Errorf("mark: %v, %v", ok, err)
			}
			b.Cleanup(func() { ld.unmarkAlive(cookie) })
			// What goneNetns reads of it: this namespace's inode.
			var st unix.Stat_t
			if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
				return err
			}
			if ino, err := markInode(ld.alivePin(cookie)); err != nil || uint64(ino) != st.Ino {
				return fmt.Errorf("the mark reads inode %d, %v; want %d", ino, err, st.Ino)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	for b.Loop() {
		if gone, err := ld.goneNetns(); err != nil || len(gone) != 0 {
			b.Fatalf("goneNetns = %v, %v", gone, err)
		}
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/mark")
	// CPU time (user and system): on a shared machine it varies less than
	// the wall time.
	cpu := after.Utime.Nano() - before.Utime.Nano() + after.Stime.Nano() - before.Stime.Nano()
	b.ReportMetric(float64(cpu)/float64(b.N*n), "cpu-ns/mark")
}

// TestDetachedMarkOfALiveNamespaceIsNotStale: a mark whose link was detached
// by hand (`bpftool link detach`) reads netns inode 0, as the mark of a
// namespace that is gone does. Before, such a namespace was called stale
// while alive, and the next install or uninstall of any scope removed its
// enrolment: the pod's capture stopped. A namespace that can still be found
// (by its name, a bind mount, a process in it) is not stale; a re-install in
// it marks it again; once it is deleted it is stale and swept.
func TestDetachedMarkOfALiveNamespaceIsNotStale(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	plan, err := redirect.NewPlan(outboundConfig(), redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	named, byProc, byMount := newDoomedNS(t), newDoomedNS(t), newDoomedNS(t)
	all := []doomedNS{named, byProc, byMount}
	for _, ns := range all {
		if _, err := l.engineIn(t, ns.Path).Install(ctx, plan); err != nil {
			t.Fatal(err)
		}
	}
	stop := byProc.holdByProcess(t)
	byProc.unname(t)
	unmount := byMount.holdByMount(t)
	byMount.unname(t)
	detachMark := func(ns doomedNS) {
		t.Helper()
		lk, err := link.LoadPinnedLink(ld.alivePin(ns.cookie), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer lk.Close()
		if err := lk.Detach(); err != nil {
			t.Fatal(err)
		}
		if ino, err := markInode(ld.alivePin(ns.cookie)); err != nil || ino != 0 {
			t.Fatalf("the detached mark of %s reads inode %d, %v; want 0 (what this test is about)", ns.Name, ino, err)
		}
	}
	for _, ns := range all {
		detachMark(ns)
	}
	if got := staleCookies(t, ld, 0); len(got) != 0 {
		t.Errorf("stale scopes = %v; want none: the namespaces %d, %d and %d are alive", got, named.cookie, byProc.cookie, byMount.cookie)
	}
	if removed, err := ld.Sweep(); err != nil || len(removed) != 0 {
		t.Errorf("sweep = %q, %v; want nothing removed", removed, err)
	}
	st, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range all {
		if _, ok := st.Scopes[ns.cookie]; !ok {
			t.Errorf("the scope of the live namespace %s (cookie %d) is no longer enrolled", ns.Name, ns.cookie)
		}
	}
	if _, err := l.engineIn(t, named.Path).Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if ino, err := markInode(ld.alivePin(named.cookie)); err != nil || ino != uint32(named.ino) {
		t.Errorf("after a re-install the mark reads inode %d, %v; want %d", ino, err, named.ino)
	}
	// Gone for real: stale, whether its mark was detached or not.
	detachMark(named)
	named.unname(t)
	stop()
	unmount()
	for _, ns := range all {
		if got := staleCookies(t, ld, ns.cookie); !slices.Contains(got, ns.cookie) {
			t.Errorf("stale scopes = %v; want the deleted namespace %s (cookie %d) among them", got, ns.Name, ns.cookie)
		}
	}
	if removed, err := ld.Sweep(); err != nil || len(removed) != 3 {
		t.Errorf("sweep = %q, %v; want the three scopes removed", removed, err)
	}
	l.assertNoResidue(t, "sweep of the last scopes")
}

// TestWarningsOncePerCommand: an install reads the liveness marks more than
// once (Observe and the sweep; before, Apply too), and it logged what it
// found each time: a mark detached by hand while its namespace lives and a
// mark it cannot read were each warned of three times. Now an install, and
// an uninstall, say each once; the next command (a new Driver, as the CLI and
// the CNI plugin make) says it again, once.
func TestWarningsOncePerCommand(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	plan, err := redirect.NewPlan(outboundConfig(), redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	other := newDoomedNS(t)
	if _, err := l.engineIn(t, other.Path).Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.engineIn(t, other.Path).Uninstall(ctx) })
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	lk, err := link.LoadPinnedLink(ld.alivePin(other.cookie), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = lk.Detach()
	lk.Close()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const bogus = 4242424242
	if err := m.Pin(ld.alivePin(bogus)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(ld.alivePin(bogus)) })

	// command is one CLI command's Engine in the lab's namespace, logging
	// to what it returns.
	command := func() (*redirect.Engine, *bytes.Buffer) {
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		return &redirect.Engine{
			NetNS:   l.ns.Path,
			LockDir: t.TempDir(),
			Drivers: []redirect.Driver{NewDriver(DriverOptions{Loader: Options{PinDir: l.pinDir, Root: l.cgroup, Logger: logger}})},
		}, &logs
	}
	wants := []string{"liveness mark reads as gone, yet the namespace is there", "read a network namespace's liveness mark; taking it to be alive"}
	check := func(what string, logs *bytes.Buffer) {
		t.Helper()
		for _, w := range wants {
			if n := strings.Count(logs.String(), w); n != 1 {
				t.Errorf("%s warned %q %d times; want once:\n%s", what, w, n, logs)
			}
		}
	}
	e, logs := command()
	if _, err := e.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	check("install", logs)
	e, logs = command()
	if _, err := e.Status(ctx); err != nil {
		t.Fatal(err)
	}
	check("status", logs)
	e, logs = command()
	if _, err := e.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	check("uninstall", logs)
}
