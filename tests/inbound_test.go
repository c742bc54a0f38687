//go:build linux

package tests

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
)

// client returns dial options from the remote to the pod's address on port, from a
// random remote address (sometimes the remote's link address).
func (p *pod) client(i int, port uint16) lab.DialOptions {
	from := p.remoteAddr()
	if i%4 == 3 {
		from = lab.RemoteLinkAddr(p.v.family)
	}
	return lab.DialOptions{To: netip.AddrPortFrom(p.podAddr(), port), From: from}
}

// TestInbound covers SCENARIOS.md "Inbound (anywhere → workload)", I1–I6, and I7
// (forwarded traffic is not inbound, docs/scenarios.md).
func TestInbound(t *testing.T) {
	t.Parallel()

	t.Run("I1", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install()
			for i := range cases() {
				p.inbound("I1 any port of the workload", p.client(i, p.appPort(netip.Addr{})), srvInbound)
			}
			// A port nothing listens on is captured too.
			p.inbound("I1 a closed port", p.client(0, p.rnd.Port()), srvInbound)
			// A new connection from the address and port of one that has just
			// closed is captured like the first: the server side closes first,
			// so the pod holds the old connection in TIME_WAIT (in TPROXY mode a
			// transparent socket of the proxy's), and the new SYN must still be
			// handed to the inbound proxy, never to the app behind it.
			reuse := p.client(0, p.appPort(netip.Addr{}))
			reuse.FromPort = p.rnd.Port()
			for i := range 4 {
				p.inbound(fmt.Sprintf("I1 connection %d from one reused source address and port", i+1), reuse, srvInbound)
			}
		})
	})

	t.Run("I2", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			ex1 := p.appPort(netip.Addr{})
			rg := portRange(p.rnd, 3)
			for port := rg[0]; port <= rg[1]; port++ {
				if _, err := p.lab.Pod.Serve(srvApp, netip.AddrPortFrom(v.family.Unspecified(), port), lab.ServeOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			p.install("--exclude-inbound-ports", csv(ex1, rangeFlag(rg)))
			for i := range cases() {
				excluded := []uint16{ex1, inRange(p.rnd, rg)}[i%2]
				p.inbound("I2 excluded port", p.client(i, excluded), srvApp)
				p.inbound("I2 other port", p.client(i, p.appPort(netip.Addr{})), srvInbound)
			}
		})
	})

	t.Run("I3", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			in1, both := p.appPort(netip.Addr{}), p.appPort(netip.Addr{})
			rg := portRange(p.rnd, 3)
			for port := rg[0]; port <= rg[1]; port++ {
				if _, err := p.lab.Pod.Serve(srvApp, netip.AddrPortFrom(v.family.Unspecified(), port), lab.ServeOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			p.install("--include-inbound-ports", csv(in1, both, rangeFlag(rg)), "--exclude-inbound-ports", csv(both))
			for i := range cases() {
				included := []uint16{in1, inRange(p.rnd, rg)}[i%2]
				p.inbound("I3 included port", p.client(i, included), srvInbound)
				p.inbound("I3 port both included and excluded", p.client(i, both), srvInbound)
				p.inbound("I3 port not included", p.client(i, p.appPort(netip.Addr{})), srvApp)
			}
		})
	})

	t.Run("I4", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			ex4, ex6 := subnet(p.rnd, lab.IPv4, 26), subnet(p.rnd, lab.IPv6, 64)
			host4, host6 := subnet(p.rnd, lab.IPv4, 32), subnet(p.rnd, lab.IPv6, 128)
			p.install("--exclude-inbound-source-cidrs", csv(ex6, ex4, host4, host6))
			mine := []netip.Prefix{ex4, host4}
			if v.family == lab.IPv6 {
				mine = []netip.Prefix{ex6, host6}
			}
			for i := range cases() {
				to := netip.AddrPortFrom(p.podAddr(), p.appPort(netip.Addr{}))
				p.inbound("I4 excluded source", lab.DialOptions{To: to, From: p.rnd.In(mine[i%2])}, srvApp)
				p.inbound("I4 other source", lab.DialOptions{To: to, From: addrOutside(p.rnd, v.family, mine...)}, srvInbound)
			}
		})
	})

	t.Run("I5", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install("--inbound=false")
			for i := range cases() {
				p.inbound("I5 inbound disabled", p.client(i, p.appPort(netip.Addr{})), srvApp)
			}
			// detour is installed and working: outbound is still captured.
			p.outbound("I5 outbound still captured", p.app(0, p.remoteDest()), srvOutbound)
		})
	})

	t.Run("I6", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			p.install()
			pass := func(port uint16) lab.DialOptions {
				return lab.DialOptions{To: netip.AddrPortFrom(p.podAddr(), port), From: p.passthroughSource(), Cred: p.proxyCred()}
			}
			// What the proxy does with a captured inbound connection: dial the original
			// destination from the passthrough source.
			p.run("wildcard", func(p *pod) {
				for range cases() {
					p.outbound("I6 app bound to the wildcard address", pass(p.appPort(netip.Addr{})), srvApp)
				}
			})
			p.run("pod-address", func(p *pod) {
				for range cases() {
					p.outbound("I6 app bound to the pod address", pass(p.appPort(p.podAddr())), srvApp)
				}
			})
			// An app bound only to loopback is not reachable at the pod address: the
			// proxy's passthrough is refused (documented in docs/scenarios.md).
			p.run("loopback-only", func(p *pod) {
				for range cases() {
					p.refused(p.lab.Pod, "I6 app bound to loopback only", pass(p.appPort(v.family.Loopback())))
				}
			})
			p.inbound("I6 capture is on", p.client(0, p.appPort(netip.Addr{})), srvInbound)
		})
	})

	// I7: the pod forwards a client's traffic (a VM running containers, a node):
	// the client's connections to elsewhere are not the workload's inbound traffic
	// and pass untouched, in both modes; its connections to the pod's own
	// addresses are captured.
	t.Run("I7", func(t *testing.T) {
		matrixModes(t, []string{"redirect", "tproxy"}, func(t *testing.T, v variant) {
			p := newPod(t, v)
			p.startProxies()
			client := p.addClient()
			away := func() lab.DialOptions {
				port := p.remotePort()
				return lab.DialOptions{To: netip.AddrPortFrom(addrOutside(p.rnd, v.family, clientNet[v.family]), port)}
			}
			p.expect(client, "I7 before install the client reaches the remote", away(), srvRemote)
			p.install()
			for range cases() {
				p.expect(client, "I7 forwarded connection", away(), srvRemote)
				for _, dst := range []netip.Addr{p.podAddr(), clientGateway[v.family]} {
					p.expect(client, "I7 connection to the pod's own address", lab.DialOptions{To: netip.AddrPortFrom(dst, p.appPort(netip.Addr{}))}, srvInbound)
				}
			}
		})
	})
}
