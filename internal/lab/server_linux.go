package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/origdst"
)

// ServeOptions tune a TCP server.
type ServeOptions struct {
	// Transparent sets IP_TRANSPARENT / IPV6_TRANSPARENT on the listener, which a
	// TPROXY target needs to deliver connections for addresses that are not local.
	Transparent bool
}

// Server is a TCP server started with NetNS.Serve. For every connection it writes one
// JSON Reply line and closes the connection.
type Server struct {
	Name string
	Addr netip.AddrPort // the bound address

	ln       net.Listener
	wg       sync.WaitGroup
	accepted atomic.Int64
	once     sync.Once
}

// Serve starts a TCP server named name on addr inside the namespace. A wildcard addr
// (0.0.0.0:P or [::]:P) accepts connections to every local address of its family; an
// IPv6 wildcard does not take IPv4 connections. The namespace's Close stops it.
func (n *NetNS) Serve(name string, addr netip.AddrPort, opts ServeOptions) (*Server, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if addr.Addr().Is6() {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_V6ONLY, 1)
				if serr == nil && opts.Transparent {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				}
			} else if opts.Transparent {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	s := &Server{Name: name}
	err := n.Do(nil, func() error {
		ln, err := lc.Listen(context.Background(), Of(addr.Addr()).TCP(), addr.String())
		if err != nil {
			return err
		}
		s.ln = ln
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("serve %s on %s in netns %s: %w", name, addr, n.Name, err)
	}
	s.Addr = s.ln.Addr().(*net.TCPAddr).AddrPort()
	s.wg.Add(1)
	go s.loop()
	n.track(s)
	return s, nil
}

// Accepted returns how many connections the server accepted.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// Close stops the server and waits for its goroutines. Safe to repeat.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

func (s *Server) loop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			tc := c.(*net.TCPConn)
			r := Reply{
				Server: s.Name,
				Local:  unmap(tc.LocalAddr().(*net.TCPAddr).AddrPort()),
				Peer:   unmap(tc.RemoteAddr().(*net.TCPAddr).AddrPort()),
			}
			r.Original = r.Local
			if od, err := origdst.Get(tc); err == nil {
				r.Original = od
			}
			b, _ := json.Marshal(r)
			_, _ = c.Write(append(b, '\n'))
		}()
	}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
