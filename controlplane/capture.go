package controlplane

import (
	"net/netip"

	"github.com/detour-mesh/detour/redirect"
)

// The control plane serves a listener exactly where `detour install` captures: a
// service port the installer lets through untouched gets no listener (it would
// never receive a connection), and an inbound port that is not captured gets no
// filter chain. The answers come from redirect's own decision functions, which
// are checked against real packets through installed plans.

// served are the IP families of one workload's proxy.
type served struct {
	// listen4/listen6: the families the proxy listens on. They cover every
	// family the installer can capture for the same redirect config, so a
	// redirected connection always finds a listener: ipv4 and ipv6 are that
	// family, dual and auto are both. The installer's auto captures IPv6
	// whenever the namespace has it enabled (sysctls the control plane cannot
	// see); [::] binds in every namespace, also with IPv6 disabled, so serving
	// it costs nothing. Only a kernel without IPv6 at all (ipv6.disable=1) cannot
	// open [::]: the installer's auto captures IPv4 only there and Envoy rejects
	// the IPv6 listeners (a NACK, logged and counted); ipFamilies ipv4 is the
	// setting for such a host.
	listen4, listen6 bool
	// reach4/reach6: the families of the workload's addresses, narrowed by
	// ipFamilies ipv4 or ipv6. A service cluster lists only endpoints of these
	// families: the workload has no route to the others.
	reach4, reach6 bool
}

func families(w *Workload) served {
	var s served
	s.reach4, s.reach6 = addrFamilies(w.Addresses)
	switch w.TransparentProxy.IPFamilies {
	case redirect.IPFamiliesIPv4:
		s.listen4 = true
		s.reach6 = false
	case redirect.IPFamiliesIPv6:
		s.listen6 = true
		s.reach4 = false
	default: // auto, dual
		s.listen4, s.listen6 = true, true
	}
	return s
}

// capturesOutbound reports whether an app connection to dst:port goes to the
// proxy's outbound port: captured for some user of the workload that no
// exclusion covers.
func capturesOutbound(c *redirect.Config, dst netip.Addr, port uint16) bool {
	_, _, ok := c.CapturedUser(dst, port)
	return ok
}

// clientSamples stand for "a client elsewhere" when asking whether an inbound
// port is captured: documentation addresses of both families.
var clientSamples = []netip.Addr{
	netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1"),
	netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8:ffff::1"),
}

// capturesInbound reports whether a connection to the workload's port goes to the
// proxy's inbound port for clients that inbound.excludeSourceCIDRs does not
// exempt.
func capturesInbound(c *redirect.Config, port uint16) bool {
	for _, src := range clientSamples {
		if c.CapturesInbound(src, port) {
			return true
		}
	}
	return false
}
