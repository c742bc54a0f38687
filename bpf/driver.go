package bpf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// DriverOptions configure the eBPF backend as a redirect.Driver; the zero
// value scopes it to the network namespace of the calling thread.
type DriverOptions struct {
	Loader Options
	// Cgroup, when set, scopes capture to the processes below this cgroup v2
	// directory (a VM service's slice) instead of a network namespace.
	Cgroup string
	// Inbound carries the inbound share of a plan: connect-time hooks never
	// see a connection that arrives from elsewhere. The assembly passes the
	// nftables Driver; nil means a plan that captures inbound is refused
	// (ErrNotSupported). When it implements InboundRivals, the Driver names
	// the other scopes capturing inbound in the namespace (OtherScopes), and
	// redirect.Engine refuses a plan that captures inbound beside them.
	Inbound redirect.Driver
}

// InboundRivals is implemented by an inbound Driver that can tell which
// other eBPF scopes capture inbound in the network namespace it observed.
// Two such scopes would each redirect every inbound connection of the
// namespace, and the first to take a connection would decide where it goes.
type InboundRivals interface {
	// InboundRivals names, from have (what this Driver's Observe returned),
	// every other eBPF scope whose inbound capture is in the namespace, as a
	// user would recognise it ("the network-namespace scope (table inet
	// detour_ebpf_inbound)"); nil when there is none. It never writes.
	InboundRivals(have redirect.Installed) []string
}

// InboundTables is implemented by an inbound Driver that can name the
// cgroup scopes' inbound tables of the namespace it observed and remove
// them by name. The network-namespace scope's uninstall removes those that
// no enrolled cgroup scope can own any more: a cgroup removed before
// `uninstall --cgroup` took its programs along, but its table would go on
// redirecting every inbound connection of the namespace.
type InboundTables interface {
	CgroupTables(have redirect.Installed) []string
	RemoveTables(ctx context.Context, names []string) error
}

// ErrHierarchyRoot refuses a cgroup scope at the root of the cgroup v2
// hierarchy: it would capture every process of the machine, in every network
// namespace. The network-namespace scope is the one for a whole namespace.
var ErrHierarchyRoot = errors.New("the root of the cgroup v2 hierarchy is no cgroup scope: it would capture every process of the machine, in every network namespace (name a service's or slice's cgroup below it; leave --cgroup out to capture one network namespace)")

// ErrInboundTaken means another eBPF scope of detour captures inbound in the
// network namespace: one scope per namespace may (the error names it).
var ErrInboundTaken = redirect.ErrInboundTaken

// Driver is the eBPF backend: outbound TCP and DNS by cgroup socket programs,
// inbound by DriverOptions.Inbound. Its methods run on a thread inside the
// target network namespace (redirect.Engine enters it); a netns-scoped Driver
// enrolls that namespace by its cookie.
type Driver struct {
	opts   DriverOptions
	loader *Loader
}

// NewDriver returns the eBPF Driver.
func NewDriver(opts DriverOptions) *Driver {
	l := New(opts.Loader)
	l.swept = true // redirect.Engine sweeps before Apply and Remove
	return &Driver{opts: opts, loader: l}
}

// Name is ebpf.
func (d *Driver) Name() redirect.Backend { return redirect.BackendEBPF }

// Ready probes the kernel for every program type, map type and helper the
// programs need, naming the first one missing. It changes nothing.
func (d *Driver) Ready(ctx context.Context) error {
	if err := d.loader.Ready(); err != nil {
		if errors.Is(err, ErrNotSupported) || errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("%w: %w", redirect.ErrNotSupported, err)
		}
		return err
	}
	return nil
}

func (d *Driver) scope() (Scope, error) {
	if d.opts.Cgroup != "" {
		return Scope{Cgroup: d.opts.Cgroup}, nil
	}
	cookie, err := CurrentNetns()
	if err != nil {
		return Scope{}, err
	}
	return Scope{Netns: cookie}, nil
}

// installed is what the eBPF Driver observed for its scope.
type installed struct {
	lines   []string // this scope's programs and entries
	drift   []string // how they differ from what detour wrote (Loader.Drift)
	other   string   // the programs are of another build (Loader.OtherBuild)
	state   State
	inbound redirect.Installed // nil without an inbound Driver
	// orphanTables are cgroup scopes' inbound tables in the namespace when
	// no cgroup scope that could own them is left (InboundTables).
	orphanTables []string
	// goneCgroup is the Driver's cgroup when its directory no longer exists
	// (removed before `uninstall --cgroup`): the scope holds nothing any
	// more, and what it left is Leftovers — its inbound table (goneInbound,
	// nil when there is none) and the entries of cgroups that are gone.
	goneCgroup  string
	goneInbound redirect.Installed
	goneTable   string // "inet <name>", or "" when the inbound Driver cannot tell
}

