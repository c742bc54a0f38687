package iptables

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// Driver tells the kernel a plan's capture with one of the iptables backends
// (iptables-legacy or iptables-nft): one iptables-restore --noflush per family
// that differs, observed with iptables-save. The binaries are looked up on
// PATH at call time. It implements redirect.Driver; its methods run inside the
// namespace redirect.Engine entered.
type Driver struct {
	// Backend is redirect.BackendIPTablesLegacy or redirect.BackendIPTablesNFT.
	Backend redirect.Backend
	// LockWait bounds the wait for the xtables lock (iptables-restore -w); 0 = 10s.
	LockWait time.Duration
	Logger   *slog.Logger // nil = discard

	// detect is the host-default detection Drivers ran; its child process,
	// when it spawned one, is counted in the first Engine call that asks
	// this driver anything (Result.Processes).
	detect *detection
}

// detection records whether finding the host's default iptables backend
// spawned `iptables -V`, so that the process is counted once.
type detection struct {
	once    sync.Once
	spawned bool
}

// count adds the detection's process, if any, to the Engine call of ctx,
// once per Drivers call.
func (d *detection) count(ctx context.Context) {
	if d == nil || !d.spawned {
		return
	}
	d.once.Do(func() { redirect.CountProcess(ctx) })
}

// Drivers returns both iptables drivers, the one plain `iptables` uses on
// this host first (so `backend iptables` and auto's fallback pick it).
func Drivers(lockWait time.Duration, logger *slog.Logger) []redirect.Driver {
	def, spawned := hostDefault()
	return drivers(def, &detection{spawned: spawned}, lockWait, logger)
}

// DriversAnyOrder returns both iptables drivers, legacy first, without
// looking up which one plain `iptables` uses (a PATH search, and `iptables
// -V` where the binary's name does not tell): for callers to whom their order
// decides nothing, such as an install that names another backend.
func DriversAnyOrder(lockWait time.Duration, logger *slog.Logger) []redirect.Driver {
	return drivers(redirect.BackendIPTablesLegacy, nil, lockWait, logger)
}

func drivers(def redirect.Backend, det *detection, lockWait time.Duration, logger *slog.Logger) []redirect.Driver {
	legacy := &Driver{Backend: redirect.BackendIPTablesLegacy, LockWait: lockWait, Logger: logger, detect: det}
	nft := &Driver{Backend: redirect.BackendIPTablesNFT, LockWait: lockWait, Logger: logger, detect: det}
	if def == redirect.BackendIPTablesNFT {
		return []redirect.Driver{nft, legacy}
	}
	return []redirect.Driver{legacy, nft}
}

// Name is the concrete backend.
func (d *Driver) Name() redirect.Backend { return d.Backend }

// Render is the plan as iptables-restore input per family: the family's notes
// as comments, then the tables. Lines are the same rules as "-t TABLE -N/-A …".
func (d *Driver) Render(p redirect.Plan) (redirect.Rendering, error) {
	r := redirect.Rendering{Backend: d.Backend}
	for _, fr := range Rules(p.Capture) {
		r.Families = append(r.Families, redirect.FamilyRendering{Family: fr.Family, Text: fr.text(), Lines: driftLines(fr.Tables)})
	}
	return r, nil
}

// text is the family's notes as comment lines, then its tables.
func (fr FamilyRules) text() string {
	var b strings.Builder
	for _, note := range fr.Notes {
		b.WriteString("# " + note + "\n")
	}
	b.WriteString(renderTables(fr.Tables))
	return b.String()
}

// familyObs is what one family of one backend holds.
type familyObs struct {
	err     error // the save tool is missing or failed
	owned   owned
	foreign foreignState
	rules   bool   // anything at all, ours or not
	save    string // the save output, every table: Explain follows packets through it
	tables  []*saveTable
}

// installed is what Observe saw: redirect.Installed.
type installed struct {
	backend redirect.Backend
	fams    map[redirect.Family]*familyObs
}

var allFamilies = []redirect.Family{redirect.IPv4, redirect.IPv6}

func (s *installed) obs(f redirect.Family) *familyObs {
	if s == nil || s.fams[f] == nil {
		return &familyObs{owned: owned{}}
	}
	return s.fams[f]
}

func (s *installed) Empty() bool {
	for _, f := range allFamilies {
		if !s.obs(f).owned.empty() {
			return false
		}
	}
	return true
}

func (s *installed) Lines(f redirect.Family) []string { return driftLines(s.obs(f).owned.tables()) }

func (s *installed) Text(f redirect.Family) string { return renderTables(s.obs(f).owned.tables()) }

// Foreign: the backend's tables hold anything beyond empty built-in chains
// with an ACCEPT policy that is not detour's (a rule, a user chain, another
// policy) in either family.
func (s *installed) Foreign() bool {
	for _, f := range allFamilies {
		if o := s.obs(f); o.rules && o.owned.empty() {
			return true
		}
	}
	return false
}

// Conflict refuses to manage a backend where DETOUR_* chains are not ours,
// or where a rule we do not own jumps to one of our chains (we could not
// delete it).
func (s *installed) Conflict() error {
	var chains, refs []string
	for _, f := range allFamilies {
		fo := s.obs(f)
		for _, c := range fo.foreign.chains {
			chains = append(chains, fmt.Sprintf("%s %s %s", s.backend, f, c))
		}
		for _, c := range fo.foreign.refs {
			refs = append(refs, fmt.Sprintf("%s %s %s", s.backend, f, c))
		}
	}
	if len(chains) > 0 {
		return fmt.Errorf("%w: %s (rename or remove them; detour touches only its own)", redirect.ErrForeignChains, strings.Join(chains, ", "))
	}
	if len(refs) > 0 {
		return fmt.Errorf("rules detour does not own jump to its chains: %s (remove them first)", strings.Join(refs, "; "))
	}
	return nil
}

func (d *Driver) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

func (d *Driver) lockWait() time.Duration {
	if d.LockWait <= 0 {
		return 10 * time.Second
	}
	return d.LockWait
}
