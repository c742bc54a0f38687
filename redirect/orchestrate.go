package redirect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// This file is the orchestration above the Driver interface: which backend
// installs, switching between backends, uninstall across all of them, and
// Check and Status. It names no backend.

type processCounter struct{}

// CountProcess records, for the Engine call running with ctx, that a Driver
// spawned one child process (Result.Processes). Without an Engine call in ctx
// it does nothing.
func CountProcess(ctx context.Context) {
	if n, ok := ctx.Value(processCounter{}).(*atomic.Int64); ok {
		n.Add(1)
	}
}

func withProcessCounter(ctx context.Context) (context.Context, *atomic.Int64) {
	n := new(atomic.Int64)
	return context.WithValue(ctx, processCounter{}, n), n
}

// Matches reports whether a Driver named name serves this configured
// backend: auto (and "") every one, iptables both iptables backends, a
// concrete backend only itself.
func (b Backend) Matches(name Backend) bool {
	switch b {
	case BackendAuto, "":
		return true
	case BackendIPTables:
		return name == BackendIPTablesLegacy || name == BackendIPTablesNFT
	}
	return b == name
}

// manualOnly: auto never picks this backend for a fresh install (it stays
// sticky once installed by name). ebpf is opt-in (DESIGN.md).
func (b Backend) manualOnly() bool { return b == BackendEBPF }

// driverState is what one Driver showed in one Engine call.
type driverState struct {
	d     Driver
	ready error     // Ready's error; nil when the backend can work here
	have  Installed // what Observe returned (nil when not ready)
	err   error     // Observe's error
}

// holds reports that detour's state is in this backend.
func (s *driverState) holds() bool { return s.have != nil && !s.have.Empty() }

// usable reports that the backend can be installed with.
func (s *driverState) usable() error {
	if s.ready != nil {
		return s.ready
	}
	return s.err
}

// errNotAsked is the readiness of a backend that Engine neither asked nor
// observed because its glance ruled detour's state out; such a backend is
// never installed with in that call.
var errNotAsked = errors.New("not asked: no candidate for this call, and it holds nothing of detour's")

// observeAll reads what every Driver holds. The candidates (the backends
// this call may install with) are asked whether they are ready and observed;
// the others are glanced at (Glancer) and asked and observed only when they
// may hold detour's state, which install, uninstall, check and status must
// see in every backend. It never writes.
func (e *Engine) observeAll(ctx context.Context, candidate func(Backend) bool) []*driverState {
	out := make([]*driverState, 0, len(e.Drivers))
	for _, d := range e.Drivers {
		s := &driverState{d: d}
		out = append(out, s)
		if !candidate(d.Name()) && e.holdsNothing(ctx, d) {
			s.ready = errNotAsked
			continue
		}
		if s.ready = d.Ready(ctx); s.ready == nil {
			s.have, s.err = d.Observe(ctx)
		}
		if s.usable() != nil {
			e.logger().Debug("backend not usable", "backend", d.Name(), "error", s.usable())
		}
	}
	return out
}

// holdsNothing reports that d's glance rules detour's state out.
func (e *Engine) holdsNothing(ctx context.Context, d Driver) bool {
	g, ok := d.(Glancer)
	if !ok {
		return false
	}
	maybe, err := g.Glance(ctx)
	if err != nil {
		e.logger().Debug("glance", "backend", d.Name(), "error", err)
		return false
	}
	return !maybe
}

// candidates are the backends an install with want may use: those it
// matches (auto: every one but the opt-in ones, which it uses only where
// detour's state already is, and a glance does not rule that out).
func candidates(want Backend) func(Backend) bool {
	return func(b Backend) bool {
		if want == BackendAuto || want == "" {
			return !b.manualOnly()
		}
		return want.Matches(b)
	}
}

// noCandidate is for the calls that install with no backend: uninstall,
// check and status read what every backend holds.
func noCandidate(Backend) bool { return false }

func holding(states []*driverState) []*driverState {
	var out []*driverState
	for _, s := range states {
		if s.holds() {
			out = append(out, s)
		}
	}
	return out
}

