package redirect

import (
	"net/netip"
	"slices"
)

// CapturesOutbound and CapturesInbound answer, without a host, the question the
// installed rules answer for every new TCP connection: does it go to the proxy?
// They read the Config exactly as NewPlan turns it into rules (both modes, both
// backends), so the control plane can serve listeners where capture happens and
// `detour validate` can pick a destination that must be captured. Their answers
// are checked against real connections through installed plans
// (TestDecisionMatchesPackets).
//
// What they leave to the caller: whether the destination's IP family is captured
// at all (ipFamilies, and Facts.IPv6 for auto — a family the plan does not capture
// is never redirected), and UDP: DNS capture (dns.capture, UDP/53) is not part of
// the answer.

// CapturesOutbound reports whether a TCP connection that a process of the
// workload, running with file-system uid and gid (the ids the owner match reads;
// its primary group, supplementary groups do not count), opens to dst:port is
// redirected to Proxy.OutboundPort. dst is a destination outside the workload:
// the workload's own addresses route over lo, and connections over lo are never
// captured outbound (O9; the proxy's own connections to them are the hairpin of
// CapturesInbound). The answer, in the order of the rules:
//
//   - outbound.enabled false: never.
//   - dst is loopback (127.0.0.0/8, ::1) or unspecified: never (O9).
//   - uid is proxy.uid, or gid is proxy.gid when set: never (O7, no loop).
//   - uid in outbound.excludeUIDs, gid in outbound.excludeGIDs: never (O5).
//   - a tcp rule of outbound.excludePortsForUIDs lists port and uid: never (O5).
//   - addresses (O3, O4): with outbound.includeCIDRs, only dst inside one of its
//     prefixes of dst's family is captured (a list without a prefix of that family
//     captures none of it) and outbound.excludeCIDRs no longer matters — include
//     beats exclude; without it, dst inside outbound.excludeCIDRs is not captured.
//   - ports (O2, O4): with outbound.includePorts only those ports are captured and
//     outbound.excludePorts no longer matters; otherwise every port but
//     excludePorts. The outbound port itself is captured like any other (O10: the
//     proxy's loop guard handles it).
//
// The address and the port conditions must both hold. An IPv4-mapped IPv6 dst is
// treated as the IPv4 address the kernel sends to.
func (c Config) CapturesOutbound(dst netip.Addr, port uint16, uid, gid uint32) bool {
	return c.bothFamilies().Decide(Conn{Direction: DirOutbound, Protocol: TCP, Dst: dst, Port: port, UID: uid, GID: gid}).Captured
}

// bothFamilies is the capture of c in both families, whatever ipFamilies says:
// the predicates leave the family question to their callers.
func (c Config) bothFamilies() Capture {
	return newCapture(c, Facts{}, []Family{IPv4, IPv6})
}

// CapturesInbound reports whether a TCP connection from src to port of the
// workload's own address is redirected (or, in tproxy mode, diverted) to
// Proxy.InboundPort. src is the client: a host elsewhere, or the workload's own
// address for the proxy's hairpin (O8), which takes the same path. The answer:
//
//   - inbound.enabled false: never (I5).
//   - port is proxy.outboundPort: never (O10, the loop guard).
//   - src is loopback, or proxy.inboundPassthroughSource of its family: never (the
//     proxy's passthrough to the app, O8, I6; loopback never arrives from outside).
//   - src inside inbound.excludeSourceCIDRs of its family: never (I4).
//   - ports (I2, I3): with inbound.includePorts only those ports are captured and
//     inbound.excludePorts no longer matters; otherwise every port but
//     excludePorts.
//
// Connections the workload's host only forwards (to addresses that are not its
// own) are never captured (I7).
func (c Config) CapturesInbound(src netip.Addr, port uint16) bool {
	return c.bothFamilies().Decide(Conn{Direction: DirInbound, Protocol: TCP, Src: src, Port: port}).Captured
}

// portSelected is the port half of a selection chain: include ports only, or
// every port but the excluded ones.
func portSelected(include, exclude []PortRange, p uint16) bool {
	if len(include) > 0 {
		return inPortRanges(include, p)
	}
	return !inPortRanges(exclude, p)
}

func inPortRanges(rs []PortRange, p uint16) bool {
	return slices.ContainsFunc(rs, func(r PortRange) bool { return r.Contains(p) })
}

func inIDRanges(rs []IDRange, id uint32) bool {
	return slices.ContainsFunc(rs, func(r IDRange) bool { return r.Contains(id) })
}

// inFamilyPrefixes reports whether a lies in one of the prefixes of its own
// family, as the per-family rule sets see them (an IPv4-mapped prefix belongs to
// IPv6 and matches no IPv4 address).
func inFamilyPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().Is6() == a.Is6() && p.Contains(a) })
}

// CapturedUser returns a user whose TCP connection to dst:port the outbound rules
// capture: a uid, with a gid equal to it, that is neither the proxy's nor
// excluded, searched from 65534 down to 60000 (ids that are rarely real accounts).
// ok is false when every candidate is exempt. `detour validate` probes as this
// user; the control plane serves a service listener when some app user's
// connections reach it.
func (c Config) CapturedUser(dst netip.Addr, port uint16) (uid, gid uint32, ok bool) {
	capture := c.bothFamilies()
	for id := uint32(65534); id >= 60000; id-- {
		v := capture.Decide(Conn{Direction: DirOutbound, Protocol: TCP, Dst: dst, Port: port, UID: id, GID: id})
		if v.Captured {
			return id, id, true
		}
		if !v.Reason.byUser() {
			return 0, 0, false // the destination decides, not the user
		}
	}
	return 0, 0, false
}

// byUser reports whether the verdict depends on the connection's user.
func (r Reason) byUser() bool {
	switch r.Field {
	case "proxy.uid", "proxy.gid", "outbound.excludeUIDs", "outbound.excludeGIDs", "outbound.excludePortsForUIDs":
		return true
	}
	return false
}
