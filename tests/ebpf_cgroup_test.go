//go:build linux

package tests

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
	detourbackends "github.com/detour-mesh/detour/redirect/backends"
)

// TestEBPFCgroup runs the cgroup scope (`--cgroup PATH`, what a VM service
// uses) through the CLI, IPv4 and IPv6, inside the lab's namespaces: the app
// and the proxy run in a cgroup the test creates below the suite's own (the
// cgroup helper, born there), the test process itself stays outside it.
// Inside, O1 (also from v4-mapped sockets) reaches the proxy, which reads
// the original destination with SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST; O2
// and O3 and the proxy's own dials are left alone; outside, nothing is
// redirected. status and check answer with their exit codes; inbound capture
// with --cgroup puts the eBPF backend's nftables table into the namespace the
// command acts in (--netns); uninstall leaves no pin, no table and no program
// on the cgroup.
func TestEBPFCgroup(t *testing.T) {
	privtest.Require(t, "ip", "setpriv", "nft")
	for _, f := range lab.Families {
		t.Run(string(f), func(t *testing.T) {
			p := newPod(t, variant{family: f, backend: ebpfBackend, mode: "redirect"})
			cg := filepath.Join(ebpfNode.cgroup, fmt.Sprintf("scope-%s-%d", f, p.rnd.Uint32(1, 1<<30)))
			if err := os.Mkdir(cg, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				// The helper has exited by now (its cleanup ran first).
				if err := os.Remove(cg); err != nil {
					t.Errorf("remove the scope's cgroup: %v", err)
				}
			})
			h := startHelper(t, p, cg)
			h.serve(srvOutbound, netip.AddrPortFrom(f.Unspecified(), p.outPort))
			h.serve(srvInbound, netip.AddrPortFrom(f.Unspecified(), p.inPort))

			ex, other := p.remotePort(), p.remotePort()
			excluded := netip.MustParsePrefix("198.51.100.0/24")
			kept := netip.MustParseAddr("192.0.2.77")
			if f == lab.IPv6 {
				excluded, kept = netip.MustParsePrefix("2001:db8:ffff:1::/64"), netip.MustParseAddr("2001:db8:ffff:2::77")
			}
			args := p.withFlags("install", "--cgroup", cg, "--inbound=false",
				"--exclude-outbound-ports", strconv.Itoa(int(ex)), "--exclude-outbound-cidrs", excluded.String())
			if attached := cgroupPrograms(t, cg); attached != 0 {
				t.Fatalf("before install, %d programs are attached to the new cgroup", attached)
			}
			if r := p.detourCmd(nil, args...); r.code != 0 {
				t.Fatalf("install --cgroup:\n%s", r)
			}
			if r := p.detourCmd(nil, args...); r.code != 0 || !strings.Contains(r.stdout, "no changes") {
				t.Errorf("L2 re-install --cgroup: want exit 0 and no changes:\n%s", r)
			}
			if attached := cgroupPrograms(t, cg); attached == 0 {
				t.Errorf("installed, yet no program is attached to the cgroup %s", cg)
			}
			if r := p.detourCmd(nil, "status", "--cgroup", cg); r.code != 0 || !strings.Contains(r.stdout, "detour is installed (ebpf") || !strings.Contains(r.stdout, "connect4") {
				t.Errorf("status --cgroup: want exit 0 and the programs:\n%s", r)
			}
			check := append([]string{"check"}, args[1:]...)
			if r := p.detourCmd(nil, check...); r.code != 0 {
				t.Errorf("check --cgroup, in sync: want exit 0:\n%s", r)
			}
			// validate probes from inside the cgroup: only there is a
			// connection redirected (it said "FAIL … not redirected", exit 5).
			validate := append([]string{"validate"}, args[1:]...)
			if r := p.detourCmd(nil, validate...); r.code != 0 || !strings.Contains(r.stdout, "ok   "+string(f)) || !strings.Contains(r.stdout, "held by the proxy's socket") {
				t.Errorf("validate --cgroup, the proxy (the helper) on the outbound port: want exit 0 and the probe held by its socket:\n%s", r)
			}
			drifted := p.withFlags("check", "--cgroup", cg, "--inbound=false")
			if r := p.detourCmd(nil, drifted...); r.code != 3 {
				t.Errorf("check --cgroup with another config: want exit 3 (drift):\n%s", r)
			}
			// The namespace scope of the same pin directory holds nothing.
			if r := p.detourCmd(nil, p.withFlags("check", "--inbound=false")...); r.code != 4 {
				t.Errorf("check without --cgroup (the namespace scope): want exit 4, nothing installed there:\n%s", r)
			}

			// notExcluded is a remote destination outside the excluded CIDR.
			notExcluded := func() netip.AddrPort {
				return netip.AddrPortFrom(addrOutside(p.rnd, f, excluded), p.remotePort())
			}
			inside := func(why string, o lab.DialOptions, want string) {
				t.Helper()
				got, err := h.dial(o)
				checkReply(t, why+" (inside the cgroup)", o, want, got, err)
			}
			for i := range cases() {
				inside("O1 any address:port", p.app(i, netip.AddrPortFrom(kept, p.remotePort())), srvOutbound)
				inside("O1 any address:port", p.app(i, notExcluded()), srvOutbound)
				inside("O2 excluded port", p.app(i, netip.AddrPortFrom(kept, ex)), srvRemote)
				inside("O3 excluded CIDR", p.app(i, netip.AddrPortFrom(excluded.Addr().Next(), other)), srvRemote)
				inside("the proxy's own dial", lab.DialOptions{To: p.remoteDest(), Cred: p.proxyCred()}, srvRemote)
				if f == lab.IPv4 {
					mapped := p.app(i, notExcluded())
					mapped.Mapped = true
					inside("O1 from a v4-mapped IPv6 socket", mapped, srvOutbound)
					mapped = p.app(i, netip.AddrPortFrom(kept, ex))
					mapped.Mapped = true
					inside("O2 from a v4-mapped IPv6 socket", mapped, srvRemote)
				}
				// The test process is outside the scope: not redirected.
				p.outbound("O1 outside the cgroup", p.app(i, p.remoteDest()), srvRemote)
			}
			if got := nftTables(p); got != "" {
				t.Errorf("inbound disabled, yet the namespace holds nftables tables:\n%s", got)
			}

			cgroupExplainLive(t, p, cg)
			cgroupInbound(t, p, h, cg, kept)

			for range 2 {
				if r := p.detourCmd(nil, "uninstall", "--cgroup", cg); r.code != 0 {
					t.Fatalf("L4 uninstall --cgroup:\n%s", r)
				}
			}
			if attached := cgroupPrograms(t, cg); attached != 0 {
				t.Errorf("after uninstall, %d programs remain attached to the cgroup %s", attached, cg)
			}
			if left := pinsLeft(t, p.env); len(left) > 0 {
				t.Errorf("after uninstall, BPF pins of detour remain: %q", left)
			}
			if got := nftTables(p); got != "" {
				t.Errorf("after uninstall the namespace holds nftables tables:\n%s", got)
			}
			if r := p.detourCmd(nil, "status", "--cgroup", cg); r.code != 0 || !strings.Contains(r.stdout, "not installed") {
				t.Errorf("status --cgroup after uninstall: want exit 0, not installed:\n%s", r)
			}
			if r := p.detourCmd(nil, check...); r.code != 4 {
				t.Errorf("check --cgroup after uninstall: want exit 4 (nothing installed):\n%s", r)
			}
			o := p.app(0, notExcluded())
			got, err := h.dial(o)
			checkReply(t, "after uninstall (inside the cgroup)", o, srvRemote, got, err)
			// The helper, the proxy, still holds the outbound port; its cgroup
			// holds no scope any more.
			cgroupValidateProxyOutside(t, p, cg)
		})
	}
}

