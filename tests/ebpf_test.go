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
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

const ebpfBackend = "ebpf"

// ebpfEnv gives the eBPF backend a private bpffs and a cgroup of this test's
// own (the CLI attaches there, never to the machine's cgroups), and moves this
// process into that cgroup until the test ends: a socket belongs to the
// cgroup of the process that made it. Namespaces that are not enrolled are
// left alone by the programs, so other tests running meanwhile are not
// affected.
func ebpfEnv(t *testing.T) []string {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		root = "/sys/fs/cgroup"
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			privtest.Skip(t, "no cgroup v2 hierarchy")
		}
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount private bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	cg := filepath.Join(root, fmt.Sprintf("detour-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	origin := ""
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			origin = filepath.Join(root, rest)
		}
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("enter test cgroup: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(filepath.Join(origin, "cgroup.procs"), pid, 0) })
	return []string{"DETOUR_EBPF_PIN_DIR=" + filepath.Join(bpffs, "detour"), "DETOUR_EBPF_CGROUP_ROOT=" + cg}
}

// TestEBPF runs outbound scenarios through the CLI with --backend ebpf
// (network-namespace scope; inbound capture off, which this backend leaves to
// another): O1, O2, O3, L2 and L4, IPv4 and IPv6. The CLI exits before any
// connection is made: the kernel holds the redirection.
func TestEBPF(t *testing.T) {
	privtest.Require(t, "ip", "setpriv")
	env := ebpfEnv(t)
	for _, f := range lab.Families {
		t.Run(string(f), func(t *testing.T) {
			p := newPod(t, variant{family: f, backend: ebpfBackend, mode: "redirect"})
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
			}
			for range 2 {
				if r := p.detourCmd(env, "uninstall"); r.code != 0 {
					t.Fatalf("L4 uninstall:\n%s", r)
				}
			}
			port := p.remotePort()
			p.outbound("after uninstall", p.app(0, netip.AddrPortFrom(kept, port)), srvRemote)
		})
	}
}
