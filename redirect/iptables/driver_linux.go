package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// toolName is the iptables binary for a backend, family and operation
// ("save" or "restore"): iptables-nft-save, ip6tables-legacy-restore, ….
func toolName(b redirect.Backend, f redirect.Family, op string) string {
	name := "iptables"
	if f == redirect.IPv6 {
		name = "ip6tables"
	}
	kind := "legacy"
	if b == redirect.BackendIPTablesNFT {
		kind = "nft"
	}
	return name + "-" + kind + "-" + op
}

// run is one driver call: its context and logger.
type run struct {
	ctx context.Context
	d   *Driver
	log *slog.Logger
}

func (d *Driver) newRun(ctx context.Context) *run {
	return &run{ctx: ctx, d: d, log: d.logger().With("backend", d.Backend)}
}

// toolError is a failed iptables command with what it said.
type toolError struct {
	tool   string
	err    error
	stderr string
}

func (t *toolError) Error() string {
	if t.stderr == "" {
		return t.tool + ": " + t.err.Error()
	}
	return t.tool + ": " + t.err.Error() + ": " + t.stderr
}

func (t *toolError) Unwrap() error { return t.err }

// command runs a binary found on PATH now, with stdin, and returns its stdout.
func (r *run) command(stdin, name string, args ...string) (string, error) {
	return command(r.ctx, stdin, name, args...)
}

func command(ctx context.Context, stdin, name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", &toolError{tool: name, err: exec.ErrNotFound}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	redirect.CountProcess(ctx)
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "xtables lock") {
			err = fmt.Errorf("%w (%w)", redirect.ErrLockTimeout, err)
		}
		// Killed because the caller's context ended (Ctrl-C, SIGTERM): say
		// so, not only "signal: killed".
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return stdout.String(), &toolError{tool: name, err: err, stderr: msg}
	}
	return stdout.String(), nil
}

// Ready reports whether the backend's IPv4 tools are on PATH (IPv6 tools are
// needed only when IPv6 is captured: Apply says so then). It spawns nothing.
func (d *Driver) Ready(ctx context.Context) error {
	d.detect.count(ctx)
	for _, op := range []string{"save", "restore"} {
		if _, err := exec.LookPath(toolName(d.Backend, redirect.IPv4, op)); err != nil {
			return fmt.Errorf("%s: %s not found on PATH: %w", d.Backend, toolName(d.Backend, redirect.IPv4, op), redirect.ErrNotSupported)
		}
	}
	return nil
}

// Observe runs one save per family. It never writes. The error is the IPv4
// save's (without IPv4 the backend cannot be used); an IPv6 failure is kept
// for Apply, which reports it only when IPv6 is captured.
func (d *Driver) Observe(ctx context.Context) (redirect.Installed, error) {
	d.detect.count(ctx)
	r := d.newRun(ctx)
	s := &installed{backend: d.Backend, fams: map[redirect.Family]*familyObs{}}
	for _, f := range allFamilies {
		s.fams[f] = r.observeFamily(f)
	}
	if err := s.fams[redirect.IPv4].err; err != nil {
		return s, fmt.Errorf("observe ipv4 with %s: %w", d.Backend, err)
	}
	return s, nil
}

// observeFamily runs the save of one family.
func (r *run) observeFamily(f redirect.Family) *familyObs {
	fo := &familyObs{owned: owned{}}
	tool := toolName(r.d.Backend, f, "save")
	out, err := r.command("", tool)
	fo.save = out
	if err == nil {
		var tables []*saveTable
		if tables, err = parseSave(out); err == nil {
			fo.tables = tables
			fo.owned, fo.foreign = ownedFromSave(tables)
			fo.rules = hasForeignRules(tables)
		} else {
			err = fmt.Errorf("read %s output: %w", tool, err)
		}
	}
	if err != nil {
		r.log.Debug("observe", "family", f, "error", err)
	}
	fo.err = err
	return fo
}

func asInstalled(have redirect.Installed, b redirect.Backend) *installed {
	if s, ok := have.(*installed); ok && s != nil && s.backend == b {
		return s
	}
	return &installed{backend: b, fams: map[redirect.Family]*familyObs{}}
}

// Apply makes the namespace hold exactly the plan's rules: one
// iptables-restore --noflush per family that differs, removing our old rules
// and adding the new ones; nothing when it already does. Our rules of families
// the plan does not capture are removed. When a restore fails, or the context
// ends during one, the tables it already committed and the families applied
// before it are put back to what they were.
func (d *Driver) Apply(ctx context.Context, p redirect.Plan, have redirect.Installed) (bool, error) {
	r := d.newRun(ctx)
	s := asInstalled(have, d.Backend)
	planned := map[redirect.Family]*FamilyRules{}
	for _, fr := range Rules(p.Capture) {
		planned[fr.Family] = &fr
	}
	var steps []step
	for _, f := range allFamilies {
		fr := planned[f]
		fo := s.obs(f)
		if fo.err != nil {
			if fr == nil {
				continue // no tool for this family: nothing of ours can be there
			}
			if f == redirect.IPv6 {
				return false, fmt.Errorf("observe ipv6 with %s: %w: %w", d.Backend, redirect.ErrIPv6Unavailable, fo.err)
			}
			return false, fmt.Errorf("observe ipv4 with %s: %w", d.Backend, fo.err)
		}
		if st := newStep(f, fo.owned, ownedFromRules(fr)); st.script != "" {
			st.ipv6 = f == redirect.IPv6 && fr != nil
			st.tables = fo.tables
			steps = append(steps, st)
		}
	}
	if len(steps) == 0 {
		return false, nil
	}
	if err := r.apply(steps); err != nil {
		return true, err
	}
	r.log.Info("applied", "transactions", len(steps))
	return true, nil
}

