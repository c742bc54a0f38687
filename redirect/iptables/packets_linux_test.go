package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	testlab "github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// Real packets through the installed rules, for the core scenarios of
// SCENARIOS.md (the tests/ module runs the full matrix through the CLI). A
// "pod" namespace holds the rules, the proxy's listeners and an app server; a
// "remote" namespace behind a veth pair answers for TEST-NET addresses.
// Every server replies with one line saying who answered and, for the proxy,
// the original destination it recovered.

const (
	appUID   = 1000
	proxyUID = 5678
)

// lab is the pair of namespaces with their servers.
type lab struct {
	pod, remote privtest.NS
	e           *redirect.Engine
	// remoteQueries receives the payload of every datagram the remote
	// nameservers get.
	remoteQueries chan string
}

// Addresses of the lab. The remote namespace owns remote4/remote6 and the
// gateway addresses; the pod owns pod4/pod6, and install puts ::6 (the IPv6
// passthrough source, which the proxy binds) on its lo.
var (
	pod4, pod6       = netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	gw4, gw6         = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	remote4, remote6 = netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:ff::1")
)

func newLab(t *testing.T) *lab {
	t.Helper()
	pod, e := newNS(t)
	remote := privtest.NetNS(t)
	l := &lab{pod: pod, remote: remote, e: e, remoteQueries: make(chan string, 64)}
	veth := "dtv" + pod.Name[len(pod.Name)-6:]
	privtest.Run(t, "ip", "link", "add", veth, "netns", pod.Name, "type", "veth", "peer", "name", "eth0", "netns", remote.Name)
	pod.Run(t, "ip", "link", "set", veth, "name", "eth0")
	for _, ns := range []privtest.NS{pod, remote} {
		ns.Run(t, "ip", "link", "set", "eth0", "up")
	}
	pod.Run(t, "ip", "addr", "add", pod4.String()+"/24", "dev", "eth0")
	pod.Run(t, "ip", "-6", "addr", "add", pod6.String()+"/64", "dev", "eth0", "nodad")
	pod.Run(t, "ip", "route", "add", "default", "via", gw4.String())
	pod.Run(t, "ip", "-6", "route", "add", "default", "via", gw6.String())
	remote.Run(t, "ip", "addr", "add", gw4.String()+"/24", "dev", "eth0")
	remote.Run(t, "ip", "-6", "addr", "add", gw6.String()+"/64", "dev", "eth0", "nodad")
	remote.Run(t, "ip", "addr", "add", remote4.String()+"/32", "dev", "lo")
	remote.Run(t, "ip", "-6", "addr", "add", remote6.String()+"/128", "dev", "lo", "nodad")

	// The proxy: outbound and inbound listeners (transparent, for TPROXY) and
	// the DNS proxy; the app; the remote TCP and DNS servers.
	l.serveTCP(t, pod, 15001, true, func(c *net.TCPConn) string { return "outbound " + originalDst(c) })
	l.serveTCP(t, pod, 15006, true, func(c *net.TCPConn) string {
		return "inbound " + originalDst(c) + " peer " + addrOf(c.RemoteAddr())
	})
	for _, port := range []int{8080, 8081} {
		l.serveTCP(t, pod, port, false, func(c *net.TCPConn) string { return "app" })
	}
	// UDP servers reply from the address they were asked on only when bound to
	// it: a DNS proxy behind REDIRECT listens on 127.0.0.1 and ::1.
	// It runs as the proxy's user, which the conntrack zone rules look for.
	l.serveUDP(t, pod, proxyUID, "127.0.0.1:15053", "dns-proxy")
	l.serveUDP(t, pod, proxyUID, "[::1]:15053", "dns-proxy")
	for _, port := range []int{80, 81} {
		l.serveTCP(t, remote, port, false, func(c *net.TCPConn) string { return "remote" })
	}
	l.serveUDP(t, remote, 0, remote4.String()+":53", "remote-dns")
	l.serveUDP(t, remote, 0, "["+remote6.String()+"]:53", "remote-dns")
	l.serveUDP(t, remote, 0, gw4.String()+":53", "gw-dns")
	l.serveUDP(t, remote, 0, "["+gw6.String()+"]:53", "gw-dns")
	return l
}

