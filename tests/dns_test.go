//go:build linux

package tests

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
)

// queryFrom returns query options from the workload (alternately root and a random
// user) to addr:53.
func (p *pod) appQuery(i int, addr netip.Addr) lab.QueryOptions {
	o := lab.QueryOptions{To: netip.AddrPortFrom(addr, 53)}
	if i%2 == 1 {
		o.Cred = p.appCred()
	}
	return o
}

// TestDNS covers SCENARIOS.md "DNS", D1–D4.
func TestDNS(t *testing.T) {
	t.Parallel()

	t.Run("D1", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.startDNS()
			other := p.rnd.Port()
			if _, err := p.lab.Remote.ServeDNS(dnsRemote, netip.AddrPortFrom(v.family.Unspecified(), other), nil); err != nil {
				t.Fatal(err)
			}
			p.install("--dns-capture", "all")
			for i := range cases() {
				p.query("D1 UDP/53 to any address", p.appQuery(i, p.remoteAddr()), dnsProxy)
				p.query("D1 UDP to another port", lab.QueryOptions{To: netip.AddrPortFrom(p.remoteAddr(), other)}, dnsRemote)
			}
		})
	})

	t.Run("D2", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.startDNS()
			loopNS := netip.MustParseAddr("127.0.0.53")
			if _, err := p.lab.Pod.ServeDNS(dnsLocal, netip.AddrPortFrom(loopNS, 53), nil); err != nil {
				t.Fatal(err)
			}
			ns := map[lab.Family][]netip.Addr{
				lab.IPv4: {p.rnd.RemoteAddr(lab.IPv4), p.rnd.RemoteAddr(lab.IPv4), loopNS},
				lab.IPv6: {p.rnd.RemoteAddr(lab.IPv6), p.rnd.RemoteAddr(lab.IPv6)},
			}
			conf := "# written by the detour e2e test\nsearch svc.detour.test detour.test\n" +
				"nameserver " + ns[lab.IPv4][0].String() + "\n" +
				"nameserver " + ns[lab.IPv6][0].String() + "\n" +
				"options ndots:5 timeout:1\n" +
				"nameserver " + ns[lab.IPv4][1].String() + "\n" +
				"nameserver " + ns[lab.IPv6][1].String() + "\n" +
				"nameserver " + loopNS.String() + "\n"
			file := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			p.install("--dns-capture", "resolvconf", "--dns-resolv-conf", file)
			listed := ns[v.family]
			for i := range cases() {
				p.query("D2 listed nameserver", p.appQuery(i, listed[i%len(listed)]), dnsProxy)
				other := p.remoteAddr()
				for isIn(other, listed) {
					other = p.remoteAddr()
				}
				p.query("D2 other address:53", p.appQuery(i, other), dnsRemote)
			}
		})
	})

	t.Run("D3", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.startDNS()
			excluded := p.rnd.Uint32(2000, 59000)
			p.install("--dns-capture", "all", "--exclude-outbound-uids", csv(excluded))
			for i := range cases() {
				addr := p.remoteAddr()
				p.query("D3 the proxy's own query", lab.QueryOptions{To: netip.AddrPortFrom(addr, 53), Cred: p.proxyCred()}, dnsRemote)
				p.query("D3 an excluded uid's query", lab.QueryOptions{To: netip.AddrPortFrom(addr, 53), Cred: &lab.Cred{UID: excluded, GID: p.appCred().GID}}, dnsRemote)
				p.query("D3 the workload's query", p.appQuery(i, addr), dnsProxy)
			}
		})
	})

	// D5: "nameserver 0.0.0.0" (or "::") in the resolv.conf means the local
	// host: the kernel sends a datagram to the unspecified address to
	// loopback (127.0.0.1, ::1), so a rule matching 0.0.0.0 never sees it.
	t.Run("D5", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.startDNS()
			if _, err := p.lab.Pod.ServeDNS(dnsLocal, netip.AddrPortFrom(v.family.Loopback(), 53), nil); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(file, []byte("nameserver "+v.family.Unspecified().String()+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			p.install("--dns-capture", "resolvconf", "--dns-resolv-conf", file)
			for i := range cases() {
				o := p.appQuery(i, v.family.Unspecified())
				got, err := p.lab.Pod.QueryDNS(p.ctx, o)
				if err != nil || got.Server != dnsProxy {
					t.Errorf("D5 nameserver %s: %s: answered by %s (%v), want %s (%s)", v.family.Unspecified(), o, got.Server, err, dnsProxy, got)
				}
				p.explainConn("D5 nameserver "+v.family.Unspecified().String(), false, "udp", o.To, o.From, o.Cred, dnsProxy)
			}
		})
	})

	// D4: TCP/53 is ordinary outbound TCP: with DNS capture on, the workload's TCP/53
	// goes to the outbound port like any other TCP (the proxy's DNS port is UDP only),
	// and an excluded port 53 is left alone.
	t.Run("D4", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			for _, capture := range []string{"all", "resolvconf"} {
				t.Run(capture, func(t *testing.T) {
					p := newPod(t, v)
					p.startProxies()
					p.startDNS()
					p.remoteOn(53)
					server := p.remoteAddr()
					args := []string{"--dns-capture", capture}
					if capture == "resolvconf" {
						file := filepath.Join(t.TempDir(), "resolv.conf")
						if err := os.WriteFile(file, []byte("nameserver "+server.String()+"\n"), 0o644); err != nil {
							t.Fatal(err)
						}
						args = append(args, "--dns-resolv-conf", file)
					}
					p.install(args...)
					for i := range cases() {
						p.outbound("D4 TCP/53 to the nameserver", p.app(i, netip.AddrPortFrom(server, 53)), srvOutbound)
						p.outbound("D4 TCP/53 to another address", p.app(i, netip.AddrPortFrom(p.remoteAddr(), 53)), srvOutbound)
						p.query("D4 UDP/53 to the nameserver", p.appQuery(i, server), dnsProxy)
					}
				})
			}
			t.Run("excluded-port", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				p.startDNS()
				p.remoteOn(53)
				p.install("--dns-capture", "all", "--exclude-outbound-ports", "53")
				for i := range cases() {
					addr := p.remoteAddr()
					p.outbound("D4 TCP/53 with port 53 excluded", p.app(i, netip.AddrPortFrom(addr, 53)), srvRemote)
				}
			})
		})
	})
}

func isIn(a netip.Addr, list []netip.Addr) bool {
	for _, b := range list {
		if a == b {
			return true
		}
	}
	return strings.HasPrefix(a.String(), "127.")
}
