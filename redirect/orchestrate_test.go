package redirect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeDriver is an in-memory backend: its "kernel" is a map of lines per
// family. It records every write in a journal shared by the drivers of one
// test, so tests see the order of writes across backends.
type fakeDriver struct {
	name     Backend
	ready    error // Ready's answer
	foreign  bool  // other tools' state in this mechanism
	conflict error
	applyErr error

	mu      *sync.Mutex
	journal *[]string
	state   map[Family][]string
	asked   []string // "ready", "observe" and "glance", in order
}

type fakeInstalled struct {
	lines    map[Family][]string
	foreign  bool
	conflict error
}

func (f fakeInstalled) Empty() bool {
	for _, l := range f.lines {
		if len(l) > 0 {
			return false
		}
	}
	return true
}
func (f fakeInstalled) Lines(fam Family) []string { return f.lines[fam] }
func (f fakeInstalled) Text(fam Family) string {
	if len(f.lines[fam]) == 0 {
		return ""
	}
	return strings.Join(f.lines[fam], "\n") + "\n"
}
func (f fakeInstalled) Foreign() bool   { return f.foreign }
func (f fakeInstalled) Conflict() error { return f.conflict }

func (d *fakeDriver) Name() Backend { return d.name }
func (d *fakeDriver) Ready(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, "ready")
	return d.ready
}
func (d *fakeDriver) record(format string, a ...any) {
	*d.journal = append(*d.journal, fmt.Sprintf(format, a...))
}

func (d *fakeDriver) Observe(context.Context) (Installed, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, "observe")
	lines := map[Family][]string{}
	for f, l := range d.state {
		lines[f] = slices.Clone(l)
	}
	return fakeInstalled{lines: lines, foreign: d.foreign, conflict: d.conflict}, nil
}

// Render: one line per family naming the backend and what the capture sends
// where, enough for Check to see a change of config.
func (d *fakeDriver) Render(p Plan) (Rendering, error) {
	r := Rendering{Backend: d.name}
	for _, fc := range p.Capture.Families {
		line := fmt.Sprintf("%s %s outbound=%v inbound=%v", d.name, fc.Family, fc.Outbound != nil, fc.Inbound != nil)
		if fc.Outbound != nil {
			line += fmt.Sprintf(" port=%d excludePorts=%v", fc.Outbound.Port, fc.Outbound.ExcludePorts)
		}
		r.Families = append(r.Families, FamilyRendering{Family: fc.Family, Text: line + "\n", Lines: []string{line}})
	}
	return r, nil
}

func (d *fakeDriver) Apply(_ context.Context, p Plan, have Installed) (bool, error) {
	r, _ := d.Render(p)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applyErr != nil {
		d.record("%s apply failed", d.name)
		return false, d.applyErr
	}
	want := map[Family][]string{}
	for _, fr := range r.Families {
		want[fr.Family] = fr.Lines
	}
	same := true
	for _, f := range allFamilies {
		if !slices.Equal(have.Lines(f), want[f]) {
			same = false
		}
	}
	if same {
		return false, nil
	}
	d.state = want
	d.record("%s apply", d.name)
	return true, nil
}

func (d *fakeDriver) Remove(_ context.Context, have Installed) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if have.Empty() {
		return nil
	}
	d.state = nil
	d.record("%s remove", d.name)
	return nil
}

// fakeNet is netlink state that needs nothing: the plans of these tests want
// no routing and no address (mode redirect, passthrough 127.0.0.6).
type fakeNet struct{}

func (fakeNet) changes() bool              { return false }
func (fakeNet) add() (func() error, error) { return func() error { return nil }, nil }
func (fakeNet) remove() error              { return nil }
func (fakeNet) have(Family) []string       { return nil }
func (fakeNet) owns(Family) bool           { return false }
func (fakeNet) drops() bool                { return false }
func (fakeNet) keepOurs() netView          { return fakeNet{} }
func (fakeNet) forget() netView            { return fakeNet{} }