func addrOf(a net.Addr) string {
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap().String()
}

// originalDst is what the proxy recovers: SO_ORIGINAL_DST after REDIRECT,
// else (TPROXY, or no redirection) the socket's local address.
func originalDst(c *net.TCPConn) string {
	if d, err := origdst.Get(c); err == nil {
		return netip.AddrPortFrom(d.Addr().Unmap(), d.Port()).String()
	}
	ap, _ := netip.ParseAddrPort(c.LocalAddr().String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// inNS runs fn inside a namespace, failing the test on error.
func inNS(t *testing.T, ns privtest.NS, fn func() error) {
	t.Helper()
	if err := netns.Do(ns.Path, fn); err != nil {
		t.Fatal(err)
	}
}

func (l *lab) serveTCP(t *testing.T, ns privtest.NS, port int, transparent bool, reply func(*net.TCPConn) string) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if transparent {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1))
			}
		})
		return errors.Join(err, serr)
	}}
	var ln net.Listener
	inNS(t, ns, func() (err error) {
		ln, err = lc.Listen(context.Background(), "tcp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go testlab.AcceptEach(ln, func(c net.Conn) {
		io.WriteString(c, reply(c.(*net.TCPConn))+"\n")
	})
}

func (l *lab) serveUDP(t *testing.T, ns privtest.NS, uid int, addr string, name string) {
	t.Helper()
	var pc net.PacketConn
	inNS(t, ns, func() (err error) {
		prev, _ := unix.SetfsuidRetUid(uid)
		defer unix.SetfsuidRetUid(prev)
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if ns == l.remote {
				select {
				case l.remoteQueries <- string(buf[:n]):
				default:
				}
			}
			pc.WriteTo([]byte(name), from)
		}
	}()
}

// dial connects from the pod as uid (its sockets carry that owner), optionally
// from a source address, and returns the server's line ("timeout" when nothing
// answers: the packets went nowhere).
func (l *lab) dial(t *testing.T, from privtest.NS, uid int, src netip.Addr, dst netip.AddrPort) string {
	t.Helper()
	return l.dialAs(t, from, uid, 0, src, dst)
}

// dialAs is dial with a gid too; a source address is bound with IP_FREEBIND,
// so any address a local route covers will do.
func (l *lab) dialAs(t *testing.T, from privtest.NS, uid, gid int, src netip.Addr, dst netip.AddrPort) string {
	t.Helper()
	var conn net.Conn
	var dialErr error
	err := netns.Do(from.Path, func() error {
		// setfsuid/setfsgid are per thread, and the socket takes its owner from
		// the creating thread's fsuid and fsgid: no child process needed.
		prevGID, _ := unix.SetfsgidRetGid(gid)
		defer unix.SetfsgidRetGid(prevGID)
		prev, _ := unix.SetfsuidRetUid(uid)
		defer unix.SetfsuidRetUid(prev)
		d := net.Dialer{Timeout: 2 * time.Second}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1) })
				return errors.Join(err, serr)
			}
		}
		conn, dialErr = d.Dial("tcp", dst.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if dialErr != nil {
		var ne net.Error
		if errors.As(dialErr, &ne) && ne.Timeout() {
			return "timeout"
		}
		return "error: " + dialErr.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(b))
}

// query sends one UDP datagram from the pod as uid over a connected socket: a
// reply arrives only if it comes from the address queried (D1).
func (l *lab) query(t *testing.T, uid int, dst netip.AddrPort) string {
	t.Helper()
	return l.queryAs(t, l.pod, uid, dst)
}

// queryFrom sends one UDP datagram as root from another namespace.
func (l *lab) queryFrom(t *testing.T, from privtest.NS, dst netip.AddrPort) string {
	t.Helper()
	return l.queryAs(t, from, 0, dst)
}