// cgroupExplainLive: `explain --live --cgroup` opens its connection from
// inside the cgroup, like validate: only there is it redirected (it said
// "did not arrive … NOT as the verdict says", exit 5). A second scope beside
// the test's, whose outbound port nobody holds (--live listens there).
func cgroupExplainLive(t *testing.T, p *pod, cg string) {
	t.Helper()
	cg2 := cg + "-live"
	if err := os.Mkdir(cg2, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg2); err != nil {
			t.Errorf("remove the second scope's cgroup: %v", err)
		}
	})
	port := strconv.Itoa(int(p.rnd.Port()))
	if r := p.detourCmd(nil, p.withFlags("install", "--cgroup", cg2, "--inbound=false", "--outbound-port", port)...); r.code != 0 {
		t.Fatalf("install --cgroup of a second scope:\n%s", r)
	}
	explain := p.withFlags("explain", "--cgroup", cg2, "--outbound-port", port, "--live", "--timeout", "2s",
		"--to", p.remoteDest().String(), "--uid", "60100", "--gid", "60100")
	if r := p.detourCmd([]string{"DETOUR_INBOUND=false"}, explain...); r.code != 0 || !strings.Contains(r.stdout, "live:       arrived on port "+port) {
		t.Errorf("explain --live --cgroup: want exit 0 and the connection arrived on :%s:\n%s", port, r)
	}
	if r := p.detourCmd(nil, "uninstall", "--cgroup", cg2); r.code != 0 {
		t.Fatalf("uninstall --cgroup of the second scope:\n%s", r)
	}
}

