package tcplisten

import (
	"net"
	"net/netip"
)

// Listen listens on addr (host:port): an IPv4 host, 0.0.0.0 included, on
// IPv4 only; an IPv6 host, [::] included, and an empty host or a name as
// net.Listen("tcp", addr) does ([::] and "" take both families).
func Listen(addr string) (net.Listener, error) {
	return net.Listen(network(addr), addr)
}

func network(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		return "tcp4"
	}
	return "tcp"
}

// Families names the families a listener made by Listen takes, for logs:
// "ipv4", "ipv6" or "ipv4,ipv6" (bound to [::], which Go makes take IPv4
// too).
func Families(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return ""
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	switch {
	case ip.Is4() || ip.Is4In6():
		return "ipv4"
	case ip.IsUnspecified():
		return "ipv4,ipv6"
	}
	return "ipv6"
}