// InboundTableNamer is implemented by an inbound Driver that can name the
// table it owns, so that what a removed cgroup's scope left is named as
// `nft list tables` shows it.
type InboundTableNamer interface {
	InboundTable() string
}

var _ redirect.Leftovers = (*installed)(nil)

// Leftovers names pins that belong to no scope at all (State.Leftover): the
// Driver's Remove of any scope removes them.
func (i *installed) Leftovers() string {
	out := i.state.Leftover()
	if len(i.orphanTables) > 0 {
		if out != "" {
			out += "; "
		}
		out += fmt.Sprintf("the inbound table(s) inet %s of cgroup scopes that are gone (no cgroup scope is enrolled; they still redirect every inbound connection of this namespace)", strings.Join(i.orphanTables, ", inet "))
	}
	if i.goneInbound != nil {
		if out != "" {
			out += "; "
		}
		out += "the inbound table " + i.goneTable + " of the cgroup scope " + i.goneCgroup + ", whose cgroup is gone (it still redirects every inbound connection of this namespace)"
	}
	return out
}

func (i *installed) Empty() bool {
	return len(i.lines) == 0 && (i.inbound == nil || i.inbound.Empty())
}

func (i *installed) Lines(f redirect.Family) []string {
	out := familyLines(i.lines, f)
	if i.inbound != nil {
		out = append(out, i.inbound.Lines(f)...)
	}
	return out
}

func (i *installed) Text(f redirect.Family) string {
	var b strings.Builder
	for _, d := range i.drift {
		b.WriteString("# ebpf: drift: " + d + " (changed by hand?): `detour check` with the install's configuration shows the difference; re-running the install restores it\n")
	}
	if i.other != "" {
		b.WriteString("# ebpf: " + i.other + "\n")
	}
	for _, l := range familyLines(i.lines, f) {
		b.WriteString(l + "\n")
	}
	if i.inbound != nil {
		b.WriteString(i.inbound.Text(f))
	}
	return b.String()
}

// Foreign is always false, so that auto's "the backend whose mechanism other
// tools use" never lands on ebpf (the inbound Driver's tables, when it has
// any, are that Driver's to report). Other owners' cgroup programs are left
// alone by install and uninstall.
func (i *installed) Foreign() bool { return false }

func (i *installed) Conflict() error {
	if i.inbound != nil {
		return i.inbound.Conflict()
	}
	return nil
}

// Observe reads the scope's programs and map entries (and the inbound
// Driver's state). It never writes.
func (d *Driver) Observe(ctx context.Context) (redirect.Installed, error) {
	s, err := d.scope()
	if err != nil {
		return nil, err
	}
	st, err := d.loader.Observe()
	if err != nil {
		return nil, err
	}
	if d.cgroupGone() {
		return d.observeGone(ctx, st)
	}
	lines, err := d.loader.Lines(st, s)
	if err != nil {
		return nil, err
	}
	drift, err := d.loader.Drift(st, s)
	if err != nil {
		return nil, err
	}
	other, err := d.loader.OtherBuild(st, s)
	if err != nil {
		return nil, err
	}
	in := &installed{lines: lines, drift: drift, other: other, state: st}
	if d.opts.Inbound != nil {
		if in.inbound, err = d.opts.Inbound.Observe(ctx); err != nil {
			if rerr := d.opts.Inbound.Ready(ctx); !errors.Is(rerr, redirect.ErrNotSupported) {
				return nil, fmt.Errorf("observe inbound (%s): %w", d.opts.Inbound.Name(), err)
			}
			// The inbound backend cannot work here (no nf_tables), so it
			// holds nothing: a plan without inbound still works.
			in.inbound = nil
		}
	}
	if t, ok := d.opts.Inbound.(InboundTables); ok && d.opts.Cgroup == "" && in.inbound != nil && st.liveCgroupScopes() == 0 {
		in.orphanTables = t.CgroupTables(in.inbound)
	}
	return in, nil
}

// cgroupGone reports that the Driver's scope is a cgroup whose directory no
// longer exists.
func (d *Driver) cgroupGone() bool {
	if d.opts.Cgroup == "" {
		return false
	}
	_, err := os.Stat(d.opts.Cgroup)
	return errors.Is(err, fs.ErrNotExist)
}

