package redirect

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Engine observes and changes one network namespace through its Drivers
// (one per backend: iptables-legacy, iptables-nft, nftables, …, assembled by
// redirect/backends). It enters NetNS on one locked OS thread for a whole
// call, so every Driver method and every netlink socket runs there; it makes
// the TPROXY policy routing and the addresses on lo, which every backend
// shares, over netlink itself. Install and Uninstall of one namespace are
// serialized across goroutines and processes by a lock file in LockDir, held
// from observing to applying. An Engine holds no state between calls: it may
// be copied and used from several goroutines. Methods need CAP_NET_ADMIN (and
// what the Drivers need) in the namespace, and CAP_SYS_ADMIN to enter it.
type Engine struct {
	Logger   *slog.Logger  // nil = discard
	NetNS    string        // path of the network namespace (/run/netns/x, /proc/PID/ns/net); "" = the caller's
	LockWait time.Duration // bound on waiting for detour's lock of NetNS (and the Drivers' own locks); 0 = 10s
	// LockDir holds detour's per-namespace lock files, which serialize
	// Install and Uninstall runs on one namespace across processes; "" =
	// /run/detour.
	LockDir string
	// Drivers are the backends this Engine may use, in the order auto prefers
	// them (redirect/backends.All). Uninstall removes detour's state from every
	// one of them.
	Drivers []Driver
	// Neighbors are other scopes of detour in the namespace that this Engine
	// neither installs, removes nor reports, but must know of (a cgroup
	// scope's Engine: the namespace's own capture with another backend):
	// an install that captures inbound beside one that does is refused, and
	// the addresses on lo and the routing they use are kept, as for a
	// Driver's NetSharer.
	Neighbors []NetSharer
	// Locked, when set, runs once detour's lock of NetNS is held, on the
	// thread inside the namespace, before Install, Uninstall or Sweep reads
	// anything: an error ends the call with nothing changed. The lean
	// detour, which chose its Drivers before it could take the lock, checks
	// there that no other backend's state appeared meanwhile (cmd/detour).
	Locked func() error

	// net observes the backend-neutral netlink state; nil = the kernel's
	// (tests put a fake here).
	net func(Plan) (netView, error)
}

// netView is the TPROXY policy routing and the addresses on lo that Engine
// makes for every backend: what is there, what the plan wants.
type netView interface {
	changes() bool                       // the plan wants something that is not there, or ours is there unwanted
	add() (undo func() error, err error) // makes what the plan wants
	remove() error                       // removes ours that the plan does not want
	have(f Family) []string              // ours of family f, in the text form of FamilyCapture.NetLines
	owns(f Family) bool                  // anything of ours in family f
	drops() bool                         // remove would delete something of ours
	keepOurs() netView                   // the same, with everything of ours counted as wanted
	forget() netView                     // the same, without what of ours the plan does not want
}

// Result says what Install or Uninstall did.
type Result struct {
	// Backend is the concrete backend used (for Uninstall, the first one
	// detour's state was removed from; empty when none).
	Backend Backend `json:"backend"`
	// Replaced are the backends detour's state was removed from (Install:
	// the backends it was switched away from; Uninstall: every one it was in).
	Replaced []Backend `json:"replaced,omitempty"`
	// Families are the families the plan captures (Install) or the families our
	// rules were removed from (Uninstall).
	Families []Family `json:"families"`
	// Changed is false when the namespace already was as asked ("no changes").
	Changed bool `json:"changed"`
	// Processes counts the child processes the Drivers spawned.
	Processes int `json:"processes"`
	// Leftovers name what it removed that belonged to no install: the
	// stale scopes (Sweeper: an eBPF scope whose network namespace or cgroup
	// is gone), which Install, Uninstall and Sweep remove, and (Uninstall)
	// state of detour's that an interrupted run left behind (Leftovers),
	// such as the pins of an eBPF install killed before it enrolled its
	// scope.
	Leftovers []string `json:"leftovers,omitempty"`
}

// Drift is the difference between what is installed and a plan.
type Drift struct {
	Families []FamilyDrift `json:"families"` // only families that differ
	// Notes are differences that belong to no family (another backend).
	Notes []string `json:"notes,omitempty"`
}

// FamilyDrift lists the lines of one family that differ, in the text form
// `detour plan` prints; tables are written as "-t nat -A …".
type FamilyDrift struct {
	Family     Family   `json:"family"`
	Missing    []string `json:"missing"`    // planned but not installed
	Unexpected []string `json:"unexpected"` // installed but not planned
	diff       string
}

// Empty reports whether installed and planned agree.
func (d Drift) Empty() bool { return len(d.Families) == 0 && len(d.Notes) == 0 }

// String renders the drift as a unified diff per family (--- installed,
// +++ planned), after the notes.
func (d Drift) String() string {
	var b strings.Builder
	for _, n := range d.Notes {
		b.WriteString("# " + n + "\n")
	}
	for _, f := range d.Families {
		b.WriteString(f.diff)
	}
	return b.String()
}