// lab is an Engine over fake drivers named in order, in the caller's
// namespace (nothing of the host is read or written but a lock file in a
// temporary directory).
type lab struct {
	e       *Engine
	d       map[Backend]*fakeDriver
	journal *[]string
}

func newLab(t *testing.T, names ...Backend) *lab {
	t.Helper()
	l := &lab{d: map[Backend]*fakeDriver{}, journal: new([]string)}
	mu := new(sync.Mutex)
	e := &Engine{LockDir: t.TempDir(), net: func(Plan) (netView, error) { return fakeNet{}, nil }}
	for _, n := range names {
		d := &fakeDriver{name: n, mu: mu, journal: l.journal}
		l.d[n] = d
		e.Drivers = append(e.Drivers, d)
	}
	l.e = e
	return l
}

func (l *lab) plan(t *testing.T, backend Backend, sets ...string) Plan {
	t.Helper()
	p, err := NewPlan(cfgWith(t, "", sets...), v4Only)
	if err != nil {
		t.Fatal(err)
	}
	// Set after planning: Validate accepts only the backends this build
	// ships, and these tests name others (their drivers are fakes).
	p.Config.Backend = backend
	return p
}

func (l *lab) install(t *testing.T, p Plan) Result {
	t.Helper()
	res, err := l.e.Install(context.Background(), p)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	return res
}

func (l *lab) writes() []string {
	w := slices.Clone(*l.journal)
	*l.journal = nil
	return w
}

func TestAutoChoice(t *testing.T) {
	t.Parallel()
	a, b, c := BackendNFTables, BackendIPTablesLegacy, BackendIPTablesNFT
	notReady := fmt.Errorf("nf_tables missing: %w", ErrNotSupported)
	tests := []struct {
		name    string
		setup   func(l *lab)
		want    Backend
		wantErr error
	}{
		{name: "nothing anywhere: the first ready driver", setup: func(*lab) {}, want: a},
		{name: "the first is not ready: the next", setup: func(l *lab) { l.d[a].ready = notReady }, want: b},
		{name: "other tools' rules in one mechanism: that one", setup: func(l *lab) { l.d[c].foreign = true }, want: c},
		{name: "other tools' rules in two: the first of them", setup: func(l *lab) { l.d[c].foreign, l.d[b].foreign = true, true }, want: b},
		{name: "foreign but not ready: passed over", setup: func(l *lab) { l.d[c].foreign, l.d[c].ready = true, notReady }, want: a},
		{name: "sticky: where detour's state is", setup: func(l *lab) {
			l.d[c].state = map[Family][]string{IPv4: {"old"}}
			l.d[b].foreign = true
		}, want: c},
		{name: "state in two backends is refused", setup: func(l *lab) {
			l.d[b].state = map[Family][]string{IPv4: {"old"}}
			l.d[c].state = map[Family][]string{IPv4: {"old"}}
		}, wantErr: ErrBackendConflict},
		{name: "nothing ready", setup: func(l *lab) { l.d[a].ready, l.d[b].ready, l.d[c].ready = notReady, notReady, notReady }, wantErr: ErrNotSupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t, a, b, c)
			tt.setup(l)
			before := map[Backend][]string{}
			for n, d := range l.d {
				before[n] = d.state[IPv4]
			}
			res, err := l.e.Install(context.Background(), l.plan(t, BackendAuto))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Install = %+v, %v; want an error matching %v", res, err, tt.wantErr)
				}
				if w := l.writes(); len(w) != 0 {
					t.Errorf("a refused install wrote %v", w)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Backend != tt.want {
				t.Errorf("auto picked %s, want %s", res.Backend, tt.want)
			}
			for n, d := range l.d {
				if holds := len(d.state[IPv4]) > 0; holds != (n == tt.want) {
					t.Errorf("%s holds %v after the install", n, d.state)
				}
			}
		})
	}
}

