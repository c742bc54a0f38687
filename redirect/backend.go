package redirect

import (
	"context"
	"errors"
)

// Driver is one way of telling the kernel what a Plan captures:
// iptables-legacy, iptables-nft, nftables, ebpf. Drivers live in their own
// packages (redirect/iptables, redirect/nftables, bpf), import this package and
// are assembled in one place (redirect/backends); this package imports none of
// them.
//
// Every method that touches the host runs on an OS thread already inside the
// target network namespace: Engine enters it (and holds detour's lock of the
// namespace around Observe/Apply/Remove). A Driver never switches namespaces
// itself. The TPROXY policy routing and the inbound passthrough address on lo
// are backend-neutral: Engine makes them over netlink, never a Driver.
type Driver interface {
	// Name is the concrete backend (iptables-legacy, iptables-nft, nftables,
	// ebpf), never auto or iptables.
	Name() Backend
	// Ready reports whether the backend can work here (tools, kernel features),
	// naming what is missing; the error wraps ErrNotSupported. It never writes.
	Ready(ctx context.Context) error
	// Observe reads what of detour's this backend holds, and whatever else the
	// backend choice needs (other tools' state, for auto). It never writes.
	Observe(ctx context.Context) (Installed, error)
	// Apply makes the namespace hold the plan's capture, given what Observe
	// returned (have may hold another plan of detour's: Apply replaces it).
	// It writes nothing when they already agree (changed false). It is atomic
	// per family, or rolls back what it changed before returning the error.
	// A family it cannot capture because IPv6 is missing is ErrIPv6Unavailable.
	Apply(ctx context.Context, p Plan, have Installed) (changed bool, err error)
	// Remove deletes everything of detour's that have shows, and nothing else.
	// Idempotent: an empty have is success without writes.
	Remove(ctx context.Context, have Installed) error
	// Render is the plan in this backend's own text: what `detour plan`
	// prints and what Check compares, line by line, with Installed.Lines.
	// Pure: no host access.
	Render(p Plan) (Rendering, error)
}

// Glancer is implemented by Drivers that can tell cheaply — without a child
// process and without probing kernel features — that they hold nothing of
// detour's in the namespace. Engine glances at the backends it is not about
// to install with (for uninstall, check and status: at every backend) and
// calls Ready and Observe only where the glance cannot rule detour's state
// out, so that an install with one backend does not pay for reading all the
// others.
type Glancer interface {
	// Glance reports false only when Observe would find nothing of detour's
	// (Installed.Empty) and no Conflict; true when it might. It runs on the
	// thread inside the namespace, like Observe, and never writes. An error
	// means the glance cannot tell: Engine then asks Ready and Observe.
	Glance(ctx context.Context) (maybe bool, err error)
}

// NetSharer is implemented by Drivers whose scope can share a network
// namespace with other scopes of detour (the eBPF backend: the namespace
// scope and cgroup scopes whose processes live in it). The addresses on lo
// and the TPROXY routing that Engine makes are the namespace's, not a
// scope's: while another scope's capture is there, Engine leaves them in
// place where it would otherwise remove them (an uninstall, or an install
// whose plan does not need them), and status and check of a scope that holds
// nothing do not count them as installed.
type NetSharer interface {
	// OtherScopes names the other scopes of detour whose capture is in the
	// namespace, as a user would recognise them; nil when there is none. It
	// runs on the thread inside the namespace and never writes.
	OtherScopes(ctx context.Context) ([]string, error)
}

// Installed is what one Driver observed in a network namespace.
type Installed interface {
	// Empty reports that nothing of detour's is there.
	Empty() bool
	// Lines is detour's state of family f in the form of
	// FamilyRendering.Lines, so that Check compares them with a plan.
	Lines(f Family) []string
	// Text is detour's state of family f in the form of FamilyRendering.Text
	// (what `detour status` prints).
	Text(f Family) string
	// Foreign reports that this backend's mechanism holds other tools' state
	// (rules, tables, programs that are not detour's); `auto` uses it.
	Foreign() bool
	// Conflict is a reason detour must not change this backend's state, such
	// as a DETOUR_* chain detour did not make (wraps ErrForeignChains); nil
	// when there is none. Engine checks every Driver's before it writes.
	Conflict() error
}

// Leftovers is implemented by an Installed that can find state of detour's
// belonging to no install at all — what a run killed half way left, such as
// the pins of an eBPF install that never enrolled its scope. Such state is
// not installed (the Installed is Empty: install, check and auto ignore it);
// Uninstall removes it with the Driver's Remove, and Status names it.
type Leftovers interface {
	// Leftovers says what is left, as a user would recognise it; "" when
	// nothing is.
	Leftovers() string
}