// Status reports what is installed.
type Status struct {
	Installed bool    `json:"installed"`
	Backend   Backend `json:"backend,omitempty"`
	// Others are further backends that hold state of detour's (a switch
	// that did not finish); Rules shows Backend's.
	Others   []Backend `json:"others,omitempty"`
	Families []Family  `json:"families"`
	// Rules is, per family, what of ours is installed in the text form `detour
	// plan` prints for Backend (its Installed.Text), then the routing.
	Rules map[Family]string `json:"rules"`
	// SharedWith names other scopes of detour in the namespace (NetSharer)
	// when this scope holds nothing and the namespace's addresses on lo or
	// routing are theirs.
	SharedWith []string `json:"sharedWith,omitempty"`
	// Leftovers name state of detour's that belongs to no install (an
	// interrupted run left it; Leftovers); uninstall removes it.
	Leftovers []string `json:"leftovers,omitempty"`
	// Conflicts are what makes install and uninstall refuse to change the
	// namespace (a DETOUR_* chain detour did not make), one a line.
	Conflicts []string `json:"conflicts,omitempty"`
}

// Facts reads what planning needs from the namespace: whether it has a usable
// IPv6 stack (any interface with IPv6 enabled, whatever
// net.ipv6.conf.all.disable_ipv6 says) and whether lo has IPv6 disabled, and
// for dns.capture resolvconf the nameservers of cfg.DNS.ResolvConf (the path is
// read as given, also with NetNS set).
func (e *Engine) Facts(ctx context.Context, cfg Config) (Facts, error) { return e.facts(ctx, cfg) }

// Install makes the namespace hold exactly p with one backend: the one
// p.Config.Backend names, or for auto the one Choose picks. When detour's
// state is in another backend (a switch), the new backend is applied first and
// the old one's state removed afterwards, so no connection that either
// captures escapes capture in between. Nothing is written when the namespace
// already holds p (Result.Changed false). A Driver's failure leaves its
// families as they were (Driver.Apply rolls back) and the routing added for it
// is taken away again.
func (e *Engine) Install(ctx context.Context, p Plan) (Result, error) { return e.install(ctx, p) }

// Uninstall removes everything detour holds in every backend (and its
// routing). Idempotent: nothing installed → success, Changed false. It
// refuses, changing nothing, when any backend reports a Conflict (such as a
// DETOUR_* chain that is not ours).
func (e *Engine) Uninstall(ctx context.Context) (Result, error) { return e.uninstall(ctx) }

// Sweep removes the stale scopes every Sweeper among the Drivers finds (an
// eBPF scope whose network namespace or cgroup is gone), wherever they
// were, and nothing else: the namespace's own capture and every scope that
// may be alive stay. Result.Leftovers names what went; Changed is false when
// there was nothing. Idempotent.
func (e *Engine) Sweep(ctx context.Context) (Result, error) { return e.sweepOnly(ctx) }

// Check compares what is installed with p, in the rendering of the backend
// that holds detour's state. ErrNotInstalled when nothing of ours is there.
func (e *Engine) Check(ctx context.Context, p Plan) (Drift, error) { return e.check(ctx, p) }

// Status reports what is installed (nothing installed is not an error).
func (e *Engine) Status(ctx context.Context) (Status, error) { return e.status(ctx) }

// Render is p in the rendering of the backend its config asks for, without
// looking at any host: a named backend's own; iptables the first iptables
// Driver (the host's default); auto the first Driver of e.Drivers (what
// auto picks in a namespace without rules of any tool where every backend
// works). It is what `detour plan` prints.
func (e *Engine) Render(p Plan) (Rendering, error) {
	for _, d := range e.Drivers {
		if p.Config.Backend.Matches(d.Name()) {
			return d.Render(p)
		}
	}
	return Rendering{}, fmt.Errorf("backend %s: no driver for it in this build: %w", p.Config.Backend, ErrNotSupported)
}

// Explain says what the state installed in the namespace does with one
// connection: the Driver whose state holds detour's answers through the
// optional Explainer interface (the iptables Drivers follow the connection
// through the whole rule set, other tools' rules included). ErrNotInstalled
// when no Driver holds anything of detour's; ErrNotSupported when the one that
// does cannot explain. Read-only.
func (e *Engine) Explain(ctx context.Context, c Conn) (KernelVerdict, error) {
	var kv KernelVerdict
	err := e.enter(func() (err error) {
		kv, err = explainWith(ctx, e.Drivers, c)
		return err
	})
	return kv, err
}

func (e *Engine) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Logger
}

func (e *Engine) lockWait() time.Duration {
	if e.LockWait <= 0 {
		return 10 * time.Second
	}
	return e.LockWait
}
