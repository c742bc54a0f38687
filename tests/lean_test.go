package tests

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// handOver is what `detour -v` logs when the lean detour hands a command to
// detour-ebpf (cmd/detour/ebpf.go).
const handOver = "handing the command over"

// TestLeanDetour: the suite runs the lean detour (-tags detour_lean, as
// `make build` makes bin/detour), which does not link the eBPF backend and
// hands the commands that need it to detour-ebpf next to it. An install whose
// configuration, backend ebpf included, comes on stdin (--config -: read by
// detour, then again by detour-ebpf) captures and leaves inbound alone as
// that document says; a switch to nftables is handed over too (the eBPF maps
// are pinned) and ends with only nftables' table, still capturing; once
// nothing of the eBPF backend is pinned, detour serves the commands itself.
// The other eBPF tests hand over on --backend ebpf, before detour reads
// anything.
func TestLeanDetour(t *testing.T) {
	privtest.Require(t, "ip", "setpriv", "nft")
	p := newPod(t, variant{family: lab.IPv4, backend: ebpfBackend, mode: "redirect"})
	p.startProxies()
	kept := netip.MustParseAddr("192.0.2.77")

	// The backend comes from the document on stdin, so detour reads it
	// before it knows that detour-ebpf must serve the command.
	flags := p.flags()
	i := slices.Index(flags, "--backend")
	flags = slices.Delete(slices.Clone(flags), i, i+2)
	r := p.detourStdin("backend: ebpf\ninbound:\n  enabled: false\n", append(append([]string{"install", "-v"}, flags...), "--config", "-")...)
	if r.code != 0 {
		t.Fatalf("install --config - (backend: ebpf):\n%s", r)
	}
	if !strings.Contains(r.stderr, handOver) {
		t.Errorf("install with backend ebpf from stdin: detour did not hand it to detour-ebpf:\n%s", r)
	}
	p.outbound("O1 through the eBPF backend", p.app(0, netip.AddrPortFrom(kept, p.remotePort())), srvOutbound)
	if got := nftTables(p); got != "" {
		t.Errorf("inbound.enabled false came on stdin, yet the namespace holds nftables tables (did detour-ebpf read the document?):\n%s", got)
	}
	if len(pinsLeft(t, p.env)) == 0 {
		t.Fatal("installed, yet nothing is pinned under DETOUR_EBPF_PIN_DIR")
	}

	r = p.detour(append(append([]string{"install", "-v"}, p.flagsWith("nftables")...), "--inbound=false")...)
	if r.code != 0 {
		t.Fatalf("switch to nftables:\n%s", r)
	}
	if !strings.Contains(r.stderr, handOver) {
		t.Errorf("switch to nftables with the eBPF maps pinned: detour did not hand it to detour-ebpf:\n%s", r)
	}
	if got := nftTables(p); got != "table inet detour" {
		t.Errorf("after the switch nft list tables = %q, want only nftables' table", got)
	}
	p.outbound("O1 through nftables after the switch", p.app(0, netip.AddrPortFrom(kept, p.remotePort())), srvOutbound)
	if left := pinsLeft(t, p.env); len(left) > 0 {
		t.Errorf("after the switch away from ebpf, BPF pins of detour remain: %q", left)
	}

	r = p.detour("status", "-v")
	if r.code != 0 || !strings.Contains(r.stdout, "detour is installed (nftables") {
		t.Errorf("status: want nftables installed:\n%s", r)
	}
	if strings.Contains(r.stderr, handOver) {
		t.Errorf("status with nothing of the eBPF backend pinned was handed to detour-ebpf:\n%s", r)
	}
	if r := p.detour("uninstall"); r.code != 0 {
		t.Fatalf("uninstall:\n%s", r)
	}
	if got := nftTables(p); got != "" {
		t.Errorf("after uninstall the namespace holds nftables tables:\n%s", got)
	}
}

// detourStdin is detourCmd with stdin.
func (p *pod) detourStdin(stdin string, args ...string) result {
	p.t.Helper()
	args = append([]string{args[0], "--netns", p.lab.Pod.Name, "--lock-wait", "60s"}, args[1:]...)
	return runDetourStdin(p.t, p.ctx, slices.Clone(p.env), stdin, args...)
}

