package bpf

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// pinnedLinks reads, for each link pinned in dir, its kernel link id and
// the id of the program it runs.
func pinnedLinks(t *testing.T, dir string) map[string][2]uint32 {
	t.Helper()
	pins, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]uint32{}
	for _, p := range pins {
		lk, err := link.LoadPinnedLink(filepath.Join(dir, p.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := lk.Info()
		lk.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[p.Name()] = [2]uint32{uint32(info.ID), uint32(info.Program)}
	}
	return out
}

// mapContents dumps the decision maps and detour's records, key and value
// bytes as hex, for comparison before and after an upgrade.
func mapContents(t *testing.T, pinDir string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, name := range []string{"scopes", "configs", "cidrs4", "cidrs6", "ids", "ports", "dns_servers", recordsMap} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			out[name] = append(out[name], fmt.Sprintf("%x=%x", k, v))
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		m.Close()
		slices.Sort(out[name])
	}
	return out
}

// noteOtherBuild makes the pinned programs of a link directory look like
// those of another build (a fake identity), or of a detour from before the
// builds were noted (none: the note deleted).
func noteOtherBuild(t *testing.T, pinDir, dir string, fake *[sha256.Size]byte) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", buildsMap), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if fake == nil {
		err = m.Delete(buildKeyOf(dir))
	} else {
		err = m.Put(buildKeyOf(dir), *fake)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// installedNamespaceScope installs outboundConfig's namespace scope into a
// new lab (from inside its cgroup; uninstalled at cleanup) and returns the
// lab, its engine, the plan and the scope's link directory.
func installedNamespaceScope(t *testing.T) (l lab, eng *redirect.Engine, plan redirect.Plan, dir string) {
	t.Helper()
	l = newLab(t)
	enter(t, l.cgroup)
	ctx := context.Background()
	eng = l.engine(t, "")
	plan, err := redirect.NewPlan(outboundConfig(), redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := eng.Uninstall(ctx); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	var cookie uint64
	inNS(t, l.ns, func() (err error) { cookie, err = CurrentNetns(); return err })
	_, dirName, err := New(Options{PinDir: l.pinDir, Root: l.cgroup}).Key(Scope{Netns: cookie})
	if err != nil {
		t.Fatal(err)
	}
	return l, eng, plan, filepath.Join(l.pinDir, "links", dirName)
}

// TestUpgradeReplacesProgramsInPlace: programs attached by another build of
// detour (a fake identity noted for them, then no note at all, as a detour
// from before the notes left them) are drift for `check` and named by
// `status`; the install replaces every program in place (new program ids on
// the same links), while an open connection keeps working, every new
// connection made meanwhile is redirected, and the maps' entries stay as
// they were. A second install changes nothing and loads nothing.
func TestUpgradeReplacesProgramsInPlace(t *testing.T) {
	l, eng, plan, dir := installedNamespaceScope(t)
	ctx := context.Background()
	echoProxy(t, l, 15001)
	var open net.Conn
	inNS(t, l.ns, func() (err error) {
		open, err = net.DialTimeout("tcp", "198.51.100.7:9000", 2*time.Second)
		return err
	})
	defer open.Close()
	roundTrip(t, open, "before")
	status := func() string {
		t.Helper()
		st, err := eng.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Rules[redirect.IPv4] + st.Rules[redirect.IPv6]
	}
	if d, err := eng.Check(ctx, plan); err != nil || !d.Empty() {
		t.Fatalf("check right after install: %v, want in sync:\n%s", err, d)
	}
	if s := status(); !strings.Contains(s, "programs build "+BuildName()) || strings.Contains(s, "another build") {
		t.Fatalf("status right after install does not name this build %s alone:\n%s", BuildName(), s)
	}

	fake := sha256.Sum256([]byte("an older detour"))
	for _, c := range []struct {
		what  string
		note  *[sha256.Size]byte
		shows string // the attached build, as check and status show it
	}{
		{"programs of another build", &fake, buildName(fake)},
		{"programs of a detour that noted no build", nil, "unknown"},
	} {
		before := pinnedLinks(t, dir)
		if len(before) != len(attachments) {
			t.Fatalf("links pinned = %v, want one for each of %d programs", before, len(attachments))
		}
		entries := mapContents(t, l.pinDir)
		noteOtherBuild(t, l.pinDir, dir, c.note)

		d, err := eng.Check(ctx, plan)
		if err != nil || d.Empty() || !strings.Contains(d.String(), "+programs build "+BuildName()) || !strings.Contains(d.String(), "-programs build "+c.shows) {
			t.Errorf("check over %s: %v; want drift naming this build %s and the attached %s:\n%s", c.what, err, BuildName(), c.shows, d)
		}
		if s := status(); !strings.Contains(s, "another build of detour ("+c.shows) {
			t.Errorf("status over %s does not say so:\n%s", c.what, s)
		}

		// New connections all along the upgrade: each must be redirected
		// (a gap would leave one unredirected: ENETUNREACH in the lab).
		stop := make(chan struct{})
		done := make(chan struct{})
		var dials, failures atomic.Int64
		var firstErr atomic.Value
		go func() {
			defer close(done)
			err := doNS(l.ns.Path, func() error {
				for {
					select {
					case <-stop:
						return nil
					default:
					}
					dials.Add(1)
					if err := echoOnce("198.51.100.7:9001"); err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				}
			})
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}()
		time.Sleep(20 * time.Millisecond)
		res, err := eng.Install(ctx, plan)
		time.Sleep(20 * time.Millisecond)
		close(stop)
		<-done
		if err != nil || !res.Changed {
			t.Fatalf("install over %s = %+v, %v; want it to replace them", c.what, res, err)
		}
		t.Logf("%s: %d new connections during the upgrade", c.what, dials.Load())
		if n, f := dials.Load(), failures.Load(); f != 0 || n == 0 {
			t.Errorf("over the upgrade from %s, %d of %d new connections were not redirected (first: %v)", c.what, f, n, firstErr.Load())
		}
		after := pinnedLinks(t, dir)
		for name, b := range before {
			a, ok := after[name]
			switch {
			case !ok:
				t.Errorf("%s: the link of %s is gone", c.what, name)
			case a[0] != b[0]:
				t.Errorf("%s: the link of %s is another link (id %d, was %d); want it updated in place", c.what, name, a[0], b[0])
			case a[1] == b[1]:
				t.Errorf("%s: the link of %s still runs program %d; want this build's", c.what, name, b[1])
			}
		}
		if got := mapContents(t, l.pinDir); !equalContents(got, entries) {
			t.Errorf("%s: the maps' entries changed over the upgrade:\nbefore %v\nafter  %v", c.what, entries, got)
		}
		roundTrip(t, open, "after the upgrade from "+c.what)
		if d, err := eng.Check(ctx, plan); err != nil || !d.Empty() {
			t.Errorf("check after the upgrade from %s: %v, want in sync:\n%s", c.what, err, d)
		}
		if s := status(); strings.Contains(s, "another build") {
			t.Errorf("status after the upgrade from %s still says another build:\n%s", c.what, s)
		}
		// The same build again: no change, no program loaded.
		res, err = eng.Install(ctx, plan)
		if err != nil || res.Changed {
			t.Errorf("second install after the upgrade from %s = %+v, %v; want no change", c.what, res, err)
		}
		if again := pinnedLinks(t, dir); !equalLinks(again, after) {
			t.Errorf("the second install replaced programs: %v, was %v", again, after)
		}
	}
}

// TestUpgradeOfACgroupScopeAndTheAccelLink: a cgroup scope's programs
// carry its config id as a constant; replaced, they still redirect by that
// scope's config (an excluded port stays excluded). The sk_msg link of
// socket acceleration, noted as another build, gets this build's program on
// the same link.
func TestUpgradeOfACgroupScopeAndTheAccelLink(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	c := testCapture(t, func(c *redirect.Config) {
		c.Outbound.ExcludePorts = []redirect.PortRange{{First: 5432, Last: 5432}}
	})
	if _, err := ld.ApplyWith(scope, c, Settings{Accelerate: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	_, dirName, err := ld.Key(scope)
	if err != nil {
		t.Fatal(err)
	}
	dir, accel := filepath.Join(l.pinDir, "links", dirName), filepath.Join(l.pinDir, "links", accelDir)
	fake := sha256.Sum256([]byte("an older detour"))
	noteOtherBuild(t, l.pinDir, dir, &fake)
	noteOtherBuild(t, l.pinDir, accel, &fake)
	before, accelBefore := pinnedLinks(t, dir), pinnedLinks(t, accel)
	if len(accelBefore) != 1 {
		t.Fatalf("sk_msg links = %v, want one", accelBefore)
	}
	entries := mapContents(t, l.pinDir)
	changed, err := ld.ApplyWith(scope, c, Settings{Accelerate: true})
	if err != nil || !changed {
		t.Fatalf("install over another build = %v, %v; want a change", changed, err)
	}
	for _, links := range [][2]map[string][2]uint32{{before, pinnedLinks(t, dir)}, {accelBefore, pinnedLinks(t, accel)}} {
		for name, b := range links[0] {
			if a := links[1][name]; a[0] != b[0] || a[1] == b[1] {
				t.Errorf("%s: link %d program %d after the upgrade, was link %d program %d; want the same link with a new program", name, a[0], a[1], b[0], b[1])
			}
		}
	}
	if got := mapContents(t, l.pinDir); !equalContents(got, entries) {
		t.Errorf("the maps' entries changed over the upgrade:\nbefore %v\nafter  %v", entries, got)
	}
	assertProxied(t, l.ns, "after the upgrade")
	if _, err := dial(t, l.ns, "198.51.100.7:5432"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("after the upgrade, a connection to the excluded port = %v, want ENETUNREACH (not redirected)", err)
	}
	st, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if other, err := ld.OtherBuild(st, scope); err != nil || other != "" {
		t.Errorf("after the upgrade, OtherBuild = %q, %v; want none", other, err)
	}
}

func equalContents(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func equalLinks(a, b map[string][2]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// echoOnce dials addr from the calling thread's namespace (the lab's echo
// proxy answers a redirected connection) and checks one echo.
func echoOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return fmt.Errorf("echo = %q", buf)
	}
	return nil
}

// TestUpgradeOverMapsOfAnotherLayout: a map pinned by another build with
// another layout (here dns_servers with other max_entries) fails the
// install (the CLI's exit 1) with a message saying what to do, and nothing
// changes: the same pins, the same programs on the same links, the same
// entries, and redirection goes on. This build's uninstall then removes the
// scope: no pin, link, program or map of detour's is left, and redirection
// stops.
func TestUpgradeOverMapsOfAnotherLayout(t *testing.T) {
	l, eng, plan, dir := installedNamespaceScope(t)
	ctx := context.Background()

	// Another build's dns_servers (twice the max_entries): the programs
	// keep the real one.
	pin := filepath.Join(l.pinDir, "maps", "dns_servers")
	spec, err := loadDetour()
	if err != nil {
		t.Fatal(err)
	}
	other := spec.Maps["dns_servers"].Copy()
	other.MaxEntries *= 2
	other.Pinning = ebpf.PinByName
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	fake, err := ebpf.NewMapWithOptions(other, ebpf.MapOptions{PinPath: filepath.Join(l.pinDir, "maps")})
	if err != nil {
		t.Fatal(err)
	}
	fake.Close()
	noteOtherBuild(t, l.pinDir, dir, nil)

	pinsBefore := pinList(t, l.pinDir)
	links := pinnedLinks(t, dir)
	entries := mapContents(t, l.pinDir)
	_, err = eng.Install(ctx, plan)
	if !errors.Is(err, ErrIncompatibleMaps) || !errors.Is(err, ebpf.ErrMapIncompatible) || errors.Is(err, redirect.ErrInvalid) {
		t.Fatalf("install over a map of another layout = %v; want ErrIncompatibleMaps (exit 1)", err)
	}
	for _, want := range []string{"dns_servers", "MaxEntries", "uninstall every eBPF scope", "then install"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if got := pinList(t, l.pinDir); !slices.Equal(got, pinsBefore) {
		t.Errorf("pins changed:\nbefore %q\nafter  %q", pinsBefore, got)
	}
	if got := pinnedLinks(t, dir); !equalLinks(got, links) {
		t.Errorf("links or their programs changed: %v, was %v", got, links)
	}
	if got := mapContents(t, l.pinDir); !equalContents(got, entries) {
		t.Errorf("the maps' entries changed:\nbefore %v\nafter  %v", entries, got)
	}
	assertProxied(t, l.ns, "after the failed install")

	// This build's uninstall removes the scope all the same: removal loads
	// no program over the maps, and the entries are laid out as this
	// build's.
	objects := pinnedObjects(t, l.pinDir)
	if len(objects) < 10 {
		t.Fatalf("pinned objects %v: want the maps, the links and their programs", objects)
	}
	if _, err := eng.Uninstall(ctx); err != nil {
		t.Fatalf("uninstall over a map of another layout: %v", err)
	}
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory after uninstall: %v, want it gone", err)
	}
	for a, ids := range attachedIDs(t, l.cgroup) {
		if len(ids) > 0 {
			t.Errorf("programs attached for %s after uninstall: %v", a, ids)
		}
	}
	assertFreed(t, objects, "uninstall")
	if addr, err := dial(t, l.ns, "198.51.100.7:80"); err == nil {
		t.Errorf("after uninstall a connection to 198.51.100.7:80 reached %s: still redirected", addr)
	}
}

// pinList is every path under pinDir.
func pinList(t *testing.T, pinDir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(pinDir, func(p string, _ os.DirEntry, err error) error {
		out = append(out, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// BenchmarkApplyNoChange: an install that changes nothing (a CNI ADD of a
// namespace enrolled with the same config, a re-run of `detour install`),
// in-process, network-namespace scope; the programs' build matches.
//
//	sudo go test -run '^$' -bench ApplyNoChange -benchtime 200x ./bpf/
func BenchmarkApplyNoChange(b *testing.B) {
	l := newLab(b)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	var cookie uint64
	if err := doNS(l.ns.Path, func() (err error) { cookie, err = CurrentNetns(); return err }); err != nil {
		b.Fatal(err)
	}
	scope := Scope{Netns: cookie}
	c := testCapture(b, nil)
	if _, err := ld.Apply(scope, c); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ld.Remove(scope) })
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	for b.Loop() {
		if changed, err := ld.Apply(scope, c); err != nil || changed {
			b.Fatalf("apply = %v, %v; want no change", changed, err)
		}
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	// CPU time (user and system) per install: on a shared machine it
	// varies less than the wall time.
	cpu := time.Duration(after.Utime.Nano() - before.Utime.Nano() + after.Stime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// assertProxied starts the proxy on 15001 in ns and checks that a connection
// to 198.51.100.7:80 from ns reaches it with that original destination.
func assertProxied(t *testing.T, ns privtest.NS, when string) {
	t.Helper()
	p := startProxy(t, ns, 15001)
	if _, err := dial(t, ns, "198.51.100.7:80"); err != nil {
		t.Errorf("%s: %v", when, err)
	} else if got := p.next(t); got != "198.51.100.7:80" {
		t.Errorf("%s, SO_ORIGINAL_DST = %s", when, got)
	}
}
