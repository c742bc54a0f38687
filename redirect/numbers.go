package redirect

import "net/netip"

// TProxyMark is the packet mark of the TPROXY path (one bit, also its mask).
// In mode tproxy the proxy marks its connections to the app that use the
// client's address as their source (Envoy's original_src filter, which the
// control plane serves with this mark), and every backend routes the app's
// replies back to the proxy by it (FamilyCapture.TProxy).
const TProxyMark = tproxyMark

// Fixed numbers of the TPROXY path and of the DNS conntrack zones, shared by
// every backend; docs/rules.md lists them.
const (
	tproxyMark     = 0x2000 // one bit, so other users of the mark keep theirs
	tproxyTable    = 2000
	tproxyPriority = 2000

	// ZoneUpstream holds the DNS proxy's (and bypassing users') queries to the
	// real nameservers, original direction only (their replies are in the
	// default zone); ZoneApp holds the applications' captured queries and the
	// DNS proxy's replies to them. Backends that split DNS conntrack zones
	// (DNSCaptureRules.ZoneSplit) use these numbers.
	ZoneUpstream = 1
	ZoneApp      = 2
)

// netProtocol is the kernel ownership tag of everything we make over netlink:
// the protocol of our ip rules and routes and of our addresses on lo. No
// routing daemon uses 215 (iproute2's rt_protos, linux/rtnetlink.h).
const netProtocol = 215

// addressLabel names the IPv4 addresses we put on lo, for people reading `ip
// addr` (which does not show an address's protocol); ownership is netProtocol.
const addressLabel = "lo:detour"

// alwaysLocal reports whether an address is local without being configured:
// all of 127.0.0.0/8, but of IPv6 loopback only ::1.
func alwaysLocal(a netip.Addr) bool {
	if a.Is4() {
		return netip.MustParsePrefix("127.0.0.0/8").Contains(a)
	}
	return a == netip.IPv6Loopback()
}