// Remove deletes our chains and hooks in every family have shows.
func (d *Driver) Remove(ctx context.Context, have redirect.Installed) error {
	r := d.newRun(ctx)
	s := asInstalled(have, d.Backend)
	var steps []step
	for _, f := range allFamilies {
		if fo := s.obs(f); !fo.owned.empty() {
			st := newStep(f, fo.owned, owned{})
			st.tables = fo.tables
			steps = append(steps, st)
		}
	}
	if len(steps) == 0 {
		return nil
	}
	return r.apply(steps)
}

// hostDefault is the backend plain `iptables` uses on this host: read from the
// binary's name when it is a link to xtables-nft-multi or
// xtables-legacy-multi, else from `iptables -V` ("(nf_tables)" or "(legacy)").
// spawned reports that it ran `iptables -V` (a child process to count).
func hostDefault() (b redirect.Backend, spawned bool) {
	path, err := exec.LookPath("iptables")
	if err != nil {
		if _, err := exec.LookPath(toolName(redirect.BackendIPTablesNFT, redirect.IPv4, "save")); err == nil {
			return redirect.BackendIPTablesNFT, false
		}
		return redirect.BackendIPTablesLegacy, false
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		switch base := filepath.Base(real); {
		case strings.Contains(base, "nft"):
			return redirect.BackendIPTablesNFT, false
		case strings.Contains(base, "legacy"):
			return redirect.BackendIPTablesLegacy, false
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := command(ctx, "", "iptables", "-V")
	if err == nil && strings.Contains(out, "nf_tables") {
		return redirect.BackendIPTablesNFT, true
	}
	return redirect.BackendIPTablesLegacy, true
}

// restore feeds one transaction to iptables-restore --noflush.
func (r *run) restore(f redirect.Family, script string) error {
	wait := int(math.Ceil(r.d.lockWait().Seconds()))
	r.log.Debug("restore", "family", f, "script", script)
	_, err := r.command(script, toolName(r.d.Backend, f, "restore"), "-w", strconv.Itoa(wait), "--noflush")
	return err
}

// step is one family's transaction and how to undo it.
type step struct {
	family   redirect.Family
	from, to owned
	script   string       // transition(from, to)
	ipv6     bool         // a failure means IPv6 rules are impossible (IPv6 is planned)
	tables   []*saveTable // the family's tables as observed before the step
}

func newStep(f redirect.Family, from, to owned) step {
	return step{family: f, from: from, to: to, script: transition(from, to)}
}

// apply runs the steps in order. iptables-restore commits each table at its
// COMMIT line, so a family's restore that fails (or is killed because the
// caller's context ended) may leave its earlier tables changed: when a step
// fails, its family is read again and put back to what it was observed to be,
// and the steps before it are rolled back too (hooks at their old positions).
func (r *run) apply(steps []step) error {
	b := r.d.Backend
	for i, s := range steps {
		err := r.restore(s.family, s.script)
		if err == nil {
			continue
		}
		if s.ipv6 && !errors.Is(err, redirect.ErrLockTimeout) && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w: %w", redirect.ErrIPv6Unavailable, err)
		}
		errs := []error{fmt.Errorf("restore %s with %s: %w", s.family, b, err)}
		// The rollback runs even when the caller's context is done: leaving a
		// family half-way is worse than finishing late. It is still bounded.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), r.d.lockWait()+30*time.Second)
		defer cancel()
		r.ctx = ctx
		if rbErr := r.restoreObserved(s); rbErr != nil {
			errs = append(errs, fmt.Errorf("roll back %s: %w", s.family, rbErr))
		}
		for j := i - 1; j >= 0; j-- {
			prev := steps[j]
			if rbErr := r.restore(prev.family, transition(prev.to, prev.from)); rbErr != nil {
				errs = append(errs, fmt.Errorf("roll back %s: %w", prev.family, rbErr))
			} else {
				r.log.Info("rolled back", "family", prev.family)
			}
		}
		return errors.Join(errs...)
	}
	if b == redirect.BackendIPTablesNFT {
		for _, s := range steps {
			r.deleteEmptied(s)
		}
	}
	return nil
}

// deleteEmptied deletes the iptables-nft chains and tables the step took the
// last of our hooks out of, when nothing else is in them (tidy_linux.go). It
// cannot fail the step: our rules are gone either way, and what is kept is
// what iptables-nft always leaves.
func (r *run) deleteEmptied(s step) {
	chains := emptiedChains(s.from, s.to, s.tables)
	if len(chains) == 0 {
		return
	}
	deleted, err := deleteEmptied(s.family, chains)
	if err != nil {
		r.log.Debug("emptied chains kept", "family", s.family, "error", err)
	}
	if len(deleted) > 0 {
		r.log.Debug("emptied chains deleted", "family", s.family, "deleted", deleted)
	}
}

// restoreObserved puts the family of a failed step back to s.from: it reads
// what the failed restore left (the tables it committed before failing) and
// undoes exactly that; nothing runs when it committed nothing.
func (r *run) restoreObserved(s step) error {
	now := r.observeFamily(s.family)
	if now.err != nil {
		return now.err
	}
	script := transition(now.owned, s.from)
	if script == "" {
		return nil
	}
	if err := r.restore(s.family, script); err != nil {
		return err
	}
	r.log.Info("rolled back", "family", s.family, "partly_committed", true)
	return nil
}
