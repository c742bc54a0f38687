package controlplane

import (
	"net/netip"

	"github.com/detour-mesh/detour/redirect"
)

// The functions below read a redirect.Config the way the installed rules act on
// packets (redirect/rules.go), so the control plane serves a listener exactly
// where `detour install` captures: a service port the installer lets through
// untouched gets no listener (it would never receive a connection), and an
// inbound port that is not captured gets no filter chain.
//
// Semantics: ports — when includePorts is not empty only those ports are
// captured and excludePorts no longer matter; otherwise every port but
// excludePorts. Outbound CIDRs — when includeCIDRs is not empty only its
// prefixes of the destination's family are captured (a list without IPv6
// prefixes captures no IPv6) and excludeCIDRs no longer matter; otherwise every
// destination but excludeCIDRs. Loopback destinations are never captured.

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

func inPorts(rs []redirect.PortRange, p uint16) bool {
	for _, r := range rs {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

func portSelected(include, exclude []redirect.PortRange, p uint16) bool {
	if inPorts(include, p) {
		return true
	}
	if len(include) > 0 {
		return false
	}
	return !inPorts(exclude, p)
}

func inCIDRs(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Addr().Is4() == a.Is4() && p.Contains(a) {
			return true
		}
	}
	return false
}

// capturesOutbound reports whether a connection from the app to dst:port goes to
// the proxy's outbound port.
func capturesOutbound(c *redirect.Config, dst netip.Addr, port uint16) bool {
	o := c.Outbound
	if !o.Enabled || dst.IsLoopback() || !portSelected(o.IncludePorts, o.ExcludePorts, port) {
		return false
	}
	if len(o.IncludeCIDRs) > 0 {
		return inCIDRs(o.IncludeCIDRs, dst)
	}
	return !inCIDRs(o.ExcludeCIDRs, dst)
}

// capturesInbound reports whether a connection to the workload's port goes to the
// proxy's inbound port (from a source that is not excluded).
func capturesInbound(c *redirect.Config, port uint16) bool {
	return c.Inbound.Enabled && portSelected(c.Inbound.IncludePorts, c.Inbound.ExcludePorts, port)
}
