//go:build linux

package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

const ebpfBackend = "ebpf"

// ebpfNode is the node the eBPF backend's tests share: a private bpffs and
// a cgroup of this run's own, set up on first use and removed when the run
// ends (TestMain). The test process moves into the cgroup for the whole
// run, because a socket belongs to the cgroup of the process that made it
// and the lab's servers and clients are this process's sockets; a cgroup
// holds a process once, so every ebpf test shares it. Namespaces that are
// not enrolled are left alone by the programs, so the other backends' tests
// running meanwhile are not affected.
var ebpfNode struct {
	once   sync.Once
	skip   string // a missing prerequisite
	err    error
	bpffs  string // mount point of the private bpffs
	cgroup string // DETOUR_EBPF_CGROUP_ROOT
	origin string // the cgroup the process came from
}

func ebpfSetup() {
	n := &ebpfNode
	root := "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		root = "/sys/fs/cgroup"
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			n.skip = "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
			return
		}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		n.err = err
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			n.origin = filepath.Join(root, rest)
		}
	}
	if n.origin == "" {
		n.skip = "this process is in no cgroup v2 cgroup"
		return
	}
	removeStale(root)
	if n.bpffs, n.err = os.MkdirTemp("", fmt.Sprintf("detour-e2e-bpffs-%d-", os.Getpid())); n.err != nil {
		return
	}
	if err := unix.Mount("bpf", n.bpffs, "bpf", 0, "mode=0700"); err != nil {
		n.err = fmt.Errorf("mount private bpffs: %w", err)
		os.Remove(n.bpffs)
		n.bpffs = ""
		return
	}
	n.cgroup = filepath.Join(root, fmt.Sprintf("detour-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if n.err = os.Mkdir(n.cgroup, 0o755); n.err != nil {
		n.cgroup = ""
		return
	}
	if err := os.WriteFile(filepath.Join(n.cgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		n.err = fmt.Errorf("enter test cgroup: %w", err)
	}
}

// removeStale removes what a run that could not tear down (killed, or ended
// by -timeout's panic) left: the private bpffs mounts and cgroups named with
// the id of a process that is gone. Unmounting a bpffs drops its pins, and
// with them the links that keep detour's programs attached in the run's
// cgroup. A name whose process is alive (another run now) is left alone.
func removeStale(cgroupRoot string) {
	mounts, _ := filepath.Glob(filepath.Join(os.TempDir(), "detour-e2e-bpffs-*"))
	for _, m := range mounts {
		if _, dead := privtest.DeadRun(m, "detour-e2e-bpffs-"); dead {
			_ = unix.Unmount(m, unix.MNT_DETACH)
			os.Remove(m)
		}
	}
	cgroups, _ := filepath.Glob(filepath.Join(cgroupRoot, "detour-e2e-*"))
	for _, c := range cgroups {
		if _, dead := privtest.DeadRun(c, "detour-e2e-"); dead {
			os.Remove(c) // refused while a process is still in it
		}
	}
}

// ebpfTeardown moves the process back and removes the cgroup and the bpffs;
// TestMain calls it after the run.
func ebpfTeardown() error {
	n := &ebpfNode
	var errs []error
	if n.cgroup != "" {
		if err := os.WriteFile(filepath.Join(n.origin, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			errs = append(errs, fmt.Errorf("leave test cgroup: %w", err))
		}
		if err := os.Remove(n.cgroup); err != nil {
			errs = append(errs, fmt.Errorf("remove test cgroup: %w", err))
		}
	}
	if n.bpffs != "" {
		if err := unix.Unmount(n.bpffs, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount private bpffs: %w", err))
		}
		os.Remove(n.bpffs)
	}
	return errors.Join(errs...)
}

// ebpfEnv gives one pod of the eBPF backend a pin directory of its own on the
// shared private bpffs (so what its uninstall leaves can be checked alone)
// and the shared cgroup as DETOUR_EBPF_CGROUP_ROOT: the CLI attaches there,
// never to the machine's cgroups. Each pin directory gets its own programs on
// that cgroup; they act only for the namespaces enrolled in their own maps.
func ebpfEnv(t *testing.T) []string {
	t.Helper()
	ebpfNode.once.Do(ebpfSetup)
	if ebpfNode.skip != "" {
		privtest.Skip(t, ebpfNode.skip)
	}
	if ebpfNode.err != nil {
		t.Fatal(ebpfNode.err)
	}
	dir, err := os.MkdirTemp(ebpfNode.bpffs, "pod-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Unpinning what a test left installed releases its links and
		// maps (the kernel detaches a link once nothing holds it).
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pin dir: %v", err)
		}
	})
	return []string{"DETOUR_EBPF_PIN_DIR=" + filepath.Join(dir, "detour"), "DETOUR_EBPF_CGROUP_ROOT=" + ebpfNode.cgroup}
}

