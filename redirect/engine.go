package redirect

import (
	"context"
	"log/slog"
	"strings"
	"time"
)

// Engine observes and changes one network namespace with the iptables
// backends. All host commands (iptables-save, iptables-restore, …) run inside
// NetNS, looked up on PATH at call time; TPROXY policy routing goes through
// netlink in the same namespace. Methods need CAP_NET_ADMIN and CAP_NET_RAW in
// the namespace (and CAP_SYS_ADMIN to enter it). An Engine holds no state
// between calls: it may be copied and used from several goroutines. Install
// and Uninstall of one namespace are serialized across goroutines and
// processes by a lock file in LockDir, held from observing to applying.
type Engine struct {
	Logger   *slog.Logger  // nil = discard
	NetNS    string        // path of the network namespace (/run/netns/x, /proc/PID/ns/net); "" = the caller's
	LockWait time.Duration // bound on waiting for the xtables lock and for detour's lock of NetNS; 0 = 10s
	// LockDir holds detour's per-namespace lock files, which serialize
	// Install and Uninstall runs on one namespace across processes; "" =
	// /run/detour.
	LockDir string
}

// Result says what Install or Uninstall did.
type Result struct {
	// Backend is the concrete backend used: iptables-legacy or iptables-nft
	// (for Uninstall, the one our rules were found in; empty when none).
	Backend Backend `json:"backend"`
	// Families are the families the plan captures (Install) or the families our
	// rules were removed from (Uninstall).
	Families []Family `json:"families"`
	// Changed is false when the namespace already was as asked ("no changes").
	Changed bool `json:"changed"`
	// Processes counts the child processes spawned.
	Processes int `json:"processes"`
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
	Installed bool     `json:"installed"`
	Backend   Backend  `json:"backend,omitempty"`
	Families  []Family `json:"families"`
	// Rules is, per family, what of ours is installed in the text form `detour
	// plan` prints (our chains, our hooks, the routing).
	Rules map[Family]string `json:"rules"`
}

// Facts reads what planning needs from the namespace: whether it has a usable
// IPv6 stack (any interface with IPv6 enabled, whatever
// net.ipv6.conf.all.disable_ipv6 says), and for dns.capture resolvconf the nameservers of
// cfg.DNS.ResolvConf (the path is read as given, also with NetNS set).
func (e *Engine) Facts(ctx context.Context, cfg Config) (Facts, error) { return e.facts(ctx, cfg) }

// Install makes the namespace hold exactly p: one iptables-restore --noflush
// per family that differs, removing our old rules and adding the new ones;
// nothing when it already does (Result.Changed false, and no restore process
// spawned). When a restore fails, or the context ends during one, the tables
// it already committed and the families applied before it are put back to what
// they were (that rollback is not cancelled by ctx). Our rules of families p
// does not capture are removed.
func (e *Engine) Install(ctx context.Context, p Plan) (Result, error) { return e.install(ctx, p) }

// Uninstall removes everything we own in every family, table and backend
// (chains DETOUR_*, rules carrying our comment, TPROXY routing). Idempotent:
// nothing installed → success, Changed false. It refuses (ErrForeignChains)
// when a DETOUR_* chain exists that is not one of ours, and changes nothing then.
func (e *Engine) Uninstall(ctx context.Context) (Result, error) { return e.uninstall(ctx) }

// Check compares what is installed with p. ErrNotInstalled when nothing of
// ours is there.
func (e *Engine) Check(ctx context.Context, p Plan) (Drift, error) { return e.check(ctx, p) }

// Status reports what is installed (nothing installed is not an error).
func (e *Engine) Status(ctx context.Context) (Status, error) { return e.status(ctx) }

// Explain says what the rules installed in the namespace do with one
// connection: it reads the whole rule set of the backend that holds detour's
// rules (other tools' rules included) and follows the connection through it.
// ErrNotInstalled when nothing of detour's is there. Read-only.
func (e *Engine) Explain(ctx context.Context, c Conn) (KernelVerdict, error) {
	return e.explain(ctx, c)
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