func (l *lab) queryAs(t *testing.T, from privtest.NS, uid int, dst netip.AddrPort) string {
	t.Helper()
	var conn net.Conn
	var dialErr error
	inNS(t, from, func() error {
		prev, _ := unix.SetfsuidRetUid(uid)
		defer unix.SetfsuidRetUid(prev)
		conn, dialErr = net.Dial("udp", dst.String())
		return nil
	})
	if dialErr != nil {
		return "error: " + dialErr.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("q")); err != nil {
		return "error: " + err.Error()
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "timeout"
		}
		return "error: " + err.Error()
	}
	return string(buf[:n])
}

func TestPackets(t *testing.T) {
	t.Parallel()
	type probe struct {
		name string
		from string // "pod" or "remote"
		uid  int
		src  func(v6 bool) netip.Addr
		dst  func(v6 bool) netip.AddrPort
		udp  bool
		want func(v6 bool) string // the line the server sends
	}
	pick := func(a, b netip.Addr) func(bool) netip.Addr {
		return func(v6 bool) netip.Addr {
			if v6 {
				return b
			}
			return a
		}
	}
	to := func(a, b netip.Addr, port uint16) func(bool) netip.AddrPort {
		return func(v6 bool) netip.AddrPort { return netip.AddrPortFrom(pick(a, b)(v6), port) }
	}
	say := func(s string) func(bool) string { return func(bool) string { return s } }
	sayDst := func(prefix string, a, b netip.Addr, port uint16, suffix string) func(bool) string {
		return func(v6 bool) string { return prefix + " " + to(a, b, port)(v6).String() + suffix }
	}
	loop := pick(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"))
	podAddr := pick(pod4, pod6)
	passthrough := pick(netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6"))
	none := func(bool) netip.Addr { return netip.Addr{} }
	dnsProbes := []probe{
		{name: "D1 app query goes to the DNS proxy, reply from the address asked", from: "pod", uid: appUID, udp: true, dst: to(remote4, remote6, 53), want: say("dns-proxy")},
		{name: "D3 proxy query goes out", from: "pod", uid: proxyUID, udp: true, dst: to(remote4, remote6, 53), want: say("remote-dns")},
		{name: "D3 excluded uid query goes out", from: "pod", uid: 1001, udp: true, dst: to(remote4, remote6, 53), want: say("remote-dns")},
		{name: "D4 TCP/53 follows outbound TCP", from: "pod", uid: appUID, src: none, dst: to(remote4, remote6, 53), want: sayDst("outbound", remote4, remote6, 53, "")},
		{name: "O5 excluded uid TCP is direct", from: "pod", uid: 1001, src: none, dst: to(remote4, remote6, 80), want: say("remote")},
	}
	tests := []struct {
		name   string
		sets   []string
		facts  redirect.Facts
		probes []probe
	}{
		{name: "redirect", sets: []string{"outbound.excludePorts=81", "inbound.excludePorts=8081"}, probes: []probe{
			{name: "O1 app to remote is captured", from: "pod", uid: appUID, src: none, dst: to(remote4, remote6, 80), want: sayDst("outbound", remote4, remote6, 80, "")},
			{name: "O2 excluded port is direct", from: "pod", uid: appUID, src: none, dst: to(remote4, remote6, 81), want: say("remote")},
			{name: "O7 proxy is never captured", from: "pod", uid: proxyUID, src: none, dst: to(remote4, remote6, 80), want: say("remote")},
			{name: "O8 hairpin to inbound", from: "pod", uid: proxyUID, src: none, dst: to(pod4, pod6, 8080),
				want: func(v6 bool) string {
					return "inbound " + to(pod4, pod6, 8080)(v6).String() + " peer " + podAddr(v6).String()
				}},
			{name: "O8 passthrough is direct", from: "pod", uid: proxyUID, src: passthrough, dst: to(pod4, pod6, 8080), want: say("app")},
			{name: "O9 app to loopback is direct", from: "pod", uid: appUID, src: none, dst: func(v6 bool) netip.AddrPort { return netip.AddrPortFrom(loop(v6), 8080) }, want: say("app")},
			{name: "O9 app to its own address is direct", from: "pod", uid: appUID, src: none, dst: to(pod4, pod6, 8080), want: say("app")},
			{name: "O10 app to the outbound port stays in the proxy", from: "pod", uid: appUID, src: none, dst: to(remote4, remote6, 15001), want: sayDst("outbound", remote4, remote6, 15001, "")},
			{name: "O10 remote to the outbound port reaches the outbound listener uncaptured", from: "remote", dst: to(pod4, pod6, 15001), want: sayDst("outbound", pod4, pod6, 15001, "")},
			{name: "I1 remote to the app is captured", from: "remote", dst: to(pod4, pod6, 8080),
				want: func(v6 bool) string {
					return "inbound " + to(pod4, pod6, 8080)(v6).String() + " peer " + pick(gw4, gw6)(v6).String()
				}},
			{name: "I2 excluded inbound port is direct", from: "remote", dst: to(pod4, pod6, 8081), want: say("app")},
		}},
		{name: "dns", sets: []string{"dns.capture=all", "outbound.excludeUIDs=1001"}, probes: dnsProbes},
		{name: "dns-without-zone-split", sets: []string{"dns.capture=all", "outbound.excludeUIDs=1001", "dns.conntrackZoneSplit=false"}, probes: dnsProbes},
		{name: "dns-resolvconf", sets: []string{"dns.capture=resolvconf", "outbound.excludeUIDs=1001"}, facts: redirect.Facts{IPv6: true, Nameservers: []netip.Addr{remote4, remote6}}, probes: []probe{
			{name: "D2 listed nameserver goes to the DNS proxy", from: "pod", uid: appUID, udp: true, dst: to(remote4, remote6, 53), want: say("dns-proxy")},
			{name: "D2 other address goes out", from: "pod", uid: appUID, udp: true, dst: to(gw4, gw6, 53), want: say("gw-dns")},
		}},
		{name: "tproxy", sets: []string{"mode=tproxy"}, probes: []probe{
			{name: "L1 TPROXY keeps the client address", from: "remote", dst: to(pod4, pod6, 8080),
				want: func(v6 bool) string {
					return "inbound " + to(pod4, pod6, 8080)(v6).String() + " peer " + pick(gw4, gw6)(v6).String()
				}},
			{name: "L1 outbound stays REDIRECT", from: "pod", uid: appUID, src: none, dst: to(remote4, remote6, 80), want: sayDst("outbound", remote4, remote6, 80, "")},
			{name: "O8 hairpin in tproxy mode", from: "pod", uid: proxyUID, src: none, dst: to(pod4, pod6, 8080),
				want: func(v6 bool) string {
					return "inbound " + to(pod4, pod6, 8080)(v6).String() + " peer " + podAddr(v6).String()
				}},
			{name: "O8 passthrough is direct", from: "pod", uid: proxyUID, src: passthrough, dst: to(pod4, pod6, 8080), want: say("app")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, b redirect.Backend) {
				l := newLab(t)
				// Before install, a remote connection to the app reaches it directly.
				if got := l.dial(t, l.remote, 0, netip.Addr{}, netip.AddrPortFrom(pod4, 8080)); got != "app" {
					t.Fatalf("before install the app answered %q", got)
				}
				facts := tt.facts
				if !facts.IPv6 {
					facts = dualStack
				}
				p := mustPlan(t, withBackend(t, cfgWith(t, "", tt.sets...), b), facts)
				mustInstall(t, l.e, p)
				for _, pr := range tt.probes {
					for _, v6 := range []bool{false, true} {
						fam := "ipv4"
						if v6 {
							fam = "ipv6"
						}
						var got string
						switch {
						case pr.udp:
							got = l.query(t, pr.uid, pr.dst(v6))
						case pr.from == "remote":
							got = l.dial(t, l.remote, 0, netip.Addr{}, pr.dst(v6))
						default:
							got = l.dial(t, l.pod, pr.uid, pr.src(v6), pr.dst(v6))
						}
						if want := pr.want(v6); got != want {
							t.Errorf("%s (%s): got %q, want %q", pr.name, fam, got, want)
						}
					}
				}
				mustUninstall(t, l.e)
				if got := l.dial(t, l.pod, appUID, netip.Addr{}, netip.AddrPortFrom(remote4, 80)); got != "remote" {
					t.Errorf("after uninstall the app reached %q, want the remote directly", got)
				}
			})
		})
	}
}

// TestDNSZoneSplit reuses one UDP 4-tuple for an app's query and the proxy's
// upstream query. In a single conntrack zone the proxy's query inherits the
// app's NAT and loops back into the DNS proxy; with dns.conntrackZoneSplit it
// reaches the nameserver. The run without the split is the control that shows
// the rule is needed.
func TestDNSZoneSplit(t *testing.T) {
	t.Parallel()
	for _, split := range []bool{true, false} {
		t.Run(fmt.Sprintf("split=%v", split), func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, b redirect.Backend) {
				l := newLab(t)
				sets := []string{"dns.capture=all", fmt.Sprintf("dns.conntrackZoneSplit=%v", split)}
				mustInstall(t, l.e, mustPlan(t, withBackend(t, cfgWith(t, "", sets...), b), dualStack))
				for _, fam := range []struct{ src, dst netip.Addr }{{pod4, remote4}, {pod6, remote6}} {
					local := netip.AddrPortFrom(fam.src, 40053)
					app := l.reusedSocket(t, appUID, local)
					proxy := l.reusedSocket(t, proxyUID, local)
					dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.dst, 53))
					if _, err := app.WriteTo([]byte("from-app"), dst); err != nil {
						t.Fatal(err)
					}
					if _, err := proxy.WriteTo([]byte("from-proxy"), dst); err != nil {
						t.Fatal(err)
					}
					arrived := false
					timeout := time.After(time.Second)
				wait:
					for {
						select {
						case q := <-l.remoteQueries:
							if q == "from-proxy" {
								arrived = true
								break wait
							}
						case <-timeout:
							break wait
						}
					}
					if arrived != split {
						t.Errorf("%s: the proxy's upstream query reached the nameserver: %v, want %v", fam.dst, arrived, split)
					}
				}
			})
		})
	}
}

