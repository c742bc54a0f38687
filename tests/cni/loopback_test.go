package cni_test

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

// The dual-stack pod network of TestLoopbackNetworkEitherOrder: a bridge of
// its own, so its pods' addresses never meet the IPv4-only network's.
const (
	dualBridge = "dtbr7"
	dualV4Net  = "192.0.2.128/25"
	dualV4GW   = "192.0.2.129"
	dualV6Net  = "2001:db8:7::/64"
	dualV6GW   = "2001:db8:7::1"
)

var dualNet = podNetwork{
	bridge: dualBridge,
	ranges: [][]map[string]string{{{"subnet": dualV4Net, "gateway": dualV4GW}}, {{"subnet": dualV6Net, "gateway": dualV6GW}}},
	routes: []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
}

// TestLoopbackNetworkEitherOrder (issue #7): containerd sets up a pod's
// loopback network (the reference loopback plugin) and its primary conflist,
// which runs detour-cni last, concurrently unless setup_serially is set. The
// pod's sandbox must come up in either order: the loopback plugin refuses any
// address on lo but 127.0.0.0/8 and ::1, and the kernel refuses an IPv6 route
// on a lo that is still down (TPROXY). In both orders, REDIRECT and TPROXY,
// the pod is captured on real packets in both families, and the proxy's
// passthrough from 127.0.0.6 / ::6 (bound with IP_FREEBIND, as Envoy's
// freebind does) reaches the app, which sees that source, without being
// captured again. With "passthroughOnLo": "address" (and the loopback network
// first) ::6 is on lo and is bound without IP_FREEBIND.
func TestLoopbackNetworkEitherOrder(t *testing.T) {
	h := setup(t)
	hostNS := &lab.NetNS{Name: os.Getenv(hostNSEnv), Path: "/run/netns/" + os.Getenv(hostNSEnv)}
	// The bridge exists before the first ADD (the plugin takes it as it is)
	// with duplicate address detection off, so its IPv6 gateway address is
	// usable at once; the suite's host namespace goes with the test binary.
	privtest.Run(t, "ip", "link", "add", dualBridge, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", dualBridge).Run() })
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+dualBridge+"/accept_dad", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	n, err := h.newNetworkOn(dualNet, "dt-dual", "1.1.0", nil)
	if err != nil {
		t.Fatal(err)
	}
	// For a proxy that binds ::6 without freebind: the address on lo, which
	// needs the loopback network first (containerd's setup_serially).
	addr, err := h.newNetworkOn(dualNet, "dt-dual-address", "1.1.0", map[string]any{"passthroughOnLo": "address"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		annotations map[string]string
		podFirst    bool // the pod network's ADD before the loopback network's
		address     bool // on the network with "passthroughOnLo": "address"
	}{
		{name: "redirect, loopback first", annotations: map[string]string{}},
		{name: "redirect, pod network first", annotations: map[string]string{}, podFirst: true},
		{name: "tproxy, loopback first", annotations: map[string]string{"detour.io/mode": "tproxy"}},
		{name: "tproxy, pod network first", annotations: map[string]string{"detour.io/mode": "tproxy"}, podFirst: true},
		{name: "nftables, pod network first", annotations: map[string]string{"detour.io/backend": "nftables"}, podFirst: true},
		{name: "passthroughOnLo address, loopback first", annotations: map[string]string{}, address: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.annotations["detour.io/redirect"] = "enabled"
			p := h.newPod(t, h.newNamespace(t, nil), tt.annotations, created)
			podNS := &lab.NetNS{Name: p.netnsName, Path: p.netns}
			// The runtime's side of the pod network: its eth0 gets its IPv6
			// address without duplicate address detection.
			for _, key := range []string{"net/ipv6/conf/all/accept_dad", "net/ipv6/conf/default/accept_dad"} {
				if err := podNS.Sysctl(key, "0"); err != nil {
					t.Fatal(err)
				}
			}
			n := n
			if tt.address {
				n = addr
			}
			res := addInOrder(t, n, p, tt.podFirst)

			// What the loopback plugin checks, and what it found.
			lo := privtest.Run(t, "ip", "-n", p.netnsName, "addr", "show", "dev", "lo")
			if !strings.Contains(lo, "UP") || strings.Contains(lo, "::6") != tt.address {
				t.Errorf("lo after both ADDs: want it up, with ::6 %v:\n%s", tt.address, lo)
			}
			if err := n.check(p); err != nil {
				t.Errorf("CHECK: %v\n%s", err, n.logTail())
			}

			tproxy := tt.annotations["detour.io/mode"] == "tproxy"
			ip4, ip6 := podIP(t, res), podIP6(t, res)
			for _, s := range []struct {
				name string
				addr netip.AddrPort
				opts lab.ServeOptions
			}{
				{"outbound-proxy", netip.MustParseAddrPort("0.0.0.0:15001"), lab.ServeOptions{}},
				{"outbound-proxy", netip.MustParseAddrPort("[::]:15001"), lab.ServeOptions{}},
				{"inbound-proxy", netip.MustParseAddrPort("0.0.0.0:15006"), lab.ServeOptions{Transparent: tproxy}},
				{"inbound-proxy", netip.MustParseAddrPort("[::]:15006"), lab.ServeOptions{Transparent: tproxy}},
				{"app", netip.MustParseAddrPort("0.0.0.0:8080"), lab.ServeOptions{}},
				{"app", netip.MustParseAddrPort("[::]:8080"), lab.ServeOptions{}},
			} {
				srv, err := podNS.Serve(s.name, s.addr, s.opts)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { srv.Close() })
			}
			proxy := &lab.Cred{UID: 5678, GID: 5678}
			cases := []struct {
				name       string
				from       *lab.NetNS
				dial       lab.DialOptions
				wantServer string
				wantPeer   netip.Addr // when valid: the source the server saw
			}{
				{"IPv4 outbound goes to the proxy", podNS, lab.DialOptions{To: netip.MustParseAddrPort(remoteAddr)}, "outbound-proxy", netip.Addr{}},
				{"IPv6 outbound goes to the proxy", podNS, lab.DialOptions{To: netip.MustParseAddrPort("[2001:db8:ffff::9]:80")}, "outbound-proxy", netip.Addr{}},
				{"IPv4 inbound goes to the proxy", hostNS, lab.DialOptions{To: netip.AddrPortFrom(ip4, 8080)}, "inbound-proxy", netip.Addr{}},
				{"IPv6 inbound goes to the proxy", hostNS, lab.DialOptions{To: netip.AddrPortFrom(ip6, 8080)}, "inbound-proxy", netip.Addr{}},
				{"IPv4 passthrough from 127.0.0.6 reaches the app", podNS,
					lab.DialOptions{To: netip.AddrPortFrom(ip4, 8080), From: netip.MustParseAddr("127.0.0.6"), FreeBind: true, Cred: proxy}, "app", netip.MustParseAddr("127.0.0.6")},
				{"IPv6 passthrough from ::6 reaches the app", podNS,
					lab.DialOptions{To: netip.AddrPortFrom(ip6, 8080), From: netip.MustParseAddr("::6"), FreeBind: !tt.address, Cred: proxy}, "app", netip.MustParseAddr("::6")},
			}
			for _, c := range cases {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := c.from.Dial(ctx, c.dial)
				cancel()
				if err != nil {
					t.Errorf("%s: %v", c.name, err)
					continue
				}
				if r.Server != c.wantServer || r.Original != c.dial.To {
					t.Errorf("%s: answered by %s, want %s with original destination %s", c.name, r, c.wantServer, c.dial.To)
				}
				if c.wantPeer.IsValid() && r.Peer.Addr() != c.wantPeer {
					t.Errorf("%s: the app saw the connection from %s, want %s", c.name, r.Peer, c.wantPeer)
				}
			}

			// DEL takes away what ADD made: the route to ::6 (or the address) too.
			if err := n.del(p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if got := privtest.Run(t, "ip", "-n", p.netnsName, "-6", "route", "show", "table", "local", "proto", "215"); strings.TrimSpace(got) != "" {
				t.Errorf("routes of detour's in table local after DEL: %q", got)
			}
			if got := privtest.Run(t, "ip", "-n", p.netnsName, "addr", "show", "dev", "lo"); strings.Contains(got, "::6") {
				t.Errorf("::6 on lo after DEL:\n%s", got)
			}
		})
	}
}

// addInOrder runs the pod's loopback network and its pod network (n) in the
// given order, as containerd's concurrent setup may; both must succeed. When
// t ends both are deleted.
func addInOrder(t *testing.T, n *network, p *pod, podFirst bool) *current.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lo := loConf(p)
	n.deleteAtEnd(t, p, lo)
	addLo := func() {
		if _, err := n.cni.AddNetworkList(ctx, n.lo, lo); err != nil {
			t.Fatalf("loopback network ADD: %v", err)
		}
	}
	if !podFirst {
		addLo()
	}
	r, err := n.cni.AddNetworkList(ctx, n.list, p.rt)
	if err != nil {
		t.Fatalf("pod network ADD: %v\n%s", err, n.logTail())
	}
	if podFirst {
		addLo()
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// podIP6 is the pod's IPv6 address from the chain's result.
func podIP6(t testing.TB, r *current.Result) netip.Addr {
	t.Helper()
	for _, ip := range r.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && ip.Address.IP.To4() == nil {
			return a
		}
	}
	t.Fatalf("no IPv6 address in the result %v", r)
	return netip.Addr{}
}
