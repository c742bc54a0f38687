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
	"time"

	"golang.org/x/sys/unix"
)

// DNSServer is a UDP responder started with NetNS.ServeDNS. It answers every TXT
// query with a Reply as JSON, from the address the query was sent to.
type DNSServer struct {
	Name string
	Addr netip.AddrPort

	conn     *net.UDPConn
	wg       sync.WaitGroup
	answered atomic.Int64
	once     sync.Once
}

// ServeDNS starts a DNS responder named name on addr (UDP) inside the namespace. A
// wildcard addr answers queries to every local address of its family. Its socket is
// owned by cred (nil = root): a stand-in for the proxy's DNS port must run as the
// proxy's uid, whose answers detour's conntrack zone rules recognise. The
// namespace's Close stops it.
func (n *NetNS) ServeDNS(name string, addr netip.AddrPort, cred *Cred) (*DNSServer, error) {
	v6 := addr.Addr().Is6()
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if v6 {
				// Answering from an address of a local route (not assigned to an
				// interface) needs IP_FREEBIND for IPv6.
				serr = errors.Join(
					unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_V6ONLY, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1))
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_PKTINFO, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	s := &DNSServer{Name: name}
	err := n.Do(cred, func() error {
		pc, err := lc.ListenPacket(context.Background(), Of(addr.Addr()).UDP(), addr.String())
		if err != nil {
			return err
		}
		s.conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("serve dns %s on %s in netns %s: %w", name, addr, n.Name, err)
	}
	s.Addr = s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	s.wg.Add(1)
	go s.loop(v6)
	n.track(s)
	return s, nil
}

// Answered returns how many queries the responder answered.
func (s *DNSServer) Answered() int64 { return s.answered.Load() }

// Close stops the responder. Safe to repeat.
func (s *DNSServer) Close() error {
	var err error
	s.once.Do(func() {
		err = s.conn.Close()
		s.wg.Wait()
	})
	return err
}

func (s *DNSServer) loop(v6 bool) {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	oob := make([]byte, 512)
	for {
		n, oobn, _, peer, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		dst, ok := pktinfoDst(oob[:oobn])
		if !ok {
			continue
		}
		r := Reply{
			Server: s.Name,
			Local:  netip.AddrPortFrom(dst, s.Addr.Port()),
			Peer:   unmap(peer),
		}
		r.Original = r.Local
		txt, _ := json.Marshal(r)
		answer, err := dnsAnswer(buf[:n], string(txt))
		if err != nil {
			continue
		}
		// Answer from the address the query was sent to, as a real resolver on a
		// wildcard socket must.
		var cmsg []byte
		if v6 {
			cmsg = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: dst.As16()})
		} else {
			cmsg = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: dst.As4()})
		}
		// Counted before sending, so a client that got the answer sees the count.
		s.answered.Add(1)
		_, _, _ = s.conn.WriteMsgUDPAddrPort(answer, cmsg, peer)
	}
}

// pktinfoDst returns the destination address of a received datagram.
func pktinfoDst(oob []byte) (netip.Addr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }: addr
			// is the header's destination.
			return netip.AddrFrom4([4]byte(m.Data[8:12])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			return netip.AddrFrom16([16]byte(m.Data[0:16])), true
		}
	}
	return netip.Addr{}, false
}

// QueryOptions describe one DNS query.
type QueryOptions struct {
	To       netip.AddrPort
	From     netip.Addr // optional source address
	FreeBind bool
	Cred     *Cred
	Timeout  time.Duration // DefaultTimeout when zero
}

func (o QueryOptions) String() string {
	return DialOptions{To: o.To, From: o.From, Cred: o.Cred}.String()
}

var queryID atomic.Uint32

// QueryDNS sends a TXT query over UDP from inside the namespace and returns what the
// lab responder that answered said, with the answer's source address. The socket is
// unconnected, so an answer from an unexpected address is received and reported
// rather than silently dropped.
func (n *NetNS) QueryDNS(ctx context.Context, o QueryOptions) (DNSReply, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	f := Of(o.To.Addr())
	from := f.Unspecified()
	if o.From.IsValid() {
		from = o.From
	}
	lc := net.ListenConfig{}
	if o.FreeBind {
		lc.Control = freebind
	}
	var conn net.PacketConn
	err := n.Do(o.Cred, func() error {
		var err error
		conn, err = lc.ListenPacket(ctx, f.UDP(), netip.AddrPortFrom(from, 0).String())
		return err
	})
	if err != nil {
		return DNSReply{}, fmt.Errorf("query %s in netns %s: %w", o, n.Name, err)
	}
	defer conn.Close()
	id := uint16(queryID.Add(1))
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.WriteTo(dnsQuery(id, "lab.detour.test"), net.UDPAddrFromAddrPort(o.To)); err != nil {
		return DNSReply{}, fmt.Errorf("query %s in netns %s: %w", o, n.Name, err)
	}
	buf := make([]byte, 1500)
	nr, addr, err := conn.ReadFrom(buf)
	if err != nil {
		return DNSReply{}, fmt.Errorf("query %s in netns %s: read answer: %w", o, n.Name, err)
	}
	txt, err := dnsTXT(buf[:nr], id)
	if err != nil {
		return DNSReply{}, fmt.Errorf("query %s in netns %s: %w", o, n.Name, err)
	}
	var r DNSReply
	if err := json.Unmarshal([]byte(txt), &r.Reply); err != nil {
		return DNSReply{}, fmt.Errorf("query %s in netns %s: %w: %q", o, n.Name, err, txt)
	}
	r.From = unmap(addr.(*net.UDPAddr).AddrPort())
	return r, nil
}