// TestAutoNeverPicksEBPF: ebpf is opt-in. auto passes over it even when it is
// the only ready backend or the first in order, and --backend ebpf uses it.
func TestAutoNeverPicksEBPF(t *testing.T) {
	t.Parallel()
	notReady := fmt.Errorf("iptables missing: %w", ErrNotSupported)
	l := newLab(t, BackendEBPF, BackendIPTablesNFT)
	res, err := l.e.Install(context.Background(), l.plan(t, BackendAuto))
	if err != nil || res.Backend != BackendIPTablesNFT {
		t.Fatalf("auto with ebpf first = %+v, %v; want iptables-nft", res, err)
	}
	l = newLab(t, BackendIPTablesNFT, BackendEBPF)
	l.d[BackendIPTablesNFT].ready = notReady
	if res, err := l.e.Install(context.Background(), l.plan(t, BackendAuto)); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("auto with only ebpf ready = %+v, %v; want ErrNotSupported", res, err)
	}
	if w := l.writes(); len(w) != 0 {
		t.Errorf("a refused install wrote %v", w)
	}
	if res, err := l.e.Install(context.Background(), l.plan(t, BackendEBPF)); err != nil || res.Backend != BackendEBPF {
		t.Fatalf("--backend ebpf = %+v, %v", res, err)
	}
	// Once installed by name, auto stays with it (sticky).
	if res, err := l.e.Install(context.Background(), l.plan(t, BackendAuto)); err != nil || res.Backend != BackendEBPF {
		t.Errorf("auto after --backend ebpf = %+v, %v; want ebpf (sticky)", res, err)
	}
}

// TestSwitchBackend: installing with another backend than the one holding
// detour's state applies the new one first, then removes the old one's.
func TestSwitchBackend(t *testing.T) {
	t.Parallel()
	l := newLab(t, BackendNFTables, BackendIPTablesLegacy)
	l.install(t, l.plan(t, BackendIPTablesLegacy))
	if diff := cmp.Diff([]string{"iptables-legacy apply"}, l.writes()); diff != "" {
		t.Fatalf("first install (-want +got):\n%s", diff)
	}
	res := l.install(t, l.plan(t, BackendNFTables))
	if diff := cmp.Diff([]string{"nftables apply", "iptables-legacy remove"}, l.writes()); diff != "" {
		t.Errorf("switch writes (-want +got):\n%s", diff)
	}
	if res.Backend != BackendNFTables || !res.Changed || !slices.Equal(res.Replaced, []Backend{BackendIPTablesLegacy}) {
		t.Errorf("switch result = %+v", res)
	}
	// auto now sticks to nftables; the same install again writes nothing.
	if res := l.install(t, l.plan(t, BackendAuto)); res.Changed || res.Backend != BackendNFTables {
		t.Errorf("auto after the switch = %+v, want nftables unchanged", res)
	}
	if w := l.writes(); len(w) != 0 {
		t.Errorf("a no-change install wrote %v", w)
	}
	// The new backend failing leaves the old one in place.
	l.d[BackendIPTablesLegacy].applyErr = errors.New("simulated failure")
	if _, err := l.e.Install(context.Background(), l.plan(t, BackendIPTablesLegacy)); err == nil || !strings.Contains(err.Error(), "simulated failure") {
		t.Fatalf("Install with a failing backend = %v", err)
	}
	if diff := cmp.Diff([]string{"iptables-legacy apply failed"}, l.writes()); diff != "" {
		t.Errorf("failed switch writes (-want +got):\n%s", diff)
	}
	if len(l.d[BackendNFTables].state[IPv4]) == 0 {
		t.Error("the old backend's state was removed although the new one failed")
	}
}

// TestExplicitBackendNotUsable: a named backend that is not ready fails,
// naming it, and writes nothing; iptables means the first iptables driver.
func TestExplicitBackendNotUsable(t *testing.T) {
	t.Parallel()
	l := newLab(t, BackendIPTablesNFT, BackendIPTablesLegacy)
	l.d[BackendIPTablesNFT].ready = fmt.Errorf("iptables-nft-save not found: %w", ErrNotSupported)
	_, err := l.e.Install(context.Background(), l.plan(t, BackendIPTables))
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "iptables-nft") {
		t.Fatalf("Install iptables with the host's default not ready = %v", err)
	}
	if res := l.install(t, l.plan(t, BackendIPTablesLegacy)); res.Backend != BackendIPTablesLegacy {
		t.Errorf("Install iptables-legacy = %+v", res)
	}
	// iptables is sticky within both variants.
	l.d[BackendIPTablesNFT].ready = nil
	if res := l.install(t, l.plan(t, BackendIPTables)); res.Backend != BackendIPTablesLegacy || res.Changed {
		t.Errorf("Install iptables where legacy holds the state = %+v, want legacy unchanged", res)
	}
	if _, err := l.e.Install(context.Background(), l.plan(t, BackendEBPF)); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Install with a backend this build lacks = %v, want ErrNotSupported", err)
	}
}