// TestEBPF runs scenarios through the CLI with --backend ebpf
// (network-namespace scope), IPv4 and IPv6: outbound O1, O2, O3 with inbound
// off (I5), then inbound through the eBPF backend's own nftables table (I1,
// I2, I4, the O8 hairpin and passthrough, explain of inbound), L2 and L4
// for both, and that uninstall leaves no table and no BPF pin. The CLI exits
// before any connection is made: the kernel holds the redirection.
func TestEBPF(t *testing.T) {
	privtest.Require(t, "ip", "setpriv", "nft")
	for _, f := range lab.Families {
		t.Run(string(f), func(t *testing.T) {
			p := newPod(t, variant{family: f, backend: ebpfBackend, mode: "redirect"})
			env := p.env
			p.startProxies()
			ex, other := p.remotePort(), p.remotePort() // remote servers on both
			excluded := netip.MustParsePrefix("198.51.100.0/24")
			kept := netip.MustParseAddr("192.0.2.77")
			if f == lab.IPv6 {
				excluded, kept = netip.MustParsePrefix("2001:db8:ffff:1::/64"), netip.MustParseAddr("2001:db8:ffff:2::77")
			}
			args := p.withFlags("install", "--inbound=false", "--exclude-outbound-ports", strconv.Itoa(int(ex)),
				"--exclude-outbound-cidrs", excluded.String())
			if r := p.detourCmd(env, args...); r.code != 0 {
				t.Fatalf("install:\n%s", r)
			}
			if r := p.detourCmd(env, args...); r.code != 0 || !strings.Contains(r.stdout, "no changes") {
				t.Errorf("L2 re-install: want exit 0 and no changes:\n%s", r)
			}
			for i := range cases() {
				p.outbound("O1 any address:port", p.app(i, netip.AddrPortFrom(kept, p.remotePort())), srvOutbound)
				p.outbound("O2 excluded port", p.app(i, netip.AddrPortFrom(kept, ex)), srvRemote)
				p.outbound("O3 excluded CIDR", p.app(i, netip.AddrPortFrom(excluded.Addr().Next(), other)), srvRemote)
				p.inbound("I5 inbound disabled", p.client(i, p.appPort(netip.Addr{})), srvApp)
			}
			if got := nftTables(p); got != "" {
				t.Errorf("I5: inbound disabled, yet the namespace holds nftables tables:\n%s", got)
			}
			ebpfInbound(t, p, env)
			for range 2 {
				if r := p.detourCmd(env, "uninstall"); r.code != 0 {
					t.Fatalf("L4 uninstall:\n%s", r)
				}
			}
			port := p.remotePort()
			p.outbound("after uninstall", p.app(0, netip.AddrPortFrom(kept, port)), srvRemote)
			p.inbound("after uninstall", p.client(0, p.appPort(netip.Addr{})), srvApp)
			if got := nftTables(p); got != "" {
				t.Errorf("after uninstall the namespace holds nftables tables:\n%s", got)
			}
			if left := pinsLeft(t, env); len(left) > 0 {
				t.Errorf("after uninstall, BPF pins of detour remain: %q", left)
			}
		})
	}
}