// observeGone is Observe for a cgroup that is gone: the scope holds nothing,
// and its inbound table, still in the namespace, is left behind.
func (d *Driver) observeGone(ctx context.Context, st State) (redirect.Installed, error) {
	in := &installed{state: st, goneCgroup: d.opts.Cgroup}
	if d.opts.Inbound == nil {
		return in, nil
	}
	have, err := d.opts.Inbound.Observe(ctx)
	if err != nil {
		if rerr := d.opts.Inbound.Ready(ctx); errors.Is(rerr, redirect.ErrNotSupported) {
			return in, nil
		}
		return nil, fmt.Errorf("observe inbound (%s): %w", d.opts.Inbound.Name(), err)
	}
	if have != nil && !have.Empty() {
		in.goneInbound, in.goneTable = have, "(nftables)"
		if n, ok := d.opts.Inbound.(InboundTableNamer); ok {
			in.goneTable = "inet " + n.InboundTable()
		}
	}
	return in, nil
}

// split separates the plan's inbound share (for the inbound Driver) from
// what the programs carry.
func split(p redirect.Plan) (ebpf, inbound redirect.Plan, hasInbound bool) {
	ebpf, inbound = p, p
	ebpf.Capture.Families = slices.Clone(p.Capture.Families)
	inbound.Capture.Families = slices.Clone(p.Capture.Families)
	for i := range p.Capture.Families {
		if p.Capture.Families[i].Inbound != nil {
			hasInbound = true
		}
		ebpf.Capture.Families[i].Inbound = nil
		inbound.Capture.Families[i].Outbound = nil
		inbound.Capture.Families[i].DNS = nil
	}
	return ebpf, inbound, hasInbound
}

func (d *Driver) checkInbound(p redirect.Plan) error {
	if _, _, has := split(p); has && d.opts.Inbound == nil {
		return fmt.Errorf("inbound.enabled is true: connect-time eBPF hooks never see inbound connections and no inbound backend is available; set inbound.enabled to false: %w", redirect.ErrNotSupported)
	}
	if p.Config.Mode == redirect.ModeTProxy {
		return fmt.Errorf("mode tproxy: the ebpf backend redirects at connect() time and has no TPROXY mode: %w", redirect.ErrNotSupported)
	}
	return nil
}

// Apply enrolls the scope with the plan's capture (programs attached and
// pinned where missing, map entries updated in place) and hands the inbound
// share to the inbound Driver. The stale scopes are not its to remove:
// redirect.Engine has the Driver Sweep first, in the same command, so Apply
// (and Remove) do not read every liveness mark and link again.
func (d *Driver) Apply(ctx context.Context, p redirect.Plan, have redirect.Installed) (bool, error) {
	if err := d.checkInbound(p); err != nil {
		return false, err
	}
	if d.opts.Cgroup != "" {
		if root, err := IsHierarchyRoot(d.opts.Cgroup); err != nil {
			return false, err
		} else if root {
			return false, fmt.Errorf("cgroup scope %s: %w", d.opts.Cgroup, ErrHierarchyRoot)
		}
	}
	s, err := d.scope()
	if err != nil {
		return false, err
	}
	out, inbound, hasInbound := split(p)
	var haveIn redirect.Installed
	if h, ok := have.(*installed); ok {
		haveIn = h.inbound
	}
	changed, err := d.loader.ApplyWith(s, out.Capture, settings(p.Config))
	if err != nil {
		return changed, err
	}
	if d.opts.Inbound == nil {
		return changed, nil
	}
	if !hasInbound {
		if haveIn != nil && !haveIn.Empty() {
			return true, d.opts.Inbound.Remove(ctx, haveIn)
		}
		return changed, nil
	}
	c, err := d.opts.Inbound.Apply(ctx, inbound, haveIn)
	if err != nil {
		err = fmt.Errorf("apply inbound (%s): %w", d.opts.Inbound.Name(), err)
		if h, ok := have.(*installed); changed && (!ok || len(h.lines) == 0) {
			// A fresh install: take the programs' share back, so a failed
			// install leaves nothing. (Over an older config the programs
			// keep the new one; the next install retries the table.)
			if rerr := d.loader.Remove(s); rerr != nil {
				return true, errors.Join(err, fmt.Errorf("roll back: %w", rerr))
			}
			return false, err
		}
		return changed, err
	}
	return changed || c, nil
}