// Sweeper is implemented by a Driver that can find and remove state of
// detour's whose scope is gone — stale: its network namespace or cgroup was
// deleted without an uninstall, such as an eBPF scope keyed by the cookie of
// a namespace that no longer exists — wherever that scope was, since no
// command can name it any more. Removing it changes nothing for any living
// workload, so Install and Uninstall sweep (before they change anything
// else) and Engine.Sweep does nothing else.
type Sweeper interface {
	// Sweep removes every stale scope and says what it removed, one line a
	// scope as a user would recognise it; none when there was none. A scope
	// that may still be alive is never removed.
	Sweep(ctx context.Context) (removed []string, err error)
}

// ErrSweepUnreadable is what a Sweeper's Sweep wraps when it cannot read at
// all the state its stale scopes would be found in (the eBPF Driver over maps
// pinned by an older detour, of another layout): it removed nothing and
// changed nothing. An install with another backend goes on, with a warning:
// that backend neither reads nor writes the state the Sweeper could not
// read, and a user who upgraded detour must still be able to install it. An
// install with the Sweeper's own backend fails, changing nothing.
var ErrSweepUnreadable = errors.New("the stale scopes cannot be read")

// RemovalSweeper is a Sweeper whose sweep for a removal (Uninstall, Engine.Sweep)
// may go where an install's may not: the eBPF Driver's over maps pinned by
// another build of detour, which an install refuses with nothing changed.
type RemovalSweeper interface {
	Sweeper
	// SweepForRemoval is Sweep, for Uninstall and Engine.Sweep.
	SweepForRemoval(ctx context.Context) (removed []string, err error)
}

// Rendering is a Plan in one backend's own text.
type Rendering struct {
	Backend  Backend           `json:"backend"`
	Families []FamilyRendering `json:"families"` // in the plan's family order
}

// FamilyRendering is one family's share of a Rendering. It holds only the
// backend's state: the policy routing and the addresses on lo, which Engine
// makes for every backend, are printed after it (Plan.Format).
type FamilyRendering struct {
	Family Family `json:"family"`
	// Text is what `detour plan` prints for the family, in the backend's own
	// input syntax (iptables-restore, nft -f, …), ending in a newline. It
	// starts with the family's notes (FamilyCapture.Notes and the backend's
	// own) as comment lines "# …".
	Text string `json:"text"`
	// Lines are the same state as self-contained lines (each readable without
	// the others), the form Check diffs: Installed.Lines of a namespace that
	// holds exactly this plan equals Lines.
	Lines []string `json:"lines"`
}

// Family returns the rendering of family f, if the plan captures it.
func (r Rendering) Family(f Family) (FamilyRendering, bool) {
	for _, fr := range r.Families {
		if fr.Family == f {
			return fr, true
		}
	}
	return FamilyRendering{}, false
}

// Explainer is implemented by Drivers that can say what the kernel does with
// one connection, from what they observed (for `detour explain`): the rule,
// set element or map entry that decided, quoted.
type Explainer interface {
	Explain(have Installed, c Conn) (KernelVerdict, error)
}

// KernelVerdict is what installed state does with one connection, as an
// Explainer reads it. Compare with Capture.Decide's Verdict.
type KernelVerdict struct {
	Backend  Backend `json:"backend"`
	Captured bool    `json:"captured"`
	// Port is the proxy port the connection is sent to (0 when not captured).
	Port uint16 `json:"port,omitempty"`
	// Rule quotes the installed rule, set element or map entry that decided,
	// in the backend's text ("-t nat -A DETOUR_OUTPUT -p tcp -j REDIRECT …");
	// empty when no rule of detour's matched (the connection is left alone).
	Rule string `json:"rule,omitempty"`
	// Path lists the rules the connection went through before Rule, in order.
	Path []string `json:"path,omitempty"`
	// Action is what Rule does: "redirect", "tproxy", "return" (leaves
	// detour's rules), "accept", "dnat" (sent elsewhere), "drop", or "" when
	// no rule matched.
	Action string `json:"action,omitempty"`
	// Foreign says Rule is another tool's, not one of detour's: `detour
	// check`, which compares detour's own rules with the plan, does not
	// report it.
	Foreign bool `json:"foreign,omitempty"`
	// Uncertain, when not empty, says why the installed state's answer
	// cannot be told ("rule X uses Y"); Captured and Port then say nothing.
	Uncertain string `json:"uncertain,omitempty"`
}

// ErrNotSupported means a backend cannot work in this namespace or on this
// host (a tool or kernel feature is missing; the error names it). `auto`
// passes over such a backend; a backend asked for by name fails with it.
var ErrNotSupported = errors.New("backend not supported here")
