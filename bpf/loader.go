package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/detour-mesh/detour/internal/ebpfpins"
	"github.com/detour-mesh/detour/redirect"
)

// DefaultPinDir is where detour pins its maps and links (the builds without
// this backend look there through internal/ebpfpins).
const DefaultPinDir = ebpfpins.DefaultDir

// Options configure a Loader; the zero value means the defaults.
type Options struct {
	// PinDir holds detour's pins: maps/ and links/<kind>@<cgroup id>/.
	// "" = DefaultPinDir. A bpffs is mounted on its parent when none is there.
	PinDir string
	// Root is the cgroup v2 directory the network-namespace scope attaches to:
	// its programs see the sockets of every process below it, whatever their
	// network namespace, and act only for enrolled namespaces. "" = the root
	// of the cgroup v2 hierarchy. Tests set it to a cgroup they create.
	Root   string
	Logger *slog.Logger // nil = discard
}

func (o Options) pinDir() string {
	if o.PinDir == "" {
		return DefaultPinDir
	}
	return o.PinDir
}

// Scope is what one configuration applies to: a network namespace, named by
// its cookie (every socket of the namespace, whatever its cgroup below Root),
// or a cgroup v2 directory (every socket of the processes below it, such as a
// VM service's slice; the proxy must run below it too, so its getsockopt is
// answered). Exactly one is set.
type Scope struct {
	Netns  uint64 // network namespace cookie (SO_NETNS_COOKIE)
	Cgroup string // cgroup v2 directory
}

func (s Scope) validate() error {
	if (s.Netns == 0) == (s.Cgroup == "") {
		return fmt.Errorf("ebpf scope: set exactly one of a network namespace or a cgroup (got %s)", s)
	}
	return nil
}

func (s Scope) String() string {
	if s.Cgroup != "" {
		return "cgroup " + s.Cgroup
	}
	return fmt.Sprintf("netns cookie %d", s.Netns)
}

// Loader installs, observes and removes detour's eBPF programs and map
// entries. It holds no state between calls: the kernel (the pins under
// PinDir) is the state, so a CLI can exit and redirection keeps working.
// The one thing it remembers is which warnings it logged: a command reads
// the liveness marks and links several times (Observe, the sweep, Apply),
// and says each thing it found once. Make one Loader per command.
type Loader struct {
	opts   Options
	warned sync.Map // the warnings logged, by text (warnOnce)
}

// New returns a Loader.
func New(opts Options) *Loader { return &Loader{opts: opts} }

// ErrNotSupported means the kernel lacks a program type, map type or helper
// the programs need; the error wrapping it names which. It wraps
// errors.ErrUnsupported.
var ErrNotSupported = fmt.Errorf("not supported by this kernel: %w", errors.ErrUnsupported)

// ErrIncompatibleMaps means a map pinned by another build of detour has
// another layout than this build's programs need: the programs cannot be
// replaced in place (an install fails with it), or, for a removal, entries
// laid out otherwise than this build's (see Loader.openFor). The error
// wrapping it also wraps ebpf.ErrMapIncompatible.
var ErrIncompatibleMaps = errors.New("pinned maps of another layout")

// State is what Observe read.
type State struct {
	// Scopes are the enrolled scopes by their key in the scopes map.
	Scopes map[uint64]ScopeState
	// Links are the pinned links' program names by link directory
	// ("netns@<cgroup id>", "cgroup@<cgroup id>").
	Links map[string][]string
	// records are what detour wrote for each scope, by key (records map);
	// unenrolled are the entries of recorded scopes that have no enrolment.
	records    map[uint64]record
	unenrolled map[uint64]ScopeState
	// builds name the build of the programs pinned in each link directory
	// (the builds map, build_linux.go).
	builds map[string]string
	// leftover, when not "", says that what is pinned belongs to no scope:
	// an install was interrupted before it enrolled one (Leftover).
	leftover string
	// gone names the scopes of cgroups that no longer exist (Leftover);
	// goneIDs are their cgroup ids.
	gone    []string
	goneIDs []uint64
	// goneNetns are the cookies of the network-namespace scopes whose
	// namespace is gone (their liveness mark reads inode 0: alive_linux.go).
	goneNetns []uint64
}

// Leftover says what is pinned without belonging to any scope — an install
// killed after it pinned maps (or attached programs) and before it enrolled
// its scope — and the stale scopes, those of cgroups and network namespaces
// that are gone, or "" when there is none of either. Removing any scope
// removes them all; installing one, and Sweep, remove the stale scopes.
func (s State) Leftover() string {
	return strings.Join(slices.DeleteFunc(append([]string{s.leftover}, s.gone...), func(x string) bool { return x == "" }), "; ")
}

// Empty reports that nothing of detour's is pinned.
func (s State) Empty() bool { return len(s.Scopes) == 0 && len(s.Links) == 0 }

// record is one scope's value in the records map (records_linux.go): the
// config id detour enrolled it with and a digest of its entries' lines.
type record struct {
	Config uint32
	Pad    uint32
	Digest [32]byte
}

// ScopeState is one enrolled scope's config id and map entries (as text).
type ScopeState struct {
	Config  uint32
	Lines   []string
	entries entries
}

// Settings are a scope's eBPF-only options, beside its capture; the zero
// value is the default.
type Settings struct {
	// Accelerate puts both ends of each redirected connection between the app
	// and the proxy in a sockhash, where an sk_msg program hands every message
	// straight to the peer socket's receive side, past the loopback TCP
	// stack. Off by default: such bytes bypass the socket's TCP receive
	// queue, so a proxy that relays with splice(2) never sees them; read(2),
	// recvmsg(2) and readv(2) do (docs/ebpf.md).
	Accelerate bool
}

// Lines is what a scope holding exactly c shows in Observe: its programs and
// its map entries, in `detour plan`'s text form. Pure.
func Lines(c redirect.Capture) ([]string, error) { return LinesWith(c, Settings{}) }

// LinesWith is Lines for a scope with settings s.
func LinesWith(c redirect.Capture, s Settings) ([]string, error) {
	e, err := renderWith(1, c, s)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range attachments {
		out = append(out, programLine(a.prog, a.attach))
	}
	if e.cfg.Flags&flagAccel != 0 {
		out = append(out, accelLine)
	}
	out = append(out, buildLinePrefix+BuildName())
	return append(out, e.lines()...), nil
}

// RunStat is what the kernel counted for one program while run-time
// statistics were on: how often it ran and for how long in all.
type RunStat struct {
	Runs    uint64
	RunTime time.Duration
}