// TestLeanPlanWithoutRoot: `detour plan` needs neither root nor detour-ebpf
// (docs/vm.md installs detour-ebpf only for the eBPF backend). An
// unprivileged user cannot look into the root-only bpffs, and that is no sign
// of the eBPF backend's pinned maps: the lean detour must plan itself, not
// fail for want of detour-ebpf (it did: exit 1, "served by detour-ebpf").
func TestLeanPlanWithoutRoot(t *testing.T) {
	privtest.Require(t, "setpriv")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "detour") // alone: no detour-ebpf next to it
	b, err := os.ReadFile(detourBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	pins := filepath.Join(t.TempDir(), "bpf") // root's only, as /sys/fs/bpf is
	if err := os.MkdirAll(filepath.Join(pins, "detour", "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pins, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", bin, "plan", "--ip-families", "ipv4")
	cmd.Env = append(os.Environ(), "DETOUR_EBPF_PIN_DIR="+filepath.Join(pins, "detour"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "-j REDIRECT --to-ports 15001") {
		t.Errorf("detour plan as uid 65534 without detour-ebpf: %v\n%s", err, out)
	}
}

// TestLeanSeesALeftoverEBPFInboundTable: a cgroup scope's inbound table
// outlives its scope when the cgroup is removed and another scope's install
// and uninstall then sweep every pin (docs/ebpf.md, "Lifecycle"): nothing is
// pinned, yet the table redirects every inbound connection of the
// namespace. The lean detour decided to hand over by the pins alone, so its
// status said "detour is not installed" and its uninstall "nothing to
// remove", leaving the table; only detour-ebpf named and removed it. The
// table is made here as such a sweep leaves it.
func TestLeanSeesALeftoverEBPFInboundTable(t *testing.T) {
	privtest.Require(t, "ip", "nft")
	p := newPod(t, variant{family: lab.IPv4, backend: "nftables", mode: "redirect"})
	const table = "detour_ebpf_inbound_cg_0badcafe"
	if out, err := p.lab.Pod.Run(p.ctx, "nft", "add", "table", "inet", table); err != nil {
		t.Fatalf("nft add table: %v\n%s", err, out)
	}
	if len(pinsLeft(t, p.env)) != 0 {
		t.Fatal("something is pinned: the case needs none")
	}
	r := p.detour("status", "-v")
	if r.code != 0 || !strings.Contains(r.stdout, "left behind") || !strings.Contains(r.stdout, table) || !strings.Contains(r.stderr, handOver) {
		t.Errorf("status with %s in the namespace: want it handed to detour-ebpf and the table named as left behind:\n%s", table, r)
	}
	r = p.detour("uninstall")
	if r.code != 0 || !strings.Contains(r.stdout, table) {
		t.Errorf("uninstall with %s in the namespace: want it removed and named:\n%s", table, r)
	}
	if got := nftTables(p); got != "" {
		t.Errorf("after uninstall the namespace holds nftables tables:\n%s", got)
	}
}

// TestLeanConcurrentInstallsOfTwoBackends: the lean detour decides whether
// to hand a command to detour-ebpf before it takes the namespace's lock. An
// install with --backend nftables that waited for the lock while an install
// with --backend ebpf held it went on without the eBPF backend, did not see
// its scope, and left both backends installed, each saying exit 0 ("detour's
// rules are also in ebpf (a switch that did not finish)"). The test holds the
// lock while both start, then lets them race, a few times: each round must
// end with one backend.
func TestLeanConcurrentInstallsOfTwoBackends(t *testing.T) {
	privtest.Require(t, "ip", "nft")
	p := newPod(t, variant{family: lab.IPv4, backend: ebpfBackend, mode: "redirect"})
	lockPath, err := redirect.NetNSLockFile(p.lab.Pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
			t.Fatal(err)
		}
		lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		results := make(chan result, 2)
		for _, b := range []string{ebpfBackend, nftNative} {
			go func() {
				results <- p.detour(append(append([]string{"install"}, p.flagsWith(b)...), "--lock-wait", "60s")...)
			}()
		}
		time.Sleep(1500 * time.Millisecond) // both decided, and wait for the lock
		lock.Close()
		for range 2 {
			if r := <-results; r.code != 0 {
				t.Errorf("round %d: install: want exit 0:\n%s", round, r)
			}
		}
		r := p.detour("status")
		tables := nftTables(p)
		lines := strings.Split(tables, "\n")
		if r.code != 0 || strings.Contains(r.stdout, "also in") || slices.Contains(lines, "table inet detour") && slices.Contains(lines, "table inet detour_ebpf_inbound") {
			t.Fatalf("round %d: two installs of different backends left both (status, then nft list tables):\n%s\n%s", round, r, tables)
		}
		if r := p.detour("uninstall"); r.code != 0 {
			t.Fatalf("round %d: uninstall:\n%s", round, r)
		}
	}
}
