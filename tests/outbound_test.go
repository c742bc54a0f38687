//go:build linux

package tests

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
)

// app returns dial options from the workload: alternately as root and as a random
// unprivileged user, neither of them excluded.
func (p *pod) app(i int, to netip.AddrPort) lab.DialOptions {
	o := lab.DialOptions{To: to}
	if i%2 == 1 {
		o.Cred = p.appCred()
	}
	return o
}

// TestOutbound covers SCENARIOS.md "Outbound (app → anywhere)", O1–O10.
func TestOutbound(t *testing.T) {
	t.Parallel()

	t.Run("O1", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install()
			for i := range cases() {
				p.outbound("O1 any address:port", p.app(i, p.remoteDest()), srvOutbound)
			}
			// The remote's own link address is no different.
			p.outbound("O1 the remote's link address", p.app(1, netip.AddrPortFrom(lab.RemoteLinkAddr(v.family), p.remotePort())), srvOutbound)
			if v.family == lab.IPv4 {
				// A dual-stack app's IPv6 socket dialing an IPv4 address
				// (::ffff:a.b.c.d) is IPv4 traffic and captured the same.
				for i := range cases() {
					o := p.app(i, p.remoteDest())
					o.Mapped = true
					p.outbound("O1 from a v4-mapped IPv6 socket", o, srvOutbound)
				}
			}
		})
	})

	t.Run("O2", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			ex1, ex2 := p.remotePort(), p.remotePort()
			rg := portRange(p.rnd, 3)
			for port := rg[0]; port <= rg[1]; port++ {
				p.remoteOn(port)
			}
			p.install("--exclude-outbound-ports", csv(ex1, ex2, rangeFlag(rg)))
			for i := range cases() {
				excluded := []uint16{ex1, ex2, inRange(p.rnd, rg)}[i%3]
				p.outbound("O2 excluded port", p.app(i, netip.AddrPortFrom(p.remoteAddr(), excluded)), srvRemote)
				p.outbound("O2 other port", p.app(i, p.remoteDest()), srvOutbound)
			}
			if v.family == lab.IPv4 {
				o := p.app(0, netip.AddrPortFrom(p.remoteAddr(), ex1))
				o.Mapped = true
				p.outbound("O2 excluded port from a v4-mapped IPv6 socket", o, srvRemote)
			}
		})
	})

	t.Run("O3", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			// One mixed list: a subnet and a host of each family.
			ex := []netip.Prefix{
				subnet(p.rnd, lab.IPv4, 26), subnet(p.rnd, lab.IPv4, 32),
				subnet(p.rnd, lab.IPv6, 64), subnet(p.rnd, lab.IPv6, 128),
			}
			p.install("--exclude-outbound-cidrs", csv(ex[0], ex[2], ex[1], ex[3]))
			mine := ex[:2]
			if v.family == lab.IPv6 {
				mine = ex[2:]
			}
			port := p.remotePort()
			for i := range cases() {
				in := mine[0]
				if i%3 == 2 {
					in = mine[1]
				}
				p.outbound("O3 excluded CIDR "+in.String(), p.app(i, netip.AddrPortFrom(p.rnd.In(in), port)), srvRemote)
				p.outbound("O3 other address", p.app(i, netip.AddrPortFrom(addrOutside(p.rnd, v.family, mine...), port)), srvOutbound)
			}
			if v.family == lab.IPv4 {
				o := p.app(0, netip.AddrPortFrom(p.rnd.In(mine[0]), port))
				o.Mapped = true
				p.outbound("O3 excluded CIDR from a v4-mapped IPv6 socket", o, srvRemote)
			}
		})
	})

	t.Run("O4", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			t.Run("include-cidrs", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				in4, in6 := subnet(p.rnd, lab.IPv4, 25), subnet(p.rnd, lab.IPv6, 56)
				p.install("--include-outbound-cidrs", csv(in4, in6))
				in := in4
				if v.family == lab.IPv6 {
					in = in6
				}
				for i := range cases() {
					p.outbound("O4 included CIDR", p.app(i, netip.AddrPortFrom(p.rnd.In(in), p.remotePort())), srvOutbound)
					p.outbound("O4 not included", p.app(i, netip.AddrPortFrom(addrOutside(p.rnd, v.family, in), p.remotePort())), srvRemote)
				}
			})
			t.Run("include-ports", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				in1 := p.remotePort()
				rg := portRange(p.rnd, 4)
				for port := rg[0]; port <= rg[1]; port++ {
					p.remoteOn(port)
				}
				p.install("--include-outbound-ports", csv(in1, rangeFlag(rg)))
				for i := range cases() {
					included := in1
					if i%2 == 1 {
						included = inRange(p.rnd, rg)
					}
					p.outbound("O4 included port", p.app(i, netip.AddrPortFrom(p.remoteAddr(), included)), srvOutbound)
					p.outbound("O4 not included port", p.app(i, p.remoteDest()), srvRemote)
				}
			})
			t.Run("include-beats-exclude", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				both, only := p.remotePort(), p.remotePort()
				in4, in6 := subnet(p.rnd, lab.IPv4, 25), subnet(p.rnd, lab.IPv6, 56)
				ex4 := netip.PrefixFrom(p.rnd.In(in4), 28).Masked()
				ex6 := netip.PrefixFrom(p.rnd.In(in6), 64).Masked()
				p.install(
					"--include-outbound-cidrs", csv(in4, in6), "--exclude-outbound-cidrs", csv(ex4, ex6),
					"--include-outbound-ports", csv(both, only), "--exclude-outbound-ports", csv(both))
				in, ex := in4, ex4
				if v.family == lab.IPv6 {
					in, ex = in6, ex6
				}
				for i := range cases() {
					p.outbound("O4 port and CIDR both included and excluded", p.app(i, netip.AddrPortFrom(p.rnd.In(ex), both)), srvOutbound)
					p.outbound("O4 excluded CIDR inside an included one", p.app(i, netip.AddrPortFrom(p.rnd.In(ex), only)), srvOutbound)
					p.outbound("O4 included CIDR, excluded port also included", p.app(i, netip.AddrPortFrom(p.rnd.In(in), both)), srvOutbound)
					p.outbound("O4 included CIDR, port not included", p.app(i, netip.AddrPortFrom(p.rnd.In(in), p.remotePort())), srvRemote)
					p.outbound("O4 CIDR not included", p.app(i, netip.AddrPortFrom(addrOutside(p.rnd, v.family, in), both)), srvRemote)
				}
			})
		})
	})

	t.Run("O5", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			t.Run("uids-gids", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				uid1, uid2 := p.rnd.Uint32(2000, 29000), p.rnd.Uint32(30000, 59000)
				gid1 := p.rnd.Uint32(2000, 59000)
				p.install("--exclude-outbound-uids", csv(uid1, strconv.Itoa(int(uid2))+"-"+strconv.Itoa(int(uid2+2))),
					"--exclude-outbound-gids", csv(gid1))
				for i := range cases() {
					to := p.remoteDest()
					app := p.appCred()
					p.outbound("O5 excluded uid", lab.DialOptions{To: to, Cred: &lab.Cred{UID: uid1, GID: app.GID}}, srvRemote)
					p.outbound("O5 excluded uid range", lab.DialOptions{To: to, Cred: &lab.Cred{UID: uid2 + uint32(i%3), GID: app.GID}}, srvRemote)
					p.outbound("O5 excluded gid", lab.DialOptions{To: to, Cred: &lab.Cred{UID: app.UID, GID: gid1}}, srvRemote)
					p.outbound("O5 other user", lab.DialOptions{To: to, Cred: app}, srvOutbound)
					p.outbound("O5 next to the uid range", lab.DialOptions{To: to, Cred: &lab.Cred{UID: uid2 + 3, GID: app.GID}}, srvOutbound)
				}
			})
			t.Run("ports-for-uids", func(t *testing.T) {
				p := newPod(t, v)
				p.startProxies()
				port1 := p.remotePort()
				rg := portRange(p.rnd, 3)
				for port := rg[0]; port <= rg[1]; port++ {
					p.remoteOn(port)
				}
				udpPort := p.remotePort()
				uidLo := p.rnd.Uint32(2000, 59000)
				uidHi := uidLo + 2
				p.install("--exclude-outbound-ports-for-uids",
					"tcp:"+csv(port1, rangeFlag(rg))+":"+strconv.Itoa(int(uidLo))+"-"+strconv.Itoa(int(uidHi))+
						",udp:"+strconv.Itoa(int(udpPort))+":"+strconv.Itoa(int(uidLo)))
				for i := range cases() {
					user := &lab.Cred{UID: uidLo + uint32(i%3), GID: p.appCred().GID}
					other := p.appCred()
					excluded := []uint16{port1, inRange(p.rnd, rg)}[i%2]
					addr := p.remoteAddr()
					p.outbound("O5 listed uid, listed TCP port", lab.DialOptions{To: netip.AddrPortFrom(addr, excluded), Cred: user}, srvRemote)
					p.outbound("O5 listed uid, other port", lab.DialOptions{To: p.remoteDest(), Cred: user}, srvOutbound)
					p.outbound("O5 other uid, listed TCP port", lab.DialOptions{To: netip.AddrPortFrom(addr, excluded), Cred: other}, srvOutbound)
					p.outbound("O5 listed uid, TCP to a port listed for UDP only", lab.DialOptions{To: netip.AddrPortFrom(addr, udpPort), Cred: &lab.Cred{UID: uidLo, GID: user.GID}}, srvOutbound)
				}
			})
		})
	})

	t.Run("O6", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install("--outbound=false")
			for i := range cases() {
				p.outbound("O6 outbound disabled", p.app(i, p.remoteDest()), srvRemote)
			}
			// detour is installed and working: inbound is still captured.
			port := p.appPort(netip.Addr{})
			p.inbound("O6 inbound still captured", lab.DialOptions{To: netip.AddrPortFrom(p.podAddr(), port), From: p.remoteAddr()}, srvInbound)
		})
	})

	t.Run("O7", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			gid := p.rnd.Uint32(2000, 59000)
			p.install("--proxy-gid", strconv.Itoa(int(gid)))
			for i := range cases() {
				to := p.remoteDest()
				p.outbound("O7 the proxy's uid", lab.DialOptions{To: to, Cred: p.proxyCred()}, srvRemote)
				p.outbound("O7 the proxy's gid", lab.DialOptions{To: to, Cred: &lab.Cred{UID: p.appCred().UID, GID: gid}}, srvRemote)
				p.outbound("O7 the workload", p.app(i, to), srvOutbound)
			}
		})
	})

	t.Run("O8", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install()
			p.run("hairpin", func(p *pod) {
				for range cases() {
					to := netip.AddrPortFrom(p.podAddr(), p.appPort(netip.Addr{}))
					p.outbound("O8 the proxy dialing the pod's own address (hairpin)", lab.DialOptions{To: to, Cred: p.proxyCred()}, srvInbound)
				}
			})
			p.run("passthrough", func(p *pod) {
				for range cases() {
					to := netip.AddrPortFrom(p.podAddr(), p.appPort(netip.Addr{}))
					p.outbound("O8 the proxy's passthrough from "+p.passthroughSource().String(),
						lab.DialOptions{To: to, From: p.passthroughSource(), Cred: p.proxyCred()}, srvApp)
				}
			})
		})
	})

	t.Run("O9", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install()
			p.run("loopback", func(p *pod) {
				for i := range cases() {
					lo := netip.AddrPortFrom(v.family.Loopback(), p.appPort(v.family.Loopback()))
					p.outbound("O9 app to loopback", p.app(i, lo), srvApp)
				}
			})
			p.run("own-address", func(p *pod) {
				for i := range cases() {
					own := netip.AddrPortFrom(p.podAddr(), p.appPort(netip.Addr{}))
					p.outbound("O9 app to its own pod address", p.app(i, own), srvApp)
				}
			})
			p.outbound("O9 capture is on", p.app(0, p.remoteDest()), srvOutbound)
		})
	})

	t.Run("O10", func(t *testing.T) {
		matrix(t, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.remoteOn(p.outPort)
			p.install()
			for i := range cases() {
				to := netip.AddrPortFrom(p.remoteAddr(), p.outPort)
				// Redirected once, with the remote destination: the proxy sees where the
				// app wanted to go, not itself.
				p.outbound("O10 app to a remote address on the outbound port", p.app(i, to), srvOutbound)
				// The proxy forwarding to that original destination reaches it.
				p.outbound("O10 the proxy forwards to the original destination", lab.DialOptions{To: to, Cred: p.proxyCred()}, srvRemote)
			}
			// Dialing the outbound port directly reaches the listener untouched.
			direct := func(p *pod, a netip.Addr) {
				to := netip.AddrPortFrom(a, p.outPort)
				got, err := p.lab.Pod.Dial(p.ctx, p.app(1, to))
				if err != nil {
					p.t.Errorf("O10 direct connection to %s: %v", to, err)
					return
				}
				if got.Server != srvOutbound || got.Redirected() || got.Local != to {
					p.t.Errorf("O10 direct connection to %s: got %s, want the outbound listener reached untouched", to, got)
				}
			}
			p.run("direct-to-loopback", func(p *pod) { direct(p, v.family.Loopback()) })
			p.run("direct-to-own-address", func(p *pod) { direct(p, p.podAddr()) })
		})
	})
}