// Remove unenrolls the scope (and unpins everything once no scope is left)
// and removes the inbound Driver's state. Idempotent.
func (d *Driver) Remove(ctx context.Context, have redirect.Installed) error {
	if h, ok := have.(*installed); ok && h.goneCgroup != "" {
		// The scope of a cgroup that is gone cannot be named by its id any
		// more: every such scope goes (as with any install), and its table.
		if err := d.loader.RemoveGone(); err != nil {
			return err
		}
		if h.goneInbound != nil && d.opts.Inbound != nil {
			if err := d.opts.Inbound.Remove(ctx, h.goneInbound); err != nil {
				return fmt.Errorf("remove inbound (%s): %w", d.opts.Inbound.Name(), err)
			}
		}
		return nil
	}
	s, err := d.scope()
	if err != nil {
		return err
	}
	if err := d.loader.Remove(s); err != nil {
		return err
	}
	if h, ok := have.(*installed); ok && h.inbound != nil && d.opts.Inbound != nil && !h.inbound.Empty() {
		if err := d.opts.Inbound.Remove(ctx, h.inbound); err != nil {
			return fmt.Errorf("remove inbound (%s): %w", d.opts.Inbound.Name(), err)
		}
	}
	if h, ok := have.(*installed); ok && len(h.orphanTables) > 0 {
		if t, ok := d.opts.Inbound.(InboundTables); ok {
			if err := t.RemoveTables(ctx, h.orphanTables); err != nil {
				return fmt.Errorf("remove the inbound tables of cgroup scopes that are gone: %w", err)
			}
		}
	}
	return nil
}

var _ redirect.Sweeper = (*Driver)(nil)

// Sweep removes the stale scopes of the whole node, whatever the Driver's
// own scope: those whose network namespace or cgroup is gone (Loader.Sweep).
// It never touches a scope that may be alive. Over maps of another layout
// (ErrIncompatibleMaps) it changes nothing and its error also wraps
// redirect.ErrSweepUnreadable: an install with another backend goes on.
func (d *Driver) Sweep(ctx context.Context) ([]string, error) {
	removed, err := d.loader.Sweep()
	if errors.Is(err, ErrIncompatibleMaps) {
		return removed, fmt.Errorf("%w: %w", redirect.ErrSweepUnreadable, err)
	}
	return removed, err
}

var _ redirect.RemovalSweeper = (*Driver)(nil)

// SweepForRemoval is Sweep for an uninstall: it also works over maps pinned
// by another build of detour (Loader.SweepForRemoval).
func (d *Driver) SweepForRemoval(ctx context.Context) ([]string, error) {
	return d.loader.SweepForRemoval()
}

// Render is the plan as the programs and maps hold it: the programs and
// their attach point, then the scope's map entries; the inbound Driver's
// rendering follows. Pure.
func (d *Driver) Render(p redirect.Plan) (redirect.Rendering, error) {
	if err := d.checkInbound(p); err != nil {
		return redirect.Rendering{}, err
	}
	out, inbound, hasInbound := split(p)
	lines, err := LinesWith(out.Capture, settings(p.Config))
	if err != nil {
		return redirect.Rendering{}, err
	}
	var inR redirect.Rendering
	if hasInbound {
		if inR, err = d.opts.Inbound.Render(inbound); err != nil {
			return redirect.Rendering{}, err
		}
	}
	where := "the cgroup v2 root (network-namespace scope: this namespace's cookie in the scopes map)"
	if d.opts.Cgroup != "" {
		where = "cgroup " + d.opts.Cgroup
	} else if d.opts.Loader.Root != "" {
		where = "cgroup " + d.opts.Loader.Root + " (network-namespace scope: this namespace's cookie in the scopes map)"
	}
	r := redirect.Rendering{Backend: redirect.BackendEBPF}
	for _, fc := range p.Capture.Families {
		fr := redirect.FamilyRendering{Family: fc.Family, Lines: familyLines(lines, fc.Family)}
		var b strings.Builder
		for _, n := range fc.Notes {
			b.WriteString("# " + n + "\n")
		}
		fmt.Fprintf(&b, "# ebpf: programs attached to %s, pinned under %s\n", where, d.loader.opts.pinDir())
		fmt.Fprintf(&b, "# ebpf: programs of build %s (a SHA-256 of the object this detour embeds); an install over programs of another build replaces them in place\n", BuildName())
		if d.opts.Cgroup == "" {
			b.WriteString("# ebpf: and in this namespace its liveness mark (program alive, sk_lookup, passes every lookup): the kernel drops it with the namespace, so a scope left by a namespace deleted without uninstall is known stale\n")
		}
		if p.Config.EBPF.Accelerate {
			b.WriteString("# ebpf: socket acceleration on: app-proxy bytes go socket to socket (sk_msg); a proxy relaying with splice(2) does not receive them\n")
		} else {
			b.WriteString("# ebpf: socket acceleration off (ebpf.accelerate)\n")
		}
		for _, l := range fr.Lines {
			b.WriteString(l + "\n")
		}
		if ir, ok := inR.Family(fc.Family); ok {
			fmt.Fprintf(&b, "# inbound: %s\n", inR.Backend)
			b.WriteString(ir.Text)
			fr.Lines = append(fr.Lines, ir.Lines...)
		}
		fr.Text = b.String()
		r.Families = append(r.Families, fr)
	}
	return r, nil
}