func TestUninstallEveryBackend(t *testing.T) {
	t.Parallel()
	l := newLab(t, BackendNFTables, BackendIPTablesLegacy, BackendIPTablesNFT)
	l.d[BackendIPTablesLegacy].state = map[Family][]string{IPv4: {"x"}}
	l.d[BackendIPTablesNFT].state = map[Family][]string{IPv6: {"y"}}
	res, err := l.e.Uninstall(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || !slices.Equal(res.Families, []Family{IPv4, IPv6}) || !slices.Equal(res.Replaced, []Backend{BackendIPTablesLegacy, BackendIPTablesNFT}) {
		t.Errorf("Uninstall = %+v", res)
	}
	if diff := cmp.Diff([]string{"iptables-legacy remove", "iptables-nft remove"}, l.writes()); diff != "" {
		t.Errorf("uninstall writes (-want +got):\n%s", diff)
	}
	if res, err := l.e.Uninstall(context.Background()); err != nil || res.Changed {
		t.Errorf("second Uninstall = %+v, %v; want success without change", res, err)
	}
	// A conflict in any backend: nothing is removed anywhere.
	l.d[BackendNFTables].state = map[Family][]string{IPv4: {"x"}}
	l.d[BackendIPTablesNFT].conflict = fmt.Errorf("%w: nat DETOUR_FOO", ErrForeignChains)
	if _, err := l.e.Uninstall(context.Background()); !errors.Is(err, ErrForeignChains) {
		t.Fatalf("Uninstall with a conflict = %v", err)
	}
	if w := l.writes(); len(w) != 0 {
		t.Errorf("a refused uninstall wrote %v", w)
	}
	if _, err := l.e.Install(context.Background(), l.plan(t, BackendAuto)); !errors.Is(err, ErrForeignChains) {
		t.Errorf("Install with a conflict = %v", err)
	}
}

func TestCheckAndStatusNameTheBackend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := newLab(t, BackendNFTables, BackendIPTablesLegacy)
	p := l.plan(t, BackendAuto)
	if _, err := l.e.Check(ctx, p); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Check with nothing installed = %v", err)
	}
	if st, err := l.e.Status(ctx); err != nil || st.Installed {
		t.Fatalf("Status with nothing installed = %+v, %v", st, err)
	}
	l.install(t, l.plan(t, BackendIPTablesLegacy))
	d, err := l.e.Check(ctx, l.plan(t, BackendIPTablesLegacy))
	if err != nil || !d.Empty() {
		t.Fatalf("Check of what was installed = %+v, %v", d, err)
	}
	// auto checks against the backend holding the state.
	if d, err := l.e.Check(ctx, p); err != nil || !d.Empty() {
		t.Errorf("Check auto = %+v, %v", d, err)
	}
	d, err = l.e.Check(ctx, l.plan(t, BackendIPTablesLegacy, "outbound.excludePorts=25"))
	if err != nil || len(d.Families) != 1 || len(d.Families[0].Missing) != 1 || !strings.Contains(d.Families[0].Missing[0], "excludePorts=[25]") {
		t.Errorf("Check of a changed config = %+v, %v", d, err)
	}
	d, err = l.e.Check(ctx, l.plan(t, BackendNFTables))
	if err != nil || !slices.Contains(d.Notes, "installed with iptables-legacy, planned for nftables") {
		t.Errorf("Check planned for another backend = %+v, %v", d, err)
	}
	st, err := l.e.Status(ctx)
	if err != nil || !st.Installed || st.Backend != BackendIPTablesLegacy || !strings.Contains(st.Rules[IPv4], "iptables-legacy ipv4") {
		t.Errorf("Status = %+v, %v", st, err)
	}
}

