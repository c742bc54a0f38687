package origdst_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestGetAfterRedirect dials TEST-NET addresses inside a fresh namespace whose
// nat OUTPUT redirects everything to a local listener, and checks that the
// listener reads back the dialed address (Get, and FromFD on its descriptor):
// IPv4 and IPv6 listeners, and IPv4 through a dual-stack listener.
func TestGetAfterRedirect(t *testing.T) {
	ns := privtest.NetNS(t)
	privtest.Require(t, "iptables-nft", "ip6tables-nft")
	ns.Run(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "lo")
	ns.Run(t, "ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "lo", "nodad")
	ns.Run(t, "ip", "route", "add", "192.0.2.0/24", "dev", "lo")
	ns.Run(t, "ip", "-6", "route", "add", "2001:db8:ffff::/48", "dev", "lo")

	tests := []struct {
		name, listen, redirectCmd, dial string
	}{
		{"ipv4", "127.0.0.1:0", "iptables-nft", "192.0.2.7:8080"},
		{"ipv6", "[::1]:0", "ip6tables-nft", "[2001:db8:ffff::7]:9090"},
		{"ipv4 on dual-stack listener", "[::]:0", "iptables-nft", "192.0.2.9:7070"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ln net.Listener
			if err := netns.Do(ns.Path, func() (err error) {
				ln, err = net.Listen("tcp", tt.listen)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			ns.Run(t, tt.redirectCmd, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", fmt.Sprint(port))
			defer ns.Run(t, tt.redirectCmd, "-t", "nat", "-F", "OUTPUT")

			got := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- err.Error()
					return
				}
				defer c.Close()
				dst, err := origdst.Get(c.(*net.TCPConn))
				if err != nil {
					got <- err.Error()
					return
				}
				// FromFD, on the same socket's descriptor, must agree.
				raw, err := c.(*net.TCPConn).SyscallConn()
				if err != nil {
					got <- err.Error()
					return
				}
				var fromFD netip.AddrPort
				raw.Control(func(fd uintptr) {
					fromFD, err = origdst.FromFD(int(fd), strings.HasPrefix(tt.listen, "["))
				})
				if err != nil {
					got <- "FromFD: " + err.Error()
					return
				}
				if fromFD != dst {
					got <- fmt.Sprintf("FromFD %s, Get %s", fromFD, dst)
					return
				}
				got <- dst.String()
			}()
			if err := netns.Do(ns.Path, func() error {
				c, err := net.Dial("tcp", tt.dial)
				if err == nil {
					c.Close()
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			want := netip.MustParseAddrPort(tt.dial).String()
			if g := <-got; g != want {
				t.Errorf("original destination = %s, want %s", g, want)
			}
		})
	}
}
