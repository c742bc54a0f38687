// Package backends assembles the Drivers detour is built with, in the order
// `backend auto` prefers them: the netfilter ones from
// redirect/backends/netfilter (which the lean detour uses alone), then the
// eBPF one. cmd/detour (its whole build, detour-ebpf) and cni use it;
// redirect does not (it only knows the redirect.Driver interface).
package backends

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends/netfilter"
	"github.com/detour-mesh/detour/redirect/nftables"
)

// EBPFInboundTable is the nftables table (`table inet detour_ebpf_inbound`)
// that holds the inbound share of an ebpf install: its own name, so the
// nftables backend never takes it for its own state (`table inet detour`).
const EBPFInboundTable = "detour_ebpf_inbound"

// EBPFInboundTableFor is the inbound table of one eBPF scope: EBPFInboundTable
// for the network-namespace scope, and for a cgroup scope that name with a
// tag of the cgroup's path (`detour_ebpf_inbound_cg_1a2b3c4d`), so that one
// scope's install or uninstall never rewrites or deletes the table another
// scope made in the same namespace.
func EBPFInboundTableFor(cgroup string) string {
	if cgroup == "" {
		return EBPFInboundTable
	}
	h := fnv.New32a()
	h.Write([]byte(filepath.Clean(cgroup)))
	return fmt.Sprintf("%s_cg_%08x", EBPFInboundTable, h.Sum32())
}

// Options are what the Drivers need from the command line.
type Options struct {
	// LockWait bounds the Drivers' own lock waits (the xtables lock); 0 = 10s.
	LockWait time.Duration
	Logger   *slog.Logger // nil = discard
	// EBPF configures the eBPF backend: its scope (a cgroup, or the
	// namespace Engine enters) and where it pins. The zero value is the
	// network-namespace scope with the default pins.
	EBPF bpf.DriverOptions
	// Backend is the backend the call asks for. It says whether the order of
	// the iptables Drivers matters: for auto (and "") and iptables, which
	// pick by it, the host's default iptables is looked up (a PATH search,
	// and `iptables -V`, a child process, where the binary's name does not
	// tell); for any other backend, and for AnyBackend, it is not.
	Backend redirect.Backend
}

// AnyBackend is Options.Backend for the calls that read or remove detour's
// state in every backend and install with none (uninstall, status), to
// which the order of the Drivers decides nothing.
const AnyBackend = netfilter.AnyBackend

// All returns every Driver of this build in auto's order of preference:
// the iptables backends, the one plain `iptables` uses on this host first,
// then nftables (chosen by auto where no iptables backend works, as on a
// distribution without iptables, or where only native nftables tables of
// other tools are there), then ebpf (which auto never picks: only --backend
// ebpf installs it). For a cgroup scope (Options.EBPF.Cgroup) it is the eBPF
// Driver alone: only it has that scope, and the namespace's own capture with
// another backend is another scope, which the cgroup scope's install,
// uninstall and status must not switch away from, remove or show.
func All(o Options) []redirect.Driver {
	if o.EBPF.Cgroup != "" {
		return []redirect.Driver{ebpfDriver(o)}
	}
	return append(namespaceDrivers(o), ebpfDriver(o))
}

// namespaceDrivers are the backends whose only scope is the whole network
// namespace: iptables and nftables (redirect/backends/netfilter).
func namespaceDrivers(o Options) []redirect.Driver {
	return netfilter.Drivers(netfilter.Options{LockWait: o.LockWait, Logger: o.Logger, Backend: o.Backend})
}

func ebpfDriver(o Options) redirect.Driver {
	e := o.EBPF
	if e.Loader.Logger == nil {
		e.Loader.Logger = o.Logger
	}
	if e.Inbound == nil {
		// Connect hooks never see inbound connections: the inbound share of
		// an ebpf plan (and the proxy's hairpin, O8) is an nftables table of
		// its own, which the eBPF Driver installs, observes and removes.
		e.Inbound = ebpfInbound{
			Driver: nftables.New(nftables.Options{TableName: EBPFInboundTableFor(e.Cgroup), Logger: o.Logger}),
			table:  EBPFInboundTableFor(e.Cgroup),
			root:   e.Loader.Root,
			logger: o.Logger,
		}
	}
	return bpf.NewDriver(e)
}