// cgroupValidateProxyOutside: a scope whose proxy runs outside its cgroup
// (vm.md's app in myapp.service, Envoy in envoy.service) redirects to the
// proxy, but the proxy's SO_ORIGINAL_DST is answered only below the scope's
// cgroup: the proxy cannot learn any connection's destination. validate
// said "ok … held by the proxy's socket" (exit 0); it must exit 5 naming the
// proxy's cgroup and the scope's, and its summary must not say the probes
// were not redirected. A scope on a sibling of the test's cgroup
// cg, where the helper holds the outbound port and no scope is left.
func cgroupValidateProxyOutside(t *testing.T, p *pod, cg string) {
	t.Helper()
	app := cg + "-app"
	if err := os.Mkdir(app, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(app); err != nil {
			t.Errorf("remove the app-only scope's cgroup: %v", err)
		}
	})
	args := p.withFlags("install", "--cgroup", app, "--inbound=false")
	if r := p.detourCmd(nil, args...); r.code != 0 {
		t.Fatalf("install --cgroup of a scope without its proxy:\n%s", r)
	}
	validate := append([]string{"validate"}, args[1:]...)
	r := p.detourCmd(nil, validate...)
	if r.code != 5 || !strings.Contains(r.stdout, "FAIL "+string(p.v.family)) || !strings.Contains(r.stdout, "outside the scope's cgroup "+app) || !strings.Contains(r.stdout, cg) {
		t.Errorf("validate --cgroup with the proxy in another cgroup (%s): want exit 5, the probe failed naming the proxy's cgroup and the scope's:\n%s", cg, r)
	}
	// The summary said "1 of 1 probes were not redirected": they were, to a
	// proxy that cannot learn where they were going.
	if !strings.Contains(r.stderr, "probes were redirected to the proxy, but its socket is outside the scope's cgroup "+app) || strings.Contains(r.stderr, "not redirected") {
		t.Errorf("validate --cgroup with the proxy in another cgroup: the summary must say the probes reached the proxy outside the scope, not that they were not redirected:\n%s", r)
	}
	if r := p.detourCmd(nil, "uninstall", "--cgroup", app); r.code != 0 {
		t.Fatalf("uninstall --cgroup of the app-only scope:\n%s", r)
	}
}

