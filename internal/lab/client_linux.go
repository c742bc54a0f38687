package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds a client's connect and read when DialOptions.Timeout is zero.
const DefaultTimeout = 3 * time.Second

// DialOptions describe one client connection.
type DialOptions struct {
	// To is the destination.
	To netip.AddrPort
	// From, when valid, is bound as the source address.
	From netip.Addr
	// FromPort, when not 0, is bound as the source port, with SO_REUSEADDR so a
	// port whose last connection has closed can be bound again at once: that
	// connection's 4-tuple is reused.
	FromPort uint16
	// FreeBind sets IP_FREEBIND so From need not be assigned to an interface (the
	// remote's addresses of local routes, for IPv6, need it).
	FreeBind bool
	// Cred is the owner of the socket; nil = root.
	Cred *Cred
	// Mapped dials an IPv4 To from an IPv6 socket (IPV6_V6ONLY off) to its
	// v4-mapped address, ::ffff:a.b.c.d, as dual-stack apps do. From and
	// FreeBind are not supported with it.
	Mapped bool
	// Timeout bounds connect and read; DefaultTimeout when zero.
	Timeout time.Duration
}

func (o DialOptions) String() string {
	s := "to " + o.To.String()
	if o.From.IsValid() {
		s += " from " + o.From.String()
	}
	if o.FromPort != 0 {
		s += fmt.Sprintf(" source port %d", o.FromPort)
	}
	if o.Cred != nil {
		s += " as " + o.Cred.String()
	}
	if o.Mapped {
		s += " from a v4-mapped IPv6 socket"
	}
	return s
}

// Dial connects to o.To from inside the namespace and returns the Reply of the lab
// server that answered. A connection that is refused, times out or is answered by
// something other than a lab server is an error.
func (n *NetNS) Dial(ctx context.Context, o DialOptions) (Reply, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	d.Control = func(network, address string, c syscall.RawConn) error {
		if o.FreeBind {
			if err := freebind(network, address, c); err != nil {
				return err
			}
		}
		if o.FromPort == 0 {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		})
		return errors.Join(err, serr)
	}
	if o.From.IsValid() || o.FromPort != 0 {
		d.LocalAddr = &net.TCPAddr{IP: o.From.AsSlice(), Port: int(o.FromPort)}
	}
	if o.Mapped && (!o.To.Addr().Is4() || o.From.IsValid() || o.FreeBind) {
		return Reply{}, fmt.Errorf("dial %s: a v4-mapped dial needs an IPv4 destination and no source", o)
	}
	var conn net.Conn
	err := n.Do(o.Cred, func() error {
		var err error
		if o.Mapped {
			conn, err = dialMapped(o.To, timeout)
			return err
		}
		conn, err = d.DialContext(ctx, Of(o.To.Addr()).TCP(), o.To.String())
		return err
	})
	if err != nil {
		return Reply{}, fmt.Errorf("dial %s in netns %s: %w", o, n.Name, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return Reply{}, fmt.Errorf("read reply %s in netns %s: %w", o, n.Name, err)
	}
	var r Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return Reply{}, fmt.Errorf("read reply %s in netns %s: %w: %q", o, n.Name, err, line)
	}
	r.Client = unmap(conn.LocalAddr().(*net.TCPAddr).AddrPort())
	return r, nil
}

// dialMapped connects an AF_INET6 socket with IPV6_V6ONLY off to the
// v4-mapped form of the IPv4 address to (Go's dialer would pick an AF_INET
// socket for it). It runs on the calling thread, inside the namespace.
func dialMapped(to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "v4-mapped")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet6{Port: int(to.Port()), Addr: netip.AddrFrom16(to.Addr().As16()).As16()}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, err
	}
	return net.FileConn(f) // a dup: f's descriptor closes with the defer
}

// IsRefused reports whether err is a refused connection (nothing listens there).
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		// IP_FREEBIND applies to IPv6 sockets too.
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
	})
	return errors.Join(err, serr)
}
