//go:build linux

package cpe2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

const (
	nodeID   = "app"
	proxyUID = 5678
	appUID   = 4321

	// Servers, by the name their Reply carries.
	srvBackend = "backend"    // the backend service's endpoints (remote)
	srvDB      = "db"         // the db service's endpoints (remote)
	srvAny     = "elsewhere"  // a destination the mesh does not know (remote)
	srvDecoy   = "decoy"      // answers on a virtual IP when a connection bypassed the proxy
	srvApp     = "app"        // the workload's app on the pod address only: the declared inbound port 8000's target
	srvLocal   = "app-local"  // an app on loopback only, behind declared port 8100: not reachable through the proxy
	srvOther   = "app-other"  // the workload's app on an undeclared port (passthrough)
	srvDNS     = "resolver"   // the remote's DNS resolver (answers TXT queries only)
	anyPort    = uint16(9999) // srvAny's port
	otherPort  = uint16(8001) // srvOther's port, not declared in the mesh
)

// addresses per family. The remote namespace owns 192.0.2.0/24, 198.51.100.0/24
// and 2001:db8:ffff::/48, so virtual IPs and endpoints there are reachable when
// a connection is not redirected — which the decoy server would reveal.
var (
	vip = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("198.51.100.80"), lab.IPv6: netip.MustParseAddr("2001:db8:ffff::80")}
	// dbVIP serves db on port 5432.
	dbVIP      = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("198.51.100.81"), lab.IPv6: netip.MustParseAddr("2001:db8:ffff::81")}
	backendEP  = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("192.0.2.10"), lab.IPv6: netip.MustParseAddr("2001:db8:ffff::10")}
	backendEP2 = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("192.0.2.12"), lab.IPv6: netip.MustParseAddr("2001:db8:ffff::12")}
	dbEP       = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("192.0.2.11"), lab.IPv6: netip.MustParseAddr("2001:db8:ffff::11")}
	elsewhere  = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("192.0.2.77"), lab.IPv6: netip.MustParseAddr("2001:db8:ffff::77")}
	passSource = map[lab.Family]netip.Addr{lab.IPv4: netip.MustParseAddr("127.0.0.6"), lab.IPv6: netip.MustParseAddr("::6")}
	// upstreamDNS is the mesh's upstream resolver (remote): names that are
	// not services are forwarded there.
	upstreamDNS = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.53"), 53)
	// nameserver is the resolver the app asks: any address, DNS capture all
	// sends every UDP/53 query to the proxy.
	nameserver = map[lab.Family]netip.AddrPort{
		lab.IPv4: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.53"), 53),
		lab.IPv6: netip.AddrPortFrom(netip.MustParseAddr("2001:db8:ffff::53"), 53),
	}
)

// variant is one run of the end-to-end test.
type variant struct {
	mode       string // redirect, tproxy
	ipFamilies string
	// ipv4Only lists only the pod's IPv4 address in the mesh although the pod
	// is dual-stack: with ipFamilies auto the installer still captures IPv6,
	// and the proxy must still listen on it. Service clusters then list only
	// IPv4 endpoints, which IPv6 connections to a virtual IP reach.
	ipv4Only bool
	// backend is detour install's --backend; empty is the default (auto,
	// which picks an iptables backend in a fresh namespace).
	backend string
}

// transparentProxy is the workload's redirect config: the same document goes
// into the mesh file and into `detour install --config`.
func (v variant) transparentProxy() string {
	return fmt.Sprintf(`{"proxy": {"uid": %d}, "mode": %q, "ipFamilies": %q, "outbound": {"excludePorts": [22]}, "dns": {"capture": "all"}}`, proxyUID, v.mode, v.ipFamilies)
}

// endpoint is the family of the endpoint a connection of family f reaches.
func (v variant) endpoint(f lab.Family) lab.Family {
	if v.ipv4Only {
		return lab.IPv4
	}
	return f
}

