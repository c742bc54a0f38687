package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

type validateOptions struct {
	in      planInput
	timeout time.Duration
}

func newValidateCmd(s streams, g *globalOptions) *cobra.Command {
	o := &validateOptions{}
	cmd := &cobra.Command{
		Use:   "validate [flags]",
		Short: "Prove on a real connection that outbound traffic reaches the proxy port (exit 5 if not)",
		Long: `Validate is the post-install self-check, meant to run before the proxy starts (for
example as an init container after the CNI plugin set the pod up). For each planned IP
family it listens on the outbound port, connects as a user that the configuration
captures to a reserved documentation address (192.0.2.0/24, 2001:db8::/32, or an
address of includeCIDRs), and checks that the connection arrives with that original
destination. It exits 5 when a connection is not redirected, 1 when it cannot run the
check (for example because the outbound port is already in use).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.in.fromEnv()
			return runValidate(cmd.Context(), o, g, s)
		},
	}
	o.in.bind(cmd.Flags())
	cmd.Flags().DurationVar(&o.timeout, "timeout", 3*time.Second, "how long each probe connection may take")
	return cmd
}

// probe is one validation connection: who dials what.
type probe struct {
	family redirect.Family
	dst    netip.AddrPort
	uid    uint32
	gid    uint32
	// become is true when the probe thread must take uid and gid (validate runs
	// as root); otherwise it dials as the user validate runs as.
	become bool
}

// runner is who validate runs as.
type runner struct {
	uid, gid uint32
}

func (r runner) root() bool { return r.uid == 0 }

func runValidate(ctx context.Context, o *validateOptions, g *globalOptions, s streams) error {
	if o.timeout <= 0 {
		return usageError("--timeout: %q is not a positive duration", o.timeout)
	}
	pl, err := o.in.load(ctx, g, s)
	if err != nil {
		return err
	}
	plan, nsPath := pl.plan, pl.nsPath
	c := plan.Config
	if !c.Outbound.Enabled {
		_, err := fmt.Fprintln(s.out, "nothing to validate: outbound capture is disabled (outbound.enabled is false)")
		return err
	}
	probes, err := planProbes(plan, runner{uint32(os.Geteuid()), uint32(os.Getegid())})
	if err != nil {
		return err
	}
	failed, conclusive := 0, 0
	for _, p := range probes {
		got, err := runProbe(ctx, nsPath, c.Proxy.OutboundPort, p, o.timeout)
		if errors.Is(err, errPortInUse) {
			return fmt.Errorf("validate: %w", err)
		}
		if errors.Is(err, errNoRoute) {
			// Routing happens before the nat table: with no route, nothing of this
			// family can leave the namespace, redirected or not.
			fmt.Fprintf(s.out, "skip %s: no route to %s in this namespace, so no %s traffic can leave it\n", p.family, p.dst.Addr(), p.family)
			continue
		}
		conclusive++
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(s.out, "FAIL %s: %s as uid %d was not redirected to :%d: %v\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort, err)
		case got != p.dst:
			failed++
			fmt.Fprintf(s.out, "FAIL %s: %s as uid %d reached :%d with original destination %s\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort, got)
		default:
			fmt.Fprintf(s.out, "ok   %s: %s as uid %d reached :%d with its original destination\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort)
		}
	}
	if failed > 0 {
		return withCode(exitNotValid, fmt.Errorf("validate: %d of %d probes were not redirected; is detour installed with this configuration?", failed, conclusive))
	}
	if conclusive == 0 {
		return errors.New("validate: nothing could be probed: the namespace has no route to the probe addresses (add a default route, as pods have)")
	}
	return nil
}

var (
	errPortInUse = errors.New("the outbound port is already in use; validate runs before the proxy starts")
	errNoRoute   = errors.New("no route")
)

// planProbes picks, per planned family, a destination the configuration
// captures and a user whose traffic it captures: as root, a spare uid it
// switches to; otherwise the user validate runs as, which must be captured.
func planProbes(plan redirect.Plan, self runner) ([]probe, error) {
	c := plan.Config
	port, ok := capturedPort(c.Outbound, c.Proxy)
	if !ok {
		return nil, errors.New("validate: the configuration captures no outbound port that can be probed")
	}
	uid, gid := self.uid, self.gid
	if self.root() {
		if uid, gid, ok = capturedUser(c, port); !ok {
			return nil, errors.New("validate: every candidate user (65534 down to 60000) is excluded from capture")
		}
	} else if !userCaptured(c, port, uid, gid) {
		return nil, fmt.Errorf("validate: it runs as uid %d gid %d, whose traffic this configuration does not capture; run it as root (it then probes as a captured uid) or as a captured user", uid, gid)
	}
	var out []probe
	for _, f := range plan.Families {
		addr, ok := capturedAddr(c.Outbound, f)
		if !ok {
			continue // includeCIDRs name no address of this family: nothing of it is captured
		}
		out = append(out, probe{family: f.Family, dst: netip.AddrPortFrom(addr, port), uid: uid, gid: gid, become: self.root()})
	}
	if len(out) == 0 {
		return nil, errors.New("validate: the configuration captures no outbound address that can be probed")
	}
	return out, nil
}

func inRanges(rs []redirect.PortRange, p uint16) bool {
	return slices.ContainsFunc(rs, func(r redirect.PortRange) bool { return r.Contains(p) })
}

func inIDs(rs []redirect.IDRange, id uint32) bool {
	return slices.ContainsFunc(rs, func(r redirect.IDRange) bool { return r.Contains(id) })
}

func capturedPort(o redirect.Outbound, p redirect.Proxy) (uint16, bool) {
	if len(o.IncludePorts) > 0 {
		for _, r := range o.IncludePorts {
			for port := r.First; ; port++ {
				if port != p.OutboundPort && port != p.InboundPort {
					return port, true
				}
				if port == r.Last {
					break
				}
			}
		}
		return 0, false
	}
	// A high port nothing listens on in practice.
	for port := uint16(15999); port > 1024; port-- {
		if !inRanges(o.ExcludePorts, port) && port != p.OutboundPort && port != p.InboundPort {
			return port, true
		}
	}
	return 0, false
}

func capturedUser(c redirect.Config, port uint16) (uid, gid uint32, ok bool) {
	for id := uint32(65534); id >= 60000; id-- {
		if userCaptured(c, port, id, id) {
			return id, id, true
		}
	}
	return 0, 0, false
}

// userCaptured reports whether the configuration captures TCP to port sent by
// uid with primary group gid.
func userCaptured(c redirect.Config, port uint16, uid, gid uint32) bool {
	if uid == c.Proxy.UID || inIDs(c.Outbound.ExcludeUIDs, uid) {
		return false
	}
	for _, r := range c.Outbound.ExcludePortsForUIDs {
		if r.Protocol == redirect.TCP && inRanges(r.Ports, port) && inIDs(r.UIDs, uid) {
			return false
		}
	}
	return (c.Proxy.GID == nil || *c.Proxy.GID != gid) && !inIDs(c.Outbound.ExcludeGIDs, gid)
}

// documentation addresses: never routed on the internet, so a probe that escapes
// capture goes nowhere.
var probeAddrs = map[redirect.Family][]string{
	redirect.IPv4: {"192.0.2.1", "198.51.100.1", "203.0.113.1"},
	redirect.IPv6: {"2001:db8::1", "2001:db8:ffff::1"},
}

func capturedAddr(o redirect.Outbound, f redirect.FamilyPlan) (netip.Addr, bool) {
	is4 := f.Family == redirect.IPv4
	var include []netip.Prefix
	for _, p := range o.IncludeCIDRs {
		if p.Addr().Is4() == is4 {
			include = append(include, p)
		}
	}
	if len(include) > 0 {
		// Any address of an included prefix is captured (include beats exclude).
		a := include[0].Addr()
		if include[0].Bits() < a.BitLen() && a.Next().IsValid() && include[0].Contains(a.Next()) {
			a = a.Next()
		}
		return a, true
	}
	if len(o.IncludeCIDRs) > 0 {
		return netip.Addr{}, false
	}
	for _, s := range probeAddrs[f.Family] {
		a := netip.MustParseAddr(s)
		if !slices.ContainsFunc(o.ExcludeCIDRs, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func familyNetwork(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}