// Engine is a redirect.Engine for the network namespace at netns ("" = the
// caller's) with every Driver of this build (All). A cgroup scope's Engine
// knows the namespace's own capture as a neighbour (namespaceCapture).
func Engine(netns string, o Options) *redirect.Engine {
	e := &redirect.Engine{Logger: o.Logger, NetNS: netns, LockWait: o.LockWait, Drivers: All(o)}
	if o.EBPF.Cgroup != "" {
		e.Neighbors = []redirect.NetSharer{namespaceCapture{drivers: namespaceDrivers(Options{LockWait: o.LockWait, Logger: o.Logger, Backend: AnyBackend})}}
	}
	return e
}

// namespaceCapture is, for a cgroup scope, the capture of the whole network
// namespace by iptables or nftables when it takes inbound connections: two
// inbound captures in one namespace would each redirect every inbound
// connection (the eBPF network-namespace scope's inbound table is named by
// the eBPF Driver itself, bpf.InboundRivals).
type namespaceCapture struct{ drivers []redirect.Driver }

var _ redirect.NetSharer = namespaceCapture{}

// OtherScopes names the backends whose namespace-wide capture takes inbound
// connections. It reads only (a glance first, where that rules detour out).
func (n namespaceCapture) OtherScopes(ctx context.Context) ([]string, error) {
	var out []string
	for _, d := range n.drivers {
		if g, ok := d.(redirect.Glancer); ok {
			if maybe, err := g.Glance(ctx); err == nil && !maybe {
				continue
			}
		}
		if d.Ready(ctx) != nil {
			continue
		}
		have, err := d.Observe(ctx)
		if err != nil {
			return out, fmt.Errorf("observe %s: %w", d.Name(), err)
		}
		if capturesInbound(have) {
			out = append(out, fmt.Sprintf("the network namespace's own capture with %s (`detour status` without --cgroup shows it)", d.Name()))
		}
	}
	return out, nil
}

// capturesInbound reports whether an iptables or nftables capture takes
// inbound connections: its inbound chain (iptables' DETOUR_INBOUND, nftables'
// inbound4/inbound6) exists only then, in both modes.
func capturesInbound(have redirect.Installed) bool {
	if have == nil || have.Empty() {
		return false
	}
	for _, f := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
		for _, l := range have.Lines(f) {
			if strings.Contains(l, "DETOUR_INBOUND") || strings.Contains(l, " inbound4") || strings.Contains(l, " inbound6") {
				return true
			}
		}
	}
	return false
}

// EBPFNetns is the eBPF backend's network-namespace scope with its pins
// under pinDir and its programs attached to cgroupRoot ("" = the defaults:
// /sys/fs/bpf/detour and the root of the cgroup v2 hierarchy). The CNI
// plugin enrolls pods with it.
func EBPFNetns(pinDir, cgroupRoot string) bpf.DriverOptions {
	return bpf.DriverOptions{Loader: bpf.Options{PinDir: pinDir, Root: cgroupRoot}}
}

// RemoveEBPFNetns removes the enrolment of the network namespace whose
// cookie is cookie (and every pin of the eBPF backend once no scope is
// left), for a namespace that is already gone: its nftables inbound table
// went with it, but the maps live on the node. Cookies are never reused, so
// this cannot touch another namespace. Idempotent.
func RemoveEBPFNetns(o Options, cookie uint64) error {
	if cookie == 0 {
		return nil
	}
	lo := o.EBPF.Loader
	if lo.Logger == nil {
		lo.Logger = o.Logger
	}
	if err := bpf.New(lo).Remove(bpf.Scope{Netns: cookie}); err != nil {
		return fmt.Errorf("unenroll netns cookie %d: %w", cookie, err)
	}
	return nil
}