// ebpfInbound installs --backend ebpf with inbound capture (the eBPF
// backend's nftables table, `inet detour_ebpf_inbound`) over the pod's
// outbound-only install and checks I1, I2, I4, O8, explain and check; the
// caller uninstalls.
func ebpfInbound(t *testing.T, p *pod, env []string) {
	t.Helper()
	exPort := p.appPort(netip.Addr{})
	ex4, ex6 := subnet(p.rnd, lab.IPv4, 26), subnet(p.rnd, lab.IPv6, 64)
	mine := ex4
	if p.v.family == lab.IPv6 {
		mine = ex6
	}
	args := p.withFlags("install", "--exclude-inbound-ports", strconv.Itoa(int(exPort)),
		"--exclude-inbound-source-cidrs", csv(ex6, ex4))
	if r := p.detourCmd(env, args...); r.code != 0 {
		t.Fatalf("install with inbound:\n%s", r)
	}
	if r := p.detourCmd(env, args...); r.code != 0 || !strings.Contains(r.stdout, "no changes") {
		t.Errorf("L2 re-install with inbound: want exit 0 and no changes:\n%s", r)
	}
	if got := nftTables(p); got != "table inet detour_ebpf_inbound" {
		t.Errorf("nft list tables = %q, want only the eBPF backend's inbound table", got)
	}
	if len(pinsLeft(t, env)) == 0 {
		t.Errorf("installed, yet nothing is pinned under DETOUR_EBPF_PIN_DIR (the uninstall check below would prove nothing)")
	}
	checkArgs := append([]string{"check"}, args[1:]...)
	if r := p.detourCmd(env, checkArgs...); r.code != 0 {
		t.Errorf("check with inbound installed: want exit 0 (in sync):\n%s", r)
	}
	if r := p.detourCmd(env, "status"); r.code != 0 || !strings.Contains(r.stdout, "detour_ebpf_inbound") || !strings.Contains(r.stdout, "connect4") {
		t.Errorf("status: want the programs and the inbound table:\n%s", r)
	}
	// from is a client outside the excluded sources (I4 has its own cases).
	from := func(port uint16) lab.DialOptions {
		return lab.DialOptions{To: netip.AddrPortFrom(p.podAddr(), port), From: addrOutside(p.rnd, p.v.family, mine)}
	}
	for i := range cases() {
		p.inbound("I1 any port of the workload", from(p.appPort(netip.Addr{})), srvInbound)
		p.inbound("I2 excluded inbound port", from(exPort), srvApp)
		to := netip.AddrPortFrom(p.podAddr(), p.appPort(netip.Addr{}))
		p.inbound("I4 excluded source", lab.DialOptions{To: to, From: p.rnd.In(mine)}, srvApp)
		p.inbound("I4 other source", lab.DialOptions{To: to, From: addrOutside(p.rnd, p.v.family, mine)}, srvInbound)
		p.outbound("O1 with inbound on", p.app(i, p.remoteDest()), srvOutbound)
		p.outbound("O8 the proxy dialing the pod's own address (hairpin)", lab.DialOptions{To: to, Cred: p.proxyCred()}, srvInbound)
		p.outbound("O8 the proxy's passthrough", lab.DialOptions{To: to, From: p.passthroughSource(), Cred: p.proxyCred()}, srvApp)
	}
	p.inbound("I1 a closed port", from(p.rnd.Port()), srvInbound)
	// explain answers inbound from the installed table.
	for _, c := range []struct {
		port     uint16
		captured bool
	}{{p.rnd.Port(), true}, {exPort, false}} {
		eargs := append([]string{"explain", "-o", "json", "--inbound", "--from", from(0).From.String(),
			"--to", netip.AddrPortFrom(p.podAddr(), c.port).String()}, args[1:]...)
		r := p.detourCmd(env, eargs...)
		var e explainView
		if err := json.Unmarshal([]byte(r.stdout), &e); err != nil || r.code != 0 {
			t.Errorf("explain inbound: %v\n%s", err, r)
			continue
		}
		if e.AnsweredBy != "kernel" || e.Kernel == nil || e.Captured != c.captured || !e.Agree || !strings.Contains(e.Kernel.Rule, "detour_ebpf_inbound") && c.captured {
			t.Errorf("explain inbound to port %d: want captured %v from the inbound table, agreeing with the config:\n%s", c.port, c.captured, r)
		}
	}
}

// nftTables lists the pod's nftables tables, one a line.
func nftTables(p *pod) string {
	p.t.Helper()
	out, err := p.lab.Pod.Run(p.ctx, "nft", "list", "tables")
	if err != nil {
		p.t.Fatalf("nft list tables: %v\n%s", err, out)
	}
	return strings.TrimSpace(out)
}

// pinDir is DETOUR_EBPF_PIN_DIR of env.
func pinDir(env []string) string {
	var dir string
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "DETOUR_EBPF_PIN_DIR="); ok {
			dir = v
		}
	}
	return dir
}

// pinsLeft lists what remains under the test's pin directory.
func pinsLeft(t *testing.T, env []string) []string {
	t.Helper()
	dir := pinDir(env)
	var left []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && path != dir {
			left = append(left, path)
		}
		return nil
	})
	return left
}

// TestStaleRunLeftoversRemoved: a run killed before its teardown left a
// private bpffs and a cgroup named with its process id; the next run removes
// them, and leaves alone those of a run whose process is alive.
func TestStaleRunLeftoversRemoved(t *testing.T) {
	privtest.Require(t)
	root := t.TempDir() // stands in for the cgroup root: only directories are removed there
	dead := deadPID(t)
	staleMount := filepath.Join(os.TempDir(), fmt.Sprintf("detour-e2e-bpffs-%d-test", dead))
	if err := os.Mkdir(staleMount, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", staleMount, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(staleMount)
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(staleMount, unix.MNT_DETACH); os.Remove(staleMount) })
	staleCgroup := filepath.Join(root, fmt.Sprintf("detour-e2e-%d-1", dead))
	liveCgroup := filepath.Join(root, "detour-e2e-1-1") // pid 1 is alive
	for _, d := range []string{staleCgroup, liveCgroup} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	removeStale(root)
	if _, err := os.Stat(staleMount); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale bpffs %s is still there (%v)", staleMount, err)
	}
	if _, err := os.Stat(staleCgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale cgroup %s is still there (%v)", staleCgroup, err)
	}
	if _, err := os.Stat(liveCgroup); err != nil {
		t.Errorf("the cgroup of a live run was removed: %v", err)
	}
}