// reusedSocket binds a UDP socket owned by uid to local with SO_REUSEADDR, so
// two owners can share one source address and port.
func (l *lab) reusedSocket(t *testing.T, uid int, local netip.AddrPort) net.PacketConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		return errors.Join(err, serr)
	}}
	var pc net.PacketConn
	inNS(t, l.pod, func() (err error) {
		prev, _ := unix.SetfsuidRetUid(uid)
		defer unix.SetfsuidRetUid(prev)
		pc, err = lc.ListenPacket(context.Background(), "udp", local.String())
		return err
	})
	t.Cleanup(func() { pc.Close() })
	return pc
}

// Addresses of the "client" namespace that routes through the pod (the pod is
// its gateway, as a VM is for its containers).
var (
	podGw4, podGw6 = netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8:c::1")
	client4        = netip.MustParseAddr("203.0.113.2")
	client6        = netip.MustParseAddr("2001:db8:c::2")
)

// addClient adds a third namespace behind the pod: the pod forwards its traffic
// (ip_forward and IPv6 forwarding on, in the test namespaces only), and the
// remote routes the client's network back through the pod.
func (l *lab) addClient(t *testing.T) privtest.NS {
	t.Helper()
	client := privtest.NetNS(t)
	// Without duplicate address detection the link-local addresses of the new
	// link are usable at once (neighbor discovery waits for them otherwise).
	for _, ns := range []privtest.NS{l.pod, client} {
		ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0")
	}
	// Made from inside the pod with the peer placed straight into the client:
	// the root namespace never sees either end.
	l.pod.Run(t, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", client.Name)
	l.pod.Run(t, "ip", "link", "set", "eth1", "up")
	l.pod.Run(t, "ip", "addr", "add", podGw4.String()+"/24", "dev", "eth1")
	l.pod.Run(t, "ip", "-6", "addr", "add", podGw6.String()+"/64", "dev", "eth1", "nodad")
	l.pod.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	client.Run(t, "ip", "link", "set", "eth0", "up")
	client.Run(t, "ip", "addr", "add", client4.String()+"/24", "dev", "eth0")
	client.Run(t, "ip", "-6", "addr", "add", client6.String()+"/64", "dev", "eth0", "nodad")
	client.Run(t, "ip", "route", "add", "default", "via", podGw4.String())
	client.Run(t, "ip", "-6", "route", "add", "default", "via", podGw6.String())
	l.remote.Run(t, "ip", "route", "add", "203.0.113.0/24", "via", pod4.String())
	l.remote.Run(t, "ip", "-6", "route", "add", "2001:db8:c::/64", "via", pod6.String())
	// IPv6 settles asynchronously after `ip` returns (routes of new addresses,
	// the remote's link-local address under duplicate address detection);
	// forwarded packets sent before are dropped.
	settleIPv6(t, l.pod, "eth1", podGw6)
	settleIPv6(t, client, "eth0", client6)
	settleIPv6(t, l.remote, "lo", remote6)
	settleIPv6(t, l.remote, "eth0", gw6)
	return client
}

// settleIPv6 waits (at most 10 s) until addr is usable on dev: not
// tentative, with its local route.
func settleIPv6(t *testing.T, ns privtest.NS, dev string, addr netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		local := ns.Run(t, "ip", "-6", "route", "show", "table", "local", "dev", dev)
		addrs := ns.Run(t, "ip", "-6", "addr", "show", "dev", dev)
		if strings.Contains(local, "local "+addr.String()+" ") && !strings.Contains(addrs, "tentative") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 address %s on %s not settled:\n%s\n%s", addr, dev, addrs, local)
		}
		<-tick.C
	}
}

