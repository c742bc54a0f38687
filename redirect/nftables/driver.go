//go:build linux

package nftables

import (
	"log/slog"
	"slices"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// Options configure a Driver; the zero value works in the calling OS
// thread's network namespace.
type Options struct {
	// NetNSFd is an fd of the target network namespace; 0 = the namespace of
	// the calling OS thread. Sockets are opened in it: no thread switches.
	NetNSFd int
	// TableName is the `inet` table the Driver owns; "" = TableName
	// ("detour"). The eBPF backend's inbound share uses its own name, so that
	// the nftables backend never takes it for its own state.
	TableName string
	Logger    *slog.Logger // nil = discard
}

// Driver observes, applies and removes detour's nftables table over netlink.
// It holds no state between calls.
type Driver struct{ opts Options }

// New returns a Driver.
func New(o Options) *Driver { return &Driver{opts: o} }

func (d *Driver) table() string {
	if d.opts.TableName == "" {
		return TableName
	}
	return d.opts.TableName
}

// ownTable reports whether an inet table of this name is detour's: TableName
// itself or TableName followed by "_" (another Driver's, such as the eBPF
// backend's inbound table). auto does not count them as other tools' tables.
func ownTable(name string) bool {
	return name == TableName || strings.HasPrefix(name, TableName+"_")
}

func (d *Driver) log() *slog.Logger {
	if d.opts.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.opts.Logger
}

// Observed is what of detour's the namespace holds in nftables, read over
// netlink. It never writes.
type Observed struct {
	present bool
	v       view
	// foreign lists the other tables of the namespace ("family name").
	foreign []string
	// siblings lists detour's other inet tables of the namespace (another
	// Driver's, such as another eBPF scope's inbound table), by name.
	siblings []string
	// rs is the table read back as a Ruleset, for Explain; problems name what
	// of it could not be read back as detour made it.
	rs       Ruleset
	problems []string
}

// Empty reports whether detour's table is absent.
func (o *Observed) Empty() bool { return o == nil || !o.present }

// Lines is the table in the text form of Ruleset.Lines; with f set, only
// f's share.
func (o *Observed) Lines(f redirect.Family) []string {
	if o.Empty() {
		return nil
	}
	return o.v.lines(f)
}

// Foreign reports whether nftables holds other tables (iptables-nft's
// included), for the choice of backend.
func (o *Observed) Foreign() bool { return o != nil && len(o.foreign) > 0 }

// Siblings names detour's other inet tables in the namespace (TableName or
// TableName_*, not this Driver's own), sorted: the eBPF backend refuses a
// second scope's inbound table beside another's.
func (o *Observed) Siblings() []string {
	if o == nil {
		return nil
	}
	return slices.Clone(o.siblings)
}