// cgroupInbound installs --cgroup with inbound capture over the
// outbound-only install: the inbound nftables table goes into the namespace
// given by --netns (the pod), the inbound proxy in the cgroup recovers the
// original destination from conntrack (the getsockopt program passes it
// through), and outbound to kept (not excluded) keeps working. The caller uninstalls.
func cgroupInbound(t *testing.T, p *pod, h *helperProc, cg string, kept netip.Addr) {
	t.Helper()
	exPort := p.appPort(netip.Addr{})
	args := p.withFlags("install", "--cgroup", cg, "--exclude-inbound-ports", strconv.Itoa(int(exPort)))
	if r := p.detourCmd(nil, args...); r.code != 0 {
		t.Fatalf("install --cgroup with inbound:\n%s", r)
	}
	table := detourbackends.EBPFInboundTableFor(cg)
	if got := nftTables(p); got != "table inet "+table {
		t.Errorf("nft list tables in the --netns namespace = %q, want the cgroup scope's inbound table %s", got, table)
	}
	if out, err := p.lab.Remote.Run(p.ctx, "nft", "list", "tables"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("the remote namespace (not --netns) holds tables %q (%v), want none", out, err)
	}
	if r := p.detourCmd(nil, append([]string{"check"}, args[1:]...)...); r.code != 0 {
		t.Errorf("check --cgroup with inbound installed: want exit 0:\n%s", r)
	}
	if r := p.detourCmd(nil, "status", "--cgroup", cg); r.code != 0 || !strings.Contains(r.stdout, table) || !strings.Contains(r.stdout, "connect4") {
		t.Errorf("status --cgroup: want the programs and the inbound table %s:\n%s", table, r)
	}
	// The table is the cgroup scope's: the namespace scope (no --cgroup)
	// neither shows it nor removes it (docs/ebpf.md).
	// Its passthrough address on lo is the namespace's: status names whose.
	if r := p.detourCmd(nil, "status"); r.code != 0 || showsTable(r.stdout, table) || strings.Contains(r.stdout, "connect4") ||
		!strings.Contains(r.stdout, "detour is not installed") || !strings.Contains(r.stdout, "kept for the cgroup scope "+cg) {
		t.Errorf("status without --cgroup: want nothing of the cgroup scope, not installed, and the addresses on lo kept for %s:\n%s", cg, r)
	}
	// One scope per namespace captures inbound: the namespace scope's
	// install with inbound is refused (exit 1) naming the cgroup scope, and
	// changes nothing; with --inbound=false it goes on.
	if r := p.detour(p.withFlags("install")...); r.code != 1 || !strings.Contains(r.stderr, "the cgroup scope "+cg) || !strings.Contains(r.stderr, "--inbound=false") {
		t.Errorf("install of the namespace scope with inbound beside the cgroup scope's: want exit 1 naming the cgroup scope and --inbound=false:\n%s", r)
	}
	if got := nftTables(p); got != "table inet "+table {
		t.Errorf("a refused install changed the namespace's tables: nft list tables = %q", got)
	}
	// Nor may the namespace's capture with another backend take inbound too.
	for _, b := range []string{"nftables", "iptables-nft"} {
		if r := p.detour(p.withFlags("install", "--backend", b)...); r.code != 1 || !strings.Contains(r.stderr, "the cgroup scope "+cg) || !strings.Contains(r.stderr, "--inbound=false") {
			t.Errorf("install --backend %s with inbound beside the cgroup scope's: want exit 1 naming the cgroup scope and --inbound=false:\n%s", b, r)
		}
	}
	if got := nftTables(p); got != "table inet "+table {
		t.Errorf("a refused install changed the namespace's tables: nft list tables = %q", got)
	}
	if r := p.detourCmd(nil, "status"); r.code != 0 || strings.Contains(r.stdout, "connect4") || showsTable(r.stdout, "") {
		t.Errorf("status of the namespace scope after its refused install: want no programs and no table:\n%s", r)
	}
	if r := p.detour(p.withFlags("install", "--inbound=false")...); r.code != 0 {
		t.Errorf("install of the namespace scope with --inbound=false beside the cgroup scope's inbound:\n%s", r)
	}
	if r := p.detourCmd(nil, "uninstall"); r.code != 0 {
		t.Fatalf("uninstall without --cgroup:\n%s", r)
	}
	if got := nftTables(p); got != "table inet "+table {
		t.Errorf("uninstall without --cgroup changed the cgroup scope's inbound table: nft list tables = %q", got)
	}
	// Nor did that install without inbound, or this uninstall, take the
	// passthrough addresses on lo that the cgroup scope's inbound uses.
	if r := p.detourCmd(nil, append([]string{"check"}, args[1:]...)...); r.code != 0 {
		t.Errorf("check --cgroup after the namespace scope's install --inbound=false and uninstall: want exit 0:\n%s", r)
	}
	to := func(port uint16) lab.DialOptions {
		return lab.DialOptions{To: netip.AddrPortFrom(p.podAddr(), port), From: p.remoteAddr()}
	}
	for i := range cases() {
		o := p.app(i, netip.AddrPortFrom(kept, p.remotePort()))
		got, err := h.dial(o)
		checkReply(t, "O1 with inbound on (inside the cgroup)", o, srvOutbound, got, err)
		p.inbound("I1 any port of the workload", to(p.appPort(netip.Addr{})), srvInbound)
		p.inbound("I2 excluded inbound port", to(exPort), srvApp)
	}
}

