//go:build linux

package cpe2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnsfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	caresv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/cares/v3"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
)

// The test proxy's DNS listener stands in for Envoy's dns_filter: it answers
// A and AAAA questions for the names of the served inline DNS table with the
// table's addresses of that family, and forwards every other query to the
// first resolver of the served c-ares config, as the proxy's user (whose
// queries the installed rules leave alone).

// listenUDP binds a DNS listener in the workload's namespace as the proxy's
// user: detour's conntrack zone rules recognise the DNS proxy's replies by
// owner.
func (p *testProxy) listenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if addr.Addr().Is6() {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_V6ONLY, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	var pc net.PacketConn
	err := p.ns.Do(p.cred, func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), lab.Of(addr.Addr()).UDP(), addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func (p *testProxy) serveDNS(name string, pc *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		n, peer, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		query := append([]byte(nil), buf[:n]...)
		go p.answerDNS(name, pc, peer, query)
	}
}

func (p *testProxy) answerDNS(name string, pc *net.UDPConn, peer netip.AddrPort, query []byte) {
	var msg dnsmessage.Message
	if err := msg.Unpack(query); err != nil || len(msg.Questions) != 1 {
		p.t.Logf("test proxy: %s: a query it cannot read from %s: %v", name, peer, err)
		return
	}
	q := msg.Questions[0]
	rt := route{Listener: name, Handler: name, Peer: unmap(peer), Query: q.Name.String() + " " + strings.TrimPrefix(q.Type.String(), "Type")}

	p.mu.Lock()
	cfg, err := dnsFilter(p.listeners[name])
	p.mu.Unlock()
	if err != nil {
		p.t.Errorf("test proxy: %s: %v", name, err)
		return
	}
	if addrs, ok := tableLookup(cfg, q); ok {
		rt.Chain = "table"
		p.record(rt)
		answer, err := tableAnswer(msg, addrs)
		if err != nil {
			p.t.Errorf("test proxy: %s: %v", name, err)
			return
		}
		_, _ = pc.WriteToUDPAddrPort(answer, peer)
		return
	}
	rt.Chain = "upstream"
	resolvers := upstreams(cfg)
	if len(resolvers) == 0 {
		p.record(rt)
		return // the proxy's resolv.conf: not part of this test
	}
	rt.Upstream = resolvers[0]
	p.record(rt)
	answer, err := p.forward(resolvers[0], query)
	if err != nil {
		p.t.Logf("test proxy: %s: forward to %s: %v", name, resolvers[0], err)
		return
	}
	_, _ = pc.WriteToUDPAddrPort(answer, peer)
}

func (p *testProxy) record(rt route) {
	p.mu.Lock()
	p.routes = append(p.routes, rt)
	p.mu.Unlock()
}

func dnsFilter(l *listenerv3.Listener) (*dnsfilterv3.DnsFilterConfig, error) {
	for _, f := range l.GetListenerFilters() {
		if f.GetName() != "envoy.filters.udp.dns_filter" {
			continue
		}
		cfg := &dnsfilterv3.DnsFilterConfig{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			return nil, err
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("listener %s has no dns_filter", l.GetName())
}

// tableLookup returns the table's addresses of the question's family, and
// whether the table holds the name at all (case-insensitively, as served).
func tableLookup(cfg *dnsfilterv3.DnsFilterConfig, q dnsmessage.Question) ([]netip.Addr, bool) {
	name := strings.TrimSuffix(q.Name.String(), ".")
	for _, vd := range cfg.GetServerConfig().GetInlineDnsTable().GetVirtualDomains() {
		if !strings.EqualFold(vd.GetName(), name) {
			continue
		}
		var out []netip.Addr
		for _, s := range vd.GetEndpoint().GetAddressList().GetAddress() {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			if (q.Type == dnsmessage.TypeA && a.Is4()) || (q.Type == dnsmessage.TypeAAAA && a.Is6()) {
				out = append(out, a)
			}
		}
		return out, true
	}
	return nil, false
}

func tableAnswer(query dnsmessage.Message, addrs []netip.Addr) ([]byte, error) {
	q := query.Questions[0]
	resp := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: query.ID, Response: true, Authoritative: true, RecursionDesired: query.RecursionDesired},
		Questions: query.Questions,
	}
	for _, a := range addrs {
		h := dnsmessage.ResourceHeader{Name: q.Name, Type: q.Type, Class: dnsmessage.ClassINET, TTL: 30}
		if a.Is4() {
			resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: a.As4()}})
		} else {
			resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		}
	}
	return resp.Pack()
}

func upstreams(cfg *dnsfilterv3.DnsFilterConfig) []netip.AddrPort {
	tc := cfg.GetClientConfig().GetTypedDnsResolverConfig()
	cares := &caresv3.CaresDnsResolverConfig{}
	if tc == nil || tc.GetTypedConfig().UnmarshalTo(cares) != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, r := range cares.GetResolvers() {
		if r.GetSocketAddress().GetProtocol() != corev3.SocketAddress_UDP {
			continue
		}
		out = append(out, socketAddr(r))
	}
	return out
}

// forward sends query to the resolver as the proxy's user and returns its
// answer.
func (p *testProxy) forward(to netip.AddrPort, query []byte) ([]byte, error) {
	var c net.Conn
	err := p.ns.Do(p.cred, func() error {
		var err error
		c, err = net.Dial(lab.Of(to.Addr()).UDP(), to.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// resolve sends one DNS question from the workload's namespace as cred to
// the nameserver to, on an unconnected socket, and returns the answer and
// where it came from.
func resolve(ns *lab.NetNS, cred *lab.Cred, to netip.AddrPort, name string, typ dnsmessage.Type) (dnsmessage.Message, netip.AddrPort, error) {
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: uint16(time.Now().UnixNano()), RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}},
	}
	b, err := q.Pack()
	if err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, err
	}
	f := lab.Of(to.Addr())
	var pc net.PacketConn
	err = ns.Do(cred, func() error {
		var err error
		pc, err = net.ListenPacket(f.UDP(), netip.AddrPortFrom(f.Unspecified(), 0).String())
		return err
	})
	if err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, err
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := pc.WriteTo(b, net.UDPAddrFromAddrPort(to)); err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, err
	}
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, err
	}
	var resp dnsmessage.Message
	if err := resp.Unpack(buf[:n]); err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, err
	}
	if resp.ID != q.ID {
		return dnsmessage.Message{}, netip.AddrPort{}, fmt.Errorf("answer id %d, want %d", resp.ID, q.ID)
	}
	return resp, unmap(from.(*net.UDPAddr).AddrPort()), nil
}

// answerAddrs are the A and AAAA records of an answer.
func answerAddrs(m dnsmessage.Message) []netip.Addr {
	var out []netip.Addr
	for _, r := range m.Answers {
		switch b := r.Body.(type) {
		case *dnsmessage.AResource:
			out = append(out, netip.AddrFrom4(b.A))
		case *dnsmessage.AAAAResource:
			out = append(out, netip.AddrFrom16(b.AAAA))
		}
	}
	return out
}
