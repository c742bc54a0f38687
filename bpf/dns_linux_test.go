package bpf

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// TestDNSRepliesComeFromTheAskedServer: queries to UDP/53 go to the DNS
// proxy, and the app sees the reply from the address it asked, on connected
// and unconnected sockets, IPv4, IPv6 and v4-mapped.
func TestDNSRepliesComeFromTheAskedServer(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if _, err := ld.Apply(scope, testCapture(t, func(c *redirect.Config) {
		c.DNS.Capture = redirect.DNSCaptureAll
	})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	// The DNS proxy answers "proxy:" + the query.
	for _, addr := range []string{"127.0.0.1:15053", "[::1]:15053"} {
		udpPrefixer(t, l.ns, addr, "proxy:")
	}
	for _, server := range []string{"192.0.2.53:53", "[2001:db8::53]:53", "[::ffff:192.0.2.54]:53"} {
		ap := netip.MustParseAddrPort(server)
		t.Run("unconnected "+server, func(t *testing.T) {
			inNS(t, l.ns, func() error {
				// "udp" on [::] is a dual-stack socket ("udp6" would be
				// IPV6_V6ONLY and refuse a v4-mapped destination).
				network, laddr := "udp", &net.UDPAddr{IP: net.IPv6unspecified}
				if ap.Addr().Is4() {
					network, laddr = "udp4", nil
				}
				pc, err := net.ListenUDP(network, laddr)
				if err != nil {
					return err
				}
				defer pc.Close()
				if _, err := pc.WriteToUDPAddrPort([]byte("q1"), ap); err != nil {
					return err
				}
				pc.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 512)
				n, from, err := pc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return err
				}
				if string(buf[:n]) != "proxy:q1" {
					t.Errorf("reply = %q, want the DNS proxy's", buf[:n])
				}
				if from != ap {
					t.Errorf("reply from %s, want %s (the server the app asked)", from, ap)
				}
				return nil
			})
		})
		if ap.Addr().Is4In6() {
			continue // the net package will not connect a v4-mapped UDP socket
		}
		t.Run("connected "+server, func(t *testing.T) {
			inNS(t, l.ns, func() error {
				c, err := net.Dial("udp", server)
				if err != nil {
					return err
				}
				defer c.Close()
				if got := c.RemoteAddr().String(); got != ap.String() {
					t.Errorf("getpeername = %s, want %s", got, ap)
				}
				c.Write([]byte("q2"))
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 512)
				n, err := c.Read(buf)
				if err != nil {
					return err
				}
				if string(buf[:n]) != "proxy:q2" {
					t.Errorf("reply = %q, want the DNS proxy's", buf[:n])
				}
				return nil
			})
		})
	}
	// Only the DNS proxy's replies appear to come from the server asked: a
	// socket that sent a redirected query and then talks to a local service
	// on another loopback port sees that service's datagrams from the
	// service. Before, they too appeared to come from the DNS server.
	for _, local := range []string{"127.0.0.1:9999", "[::1]:9999"} {
		udpPrefixer(t, l.ns, local, "local:")
	}
	for server, local := range map[string]string{"192.0.2.53:53": "127.0.0.1:9999", "[2001:db8::53]:53": "[::1]:9999"} {
		ap, lp := netip.MustParseAddrPort(server), netip.MustParseAddrPort(local)
		t.Run("local service after a query to "+server, func(t *testing.T) {
			inNS(t, l.ns, func() error {
				network := "udp4"
				if ap.Addr().Is6() {
					network = "udp6"
				}
				pc, err := net.ListenUDP(network, nil)
				if err != nil {
					return err
				}
				defer pc.Close()
				buf := make([]byte, 512)
				for _, q := range []struct {
					to    netip.AddrPort
					reply string
				}{{ap, "proxy:q3"}, {lp, "local:q3"}} {
					if _, err := pc.WriteToUDPAddrPort([]byte("q3"), q.to); err != nil {
						return err
					}
					pc.SetReadDeadline(time.Now().Add(2 * time.Second))
					n, from, err := pc.ReadFromUDPAddrPort(buf)
					if err != nil {
						return err
					}
					if string(buf[:n]) != q.reply || from != q.to {
						t.Errorf("sent to %s: reply %q from %s, want %q from %s", q.to, buf[:n], from, q.reply, q.to)
					}
				}
				return nil
			})
		})
	}
}

// udpPrefixer answers every datagram to addr in the namespace ns with prefix
// and the datagram, until the test ends.
func udpPrefixer(t *testing.T, ns privtest.NS, addr, prefix string) {
	t.Helper()
	var pc net.PacketConn
	inNS(t, ns, func() (err error) { pc, err = net.ListenPacket("udp", addr); return err })
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(prefix), buf[:n]...), from)
		}
	}()
}