func names(states []*driverState) string {
	n := make([]string, len(states))
	for i, s := range states {
		n[i] = string(s.d.Name())
	}
	return strings.Join(n, ", ")
}

// conflicts collects every backend's reason not to be changed.
func conflicts(states []*driverState) error {
	var errs []error
	for _, s := range states {
		if s.have != nil {
			if err := s.have.Conflict(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Choose picks the backend an install uses, from what the Drivers observed
// (read-only). A named backend (or iptables: the first iptables Driver) is
// used as asked, keeping detour's state where it is when that backend
// matches. auto is sticky: the backend that holds detour's state (refused
// when several do). Otherwise auto takes the first Driver, in e.Drivers
// order, whose mechanism holds other tools' state (a namespace run by
// iptables-legacy stays legacy), and when none does, the first Driver that
// is ready; never ebpf, which is opt-in.
func (e *Engine) choose(want Backend, states []*driverState) (*driverState, error) {
	// A reading the caller cut short (Ctrl-C, SIGTERM cancel the CLI's
	// context) says nothing of whether a backend works: no choice is made
	// on it. (A tool's own time-out still makes its backend not usable.)
	for _, s := range states {
		if err := s.usable(); errors.Is(err, context.Canceled) {
			return nil, fmt.Errorf("interrupted while reading %s: %w", s.d.Name(), err)
		}
	}
	held := holding(states)
	if want != BackendAuto && want != "" {
		var first *driverState
		for _, s := range states {
			if !want.Matches(s.d.Name()) {
				continue
			}
			if s.holds() {
				return s, nil // sticky within what was asked (iptables: either one)
			}
			if first == nil {
				first = s
			}
		}
		if first == nil {
			return nil, fmt.Errorf("backend %s: no driver for it in this build: %w", want, ErrNotSupported)
		}
		if err := first.usable(); err != nil {
			return nil, fmt.Errorf("backend %s is not usable: %w", first.d.Name(), err)
		}
		return first, nil
	}
	switch len(held) {
	case 0:
	case 1:
		if err := held[0].usable(); err != nil {
			return nil, fmt.Errorf("detour is installed with %s, which is not usable now: %w", held[0].d.Name(), err)
		}
		return held[0], nil
	default:
		return nil, fmt.Errorf("%w: detour's state is in %s (install with --backend naming one to keep only it, or uninstall, which removes all)", ErrBackendConflict, names(held))
	}
	for _, s := range states {
		if s.usable() == nil && !s.d.Name().manualOnly() && s.have.Foreign() {
			return s, nil
		}
	}
	var errs []error
	for _, s := range states {
		if s.d.Name().manualOnly() {
			continue
		}
		if s.usable() == nil {
			return s, nil
		}
		errs = append(errs, s.usable())
	}
	return nil, fmt.Errorf("backend auto: no backend is usable here: %w", errors.Join(append(errs, ErrNotSupported)...))
}

// locked runs fn inside NetNS holding detour's lock of it, with a process
// counter in ctx.
func (e *Engine) locked(ctx context.Context, res *Result, fn func(ctx context.Context) error) error {
	return e.enter(func() error {
		ctx, procs := withProcessCounter(ctx)
		defer func() { res.Processes = int(procs.Load()) }()
		unlock, err := e.lockNetNS(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		if e.Locked != nil {
			if err := e.Locked(); err != nil {
				return err
			}
		}
		return fn(ctx)
	})
}

func (e *Engine) install(ctx context.Context, p Plan) (Result, error) {
	var res Result
	if len(p.Capture.Families) == 0 {
		return res, errors.New("install: the plan captures no IP family (make it with NewPlan)")
	}
	res.Families = p.Families()
	err := e.locked(ctx, &res, func(ctx context.Context) error {
		states := e.observeAll(ctx, candidates(p.Config.Backend))
		if err := conflicts(states); err != nil {
			return err
		}
		chosen, err := e.choose(p.Config.Backend, states)
		if err != nil {
			return err
		}
		res.Backend = chosen.d.Name()
		if err := e.inboundFree(ctx, p, chosen.d); err != nil {
			return err
		}
		if res.Leftovers, err = e.sweep(ctx, states, chosen.d.Name()); err != nil {
			return err
		}
		net, err := e.observeNet(p)
		if err != nil {
			return err
		}
		net = e.shareNet(ctx, net)
		undo := func() error { return nil }
		if net.changes() {
			if undo, err = net.add(); err != nil {
				return err
			}
		}
		changed, err := chosen.d.Apply(ctx, p, chosen.have)
		if err != nil {
			return errors.Join(err, undo())
		}
		// Switching: the new backend captures now; the old one's state goes.
		for _, s := range holding(states) {
			if s == chosen {
				continue
			}
			if err := s.d.Remove(ctx, s.have); err != nil {
				return fmt.Errorf("remove detour's state from %s after installing with %s: %w", s.d.Name(), chosen.d.Name(), err)
			}
			res.Replaced = append(res.Replaced, s.d.Name())
			e.logger().Info("switched backend", "from", s.d.Name(), "to", chosen.d.Name())
		}
		if net.changes() {
			if err := net.remove(); err != nil {
				return err
			}
		}
		res.Changed = changed || net.changes() || len(res.Replaced) > 0
		if res.Changed {
			e.logger().Info("installed", "backend", res.Backend, "families", res.Families, "netns", e.NetNS)
		} else {
			e.logger().Debug("no changes", "backend", res.Backend)
		}
		return nil
	})
	return res, err
}

func (e *Engine) uninstall(ctx context.Context) (Result, error) {
	res := Result{Families: []Family{}} // a list, also when empty (JSON [])
	err := e.locked(ctx, &res, func(ctx context.Context) error {
		states := e.observeAll(ctx, noCandidate)
		if err := conflicts(states); err != nil {
			return err
		}
		swept, err := e.sweep(ctx, states, "")
		if err != nil {
			return err
		}
		res.Leftovers = swept
		net, err := e.observeNet(Plan{})
		if err != nil {
			return err
		}
		net = e.shareNet(ctx, net)
		removed := map[Family]bool{}
		for _, s := range holding(states) {
			for _, f := range allFamilies {
				if len(s.have.Lines(f)) > 0 {
					removed[f] = true
				}
			}
			if err := s.d.Remove(ctx, s.have); err != nil {
				return fmt.Errorf("remove detour's state from %s: %w", s.d.Name(), err)
			}
			if res.Backend == "" {
				res.Backend = s.d.Name()
			}
			res.Replaced = append(res.Replaced, s.d.Name())
		}
		for _, s := range states {
			lo := leftovers(s)
			if lo == "" {
				continue
			}
			if err := s.d.Remove(ctx, s.have); err != nil {
				return fmt.Errorf("remove what an interrupted run left in %s (%s): %w", s.d.Name(), lo, err)
			}
			res.Leftovers = append(res.Leftovers, fmt.Sprintf("%s: %s", s.d.Name(), lo))
		}
		for _, f := range allFamilies {
			if net.drops() && net.owns(f) {
				removed[f] = true
			}
		}
		if err := net.remove(); err != nil {
			return err
		}
		for _, f := range allFamilies {
			if removed[f] {
				res.Families = append(res.Families, f)
			}
		}
		res.Changed = len(res.Families) > 0 || len(res.Leftovers) > 0
		if res.Changed {
			e.logger().Info("uninstalled", "backends", res.Replaced, "families", res.Families, "netns", e.NetNS)
		}
		return nil
	})
	return res, err
}

// leftovers is what of detour's a backend that holds no install found left
// by an interrupted run (Leftovers); "" when nothing.
func leftovers(s *driverState) string {
	if s.holds() {
		return ""
	}
	return leftoversAny(s)
}

// leftoversAny is leftovers also of a backend that holds an install: what
// status names.
func leftoversAny(s *driverState) string {
	if s.have == nil {
		return ""
	}
	if lo, ok := s.have.(Leftovers); ok {
		return lo.Leftovers()
	}
	return ""
}

// sweep has every Sweeper among the Drivers that may hold state of
// detour's (observed in states) remove the stale scopes, and re-observes
// those that removed something, so that what they leave is read afresh. It
// returns what was removed, by backend. installing is the backend an install
// applies with, "" for a removal (Uninstall, Engine.Sweep), which uses a
// RemovalSweeper's SweepForRemoval. An install goes on past a Sweeper of
// another backend that cannot read its state (ErrSweepUnreadable), with one
// warning.
func (e *Engine) sweep(ctx context.Context, states []*driverState, installing Backend) ([]string, error) {
	var out []string
	for _, s := range states {
		sw, ok := s.d.(Sweeper)
		if !ok || s.ready != nil {
			continue
		}
		sweep := sw.Sweep
		if rs, ok := sw.(RemovalSweeper); ok && installing == "" {
			sweep = rs.SweepForRemoval
		}
		removed, err := sweep(ctx)
		if err != nil && installing != "" && installing != s.d.Name() && errors.Is(err, ErrSweepUnreadable) {
			e.logger().Warn("the stale scopes of a backend cannot be read, so none was removed; the install with another backend goes on, as that one neither reads nor writes them",
				"backend", s.d.Name(), "installing", installing, "error", err)
			continue
		}
		if err != nil {
			return out, fmt.Errorf("remove the stale scopes of %s: %w", s.d.Name(), err)
		}
		if len(removed) == 0 {
			continue
		}
		for _, r := range removed {
			out = append(out, fmt.Sprintf("%s: %s", s.d.Name(), r))
		}
		e.logger().Info("removed stale scopes", "backend", s.d.Name(), "scopes", removed)
		s.have, s.err = s.d.Observe(ctx)
	}
	return out, nil
}

func (e *Engine) sweepOnly(ctx context.Context) (Result, error) {
	res := Result{Families: []Family{}}
	err := e.locked(ctx, &res, func(ctx context.Context) error {
		var err error
		res.Leftovers, err = e.sweep(ctx, e.observeAll(ctx, noCandidate), "")
		res.Changed = len(res.Leftovers) > 0
		return err
	})
	return res, err
}

// otherScopes names the other scopes of detour in the namespace that every
// NetSharer among the Drivers, and every Neighbor, knows of. An error is logged and counts as
// none (only an uninstall's or install's cleanup and the wording of status
// depend on it).
func (e *Engine) otherScopes(ctx context.Context) []string {
	var out []string
	sharers := slices.Clone(e.Neighbors)
	for _, d := range e.Drivers {
		if s, ok := d.(NetSharer); ok {
			sharers = append(sharers, s)
		}
	}
	for _, s := range sharers {
		others, err := s.OtherScopes(ctx)
		if err != nil {
			e.logger().Warn("look for other scopes of detour", "error", err)
			continue
		}
		for _, o := range others {
			if !slices.Contains(out, o) {
				out = append(out, o)
			}
		}
	}
	return out
}

// inboundFree refuses, before anything changes, a plan that captures inbound
// where another scope of detour (NetSharer) already does, whatever backend
// is chosen: each would redirect every inbound connection of the namespace.
func (e *Engine) inboundFree(ctx context.Context, p Plan, chosen Driver) error {
	if !slices.ContainsFunc(p.Capture.Families, func(fc FamilyCapture) bool { return fc.Inbound != nil }) {
		return nil
	}
	others := e.otherScopes(ctx)
	if len(others) == 0 {
		return nil
	}
	return fmt.Errorf("capture inbound with %s: %w: %s; only one scope per namespace may capture inbound (each would redirect every inbound connection of it): install with --inbound=false (inbound.enabled: false), or first re-install the other scope with --inbound=false or uninstall it",
		chosen.Name(), ErrInboundTaken, strings.Join(others, ", "))
}

// shareNet is net, keeping what of ours it would remove while another scope
// of detour in the namespace may rely on it (NetSharer). It asks the Drivers
// only when something of ours would go.
func (e *Engine) shareNet(ctx context.Context, net netView) netView {
	if !net.drops() {
		return net
	}
	if others := e.otherScopes(ctx); len(others) > 0 {
		e.logger().Info("keeping the namespace's addresses and routing of detour: other scopes use them", "scopes", others)
		return net.keepOurs()
	}
	return net
}

// readInstalled is what Check and Status read: no lock, no writes.
// What of ours in the namespace's addresses and routing p does not want, and
// another scope of detour may use, is left out of net (shared names those
// scopes).
//
// others names the other scopes when this one holds nothing (or when net
// would drop something of ours); shared is others when net dropped what
// they may use.
func (e *Engine) readInstalled(ctx context.Context, p Plan) (held []*driverState, net netView, shared, others, left []string, err error) {
	held, net, shared, others, left, _, err = e.readInstalledConflicts(ctx, p)
	return held, net, shared, others, left, err
}

// readInstalledConflicts is readInstalled, and also every backend's reason
// not to be changed (conflicts: what makes install and uninstall refuse).
func (e *Engine) readInstalledConflicts(ctx context.Context, p Plan) (held []*driverState, net netView, shared, others, left []string, conflict error, err error) {
	err = e.enter(func() error {
		states := e.observeAll(ctx, noCandidate)
		held = holding(states)
		conflict = conflicts(states)
		for _, s := range states {
			if lo := leftoversAny(s); lo != "" {
				left = append(left, fmt.Sprintf("%s: %s", s.d.Name(), lo))
			}
		}
		if net, err = e.observeNet(p); err != nil {
			return err
		}
		// The addresses on lo and the routing are the namespace's: where this
		// scope holds nothing and another scope is there, they are the other's.
		if net.drops() || len(held) == 0 {
			others = e.otherScopes(ctx)
		}
		if net.drops() && len(others) > 0 {
			net, shared = net.forget(), others
		}
		return nil
	})
	return held, net, shared, others, left, conflict, err
}

func (e *Engine) check(ctx context.Context, p Plan) (Drift, error) {
	d := Drift{Families: []FamilyDrift{}} // a list, also when empty (JSON [])
	held, net, _, others, _, err := e.readInstalled(ctx, p)
	if err != nil {
		return d, err
	}
	if len(held) == 0 && (len(others) > 0 || !net.owns(IPv4) && !net.owns(IPv6)) {
		return d, ErrNotInstalled
	}
	var r Rendering
	var have Installed
	if len(held) > 0 {
		s := held[0]
		have = s.have
		if want := p.Config.Backend; !want.Matches(s.d.Name()) {
			d.Notes = append(d.Notes, fmt.Sprintf("installed with %s, planned for %s", s.d.Name(), want))
		}
		if len(held) > 1 {
			d.Notes = append(d.Notes, fmt.Sprintf("detour's state is also in %s (install or uninstall removes it)", names(held[1:])))
		}
		r, err = s.d.Render(p)
	} else {
		r, err = e.Render(p)
	}
	if err != nil {
		return d, err
	}
	for _, f := range allFamilies {
		var installed, planned []string
		if have != nil {
			installed = have.Lines(f)
		}
		installed = append(installed, net.have(f)...)
		if fc, ok := p.Family(f); ok {
			fr, _ := r.Family(f)
			planned = append(slices.Clone(fr.Lines), fc.NetLines()...)
		}
		if fd, differs := familyDrift(f, installed, planned); differs {
			d.Families = append(d.Families, fd)
		}
	}
	return d, nil
}

func (e *Engine) status(ctx context.Context) (Status, error) {
	st := Status{Families: []Family{}, Rules: map[Family]string{}} // a list, also when empty (JSON [])
	held, net, shared, _, left, conflict, err := e.readInstalledConflicts(ctx, Plan{})
	if err != nil {
		return st, err
	}
	st.SharedWith, st.Leftovers = shared, left
	if conflict != nil {
		st.Conflicts = strings.Split(conflict.Error(), "\n") // errors.Join's, one a line
	}
	var have Installed
	if len(held) > 0 {
		st.Backend, have = held[0].d.Name(), held[0].have
		for _, s := range held[1:] {
			st.Others = append(st.Others, s.d.Name())
		}
	}
	for _, f := range allFamilies {
		var text string
		if have != nil {
			text = have.Text(f)
		}
		if text == "" && !net.owns(f) {
			continue
		}
		for _, l := range net.have(f) {
			text += l + "\n"
		}
		st.Families = append(st.Families, f)
		st.Rules[f] = text
	}
	st.Installed = len(st.Families) > 0
	return st, nil
}