func TestRenderPicksTheAskedBackend(t *testing.T) {
	t.Parallel()
	l := newLab(t, BackendNFTables, BackendIPTablesNFT, BackendIPTablesLegacy)
	for want, asked := range map[Backend]Backend{
		BackendAuto:           BackendNFTables, // the first driver
		BackendIPTables:       BackendIPTablesNFT,
		BackendIPTablesLegacy: BackendIPTablesLegacy,
	} {
		r, err := l.e.Render(l.plan(t, want))
		if err != nil || r.Backend != asked {
			t.Errorf("Render for %s = %s, %v; want %s", want, r.Backend, err, asked)
		}
	}
	if _, err := l.e.Render(l.plan(t, BackendEBPF)); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Render for a backend without a driver = %v", err)
	}
}

// TestFormatAroundRendering: Format prints the header, the notes, each
// family's rendering and the shared routing after it.
func TestFormatAroundRendering(t *testing.T) {
	t.Parallel()
	p, err := NewPlan(cfgWith(t, "", "mode=tproxy", "outbound.includeCIDRs=10.0.0.0/8", "outbound.excludeCIDRs=10.1.0.0/16"), dualStack)
	if err != nil {
		t.Fatal(err)
	}
	r := Rendering{Families: []FamilyRendering{{Family: IPv4, Text: "v4 rules\n"}, {Family: IPv6, Text: "v6 rules\n"}}}
	want := `# detour plan: mode tproxy, backend auto, ipFamilies auto (ipv4, ipv6)
# note: outbound.excludeCIDRs[0] 10.1.0.0/16 has no effect: outbound.includeCIDRs[0] 10.0.0.0/8 includes it, and include beats exclude

### ipv4
v4 rules
# routing: ip -4 rule add fwmark 0x2000/0x2000 lookup 2000 priority 2000 protocol 215
# routing: ip -4 route add local 0.0.0.0/0 dev lo table 2000 proto 215

### ipv6
v6 rules
# routing: ip -6 rule add fwmark 0x2000/0x2000 lookup 2000 priority 2000 protocol 215
# routing: ip -6 route add local ::/0 dev lo table 2000 proto 215
# address: ip -6 addr add ::6/128 dev lo nodad noprefixroute proto 215
`
	if diff := cmp.Diff(want, p.Format(r)); diff != "" {
		t.Errorf("Format (-want +got):\n%s", diff)
	}
}

// glancingDriver is a fakeDriver that can tell cheaply that it holds
// nothing (Glancer), as every real backend can.
type glancingDriver struct {
	*fakeDriver
	err error // Glance's error: it cannot tell
}

func (g glancingDriver) Glance(context.Context) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked = append(g.asked, "glance")
	maybe := g.conflict != nil
	for _, l := range g.state {
		maybe = maybe || len(l) > 0
	}
	return maybe, g.err
}

// glancing makes every driver of the lab a Glancer.
func (l *lab) glancing() *lab {
	for i, d := range l.e.Drivers {
		l.e.Drivers[i] = glancingDriver{fakeDriver: d.(*fakeDriver)}
	}
	return l
}

// asked returns, and forgets, what each driver was asked.
func (l *lab) asked() map[Backend]string {
	out := map[Backend]string{}
	for n, d := range l.d {
		d.mu.Lock()
		out[n] = strings.Join(d.asked, ",")
		d.asked = nil
		d.mu.Unlock()
	}
	return out
}