func (v variant) meshFile(policy string, backend map[lab.Family]netip.Addr) string {
	addrs := fmt.Sprintf("%s, %q", lab.PodIPv4, lab.PodIPv6.String())
	if v.ipv4Only {
		addrs = lab.PodIPv4.String()
	}
	return fmt.Sprintf(`
outboundPolicy: %s
dns:
  upstreams: [%s]
services:
  - name: backend
    virtualIPs: [%s, %q]
    ports: [{name: http, port: 80, targetPort: 8080, protocol: http}]
    endpoints: [%s, %q]
  - name: db
    virtualIPs: [%s, %q]
    ports: [{port: 5432, targetPort: 15432}]
    endpoints: [%s, %q]
workloads:
  - nodeId: %s
    addresses: [%s]
    inbound: [{port: 8000, appPort: 18000, protocol: http}, {port: 8100, appPort: 18100}]
    reach: [backend, db]
    transparentProxy: %s
`, policy, upstreamDNS, vip[lab.IPv4], vip[lab.IPv6].String(), backend[lab.IPv4], backend[lab.IPv6].String(),
		dbVIP[lab.IPv4], dbVIP[lab.IPv6].String(), dbEP[lab.IPv4], dbEP[lab.IPv6].String(),
		nodeID, addrs, v.transparentProxy())
}

// TestControlPlaneEndToEnd: the control plane serves a mesh file, detour
// install captures the workload's traffic, and the test proxy follows the
// served listeners. An app dialing a service VIP reaches that service's
// endpoint, an unknown destination follows the outbound policy, inbound reaches
// the app, and changes to the mesh file reach the proxy — in REDIRECT and
// TPROXY mode, over IPv4 and IPv6.
func TestControlPlaneEndToEnd(t *testing.T) {
	for _, v := range []struct {
		name string
		variant
	}{
		{"redirect", variant{mode: "redirect", ipFamilies: "dual"}},
		{"tproxy", variant{mode: "tproxy", ipFamilies: "dual"}},
		{"auto-ipv4-addresses", variant{mode: "redirect", ipFamilies: "auto", ipv4Only: true}},
		{"redirect-nftables", variant{mode: "redirect", ipFamilies: "dual", backend: "nftables"}},
		{"tproxy-nftables", variant{mode: "tproxy", ipFamilies: "dual", backend: "nftables"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			testEndToEnd(t, v.variant)
		})
	}
}