// TestForwardedNotCaptured is a host that forwards traffic for others (a VM
// running containers, a Kubernetes node): connections it forwards are not its
// own inbound traffic and must reach their destination untouched, in both
// modes, while connections to the host's own addresses are still captured.
func TestForwardedNotCaptured(t *testing.T) {
	t.Parallel()
	for _, mode := range []redirect.Mode{redirect.ModeRedirect, redirect.ModeTProxy} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, b redirect.Backend) {
				l := newLab(t)
				client := l.addClient(t)
				for _, dst := range []netip.Addr{remote4, remote6} {
					if got := l.dial(t, client, 0, netip.Addr{}, netip.AddrPortFrom(dst, 80)); got != "remote" {
						t.Fatalf("before install the client reached %q at %s, want the remote", got, dst)
					}
				}
				p := mustPlan(t, withBackend(t, cfgWith(t, "", "mode="+string(mode), "dropInvalidPackets=true"), b), dualStack)
				mustInstall(t, l.e, p)
				for _, fam := range []struct {
					name                    string
					client, pod, gw, remote netip.Addr
				}{
					{"ipv4", client4, pod4, podGw4, remote4},
					{"ipv6", client6, pod6, podGw6, remote6},
				} {
					if got, want := l.dial(t, client, 0, netip.Addr{}, netip.AddrPortFrom(fam.remote, 80)), "remote"; got != want {
						t.Errorf("%s: a forwarded connection to the remote: got %q, want %q (untouched)", fam.name, got, want)
					}
					for _, dst := range []netip.Addr{fam.pod, fam.gw} {
						want := "inbound " + netip.AddrPortFrom(dst, 8080).String() + " peer " + fam.client.String()
						if got := l.dial(t, client, 0, netip.Addr{}, netip.AddrPortFrom(dst, 8080)); got != want {
							t.Errorf("%s: the client to the pod's address %s: got %q, want %q", fam.name, dst, got, want)
						}
					}
				}
				mustUninstall(t, l.e)
			})
		})
	}
}