// TestGlanceSparesOtherBackends: a backend that is not a candidate of the
// call and whose glance says it holds nothing is neither asked whether it is
// ready nor observed; wherever detour's state (or a conflict) may be, it is,
// so switching, uninstall everywhere, check and the refusal on a foreign
// chain work as without glances.
func TestGlanceSparesOtherBackends(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	nft, legacy, ipnft, ebpf := BackendNFTables, BackendIPTablesLegacy, BackendIPTablesNFT, BackendEBPF
	l := newLab(t, legacy, ipnft, nft, ebpf).glancing()
	step := func(name string, want map[Backend]string) {
		t.Helper()
		if diff := cmp.Diff(want, l.asked()); diff != "" {
			t.Errorf("%s: what the drivers were asked (-want +got):\n%s", name, diff)
		}
	}

	l.install(t, l.plan(t, nft))
	step("install --backend nftables", map[Backend]string{nft: "ready,observe", legacy: "glance", ipnft: "glance", ebpf: "glance"})
	if res := l.install(t, l.plan(t, nft)); res.Changed {
		t.Errorf("re-run = %+v, want no change", res)
	}
	step("re-run", map[Backend]string{nft: "ready,observe", legacy: "glance", ipnft: "glance", ebpf: "glance"})
	if d, err := l.e.Check(ctx, l.plan(t, nft)); err != nil || !d.Empty() {
		t.Errorf("Check = %+v, %v", d, err)
	}
	step("check", map[Backend]string{nft: "glance,ready,observe", legacy: "glance", ipnft: "glance", ebpf: "glance"})

	// auto: every backend but the opt-in ebpf is a candidate.
	if res := l.install(t, l.plan(t, BackendAuto)); res.Backend != nft || res.Changed {
		t.Errorf("auto = %+v, want nftables unchanged (sticky)", res)
	}
	step("auto", map[Backend]string{nft: "ready,observe", legacy: "ready,observe", ipnft: "ready,observe", ebpf: "glance"})

	// Switching: the old backend is found by its glance and emptied.
	l.writes()
	if res := l.install(t, l.plan(t, legacy)); !slices.Equal(res.Replaced, []Backend{nft}) {
		t.Errorf("switch to iptables-legacy = %+v", res)
	}
	if diff := cmp.Diff([]string{"iptables-legacy apply", "nftables remove"}, l.writes()); diff != "" {
		t.Errorf("switch writes (-want +got):\n%s", diff)
	}
	step("switch", map[Backend]string{legacy: "ready,observe", nft: "glance,ready,observe", ipnft: "glance", ebpf: "glance"})

	// A glance that cannot tell is no answer: the backend is observed.
	l.e.Drivers[1] = glancingDriver{fakeDriver: l.d[ipnft], err: errors.New("nfnetlink: permission denied")}
	l.d[ipnft].state = map[Family][]string{IPv6: {"left over"}}
	res, err := l.e.Uninstall(ctx)
	if err != nil || !slices.Equal(res.Replaced, []Backend{legacy, ipnft}) {
		t.Errorf("Uninstall = %+v, %v; want legacy and iptables-nft emptied", res, err)
	}
	if diff := cmp.Diff([]string{"iptables-legacy remove", "iptables-nft remove"}, l.writes()); diff != "" {
		t.Errorf("uninstall writes (-want +got):\n%s", diff)
	}
	step("uninstall", map[Backend]string{legacy: "glance,ready,observe", ipnft: "glance,ready,observe", nft: "glance", ebpf: "glance"})

	// A conflict seen only through a glance still refuses the install.
	l.e.Drivers[1] = glancingDriver{fakeDriver: l.d[ipnft]}
	l.d[ebpf].conflict = fmt.Errorf("%w: pinned map of another tool", ErrForeignChains)
	if _, err := l.e.Install(ctx, l.plan(t, nft)); !errors.Is(err, ErrForeignChains) {
		t.Errorf("Install with a conflict in a glanced backend = %v, want ErrForeignChains", err)
	}
	l.asked()
	if w := l.writes(); len(w) != 0 {
		t.Errorf("a refused install wrote %v", w)
	}
}

// sharingDriver is a fake backend whose scope shares the namespace with
// others (NetSharer), like the eBPF backend's namespace scope beside a
// cgroup scope that captures inbound.
type sharingDriver struct {
	*fakeDriver
	others []string
}

