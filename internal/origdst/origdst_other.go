//go:build !linux

package origdst

import (
	"errors"
	"net"
	"net/netip"
)

// Get is only implemented on Linux.
func Get(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.ErrUnsupported
}

// FromFD is only implemented on Linux.
func FromFD(fd int, ipv6 bool) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.ErrUnsupported
}
