package origdst

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6);
// the uapi headers define both as 80.
const soOriginalDst = 80

// Get returns the original destination of c, a connection accepted by a listener
// that nat REDIRECT delivered it to. An IPv4 connection accepted on a dual-stack
// listener is answered from the IPv4 conntrack entry.
func Get(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("read original destination: local address %v is not TCP", c.LocalAddr())
	}
	ip, _ := netip.AddrFromSlice(local.IP)
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	var (
		dst  netip.AddrPort
		serr error
	)
	err = raw.Control(func(fd uintptr) {
		if ip.Unmap().Is4() {
			dst, serr = get4(int(fd))
		} else {
			dst, serr = get6(int(fd))
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	return dst, nil
}

// FromFD is Get for a socket the caller holds as a file descriptor (a proxy
// that makes its own system calls, such as an epoll loop): ipv6 says whether
// fd is an AF_INET6 socket. An IPv4 connection on an AF_INET6 socket (a
// dual-stack listener's) is answered from the IPv4 entry, as Get does.
func FromFD(fd int, ipv6 bool) (netip.AddrPort, error) {
	if ipv6 {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
		}
		if in6, ok := sa.(*unix.SockaddrInet6); ok && netip.AddrFrom16(in6.Addr).Is4In6() {
			ipv6 = false
		}
	}
	get := get4
	if ipv6 {
		get = get6
	}
	dst, err := get(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	return dst, nil
}

func get4(fd int) (netip.AddrPort, error) {
	// struct sockaddr_in is 16 bytes, the size of an IPv6Mreq.
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}, err
	}
	b := m.Multiaddr[:]
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

func get6(fd int) (netip.AddrPort, error) {
	// struct sockaddr_in6 (28 bytes) fits in an IPv6MTUInfo (32 bytes).
	m, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}, err
	}
	// Port holds the network-order bytes as the kernel wrote them.
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&m.Addr.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr), port), nil
}