func (d sharingDriver) OtherScopes(context.Context) ([]string, error) { return d.others, nil }

// TestInboundOfAnotherScope: where another scope of detour captures inbound,
// an install whose plan captures inbound is refused naming the other scope,
// writing nothing, whichever backend is chosen; without inbound it goes on.
func TestInboundOfAnotherScope(t *testing.T) {
	t.Parallel()
	l := newLab(t, BackendNFTables)
	other := "the cgroup scope /sys/fs/cgroup/app.slice"
	eb := &fakeDriver{name: BackendEBPF, mu: &sync.Mutex{}, journal: l.journal}
	l.e.Drivers = append(l.e.Drivers, sharingDriver{fakeDriver: eb, others: []string{other}})

	_, err := l.e.Install(context.Background(), l.plan(t, BackendNFTables))
	if !errors.Is(err, ErrInboundTaken) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), "--inbound=false") {
		t.Fatalf("install with inbound beside another scope's = %v; want ErrInboundTaken naming %q and --inbound=false", err, other)
	}
	if w := l.writes(); len(w) != 0 {
		t.Errorf("a refused install wrote %v", w)
	}
	if res := l.install(t, l.plan(t, BackendNFTables, "inbound.enabled=false")); res.Backend != BackendNFTables || !res.Changed {
		t.Errorf("install without inbound = %+v", res)
	}
	if _, err := l.e.Install(context.Background(), l.plan(t, BackendEBPF)); !errors.Is(err, ErrInboundTaken) {
		t.Errorf("install with inbound with the sharing backend itself = %v; want ErrInboundTaken", err)
	}
	if w := l.writes(); len(w) != 1 || w[0] != "nftables apply" {
		t.Errorf("writes = %v, want only the install without inbound", w)
	}
}

// TestInterruptedObserveIsNotUnusable: a backend whose observation was cut
// short by the caller (Ctrl-C, SIGTERM: the context ends while
// iptables-save runs) is not "not usable": the error says the call was
// interrupted and keeps the context's error for the caller to branch on.
func TestInterruptedObserveIsNotUnusable(t *testing.T) {
	t.Parallel()
	for _, want := range []Backend{BackendIPTablesNFT, BackendAuto} {
		l := newLab(t, BackendIPTablesNFT)
		l.d[BackendIPTablesNFT].state = map[Family][]string{IPv4: {"held"}} // auto: the backend holding detour's rules
		l.d[BackendIPTablesNFT].ready = fmt.Errorf("observe ipv4 with iptables-nft: iptables-nft-save: %w", context.Canceled)
		_, err := l.e.Install(context.Background(), l.plan(t, want))
		if !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "not usable") || !strings.Contains(err.Error(), "interrupted") {
			t.Errorf("backend %s: Install = %v; want it interrupted (context.Canceled), not called not usable", want, err)
		}
		if w := l.writes(); len(w) != 0 {
			t.Errorf("backend %s: the interrupted install wrote %q", want, w)
		}
	}
}

// TestBackendConflictNamesTheBackends: a switch from iptables-nft to nftables
// killed half way leaves detour's state in both; auto then refuses, and said
// "detour rules are in another iptables backend: detour's state is in
// iptables-nft, nftables" — nftables is none. It says they are in more than
// one backend, and which.
func TestBackendConflictNamesTheBackends(t *testing.T) {
	t.Parallel()
	l := newLab(t, BackendIPTablesNFT, BackendNFTables)
	l.d[BackendIPTablesNFT].state = map[Family][]string{IPv4: {"old"}}
	l.d[BackendNFTables].state = map[Family][]string{IPv4: {"new"}}
	_, err := l.e.Install(context.Background(), l.plan(t, BackendAuto))
	if !errors.Is(err, ErrBackendConflict) || strings.Contains(err.Error(), "iptables backend") ||
		!strings.Contains(err.Error(), "more than one backend") || !strings.Contains(err.Error(), "iptables-nft, nftables") {
		t.Errorf("Install = %v; want ErrBackendConflict saying more than one backend holds detour's state, iptables-nft, nftables", err)
	}
}
