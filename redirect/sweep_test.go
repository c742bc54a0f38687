package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sweepingDriver is a fakeDriver that knows stale scopes (Sweeper): they
// go at its first Sweep.
type sweepingDriver struct {
	*fakeDriver
	stale      []string
	unreadable error // Sweep's error, when set; it removes nothing then
}

func (d *sweepingDriver) Sweep(context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.unreadable != nil {
		return nil, d.unreadable
	}
	out := d.stale
	d.stale = nil
	if len(out) > 0 {
		d.record("%s sweep", d.name)
	}
	return out, nil
}

func newSweepLab(t *testing.T) (*lab, *sweepingDriver) {
	l := newLab(t, "iptables-nft")
	sw := &sweepingDriver{fakeDriver: &fakeDriver{name: BackendEBPF, mu: l.d["iptables-nft"].mu, journal: l.journal}}
	l.e.Drivers = append(l.e.Drivers, sw)
	return l, sw
}

// TestStaleScopesAreSwept: install and uninstall, whatever the backend,
// have every Sweeper remove its stale scopes before they change anything
// else and say so in Result.Leftovers; Sweep does that alone; a backend
// that is not ready here is not asked.
func TestStaleScopesAreSwept(t *testing.T) {
	ctx := context.Background()
	l, sw := newSweepLab(t)
	sw.stale = []string{"the stale scope A"}
	res, err := l.e.Install(ctx, l.plan(t, "iptables-nft"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ebpf: the stale scope A"}, res.Leftovers); diff != "" {
		t.Errorf("install's leftovers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"ebpf sweep", "iptables-nft apply"}, *l.journal); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}

	// Sweep alone leaves the installed capture.
	*l.journal = nil
	if res, err := l.e.Sweep(ctx); err != nil || res.Changed || len(res.Leftovers) != 0 {
		t.Errorf("sweep with nothing stale = %+v, %v; want nothing changed", res, err)
	}
	sw.stale = []string{"the stale scope B"}
	res, err = l.e.Sweep(ctx)
	if err != nil || !res.Changed || !slices.Equal(res.Leftovers, []string{"ebpf: the stale scope B"}) {
		t.Errorf("sweep = %+v, %v; want the stale scope B removed", res, err)
	}
	if diff := cmp.Diff([]string{"ebpf sweep"}, *l.journal); diff != "" {
		t.Errorf("sweep's writes (-want +got):\n%s", diff)
	}

	*l.journal = nil
	sw.stale = []string{"the stale scope C"}
	res, err = l.e.Uninstall(ctx)
	if err != nil || !slices.Equal(res.Leftovers, []string{"ebpf: the stale scope C"}) || !slices.Equal(res.Replaced, []Backend{"iptables-nft"}) {
		t.Errorf("uninstall = %+v, %v; want the capture and the stale scope C removed", res, err)
	}
	if diff := cmp.Diff([]string{"ebpf sweep", "iptables-nft remove"}, *l.journal); diff != "" {
		t.Errorf("uninstall's writes (-want +got):\n%s", diff)
	}

	// A backend that cannot work here holds nothing to sweep.
	sw.ready = ErrNotSupported
	sw.stale = []string{"the stale scope D"}
	if res, err := l.e.Sweep(ctx); err != nil || res.Changed {
		t.Errorf("sweep with the backend not ready = %+v, %v; want nothing asked of it", res, err)
	}
}

// removalSweepingDriver is a sweepingDriver that sweeps otherwise for a
// removal (RemovalSweeper, as the eBPF Driver over maps of another build).
type removalSweepingDriver struct{ *sweepingDriver }

func (d *removalSweepingDriver) SweepForRemoval(context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.stale
	d.stale = nil
	d.record("%s sweep for removal", d.name)
	return out, nil
}

// TestRemovalSweepIsForUninstallAndSweepOnly: Uninstall and Sweep use a
// RemovalSweeper's SweepForRemoval; Install keeps its Sweep.
func TestRemovalSweepIsForUninstallAndSweepOnly(t *testing.T) {
	ctx := context.Background()
	l, sw := newSweepLab(t)
	rs := &removalSweepingDriver{sw}
	l.e.Drivers[len(l.e.Drivers)-1] = rs
	sw.stale = []string{"the stale scope A"}
	if _, err := l.e.Install(ctx, l.plan(t, "iptables-nft")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ebpf sweep", "iptables-nft apply"}, *l.journal); diff != "" {
		t.Errorf("install's writes (-want +got):\n%s", diff)
	}
	*l.journal = nil
	if _, err := l.e.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ebpf sweep for removal"}, *l.journal); diff != "" {
		t.Errorf("sweep's writes (-want +got):\n%s", diff)
	}
	*l.journal = nil
	sw.stale = []string{"the stale scope B"}
	res, err := l.e.Uninstall(ctx)
	if err != nil || !slices.Equal(res.Leftovers, []string{"ebpf: the stale scope B"}) {
		t.Errorf("uninstall = %+v, %v; want the stale scope B removed", res, err)
	}
	if diff := cmp.Diff([]string{"ebpf sweep for removal", "iptables-nft remove"}, *l.journal); diff != "" {
		t.Errorf("uninstall's writes (-want +got):\n%s", diff)
	}
}

// TestUnreadableSweepLetsAnotherBackendInstall: a Sweeper that cannot read
// its state at all (ErrSweepUnreadable: the eBPF Driver over maps pinned by
// an older detour) does not stop an install with another backend, which
// goes on with one warning naming both; an install with the Sweeper's own
// backend fails, changing nothing; and any other sweep error still fails
// every install.
func TestUnreadableSweepLetsAnotherBackendInstall(t *testing.T) {
	ctx := context.Background()
	l, sw := newSweepLab(t)
	var logs bytes.Buffer
	l.e.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sw.stale = []string{"the stale scope A"}
	sw.unreadable = fmt.Errorf("%w: maps of another layout", ErrSweepUnreadable)

	res, err := l.e.Install(ctx, l.plan(t, "iptables-nft"))
	if err != nil {
		t.Fatalf("install with iptables-nft beside an unreadable ebpf sweep: %v", err)
	}
	if res.Backend != "iptables-nft" || len(res.Leftovers) != 0 {
		t.Errorf("install = %+v; want iptables-nft, nothing swept", res)
	}
	if diff := cmp.Diff([]string{"iptables-nft apply"}, *l.journal); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), "backend=ebpf installing=iptables-nft") || !strings.Contains(logs.String(), "maps of another layout") {
		t.Errorf("want one warning naming ebpf, iptables-nft and the reason; got %d:\n%s", n, logs.String())
	}

	// A removal has no other backend's install to let go on (the eBPF
	// Driver's uninstall sweeps with SweepForRemoval, which reads such maps).
	if _, err := l.e.Uninstall(ctx); !errors.Is(err, ErrSweepUnreadable) {
		t.Errorf("uninstall = %v; want the sweep's error", err)
	}
	unreadable := sw.unreadable
	sw.unreadable = nil
	if _, err := l.e.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	sw.unreadable = unreadable
	*l.journal = nil
	_, err = l.e.Install(ctx, l.plan(t, BackendEBPF))
	if !errors.Is(err, ErrSweepUnreadable) || !strings.Contains(err.Error(), "maps of another layout") {
		t.Errorf("install with ebpf itself = %v; want the sweep's error", err)
	}
	if len(*l.journal) != 0 {
		t.Errorf("the failed ebpf install wrote %q; want nothing", *l.journal)
	}

	sw.unreadable = errors.New("permission denied")
	if _, err := l.e.Install(ctx, l.plan(t, "iptables-nft")); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("install beside a sweep that fails otherwise = %v; want that error", err)
	}
	if len(*l.journal) != 0 {
		t.Errorf("the failed installs wrote %q; want nothing", *l.journal)
	}
}