// TestDecisionMatchesPackets checks Config.CapturesOutbound and
// CapturesInbound against what real connections do: random configurations
// (ports, CIDRs, owners, per-uid ports, families of lists, both modes) are
// installed one after another, and for random destinations, sources, ports and
// owners the function's answer must be what the connection does. The seed is
// logged; DETOUR_DECISION_SEED=<seed> replays it.
func TestDecisionMatchesPackets(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("DETOUR_DECISION_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("DETOUR_DECISION_SEED=%d", seed)
	forEachBackend(t, func(t *testing.T, b redirect.Backend) {
		rnd := rand.New(rand.NewPCG(seed, uint64(len(b))))
		l := newLab(t)
		// The remote owns all of 198.51.100.0/24 and 2001:db8:ff::/48 and serves
		// every probe port; the pod's app serves them too.
		l.remote.Run(t, "ip", "route", "add", "local", "198.51.100.0/24", "dev", "lo")
		l.remote.Run(t, "ip", "-6", "route", "add", "local", "2001:db8:ff::/48", "dev", "lo")
		for _, port := range decisionPorts {
			if port != 80 && port != 81 {
				l.serveTCP(t, l.remote, int(port), false, func(*net.TCPConn) string { return "remote" })
			}
			if port != 8080 && port != 8081 && port != 15001 {
				l.serveTCP(t, l.pod, int(port), false, func(*net.TCPConn) string { return "app" })
			}
		}
		const configs, probes = 6, 30
		seen := map[string]int{} // outcomes, so a run that never saw both is noticed
		for i := range configs {
			cfg := randomConfig(t, rnd, b)
			p := mustPlan(t, cfg, dualStack)
			mustInstall(t, l.e, p)
			desc := fmt.Sprintf("config %d (mode %s; outbound %+v; inbound %+v; proxy gid %v)", i, cfg.Mode, cfg.Outbound, cfg.Inbound, cfg.Proxy.GID)
			for range probes {
				dst := xPick(rnd, decisionDsts)
				port := xPick(rnd, decisionPorts)
				o := xPick(rnd, decisionOwners)
				got := l.dialAs(t, l.pod, int(o[0]), int(o[1]), netip.Addr{}, netip.AddrPortFrom(dst, port))
				want := cfg.CapturesOutbound(dst, port, o[0], o[1])
				seen[fmt.Sprintf("outbound %v", want)]++
				if strings.HasPrefix(got, "outbound ") != want || (!want && got != "remote") {
					t.Errorf("%s: app uid %d gid %d to %s: got %q, CapturesOutbound says %v", desc, o[0], o[1], netip.AddrPortFrom(dst, port), got, want)
				}
			}
			for range probes {
				src := xPick(rnd, decisionSrcs)
				port := xPick(rnd, decisionPorts)
				to := netip.AddrPortFrom(pod4, port)
				if src.Is6() {
					to = netip.AddrPortFrom(pod6, port)
				}
				got := l.dialAs(t, l.remote, 0, 0, src, to)
				want := cfg.CapturesInbound(src, port)
				seen[fmt.Sprintf("inbound %v", want)]++
				if strings.HasPrefix(got, "inbound ") != want || got == "timeout" || strings.HasPrefix(got, "error") {
					t.Errorf("%s: remote %s to %s: got %q, CapturesInbound says %v", desc, src, to, got, want)
				}
			}
		}
		t.Logf("outcomes: %v", seen)
		for _, k := range []string{"outbound true", "outbound false", "inbound true", "inbound false"} {
			if seen[k] == 0 {
				t.Errorf("no probe was expected to be %q: the random configurations did not test both outcomes (%v)", k, seen)
			}
		}
		mustUninstall(t, l.e)
	})
}

var (
	decisionPorts = []uint16{80, 81, 443, 8080, 8081, 9000, 9001, 15001}
	// Destinations the remote owns, in the subnets randomConfig draws from.
	decisionDsts = []netip.Addr{
		netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.200"),
		netip.MustParseAddr("2001:db8:ff::1"), netip.MustParseAddr("2001:db8:ff:1::7"), netip.MustParseAddr("2001:db8:ff:2::9"),
	}
	// Sources of inbound connections: the remote's link addresses and addresses
	// of its local ranges.
	decisionSrcs = []netip.Addr{
		gw4, netip.MustParseAddr("198.51.100.9"), netip.MustParseAddr("198.51.100.130"),
		gw6, netip.MustParseAddr("2001:db8:ff::9"), netip.MustParseAddr("2001:db8:ff:1::9"),
	}
	// Owners (uid, gid) of the app's connections; randomConfig excludes some.
	decisionOwners = [][2]uint32{{appUID, appUID}, {1001, appUID}, {1002, 2001}, {proxyUID, appUID}, {appUID, 2002}, {1003, 1003}}
	decisionCIDRs  = []string{"198.51.100.0/25", "198.51.100.128/25", "198.51.100.7/32", "198.51.100.0/24",
		"2001:db8:ff::/64", "2001:db8:ff:1::/64", "2001:db8:ff::/48", "2001:db8:ff:2::9/128"}
	decisionSrcCIDRs = []string{"198.51.100.0/25", "198.51.100.128/25", "192.0.2.1/32", "2001:db8:ff::/64", "2001:db8::1/128", "2001:db8:ff::/48"}
)

// randomConfig draws a configuration over the probe ports, the remote's
// subnets and the probe owners.
func randomConfig(t *testing.T, rnd *rand.Rand, b redirect.Backend) redirect.Config {
	t.Helper()
	ports := []string{"80", "81", "443", "8080", "8081", "9000-9001", "15001"}
	sets := []string{
		"mode=" + xPick(rnd, []string{"redirect", "tproxy"}),
		"outbound.includePorts=" + xSome(rnd, 0.3, ports),
		"outbound.excludePorts=" + xSome(rnd, 0.5, ports),
		"outbound.includeCIDRs=" + xSome(rnd, 0.3, decisionCIDRs),
		"outbound.excludeCIDRs=" + xSome(rnd, 0.5, decisionCIDRs),
		"outbound.excludeUIDs=" + xSome(rnd, 0.5, []string{"1001", "1002-1003"}),
		"outbound.excludeGIDs=" + xSome(rnd, 0.3, []string{"2001", "1003"}),
		"inbound.includePorts=" + xSome(rnd, 0.3, ports),
		"inbound.excludePorts=" + xSome(rnd, 0.5, ports),
		"inbound.excludeSourceCIDRs=" + xSome(rnd, 0.5, decisionSrcCIDRs),
	}
	if rnd.IntN(3) == 0 {
		sets = append(sets, "outbound.excludePortsForUIDs="+xPick(rnd, []string{"tcp:80,9000-9001:1000", "tcp:443:1000-1001,udp:80:1000", "udp:443:1000"}))
	}
	if rnd.IntN(3) == 0 {
		sets = append(sets, "proxy.gid=2002")
	}
	if rnd.IntN(8) == 0 {
		sets = append(sets, "outbound.enabled=false")
	} else if rnd.IntN(8) == 0 {
		sets = append(sets, "inbound.enabled=false")
	}
	return withBackend(t, cfgWith(t, "", sets...), b)
}

// TestForwardedDNSUntouched: the host masquerades the DNS queries of a client
// it routes (containers on a VM), with DNS capture and the conntrack zone
// split on. The client's queries and their replies are not the workload's:
// they must come back through the host's NAT as before.
func TestForwardedDNSUntouched(t *testing.T) {
	t.Parallel()
	for _, capture := range []string{"all", "resolvconf"} {
		t.Run(capture, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, b redirect.Backend) {
				l := newLab(t)
				client := l.addClient(t)
				l.pod.Run(t, cliName(b, redirect.IPv4), "-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.0/24", "-o", "eth0", "-j", "MASQUERADE")
				l.pod.Run(t, cliName(b, redirect.IPv6), "-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8:c::/64", "-o", "eth0", "-j", "MASQUERADE")
				facts := redirect.Facts{IPv6: true, Nameservers: []netip.Addr{remote4, remote6}}
				mustInstall(t, l.e, mustPlan(t, withBackend(t, cfgWith(t, "", "dns.capture="+capture), b), facts))
				for _, ns := range []netip.Addr{remote4, remote6} {
					if got := l.queryFrom(t, client, netip.AddrPortFrom(ns, 53)); got != "remote-dns" {
						t.Errorf("the client's query to %s through the host's NAT: got %q, want the remote nameserver's answer", ns, got)
					}
					// The workload's own query is still captured.
					if got := l.query(t, appUID, netip.AddrPortFrom(ns, 53)); got != "dns-proxy" {
						t.Errorf("the workload's query to %s: got %q, want the DNS proxy", ns, got)
					}
				}
			})
		})
	}
}