// showsTable reports whether status output prints the rules of the nftables
// table name (any table when name is ""), not merely names it.
func showsTable(out, name string) bool {
	return strings.Contains(out, "add table inet "+name) || strings.Contains(out, "add rule inet "+name)
}

// checkReply checks a dial's answer as pod.expect does: the named server
// answered, it recovered the dialed destination, and a server reached
// untouched saw the dialed address itself.
func checkReply(t *testing.T, why string, o lab.DialOptions, want string, got lab.Reply, err error) {
	t.Helper()
	switch {
	case err != nil:
		t.Errorf("%s: %s: want %s to answer, got %v", why, o, want, err)
	case got.Server != want:
		t.Errorf("%s: %s: answered by %s, want %s (%s)", why, o, got.Server, want, got)
	case got.Original != o.To:
		t.Errorf("%s: %s: %s recovered original destination %s, want %s (%s)", why, o, want, got.Original, o.To, got)
	case (want == srvRemote || want == srvApp) && (got.Local != o.To || got.Redirected()):
		t.Errorf("%s: %s: %s saw the connection arrive at %s, want %s untouched (%s)", why, o, want, got.Local, o.To, got)
	}
}

// cgroupAttachTypes are the cgroup hooks the eBPF backend uses.
var cgroupAttachTypes = []uint32{
	unix.BPF_CGROUP_INET4_CONNECT, unix.BPF_CGROUP_INET6_CONNECT, unix.BPF_CGROUP_SOCK_OPS,
	unix.BPF_CGROUP_GETSOCKOPT, unix.BPF_CGROUP_INET4_GETPEERNAME, unix.BPF_CGROUP_INET6_GETPEERNAME,
	unix.BPF_CGROUP_UDP4_SENDMSG, unix.BPF_CGROUP_UDP6_SENDMSG, unix.BPF_CGROUP_UDP4_RECVMSG, unix.BPF_CGROUP_UDP6_RECVMSG,
}

// cgroupPrograms counts the BPF programs attached directly to the cgroup
// directory on the backend's hooks (BPF_PROG_QUERY, not the effective ones
// inherited from above), as `bpftool cgroup show` lists them.
func cgroupPrograms(t *testing.T, cgroup string) int {
	t.Helper()
	dir, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	total := 0
	for _, at := range cgroupAttachTypes {
		// union bpf_attr, query: target_fd, attach_type, query_flags,
		// attach_flags, prog_ids, prog_cnt (and later fields left zero).
		var attr struct {
			targetFD, attachType, queryFlags, attachFlags uint32
			progIDs                                       uint64
			progCnt, _                                    uint32
			rest                                          [4]uint64
		}
		attr.targetFD, attr.attachType = uint32(dir.Fd()), at
		if _, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_QUERY, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)); errno != 0 {
			t.Fatalf("query the programs attached to %s (attach type %d): %v", cgroup, at, errno)
		}
		total += int(attr.progCnt)
	}
	return total
}