func testEndToEnd(t *testing.T, v variant) {
	mode := v.mode
	if v.backend == "nftables" {
		privtest.Require(t, "ip") // netlink: no tool
	} else {
		privtest.Require(t, "ip", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Options{Prefix: "dt-cp"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("remove lab: %v", err)
		}
	})

	// Servers: the service endpoints, a destination outside the mesh and a decoy
	// on the virtual IPs' ports (remote); the app (pod).
	for _, f := range lab.Families {
		for _, s := range []struct {
			ns   *lab.NetNS
			name string
			addr netip.AddrPort
		}{
			{l.Remote, srvBackend, netip.AddrPortFrom(f.Unspecified(), 8080)},
			{l.Remote, srvDB, netip.AddrPortFrom(f.Unspecified(), 15432)},
			{l.Remote, srvAny, netip.AddrPortFrom(f.Unspecified(), anyPort)},
			{l.Remote, srvDecoy, netip.AddrPortFrom(f.Unspecified(), 80)},
			{l.Remote, srvDecoy, netip.AddrPortFrom(f.Unspecified(), 5432)},
			{l.Pod, srvApp, netip.AddrPortFrom(lab.PodAddr(f), 18000)},
			{l.Pod, srvLocal, netip.AddrPortFrom(f.Loopback(), 18100)},
			{l.Pod, srvOther, netip.AddrPortFrom(f.Unspecified(), otherPort)},
		} {
			if _, err := s.ns.Serve(s.name, s.addr, lab.ServeOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// A resolver (remote) on every remote address: the upstream, and the
		// nameserver the app asks, which must never answer a captured query.
		if _, err := l.Remote.ServeDNS(srvDNS, netip.AddrPortFrom(f.Unspecified(), 53), nil); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	writeFile(t, meshPath, v.meshFile("allow-any", backendEP))
	cp := startControlPlane(t, meshPath)

	// The redirection, from the same document the mesh gives the workload.
	tpPath := filepath.Join(dir, "transparent-proxy.json")
	writeFile(t, tpPath, v.transparentProxy())
	installArgs := []string{"install", "--netns", l.Pod.Name, "--config", tpPath}
	if v.backend != "" {
		installArgs = append(installArgs, "--backend", v.backend)
	}
	if out, err := exec.CommandContext(ctx, detourBin, installArgs...).CombinedOutput(); err != nil {
		t.Fatalf("detour install: %v\n%s", err, out)
	}

	proxy := newTestProxy(t, l.Pod, &lab.Cred{UID: proxyUID, GID: proxyUID})
	pctx, pcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); proxy.run(pctx, cp.xds, nodeID) }()
	t.Cleanup(func() { pcancel(); wg.Wait(); proxy.close() })
	cp.waitSynced(t, proxy, xds.Versions{})

	app := &lab.Cred{UID: appUID, GID: appUID}
	dialApp := func(to netip.AddrPort) (lab.Reply, error) {
		return l.Pod.Dial(ctx, lab.DialOptions{To: to, Cred: app})
	}
	for _, f := range lab.Families {
		t.Run(string(f), func(t *testing.T) {
			// DNS: the app asks any nameserver for backend.mesh; the installed
			// rules send the query to the proxy's DNS listener, which answers
			// from the served table (A for IPv4, AAAA for IPv6) from the address
			// the app asked; the app connects to the answer with no code of ours.
			typ := map[lab.Family]dnsmessage.Type{lab.IPv4: dnsmessage.TypeA, lab.IPv6: dnsmessage.TypeAAAA}[f]
			mark := proxy.mark()
			resp, from, err := resolve(l.Pod, app, nameserver[f], "backend.mesh.", typ)
			if err != nil {
				t.Fatalf("app resolves backend.mesh at %s: %v", nameserver[f], err)
			}
			if got := answerAddrs(resp); from != nameserver[f] || resp.RCode != dnsmessage.RCodeSuccess || len(got) != 1 || got[0] != vip[f] {
				t.Fatalf("backend.mesh %s answered %v %v from %s, want [%s] from %s", typ, resp.RCode, got, from, vip[f], nameserver[f])
			}
			wantRoute(t, proxy.handled(mark), route{Listener: dnsListener(f), Chain: "table", Query: "backend.mesh. " + strings.TrimPrefix(typ.String(), "Type")})
			r, err := dialApp(netip.AddrPortFrom(answerAddrs(resp)[0], 80))
			if err != nil || r.Server != srvBackend {
				t.Errorf("app → backend.mesh:80: %v %v, want %s", r, err, srvBackend)
			}
			// Any other name goes to the mesh's upstream resolver, through the
			// proxy (whose own query the rules let out).
			mark = proxy.mark()
			resp, from, err = resolve(l.Pod, app, nameserver[f], "lab.detour.test.", dnsmessage.TypeTXT)
			if err != nil {
				t.Fatalf("app resolves lab.detour.test at %s: %v", nameserver[f], err)
			}
			if txt := answerTXT(t, resp); from != nameserver[f] || txt.Server != srvDNS || txt.Local != upstreamDNS {
				t.Errorf("lab.detour.test answered by %s at %s, from %s; want the upstream %s at %s, from %s", txt.Server, txt.Local, from, srvDNS, upstreamDNS, nameserver[f])
			}
			wantRoute(t, proxy.handled(mark), route{Listener: dnsListener(f), Chain: "upstream", Upstream: upstreamDNS, Query: "lab.detour.test. TXT"})

			// A service VIP reaches that service's endpoint, through the
			// listener of that VIP:port and the service's cluster.
			for _, tc := range []struct {
				to      netip.AddrPort
				server  string
				local   netip.AddrPort
				cluster string
			}{
				{netip.AddrPortFrom(vip[f], 80), srvBackend, netip.AddrPortFrom(backendEP[v.endpoint(f)], 8080), controlplane.ServiceClusterName("backend", 80)},
				{netip.AddrPortFrom(dbVIP[f], 5432), srvDB, netip.AddrPortFrom(dbEP[v.endpoint(f)], 15432), controlplane.ServiceClusterName("db", 5432)},
			} {
				mark := proxy.mark()
				r, err = dialApp(tc.to)
				if err != nil {
					t.Fatalf("app → %s: %v", tc.to, err)
				}
				if r.Server != tc.server || r.Local != tc.local {
					t.Errorf("app → %s answered by %s at %s, want %s at %s", tc.to, r.Server, r.Local, tc.server, tc.local)
				}
				wantRoute(t, proxy.handled(mark), route{Listener: outbound(f), Handler: controlplane.ServiceListenerName(tc.to.Addr(), tc.to.Port()),
					Cluster: tc.cluster, Original: tc.to})
			}

			// An unknown destination goes where it was going (allow-any),
			// through the outbound listener's passthrough.
			to := netip.AddrPortFrom(elsewhere[f], anyPort)
			mark = proxy.mark()
			r, err = dialApp(to)
			if err != nil {
				t.Fatalf("app → %s: %v", to, err)
			}
			if r.Server != srvAny || r.Local != to {
				t.Errorf("app → %s answered by %s at %s, want %s at the same address", to, r.Server, r.Local, srvAny)
			}
			wantRoute(t, proxy.handled(mark), route{Listener: outbound(f), Handler: outbound(f), Chain: controlplane.ChainPassthrough,
				Cluster: controlplane.ClusterPassthrough, Original: to, Upstream: to})

			// Inbound: a declared port reaches the app at the pod address and
			// appPort, from the passthrough source, as the passthrough does for
			// another port; an app bound only to loopback is not reachable.
			remote := func(port uint16) (lab.Reply, error) {
				return l.Remote.Dial(ctx, lab.DialOptions{To: netip.AddrPortFrom(lab.PodAddr(f), port)})
			}
			mark = proxy.mark()
			r, err = remote(8000)
			if err != nil {
				t.Fatalf("remote → pod:8000: %v", err)
			}
			// The app sees the client as the passthrough source, except in
			// TPROXY mode, where it sees the client's own address.
			appPeer := passSource[f]
			if mode == "tproxy" {
				appPeer = lab.RemoteLinkAddr(f)
			}
			if appAt := netip.AddrPortFrom(lab.PodAddr(f), 18000); r.Server != srvApp || r.Local != appAt || r.Peer.Addr() != appPeer {
				t.Errorf("remote → pod:8000 answered by %s at %s seeing peer %s, want %s at %s seeing %s",
					r.Server, r.Local, r.Peer, srvApp, appAt, appPeer)
			}
			in := wantRoute(t, proxy.handled(mark), route{Listener: inbound(f), Handler: inbound(f), Chain: controlplane.InboundClusterName(8000),
				Cluster: controlplane.InboundClusterName(8000), Original: netip.AddrPortFrom(lab.PodAddr(f), 8000),
				Upstream: netip.AddrPortFrom(lab.PodAddr(f), 18000)})
			if mode == "tproxy" && in.Peer.Addr() != lab.RemoteLinkAddr(f) {
				t.Errorf("tproxy: the proxy saw the client as %s, want the remote's own address %s", in.Peer, lab.RemoteLinkAddr(f))
			}
			mark = proxy.mark()
			if r, err := remote(8100); err == nil {
				t.Errorf("remote → pod:8100 was answered by %s at %s; an app bound only to loopback must not be reachable", r.Server, r.Local)
			}
			wantRoute(t, proxy.handled(mark), route{Listener: inbound(f), Handler: inbound(f), Chain: controlplane.InboundClusterName(8100),
				Cluster: controlplane.InboundClusterName(8100), Upstream: netip.AddrPortFrom(lab.PodAddr(f), 18100)})
			mark = proxy.mark()
			r, err = remote(otherPort)
			if err != nil {
				t.Fatalf("remote → pod:%d: %v", otherPort, err)
			}
			if r.Server != srvOther || r.Peer.Addr() != appPeer {
				t.Errorf("remote → pod:%d answered by %s seeing peer %s, want %s seeing %s", otherPort, r.Server, r.Peer, srvOther, appPeer)
			}
			wantRoute(t, proxy.handled(mark), route{Listener: inbound(f), Handler: inbound(f), Chain: controlplane.ChainPassthrough,
				Cluster: inboundPassthrough(f), Original: netip.AddrPortFrom(lab.PodAddr(f), otherPort)})

			// Port 22 is excluded from outbound capture: it never reaches the
			// proxy (and the remote refuses it).
			mark = proxy.mark()
			if _, err := dialApp(netip.AddrPortFrom(elsewhere[f], 22)); !lab.IsRefused(err) {
				t.Errorf("app → excluded port 22: %v, want refused by the remote", err)
			}
			if h := proxy.handled(mark); len(h) != 0 {
				t.Errorf("a connection to the excluded port 22 reached the proxy: %+v", h)
			}
		})
	}

	// The mesh file changes: a new backend endpoint and registry-only.
	before := cp.versions(t)
	writeFile(t, meshPath, v.meshFile("registry-only", backendEP2))
	cp.waitSynced(t, proxy, before)
	for _, f := range lab.Families {
		t.Run("changed/"+string(f), func(t *testing.T) {
			to := netip.AddrPortFrom(vip[f], 80)
			r, err := dialApp(to)
			if err != nil {
				t.Fatalf("app → %s: %v", to, err)
			}
			if want := netip.AddrPortFrom(backendEP2[v.endpoint(f)], 8080); r.Local != want {
				t.Errorf("after the endpoint change app → %s reached %s, want %s", to, r.Local, want)
			}
			unknown := netip.AddrPortFrom(elsewhere[f], anyPort)
			mark := proxy.mark()
			if r, err := dialApp(unknown); err == nil {
				t.Errorf("registry-only: app → %s was answered by %s", unknown, r)
			}
			wantRoute(t, proxy.handled(mark), route{Listener: outbound(f), Handler: outbound(f), Chain: controlplane.ChainPassthrough,
				Cluster: controlplane.ClusterBlackhole, Original: unknown})
		})
	}

	// An invalid change, an emptied file and a truncated one (which would
	// remove the only workload) are refused; the proxy keeps its config, and
	// /debug/nodes and the metrics say why.
	good := v.meshFile("registry-only", backendEP2)
	before = cp.versions(t)
	for _, bad := range []struct{ name, content, want string }{
		{"invalid", strings.Replace(good, "port: 5432", "port: 70000", 1), `"70000" is not a port`},
		{"empty", "\n# being rewritten\n", `(document): "" is empty`},
		{"truncated", good[:strings.Index(good, "workloads:")], "removes 1 of the 1 served workloads (app): held back"},
	} {
		writeFile(t, meshPath, bad.content)
		cp.waitRejected(t, bad.want)
		if after := cp.versions(t); after != before {
			t.Errorf("the %s mesh file changed the served versions: %v → %v", bad.name, before, after)
		}
		if r, err := dialApp(netip.AddrPortFrom(dbVIP[lab.IPv4], 5432)); err != nil || r.Server != srvDB {
			t.Errorf("after the %s change app → db: %v %v", bad.name, r, err)
		}
	}
	if m := cp.metrics(t); !strings.Contains(m, `detour_config_updates_total{result="rejected"} 3`) {
		t.Errorf("metrics do not count the 3 rejected changes:\n%s", m)
	}
}

func outbound(f lab.Family) string {
	if f == lab.IPv6 {
		return controlplane.ListenerOutboundIPv6
	}
	return controlplane.ListenerOutbound
}

func dnsListener(f lab.Family) string {
	if f == lab.IPv6 {
		return controlplane.ListenerDNSIPv6
	}
	return controlplane.ListenerDNS
}

// answerTXT decodes the lab resolver's TXT answer.
func answerTXT(t *testing.T, m dnsmessage.Message) lab.Reply {
	t.Helper()
	var txt strings.Builder
	for _, a := range m.Answers {
		if b, ok := a.Body.(*dnsmessage.TXTResource); ok {
			txt.WriteString(strings.Join(b.TXT, ""))
		}
	}
	var r lab.Reply
	if err := json.Unmarshal([]byte(txt.String()), &r); err != nil {
		t.Errorf("TXT answer %q: %v", txt.String(), err)
	}
	return r
}

func inbound(f lab.Family) string {
	if f == lab.IPv6 {
		return controlplane.ListenerInboundIPv6
	}
	return controlplane.ListenerInbound
}

func inboundPassthrough(f lab.Family) string {
	if f == lab.IPv6 {
		return controlplane.ClusterInboundPassthroughIPv6
	}
	return controlplane.ClusterInboundPassthroughIPv4
}

// wantRoute checks that exactly one connection was handled, as want says (its
// zero fields are not compared), and returns it.
func wantRoute(t *testing.T, got []route, want route) route {
	t.Helper()
	if len(got) != 1 {
		t.Errorf("the proxy handled %d connections, want 1: %+v", len(got), got)
		if len(got) == 0 {
			return route{}
		}
	}
	g := got[0]
	check := func(field, got, want string) {
		if want != "" && got != want {
			t.Errorf("proxy route %s = %q, want %q (route %+v)", field, got, want, g)
		}
	}
	check("listener", g.Listener, want.Listener)
	check("handler", g.Handler, want.Handler)
	check("chain", g.Chain, want.Chain)
	check("cluster", g.Cluster, want.Cluster)
	check("query", g.Query, want.Query)
	if want.Original.IsValid() {
		check("original destination", g.Original.String(), want.Original.String())
	}
	if want.Upstream.IsValid() {
		check("upstream", g.Upstream.String(), want.Upstream.String())
	}
	return g
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// cpProcess is `detour control-plane` running as a child process.
type cpProcess struct {
	xds, http string
	mu        sync.Mutex
	logs      bytes.Buffer
}

func startControlPlane(t *testing.T, meshPath string) *cpProcess {
	t.Helper()
	cmd := exec.Command(detourBin, "control-plane", "--config", meshPath,
		"--xds-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
		"--watch-interval", "20ms", "--settle", "100ms", "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cp := &cpProcess{}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		if err := cmd.Wait(); err != nil {
			t.Errorf("control plane exited: %v", err)
		}
		if t.Failed() {
			cp.mu.Lock()
			t.Logf("control plane log:\n%s", cp.logs.String())
			cp.mu.Unlock()
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Bytes()
			cp.mu.Lock()
			cp.logs.Write(line)
			cp.logs.WriteByte('\n')
			cp.mu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				XDS  string `json:"xds"`
				HTTP string `json:"http"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "control plane listening" {
				cp.mu.Lock()
				cp.xds, cp.http = rec.XDS, rec.HTTP
				cp.mu.Unlock()
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("control plane did not start:\n%s", cp.logs.String())
	}
	return cp
}

// node reads the node's entry of /debug/nodes, and whether the last change was
// rejected.
func (cp *cpProcess) node(t *testing.T) (xds.NodeStatus, string) {
	t.Helper()
	resp, err := http.Get("http://" + cp.http + "/debug/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		LastError string           `json:"lastError"`
		Nodes     []xds.NodeStatus `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	for _, n := range out.Nodes {
		if n.NodeID == nodeID {
			return n, out.LastError
		}
	}
	return xds.NodeStatus{}, out.LastError
}

func (cp *cpProcess) versions(t *testing.T) xds.Versions {
	n, _ := cp.node(t)
	return xds.Versions{Listeners: n.Resources["listeners"].Served, Clusters: n.Resources["clusters"].Served}
}

// waitSynced waits until the control plane serves versions other than before
// and the proxy has applied and ACKed them.
func (cp *cpProcess) waitSynced(t *testing.T, p *testProxy, before xds.Versions) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, _ := cp.node(t)
		lr, cr := n.Resources["listeners"], n.Resources["clusters"]
		pl, pc := p.versions()
		served := xds.Versions{Listeners: lr.Served, Clusters: cr.Served}
		if served != before && lr.InSync && cr.InSync && pl == lr.Served && pc == cr.Served {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy not in sync: control plane %+v, proxy listeners %s clusters %s", n, pl, pc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRejected waits until the control plane reports a rejected change whose
// error contains want.
func (cp *cpProcess) waitRejected(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, lastErr := cp.node(t)
		if strings.Contains(lastErr, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane did not report %q; last error %q", want, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (cp *cpProcess) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + cp.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