// settings are the plan's eBPF-only options.
func settings(c redirect.Config) Settings { return Settings{Accelerate: c.EBPF.Accelerate} }

// familyLines keeps the lines of family f: the programs, the config and the
// owner and port lists belong to both; CIDRs and DNS servers to their own.
// A family the scope's config does not capture (its flags name the other
// family's out4/dns4 or out6/dns6 only) has no share: an IPv4-only install
// would otherwise show the shared lines as IPv6 state (check's drift).
func familyLines(lines []string, f redirect.Family) []string {
	if !capturesFamily(lines, f) {
		return nil
	}
	var out []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "cidrs4 ") && f != redirect.IPv4,
			strings.HasPrefix(l, "cidrs6 ") && f != redirect.IPv6,
			strings.HasPrefix(l, "dns_servers ") && strings.Contains(l, ":") != (f == redirect.IPv6):
			continue
		}
		out = append(out, l)
	}
	return out
}

// capturesFamily reads the config line's flags: false only when they name
// the other family's capture and not f's.
func capturesFamily(lines []string, f redirect.Family) bool {
	for _, l := range lines {
		rest, ok := strings.CutPrefix(l, "config flags=")
		if !ok {
			continue
		}
		flags, _, _ := strings.Cut(rest, " ")
		has := func(names ...string) bool {
			for _, fl := range strings.Split(flags, ",") {
				if slices.Contains(names, fl) {
					return true
				}
			}
			return false
		}
		mine, other := []string{"out4", "dns4"}, []string{"out6", "dns6"}
		if f == redirect.IPv6 {
			mine, other = other, mine
		}
		return has(mine...) || !has(other...)
	}
	return true
}

// Explain says what the programs do with an outbound connection of this
// scope, quoting the map entry that decided (redirect.Explainer). Inbound
// connections are the inbound Driver's to explain.
func (d *Driver) Explain(have redirect.Installed, c redirect.Conn) (redirect.KernelVerdict, error) {
	h, ok := have.(*installed)
	if !ok {
		return redirect.KernelVerdict{}, fmt.Errorf("explain: state of another backend (%T)", have)
	}
	if c.Direction == redirect.DirInbound {
		if ex, ok := d.opts.Inbound.(redirect.Explainer); ok && h.inbound != nil {
			return ex.Explain(h.inbound, c)
		}
		return redirect.KernelVerdict{}, fmt.Errorf("explain inbound: connect-time hooks never see inbound connections and no inbound backend is assembled: %w", redirect.ErrNotSupported)
	}
	s, err := d.scope()
	if err != nil {
		return redirect.KernelVerdict{}, err
	}
	key, _, err := d.loader.Key(s)
	if err != nil {
		return redirect.KernelVerdict{}, err
	}
	v := redirect.KernelVerdict{Backend: redirect.BackendEBPF}
	sc, ok := h.state.Scopes[key]
	if !ok {
		return v, nil // not enrolled: the programs leave every connection alone
	}
	kv := sc.entries.explain(c)
	v.Captured, v.Port, v.Rule, v.Path = kv.captured, kv.port, kv.rule, kv.path
	if v.Rule == "" && kv.why != "" {
		v.Rule = "# " + kv.why
	} else if kv.why != "" {
		v.Rule += " # " + kv.why
	}
	if !v.Captured && h.inbound != nil {
		// A connection the programs leave alone still goes through the
		// inbound table's output chain: the proxy's hairpin to the
		// workload's own address (O8) is captured there.
		if ex, ok := d.opts.Inbound.(redirect.Explainer); ok {
			iv, err := ex.Explain(h.inbound, c)
			if err != nil {
				return redirect.KernelVerdict{}, fmt.Errorf("explain through the inbound table: %w", err)
			}
			if iv.Captured || iv.Uncertain != "" {
				path := v.Path
				if v.Rule != "" {
					path = append(slices.Clone(path), v.Rule)
				}
				iv.Path = append(path, iv.Path...)
				return iv, nil
			}
		}
	}
	return v, nil
}

var (
	_ redirect.Driver    = (*Driver)(nil)
	_ redirect.Explainer = (*Driver)(nil)
)
