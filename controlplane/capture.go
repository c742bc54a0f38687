package controlplane

import (
	"net/netip"

	"github.com/detour-mesh/detour/redirect"
)

// The functions below read a redirect.Config the way the installed rules act on
// packets, so the control plane serves a listener exactly where `detour install`
// captures: a service port the installer lets through untouched gets no
// listener (it would never receive a connection), and an inbound port that is not
// captured gets no filter chain.
//
// Semantics (DESIGN.md, redirect.Config): an include list, when not empty,
// limits capture to its entries; an exclude list removes entries unless they are
// also included (include beats exclude). CIDR lists are split per IP family: a
// list holding only IPv4 prefixes does not restrict IPv6. Loopback destinations
// are never captured.

// families returns the IP families the workload's proxy serves: those of its
// addresses, narrowed by transparentProxy.ipFamilies.
func families(w *Workload) (v4, v6 bool) {
	v4, v6 = addrFamilies(w.Addresses)
	switch w.TransparentProxy.IPFamilies {
	case redirect.IPFamiliesIPv4:
		v6 = false
	case redirect.IPFamiliesIPv6:
		v4 = false
	}
	return v4, v6
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

// inCIDRs reports whether a is in one of the prefixes of its family in ps, and
// whether ps lists any prefix of that family.
func inCIDRs(ps []netip.Prefix, a netip.Addr) (in, familyListed bool) {
	for _, p := range ps {
		if p.Addr().Is4() != a.Is4() {
			continue
		}
		familyListed = true
		if p.Contains(a) {
			return true, true
		}
	}
	return false, familyListed
}

// capturesOutbound reports whether a connection from the app to dst:port goes to
// the proxy's outbound port.
func capturesOutbound(c *redirect.Config, dst netip.Addr, port uint16) bool {
	o := c.Outbound
	if !o.Enabled || dst.IsLoopback() {
		return false
	}
	if !portSelected(o.IncludePorts, o.ExcludePorts, port) {
		return false
	}
	if in, _ := inCIDRs(o.IncludeCIDRs, dst); in {
		return true
	}
	if _, listed := inCIDRs(o.IncludeCIDRs, dst); listed {
		return false
	}
	in, _ := inCIDRs(o.ExcludeCIDRs, dst)
	return !in
}

// capturesInbound reports whether a connection to the workload's port goes to the
// proxy's inbound port (from a source that is not excluded).
func capturesInbound(c *redirect.Config, port uint16) bool {
	return c.Inbound.Enabled && portSelected(c.Inbound.IncludePorts, c.Inbound.ExcludePorts, port)
}