// EBPFReady reports whether this kernel has every program type and map type
// the eBPF backend needs, naming the first one missing. It changes nothing.
func EBPFReady() error { return bpf.New(bpf.Options{}).Ready() }

// ebpfInbound is the nftables Driver that holds an eBPF scope's inbound
// table, telling the eBPF Driver which other scopes' inbound tables are in
// the same namespace (bpf.InboundRivals): two would both capture every
// inbound connection of it.
type ebpfInbound struct {
	*nftables.Driver
	table  string // the Driver's table (EBPFInboundTableFor)
	root   string // bpf.Options.Root: where to look a cgroup scope's path up
	logger *slog.Logger
}

var _ bpf.InboundRivals = ebpfInbound{}

// InboundRivals names the other eBPF scopes' inbound tables of the
// namespace have was read in, with the cgroup of a cgroup scope when a
// directory below the cgroup root has its tag.
func (d ebpfInbound) InboundRivals(have redirect.Installed) []string {
	var out []string
	for _, name := range siblings(have) {
		switch {
		case name == EBPFInboundTable:
			out = append(out, "the network-namespace scope (table inet "+name+")")
		case strings.HasPrefix(name, EBPFInboundTable+"_cg_"):
			if path := cgroupTagged(d.root, name); path != "" {
				out = append(out, fmt.Sprintf("the cgroup scope %s (table inet %s)", path, name))
			} else {
				out = append(out, fmt.Sprintf("a cgroup scope (table inet %s; `detour status --cgroup PATH` names a scope's table)", name))
			}
		}
	}
	return out
}

// siblings names the other eBPF inbound tables of the namespace that the
// nftables Driver read in with its own (have), none when it read nothing.
func siblings(have redirect.Installed) []string {
	if s, ok := have.(interface{ Siblings() []string }); ok {
		return s.Siblings()
	}
	return nil
}

var _ bpf.InboundTables = ebpfInbound{}

var _ bpf.InboundTableNamer = ebpfInbound{}

// InboundTable is the name of the Driver's own table.
func (d ebpfInbound) InboundTable() string { return d.table }

// CgroupTables names the cgroup scopes' inbound tables in the namespace
// have was read in.
func (d ebpfInbound) CgroupTables(have redirect.Installed) []string {
	var out []string
	for _, name := range siblings(have) {
		if strings.HasPrefix(name, EBPFInboundTable+"_cg_") {
			out = append(out, name)
		}
	}
	return out
}

// RemoveTables deletes eBPF scopes' inbound tables by name (the
// network-namespace scope's uninstall, for the scopes of cgroups that are
// gone), each in one netlink message, and nothing else.
func (d ebpfInbound) RemoveTables(ctx context.Context, names []string) error {
	for _, name := range names {
		if !strings.HasPrefix(name, EBPFInboundTable+"_cg_") {
			return fmt.Errorf("remove table inet %s: not a cgroup scope's inbound table", name)
		}
		t := nftables.New(nftables.Options{TableName: name, Logger: d.logger})
		have, err := t.Observe(ctx)
		if err != nil {
			return fmt.Errorf("read table inet %s: %w", name, err)
		}
		if err := t.Remove(ctx, have); err != nil {
			return fmt.Errorf("remove table inet %s: %w", name, err)
		}
	}
	return nil
}

// cgroupTagged is the cgroup v2 directory at or below root (the cgroup v2
// hierarchy's root when "") whose inbound table is table, or "" when none
// is found. It only reads directory names, on the error path of an install.
func cgroupTagged(root, table string) string {
	if root == "" {
		var err error
		if root, err = bpf.CgroupRoot(); err != nil {
			return ""
		}
	}
	found := ""
	_ = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		if EBPFInboundTableFor(path) == table {
			found = path
			return errFound
		}
		return nil
	})
	return found
}

var errFound = errors.New("found")
