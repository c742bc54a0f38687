package nftables

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestPackets is a first real-packet check of the nftables rendering in
// redirect mode, both families: O1 (an app's connection arrives at the
// outbound port with its original destination), O2 (an excluded port
// reaches the remote), O7 (the proxy's own connection is not captured) and
// I1 (a remote client's connection arrives at the inbound port). The full
// scenario matrix runs once the backend is wired into the engine.
func TestPackets(t *testing.T) {
	ctx := context.Background()
	l, d := packetLab(t, ctx)
	rs, err := Render(mustCapture(t, plancases.Case{Sets: []string{"outbound.excludePorts=2525"}, Facts: dualStack}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyRuleset(ctx, rs, observe(t, d)); err != nil {
		t.Fatal(err)
	}
	rnd := lab.NewRand(7)
	rnd.Reserve(15001, 15006, 2525)
	app, proxy := &lab.Cred{UID: 1000, GID: 1000}, &lab.Cred{UID: 5678, GID: 5678}
	for _, fam := range lab.Families {
		t.Run(string(fam), func(t *testing.T) {
			for _, s := range []struct {
				name string
				addr netip.AddrPort
			}{{"outbound", netip.AddrPortFrom(fam.Unspecified(), 15001)}, {"inbound", netip.AddrPortFrom(fam.Unspecified(), 15006)}} {
				if _, err := l.Pod.Serve(s.name, s.addr, lab.ServeOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			remote := rnd.RemoteAddr(fam)
			for _, port := range []uint16{rnd.Port(), 2525} {
				if _, err := l.Remote.Serve("remote", netip.AddrPortFrom(fam.Unspecified(), port), lab.ServeOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			dial := func(ns *lab.NetNS, cred *lab.Cred, to netip.AddrPort) lab.Reply {
				t.Helper()
				r, err := ns.Dial(ctx, lab.DialOptions{To: to, Cred: cred})
				if err != nil {
					t.Fatalf("dial %s as %v: %v", to, cred, err)
				}
				return r
			}
			port := rnd.Port()
			to := netip.AddrPortFrom(remote, port)
			if r := dial(l.Pod, app, to); r.Server != "outbound" || r.Original != to {
				t.Errorf("O1: app → %s reached %s (original %s), want the outbound port with the original destination", to, r.Server, r.Original)
			}
			excluded := netip.AddrPortFrom(remote, 2525)
			if r := dial(l.Pod, app, excluded); r.Server != "remote" {
				t.Errorf("O2: app → excluded %s reached %s, want the remote", excluded, r.Server)
			}
			if r := dial(l.Pod, proxy, excluded); r.Server != "remote" {
				t.Errorf("O7: proxy → %s reached %s, want the remote", excluded, r.Server)
			}
			in := netip.AddrPortFrom(lab.PodAddr(fam), rnd.Port())
			if r := dial(l.Remote, nil, in); r.Server != "inbound" || r.Original != in {
				t.Errorf("I1: remote → %s reached %s (original %s), want the inbound port with the original destination", in, r.Server, r.Original)
			}
		})
	}
}

// TestPacketsTProxy is L1 for TPROXY on real packets, both families: a
// remote client's connection arrives at the transparent inbound listener
// with its own address visible and the destination it dialed as the local
// address. The policy routing is made here by hand (the engine makes it for
// every backend).
func TestPacketsTProxy(t *testing.T) {
	ctx := context.Background()
	l, d := packetLab(t, ctx)
	rs, err := Render(mustCapture(t, plancases.Case{Sets: []string{"mode=tproxy", "inbound.excludePorts=2222"}, Facts: dualStack}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyRuleset(ctx, rs, observe(t, d)); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-4", "rule", "add", "fwmark", "0x2000/0x2000", "lookup", "2000", "priority", "2000"},
		{"-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "2000"},
		{"-6", "rule", "add", "fwmark", "0x2000/0x2000", "lookup", "2000", "priority", "2000"},
		{"-6", "route", "add", "local", "::/0", "dev", "lo", "table", "2000"},
	} {
		privtest.Run(t, append([]string{"ip", "-n", l.Pod.Name}, args...)...)
	}
	rnd := lab.NewRand(11)
	rnd.Reserve(15001, 15006, 2222)
	for _, fam := range lab.Families {
		t.Run(string(fam), func(t *testing.T) {
			if _, err := l.Pod.Serve("inbound", netip.AddrPortFrom(fam.Unspecified(), 15006), lab.ServeOptions{Transparent: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Pod.Serve("app", netip.AddrPortFrom(fam.Unspecified(), 2222), lab.ServeOptions{}); err != nil {
				t.Fatal(err)
			}
			for range 5 {
				to := netip.AddrPortFrom(lab.PodAddr(fam), rnd.Port())
				r, err := l.Remote.Dial(ctx, lab.DialOptions{To: to})
				if err != nil {
					t.Fatalf("dial %s: %v", to, err)
				}
				if r.Server != "inbound" || r.Local != to || r.Peer.Addr() != r.Client.Addr() {
					t.Errorf("L1 tproxy: remote → %s reached %s at %s from %s (client %s); want the inbound listener at the dialed address, the client's address visible", to, r.Server, r.Local, r.Peer, r.Client)
				}
			}
			excluded := netip.AddrPortFrom(lab.PodAddr(fam), 2222)
			if r, err := l.Remote.Dial(ctx, lab.DialOptions{To: excluded}); err != nil || r.Server != "app" {
				t.Errorf("I2 tproxy: remote → excluded %s reached %v (err %v), want the app", excluded, r.Server, err)
			}
		})
	}
}

// packetLab is a lab (a pod and a remote namespace, removed when t ends) and a
// Driver that works in its pod.
func packetLab(t *testing.T, ctx context.Context) (*lab.Lab, *Driver) {
	t.Helper()
	privtest.Require(t, "ip")
	l, err := lab.New(ctx, lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := os.Open(l.Pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return l, New(Options{NetNSFd: int(f.Fd())})
}