// deadPID is the id of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}

// TestEBPFStaleNamespaceScope: a namespace enrolled with `install --backend
// ebpf` and then deleted without an uninstall (`ip netns delete`) left its
// enrolment, entries and pins, and every command of the lean detour was
// handed to detour-ebpf for good; `status` and `uninstall` elsewhere said
// "not installed". Through the CLI: `status` in another namespace (text and
// -o json) names the scope as stale, `uninstall --stale` removes it alone
// (the pod's own capture stays), a second run has nothing to remove, and once
// the pod's uninstall leaves nothing pinned the lean detour no longer hands
// commands over.
func TestEBPFStaleNamespaceScope(t *testing.T) {
	privtest.Require(t, "ip", "setpriv", "nft")
	p := newPod(t, variant{family: lab.IPv4, backend: ebpfBackend, mode: "redirect"})
	p.startProxies()
	gone := privtest.NetNS(t)
	// privtest deletes it at the end: take the name back first, as the
	// deletion below removed it.
	t.Cleanup(func() { privtest.Run(t, "ip", "netns", "add", gone.Name) })
	if r := runDetour(t, p.ctx, p.env, "install", "--backend", "ebpf", "--inbound=false", "--netns", gone.Name); r.code != 0 {
		t.Fatalf("install in %s:\n%s", gone.Name, r)
	}
	if r := p.detour(p.withFlags("install", "--inbound=false")...); r.code != 0 {
		t.Fatalf("install in the pod:\n%s", r)
	}
	privtest.Run(t, "ip", "netns", "delete", gone.Name)

	const stale = "the stale network-namespace scope of netns cookie"
	var r result
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		// The kernel tears a namespace down shortly after its last holder.
		if r = p.detour("status"); strings.Contains(r.stdout, stale) || time.Now().After(deadline) {
			break
		}
	}
	if r.code != 0 || !strings.Contains(r.stdout, "detour is installed (ebpf") || !strings.Contains(r.stdout, "left behind, belonging to no install: ebpf: "+stale) {
		t.Errorf("status in the pod: want installed, and the deleted namespace's scope named as stale:\n%s", r)
	}
	other := privtest.NetNS(t)
	r = runDetour(t, p.ctx, p.env, "status", "--netns", other.Name, "-o", "json")
	var st struct {
		Installed bool
		Leftovers []string
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 || st.Installed || len(st.Leftovers) != 1 || !strings.Contains(st.Leftovers[0], stale) {
		t.Errorf("status -o json in a namespace without detour: want not installed, one stale leftover (%v):\n%s", err, r)
	}

	if r := p.detour("uninstall", "--stale", "--cgroup", "/sys/fs/cgroup"); r.code != 2 {
		t.Errorf("uninstall --stale --cgroup: want exit 2:\n%s", r)
	}
	if r := p.detour("uninstall", "--stale"); r.code != 0 || !strings.Contains(r.stdout, "removed what was left behind: ebpf: "+stale) {
		t.Errorf("uninstall --stale: want the stale scope removed and named:\n%s", r)
	}
	if r := p.detour("uninstall", "--stale"); r.code != 0 || !strings.Contains(r.stdout, "nothing to remove") {
		t.Errorf("second uninstall --stale: want nothing to remove:\n%s", r)
	}
	// -o json: the list asked for, also when it is empty.
	r = p.detour("uninstall", "--stale", "-o", "json")
	var swept map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &swept); err != nil || r.code != 0 || string(swept["leftovers"]) != "[]" || string(swept["changed"]) != "false" {
		t.Errorf("uninstall --stale -o json with nothing stale: want \"changed\": false and \"leftovers\": [] (%v):\n%s", err, r)
	}
	if r := p.detour("status"); r.code != 0 || !strings.Contains(r.stdout, "detour is installed (ebpf") || strings.Contains(r.stdout, "left behind") {
		t.Errorf("status after uninstall --stale: want the pod's capture kept and nothing left behind:\n%s", r)
	}
	p.outbound("O1 after uninstall --stale", p.app(0, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.77"), p.remotePort())), srvOutbound)

	if r := p.detour("uninstall"); r.code != 0 {
		t.Fatalf("uninstall:\n%s", r)
	}
	if left := pinsLeft(t, p.env); len(left) > 0 {
		t.Errorf("after uninstall, BPF pins of detour remain: %q", left)
	}
	if r := runDetour(t, p.ctx, p.env, "status", "-v", "--netns", other.Name); r.code != 0 || strings.Contains(r.stderr, handOver) {
		t.Errorf("status with nothing pinned: want the lean detour to answer itself:\n%s", r)
	}
}
