//go:build linux

package tests

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/detour-mesh/detour/internal/lab"
)

// The "client" of I7 is a third namespace behind the pod: the pod routes its
// traffic, as a VM routes its containers'. Its IPv4 network is carved out of the
// remote's 198.51.100.0/24 (the remote gives that /28 up and routes it to the pod),
// its IPv6 network is one the lab does not use.
var (
	clientNet = map[lab.Family]netip.Prefix{
		lab.IPv4: netip.MustParsePrefix("198.51.100.240/28"),
		lab.IPv6: netip.MustParsePrefix("2001:db8:2::/64"),
	}
	// The pod's address on the client link (the client's gateway) and the client's.
	clientGateway = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("198.51.100.241"), lab.IPv6: netip.MustParseAddr("2001:db8:2::1")}
	clientAddr    = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("198.51.100.242"), lab.IPv6: netip.MustParseAddr("2001:db8:2::2")}
)

// addClient creates the client namespace behind the pod and turns forwarding on in
// the pod (inside the lab's namespaces only). The client is removed when the test
// ends.
func (p *pod) addClient() *lab.NetNS {
	p.t.Helper()
	name := strings.TrimSuffix(p.lab.Pod.Name, "pod") + "client"
	c, err := lab.CreateNetNS(p.ctx, name)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() {
		if err := c.Close(); err != nil {
			p.t.Errorf("remove client namespace: %v", err)
		}
	})
	must := func(err error) {
		p.t.Helper()
		if err != nil {
			p.t.Fatal(err)
		}
	}
	must(c.Sysctl("net/ipv6/conf/default/accept_dad", "0"))
	must(p.lab.Pod.Sysctl("net/ipv4/ip_forward", "1"))
	must(p.lab.Pod.Sysctl("net/ipv6/conf/all/forwarding", "1"))
	// Made from inside the pod with the peer placed straight into the client: the
	// root namespace never sees either end.
	must(p.lab.Pod.IPBatch(p.ctx,
		"link add eth1 type veth peer name eth0 netns "+c.Name,
		"addr add "+clientGateway[lab.IPv4].String()+"/28 dev eth1",
		"addr add "+clientGateway[lab.IPv6].String()+"/64 dev eth1 nodad",
		"link set eth1 up",
	))
	must(c.IPBatch(p.ctx,
		"addr add "+clientAddr[lab.IPv4].String()+"/28 dev eth0",
		"addr add "+clientAddr[lab.IPv6].String()+"/64 dev eth0 nodad",
		"link set eth0 up",
		"route add default via "+clientGateway[lab.IPv4].String(),
		"route add default via "+clientGateway[lab.IPv6].String(),
	))
	// The remote gives the client's /28 up (it owns the rest of the /24) and routes
	// both client networks to the pod.
	v4 := lab.RemoteRanges[lab.IPv4][1] // 198.51.100.0/24
	remote := []string{"route del local " + v4.String() + " dev lo table local"}
	for _, bits := range []int{25, 26, 27, 28} {
		remote = append(remote, fmt.Sprintf("route add local %s dev lo", carve(v4, clientNet[lab.IPv4], bits)))
	}
	for _, f := range lab.Families {
		remote = append(remote, "route add "+clientNet[f].String()+" via "+lab.PodAddr(f).String())
	}
	must(p.lab.Remote.IPBatch(p.ctx, remote...))
	p.settleIPv6(p.lab.Pod, "eth1", clientGateway[lab.IPv6])
	p.settleIPv6(c, "eth0", clientAddr[lab.IPv6])
	return c
}

// carve returns the prefix of the given length inside outer that holds no address of
// hole (which must be longer): the sibling of the hole's ancestor of that length.
func carve(outer, hole netip.Prefix, bits int) netip.Prefix {
	ancestor := netip.PrefixFrom(hole.Addr(), bits-1).Masked()
	low := netip.PrefixFrom(ancestor.Addr(), bits)
	if !low.Contains(hole.Addr()) {
		return low
	}
	b := ancestor.Addr().As4()
	hostBit := 32 - bits
	b[3-hostBit/8] |= 1 << (hostBit % 8)
	return netip.PrefixFrom(netip.AddrFrom4(b), bits)
}

// settleIPv6 waits (at most 10 s) until addr on dev is no longer tentative and has
// its local route: packets that arrive before are dropped.
func (p *pod) settleIPv6(n *lab.NetNS, dev string, addr netip.Addr) {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		local, err := n.Run(p.ctx, "ip", "-6", "route", "show", "table", "local", "dev", dev)
		if err != nil {
			p.t.Fatal(err)
		}
		addrs, err := n.Run(p.ctx, "ip", "-6", "addr", "show", "dev", dev)
		if err != nil {
			p.t.Fatal(err)
		}
		if strings.Contains(local, "local "+addr.String()+" ") && !strings.Contains(addrs, "tentative") {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("netns %s: IPv6 address %s on %s not settled:\n%s\n%s", n.Name, addr, dev, addrs, local)
		}
		<-tick.C
	}
}
