//go:build linux

package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/internal/privtest"
)

// switchUnderLoad is TestLifecycle's L11, SCENARIOS.md L11 for iptables-nft ↔
// nftables and iptables-nft ↔ ebpf: with connections held open through the
// proxy and new ones dialed all the time (outbound from the app, inbound from
// the remote), `install --backend nftables` (or ebpf) over an iptables-nft
// install, and back, leave only the new backend's state, every new connection
// is captured throughout, and the held connections keep working.
func switchUnderLoad(t *testing.T) {
	for _, f := range lab.Families {
		for _, other := range []string{nftNative, ebpfBackend} {
			t.Run(string(f)+"/"+other, func(t *testing.T) {
				t.Parallel()
				switchUnderLoadTo(t, f, other)
			})
		}
	}
}

func switchUnderLoadTo(t *testing.T, f lab.Family, other string) {
	privtest.Require(t, "nft")
	p := newPod(t, variant{family: f, backend: nft, mode: "redirect"})
	if other == ebpfBackend {
		p.env = ebpfEnv(t) // the eBPF backend's pins and cgroup of this pod
	}
	p.ex.counts = nil // no explain runs from the dialing goroutines
	held := p.holdingProxy()
	if _, err := p.lab.Pod.Serve(srvInbound, netip.AddrPortFrom(f.Unspecified(), p.inPort), lab.ServeOptions{}); err != nil {
		t.Fatal(err)
	}
	dests := []netip.AddrPort{p.remoteDest(), p.remoteDest(), p.remoteDest()}
	appPorts := []uint16{p.appPort(netip.Addr{}), p.appPort(netip.Addr{})}
	app := p.appCred()
	p.install()

	// Connections held open through the proxy, opened under iptables-nft.
	var conns []net.Conn
	for i := range 4 {
		c, r := held.open(p, lab.DialOptions{To: dests[i%len(dests)], Cred: app})
		if r.Server != srvOutbound || r.Original != dests[i%len(dests)] {
			t.Fatalf("held connection %d: answered %+v, want %s with original destination %s", i, r, srvOutbound, dests[i%len(dests)])
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()

	// Dial all the time: every connection must be captured.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var dialed, escaped, lostOrigin atomic.Int64
	// A known failure (docs/scenarios.md, "Known failures"): while the
	// eBPF state is removed after a switch to iptables-nft, a connection
	// redirected by the connect() hook whose proxy asks SO_ORIGINAL_DST only
	// after the getsockopt program is gone gets its loopback destination as
	// the original one. A dial that spans that removal and shows it is
	// counted and logged, not failed, unless DETOUR_E2E_KNOWN_FAILURES=run;
	// any other escape fails.
	onEBPF, leavingEBPF, backOnNFT := "after the switch to "+ebpfBackend, "during install --backend "+nft+" over "+ebpfBackend, "after the switch to "+nft
	spansRemoval := func(start, end any) bool {
		return (start == onEBPF || start == leavingEBPF) && (end == leavingEBPF || end == backOnNFT)
	}
	tolerateLostOrigin := os.Getenv("DETOUR_E2E_KNOWN_FAILURES") != "run"
	var phase atomic.Value // which install runs, for the failure messages
	phase.Store("before the switches")
	var mu sync.Mutex
	var failures []string
	fail := func(s string) {
		escaped.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, s)
		}
	}
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				to := dests[(i+w)%len(dests)]
				started := phase.Load()
				r, err := p.lab.Pod.Dial(p.ctx, lab.DialOptions{To: to, Cred: app, Timeout: 2 * time.Second})
				dialed.Add(1)
				if err == nil && r.Server == srvOutbound && r.Original.Addr().IsLoopback() && spansRemoval(started, phase.Load()) && tolerateLostOrigin {
					lostOrigin.Add(1)
				} else if err != nil || r.Server != srvOutbound || r.Original != to {
					fail(fmt.Sprintf("%s: outbound to %s: %+v %v", phase.Load(), to, r, err))
				}
				in := netip.AddrPortFrom(p.podAddr(), appPorts[i%len(appPorts)])
				r, err = p.lab.Remote.Dial(p.ctx, lab.DialOptions{To: in, FreeBind: true, Timeout: 2 * time.Second})
				dialed.Add(1)
				if err != nil || r.Server != srvInbound || r.Original != in {
					fail(fmt.Sprintf("%s: inbound to %s: %+v %v", phase.Load(), in, r, err))
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	for _, s := range []struct{ to, from string }{{other, nft}, {nft, other}} {
		before := dialed.Load()
		phase.Store("during install --backend " + s.to + " over " + s.from)
		r := p.detour(append([]string{"install"}, p.flagsWith(s.to)...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "switched from "+s.from) {
			t.Errorf("install --backend %s over %s: want a switch:\n%s", s.to, s.from, r)
		}
		onlyIn(t, p, s.to, s.from)
		if got := statusBackend(t, p); got != s.to {
			t.Errorf("status after the switch to %s reports backend %q", s.to, got)
		}
		// Let connections run on the new backend before the next step.
		phase.Store("after the switch to " + s.to)
		for dialed.Load() < before+20 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d connections dialed during two switches, %d not captured", dialed.Load(), escaped.Load())
	if n := lostOrigin.Load(); n > 0 {
		t.Logf("known failure: %d connections reached the proxy without their original destination while the eBPF state was removed (docs/scenarios.md, Known failures)", n)
	}
	if escaped.Load() != 0 {
		t.Errorf("%d of %d connections escaped capture or failed during the switches, for example:\n%s", escaped.Load(), dialed.Load(), strings.Join(failures, "\n"))
	}
	for i, c := range conns {
		if err := held.echo(c, fmt.Sprintf("after the switches %d", i)); err != nil {
			t.Errorf("held connection %d: %v", i, err)
		}
	}
	p.uninstall()
	for _, b := range []string{nft, other} {
		for _, f := range lab.Families {
			if o := p.detourState(b, f); len(o) != 0 {
				t.Errorf("uninstall left detour's state in %s %s:\n%s", b, f, strings.Join(o, "\n"))
			}
		}
	}
}

// holdingProxy is a stand-in outbound proxy that answers like a lab server
// (one JSON Reply line) and then echoes lines for as long as the client
// keeps the connection.
type holdingProxy struct{ ln net.Listener }

func (p *pod) holdingProxy() *holdingProxy {
	p.t.Helper()
	h := &holdingProxy{}
	addr := netip.AddrPortFrom(p.v.family.Unspecified(), p.outPort)
	if err := p.lab.Pod.Do(p.proxyCred(), func() error {
		var err error
		h.ln, err = net.Listen(lab.Of(addr.Addr()).TCP(), addr.String())
		return err
	}); err != nil {
		p.t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var accepted []net.Conn
	p.t.Cleanup(func() {
		h.ln.Close()
		mu.Lock()
		for _, c := range accepted {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := h.ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				tc := c.(*net.TCPConn)
				r := lab.Reply{Server: srvOutbound, Local: tc.LocalAddr().(*net.TCPAddr).AddrPort(), Peer: tc.RemoteAddr().(*net.TCPAddr).AddrPort()}
				r.Local, r.Peer = netip.AddrPortFrom(r.Local.Addr().Unmap(), r.Local.Port()), netip.AddrPortFrom(r.Peer.Addr().Unmap(), r.Peer.Port())
				r.Original = r.Local
				if od, err := origdst.Get(tc); err == nil {
					r.Original = od
				}
				b, _ := json.Marshal(r)
				if _, err := c.Write(append(b, '\n')); err != nil {
					return
				}
				rd := bufio.NewReader(c)
				for {
					line, err := rd.ReadBytes('\n')
					if err != nil {
						return
					}
					if _, err := c.Write(line); err != nil {
						return
					}
				}
			})
		}
	})
	return h
}

// open dials o from the pod, reads the proxy's Reply and keeps the connection.
func (h *holdingProxy) open(p *pod, o lab.DialOptions) (net.Conn, lab.Reply) {
	p.t.Helper()
	var c net.Conn
	if err := p.lab.Pod.Do(o.Cred, func() error {
		var err error
		c, err = net.DialTimeout(lab.Of(o.To.Addr()).TCP(), o.To.String(), 5*time.Second)
		return err
	}); err != nil {
		p.t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		c.Close()
		p.t.Fatalf("read the proxy's reply: %v", err)
	}
	var r lab.Reply
	if err := json.Unmarshal(line, &r); err != nil {
		c.Close()
		p.t.Fatalf("proxy reply %q: %v", line, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, r
}

// echo sends msg on a held connection and expects it back.
func (h *holdingProxy) echo(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}
