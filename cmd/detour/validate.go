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
		Short: "Prove on a real connection that outbound traffic reaches the proxy port (exit 5 if not, 6 if no answer)",
		Long: `Validate is the post-install self-check. For each planned IP family it connects as
a user that the configuration captures to a reserved documentation address
(192.0.2.0/24, 2001:db8::/32, or an address of includeCIDRs) and proves where the
connection lands. Before the proxy starts (an init container after the CNI plugin set
the pod up) it listens on the outbound port itself and checks the connection arrives
with its original destination. When a proxy already owns the outbound port (install,
start Envoy, validate), it asks the kernel instead: the connection must be held by a
socket on the outbound port (the proxy's; its uid is printed). As root it probes as a
captured uid it switches to; without CAP_SETUID/CAP_SETGID (the restricted Pod
Security standard) or as another user it probes as itself, which the configuration
must capture. With --cgroup (the eBPF backend's cgroup scope) validate joins that
cgroup first, since only sockets made below it are redirected. It exits 5 when a
connection is proven not redirected (it was answered by something else, or
arrived with another original destination), 6 when a probe got no answer within
--timeout (it left and was dropped, or was redirected and then dropped, or the
namespace is slower than --timeout: a timeout proves neither), 1 when it cannot
run the check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.in.fromEnv()
			return runValidate(cmd.Context(), o, g, s)
		},
	}
	g.later(cmd, func() { o.in.bind(cmd.Flags()) })
	cmd.Flags().DurationVar(&o.timeout, "timeout", 3*time.Second, "how long each probe connection may take ("+minProbeTimeout.String()+" to "+maxProbeTimeout.String()+")")
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
	// scope is the eBPF cgroup scope's directory (--cgroup), "" for a
	// network namespace. With it, the proxy's socket must be below a cgroup
	// where the eBPF backend's getsockopt program is attached (answered: the
	// ids of those cgroups, read from the pins; nil when they could not be):
	// nothing else answers the proxy's SO_ORIGINAL_DST.
	scope    string
	answered map[uint64]bool
}

// runner is who validate runs as.
type runner struct {
	uid, gid uint32
	// canSwitch: the process may take other uids and gids (CAP_SETUID and
	// CAP_SETGID), so probes run as a captured uid chosen for them.
	canSwitch bool
}

// switches reports whether probes run as a uid chosen for them (root with
// CAP_SETUID/CAP_SETGID) rather than as the runner itself.
func (r runner) switches() bool { return r.uid == 0 && r.canSwitch }

// probeResult is where a probe connection landed.
type probeResult struct {
	dst netip.AddrPort // the original destination the outbound port saw
	// viaProxy: a proxy owned the outbound port; the kernel's socket table
	// showed the connection held there by a socket of proxyUID.
	viaProxy bool
	proxyUID uint32
	// listenerUIDs own the sockets listening on the outbound port.
	listenerUIDs []uint32
	// proxyOutside is the cgroup of the proxy's socket when it is outside
	// probe.scope: the connection reached the proxy, which cannot learn its
	// original destination.
	proxyOutside string
}

// The bounds of a probe's --timeout. A redirected probe is answered inside
// the namespace (by the listener standing in for the proxy, or the proxy's
// socket) in well under a millisecond; below the floor, the time to start the
// probe's thread and enter the namespace on a loaded node could use up the
// timeout, and the probe would report its own slowness. Above the ceiling, a
// probe that is dropped holds an init container for longer than anyone
// means.
const (
	minProbeTimeout = 100 * time.Millisecond
	maxProbeTimeout = 5 * time.Minute
)

// checkProbeTimeout refuses a --timeout outside [minProbeTimeout, maxProbeTimeout].
func checkProbeTimeout(d time.Duration) error {
	switch {
	case d <= 0:
		return usageError("--timeout: %q is not a positive duration", d)
	case d < minProbeTimeout:
		return usageError("--timeout: %q is below %s: a probe could time out before it is sent, redirected or not (the default is 3s)", d, minProbeTimeout)
	case d > maxProbeTimeout:
		return usageError("--timeout: %q is above %s: a redirected probe is answered at once (the default is 3s)", d, maxProbeTimeout)
	}
	return nil
}

func runValidate(ctx context.Context, o *validateOptions, g *globalOptions, s streams) error {
	if err := checkProbeTimeout(o.timeout); err != nil {
		return err
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
	probes, err := planProbes(plan, runner{uint32(os.Geteuid()), uint32(os.Getegid()), canSwitchCredentials()})
	if err != nil {
		return err
	}
	if g.cgroup != "" {
		// The cgroup scope captures only sockets made below the cgroup: the
		// probes (and the listener standing in for the proxy) must be there.
		if err := joinCgroup(g.cgroup); err != nil {
			return fmt.Errorf("validate: the probe must run below the cgroup it checks: %w (a cgroup whose controllers are delegated to children takes no process: validate from a leaf cgroup below it)", err)
		}
		fmt.Fprintf(s.out, "probing from inside %s (this process joined it)\n", g.cgroup)
	} else if root := g.ebpfRootToJoin(c.Backend); root != "" {
		// The network-namespace scope's programs attach to
		// DETOUR_EBPF_CGROUP_ROOT and see only sockets made below it.
		if err := joinCgroup(root); err != nil {
			return fmt.Errorf("validate: the probe must run below DETOUR_EBPF_CGROUP_ROOT, where the eBPF backend's programs attach: %w (validate from a process below it)", err)
		}
		fmt.Fprintf(s.out, "probing from inside %s (DETOUR_EBPF_CGROUP_ROOT: this process joined it)\n", root)
	}
	var answered map[uint64]bool
	if g.cgroup != "" {
		answered = getsockoptCgroups(g.bpfPinDir)
	}
	// failed: not redirected; outside: redirected to a proxy that cannot
	// learn the original destination (its socket is outside the scope).
	// looped: held by a proxy whose own connections are captured.
	failed, outside, unanswered, conclusive, looped := 0, 0, 0, 0, 0
	for _, p := range probes {
		p.scope, p.answered = g.cgroup, answered
		res, err := runProbe(ctx, nsPath, c.Proxy.OutboundPort, p, o.timeout)
		got := res.dst
		if errors.Is(err, errCannotProbe) {
			return fmt.Errorf("validate: the probe cannot run: %w (run validate as a uid the configuration captures, which it then probes as, or grant SETUID and SETGID)", err)
		}
		if errors.Is(err, errNoRoute) {
			// Routing happens before the nat table: with no route, nothing of this
			// family can leave the namespace, redirected or not.
			fmt.Fprintf(s.out, "skip %s: no route to %s in this namespace, so no %s traffic can leave it\n", p.family, p.dst.Addr(), p.family)
			continue
		}
		conclusive++
		switch {
		case errors.Is(err, errNoAnswer):
			// Not a proven bypass: left and dropped, or redirected and then
			// dropped (a firewall rule on the proxy port), or too slow.
			unanswered++
			fmt.Fprintf(s.out, "TIMEOUT %s: %s as uid %d: %v\n", p.family, p.dst, p.uid, err)
		case err != nil:
			failed++
			fmt.Fprintf(s.out, "FAIL %s: %s as uid %d was not redirected to :%d: %v\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort, err)
		case got != p.dst:
			failed++
			fmt.Fprintf(s.out, "FAIL %s: %s as uid %d reached :%d with original destination %s\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort, got)
		case res.proxyOutside != "":
			outside++
			fmt.Fprintf(s.out, "FAIL %s: %s as uid %d reached the proxy's socket on :%d, but that socket is in cgroup %s, outside the scope's cgroup %s and every cgroup where detour's eBPF programs are attached: only there is SO_ORIGINAL_DST answered, so the proxy cannot learn where any connection was going (run the proxy below the scope's cgroup, or install the scope on a cgroup above both, such as a slice holding the app's and the proxy's services)\n",
				p.family, p.dst, p.uid, c.Proxy.OutboundPort, res.proxyOutside, g.cgroup)
		case res.viaProxy && capturesProxy(c, p.dst, res.listenerUIDs):
			looped++
			fmt.Fprintf(s.out, "FAIL %s: %s as uid %d was held by a socket on :%d of uid %d, whose own connections this configuration captures (proxy.uid is %d): that proxy's connections upstream are sent back to it, in a loop\n",
				p.family, p.dst, p.uid, c.Proxy.OutboundPort, res.proxyUID, c.Proxy.UID)
		case res.viaProxy:
			fmt.Fprintf(s.out, "ok   %s: %s as uid %d was held by the proxy's socket on :%d (uid %d)\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort, res.proxyUID)
			if capturesRootProxy(c, p.dst, res.listenerUIDs) {
				fmt.Fprintf(s.out, "warn %s: the socket on :%d belongs to root (uid 0), whose own connections this configuration captures (proxy.uid is %d): if root's process is the proxy, its connections upstream are sent back to it, in a loop; run the proxy as uid %d\n",
					p.family, c.Proxy.OutboundPort, c.Proxy.UID, c.Proxy.UID)
			}
		default:
			fmt.Fprintf(s.out, "ok   %s: %s as uid %d reached :%d with its original destination\n", p.family, p.dst, p.uid, c.Proxy.OutboundPort)
		}
	}
	switch {
	case looped > 0:
		return withCode(exitNotValid, fmt.Errorf("validate: %d of %d probes reached a proxy whose own connections are captured: it does not run as proxy.uid %d, so its connections upstream loop back to it; run the proxy as uid %d, or set proxy.uid (--proxy-uid) to the uid it runs as", looped, conclusive, c.Proxy.UID, c.Proxy.UID))
	case failed > 0 && outside > 0:
		return withCode(exitNotValid, fmt.Errorf("validate: %d of %d probes were not redirected, and %d reached a proxy outside the scope's cgroup %s that cannot learn their original destination; is detour installed with this configuration, and does the proxy run below the scope's cgroup?", failed, conclusive, outside, g.cgroup))
	case failed > 0:
		return withCode(exitNotValid, fmt.Errorf("validate: %d of %d probes were not redirected; is detour installed with this configuration?", failed, conclusive))
	case outside > 0:
		return withCode(exitNotValid, fmt.Errorf("validate: %d of %d probes were redirected to the proxy, but its socket is outside the scope's cgroup %s, so it cannot learn their original destination: run the proxy below the scope's cgroup", outside, conclusive, g.cgroup))
	}
	if unanswered > 0 && loopbackDown(nsPath) {
		return withCode(exitNoAnswer, fmt.Errorf("validate: %d of %d probes got no answer within --timeout %s: lo is down in this namespace, and a redirected connection is delivered to the proxy over lo, so every captured connection is dropped: bring it up (ip link set lo up inside the namespace; ip -n NAME link set lo up from outside)", unanswered, conclusive, o.timeout))
	}
	if unanswered > 0 {
		return withCode(exitNoAnswer, fmt.Errorf("validate: %d of %d probes got no answer within --timeout %s, which proves neither that they were redirected nor that they were not: a probe that is not redirected and dropped on its way out looks the same as one redirected and then dropped, for instance by a firewall rule on port %d; is detour installed with this configuration, and does anything drop connections to the proxy port?", unanswered, conclusive, o.timeout, c.Proxy.OutboundPort))
	}
	if conclusive == 0 {
		return errors.New("validate: nothing could be probed: the namespace has no route to the probe addresses (add a default route, as pods have)")
	}
	return nil
}

// capturesProxy reports whether the outbound connections of the proxy that
// holds the probe — the owner uid of the socket listening on the outbound
// port — to the probe's destination are captured themselves. The socket table gives no gid: with a gid exclusion
// (proxy.gid, outbound.excludeGIDs) it cannot be told, and it is not claimed.
// Every listener on the port must be such a uid's (with none found, nothing
// is claimed). Root's listener is not claimed either: a tool running as root
// on the port (a test's stand-in proxy that dials nothing) is no loop, so root
// gets a warning (capturesRootProxy) rather than a failure.
func capturesProxy(c redirect.Config, dst netip.AddrPort, listeners []uint32) bool {
	if len(listeners) == 0 || c.Proxy.GID != nil || len(c.Outbound.ExcludeGIDs) > 0 {
		return false
	}
	for _, uid := range listeners {
		if uid == 0 || uid == c.Proxy.UID || !c.CapturesOutbound(dst.Addr(), dst.Port(), uid, uid) {
			return false
		}
	}
	return true
}

// capturesRootProxy reports whether root owns a listener on the outbound port
// and root's own connections to dst are captured.
func capturesRootProxy(c redirect.Config, dst netip.AddrPort, listeners []uint32) bool {
	return slices.Contains(listeners, 0) && c.Proxy.UID != 0 && c.Proxy.GID == nil &&
		len(c.Outbound.ExcludeGIDs) == 0 && c.CapturesOutbound(dst.Addr(), dst.Port(), 0, 0)
}

var (
	// errNoAnswer: the probe's connection was neither answered nor refused
	// within its timeout.
	errNoAnswer    = errors.New("no answer")
	errPortInUse   = errors.New("the outbound port is already in use")
	errNoRoute     = errors.New("no route")
	errCannotProbe = errors.New("cannot take the probe's uid and gid")
)

// planProbes picks, per planned family, a destination the configuration
// captures and a user whose traffic it captures: as root, a spare uid it
// switches to; otherwise the user validate runs as, which must be captured.
func planProbes(plan redirect.Plan, self runner) ([]probe, error) {
	var out []probe
	for _, f := range plan.Families() {
		if p, ok := probeFor(plan.Config, f, self); ok {
			out = append(out, p)
		}
	}
	switch {
	case len(out) > 0:
		return out, nil
	case self.switches():
		return nil, errors.New("validate: the configuration captures no outbound destination that can be probed")
	case self.uid == 0:
		return nil, fmt.Errorf("validate: the probe cannot run: it runs as uid 0 without CAP_SETUID/CAP_SETGID (the restricted Pod Security standard drops them), so it can only probe as itself, and this configuration does not capture uid 0's traffic; run it as a uid the configuration captures, or grant SETUID and SETGID")
	default:
		return nil, fmt.Errorf("validate: it runs as uid %d gid %d, whose traffic this configuration does not capture; run it as root (it then probes as a captured uid) or as a captured user", self.uid, self.gid)
	}
}

// probeFor finds a destination of the family and a user whose connection to it
// the configuration captures (redirect's own decision, the one the rules make).
func probeFor(c redirect.Config, family redirect.Family, self runner) (probe, bool) {
	for _, addr := range candidateAddrs(c.Outbound, family) {
		for _, port := range candidatePorts(c) {
			p := probe{family: family, dst: netip.AddrPortFrom(addr, port), uid: self.uid, gid: self.gid, become: self.switches()}
			if self.switches() {
				var ok bool
				if p.uid, p.gid, ok = c.CapturedUser(addr, port); ok {
					return p, true
				}
			} else if c.CapturesOutbound(addr, port, self.uid, self.gid) {
				return p, true
			}
		}
	}
	return probe{}, false
}

// probeAddrs are documentation addresses: never routed on the internet, so a
// probe that escapes capture goes nowhere.
var probeAddrs = map[redirect.Family][]string{
	redirect.IPv4: {"192.0.2.1", "198.51.100.1", "203.0.113.1"},
	redirect.IPv6: {"2001:db8::1", "2001:db8:ffff::1"},
}

// candidateAddrs are an address inside each included prefix of the family, then
// the documentation addresses.
func candidateAddrs(o redirect.Outbound, family redirect.Family) []netip.Addr {
	var out []netip.Addr
	for _, p := range o.IncludeCIDRs {
		if p.Addr().Is4() != (family == redirect.IPv4) {
			continue
		}
		a := p.Addr()
		if next := a.Next(); next.IsValid() && p.Contains(next) {
			a = next // not the network address
		}
		out = append(out, a)
	}
	for _, s := range probeAddrs[family] {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// candidatePorts are the included ports, then high ports nothing listens on in
// practice (15999 down to 1025); never the proxy's own ports.
func candidatePorts(c redirect.Config) []uint16 {
	var out []uint16
	add := func(p uint16) {
		if p != c.Proxy.OutboundPort && p != c.Proxy.InboundPort {
			out = append(out, p)
		}
	}
	for _, r := range c.Outbound.IncludePorts {
		for p := int(r.First); p <= int(r.Last); p++ {
			add(uint16(p))
		}
	}
	if len(c.Outbound.IncludePorts) > 0 {
		return out // no other port is captured
	}
	for p := uint16(15999); p > 1024; p-- {
		add(p)
	}
	return out
}

func familyNetwork(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}
