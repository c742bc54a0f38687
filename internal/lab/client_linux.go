package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
	// FreeBind sets IP_FREEBIND so From need not be assigned to an interface (the
	// remote's addresses of local routes, for IPv6, need it).
	FreeBind bool
	// Cred is the owner of the socket; nil = root.
	Cred *Cred
	// Timeout bounds connect and read; DefaultTimeout when zero.
	Timeout time.Duration
}

func (o DialOptions) String() string {
	s := "to " + o.To.String()
	if o.From.IsValid() {
		s += " from " + o.From.String()
	}
	if o.Cred != nil {
		s += " as " + o.Cred.String()
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
	if o.FreeBind {
		d.Control = freebind
	}
	if o.From.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: o.From.AsSlice()}
	}
	var conn net.Conn
	err := n.Do(o.Cred, func() error {
		var err error
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
