package cni_test

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

// ebpfNode gives the eBPF backend a node of its own inside the test: a
// private bpffs (the plugin's ebpfPinDir) and a cgroup of this test (its
// ebpfCgroupRoot), on a cgroup v2 mount of the test's own (`ip netns exec`
// gave this binary a fresh /sys without one). The test process moves into
// that cgroup until the test ends: a socket belongs to the cgroup of the
// process that made it, and the servers and clients of the pods are this
// process's sockets. Namespaces that are not enrolled are left alone by the
// programs. It returns the pin dir and the cgroup.
func ebpfNode(t *testing.T) (pinDir, cgroup string) {
	t.Helper()
	mnt := func(fstype string) string {
		dir := t.TempDir()
		if err := unix.Mount(fstype, dir, fstype, 0, ""); err != nil {
			privtest.Skip(t, fmt.Sprintf("mount %s: %v", fstype, err))
		}
		t.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		return dir
	}
	bpffs, cgroot := mnt("bpf"), mnt("cgroup2")
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	origin := ""
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			origin = filepath.Join(cgroot, rest)
		}
	}
	if origin == "" {
		privtest.Skip(t, "this process is in no cgroup v2 hierarchy")
	}
	cgroup = filepath.Join(cgroot, "detour-cni-e2e-"+randHex(4))
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), pid, 0); err != nil {
		_ = os.Remove(cgroup)
		t.Fatalf("enter test cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(origin, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("leave test cgroup: %v", err)
		}
		if err := os.Remove(cgroup); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return filepath.Join(bpffs, "detour"), cgroup
}

// pins lists what is pinned under dir.
func pins(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && path != dir {
			out = append(out, strings.TrimPrefix(path, dir+"/"))
		}
		return nil
	})
	return out
}

// nftTables lists the nftables tables of the pod's namespace.
func nftTables(t *testing.T, p *pod) string {
	t.Helper()
	return strings.TrimSpace(privtest.Run(t, "ip", "netns", "exec", p.netnsName, "nft", "list", "tables"))
}

// TestEBPFBackend runs pods through bridge + host-local + detour-cni with
// `backend: ebpf` in the plugin's config: each opted-in pod's namespace is
// enrolled in the node's maps (programs attached once, to ebpfCgroupRoot,
// pinned under ebpfPinDir); outbound reaches the proxy with its original
// destination, inbound reaches the inbound proxy through the pod's own
// nftables table; two pods with different annotations keep their own
// settings; CHECK passes, DEL removes the pod's enrolment and table (also
// with the namespace already gone), and the last DEL leaves no pin.
func TestEBPFBackend(t *testing.T) {
	h := setup(t)
	privtest.Require(t, "nft")
	pinDir, cgroup := ebpfNode(t)
	n, err := h.newNetwork("dt-ebpf", "1.1.0", map[string]any{
		"config":         map[string]any{"backend": "ebpf"},
		"ebpfPinDir":     pinDir,
		"ebpfCgroupRoot": cgroup,
	})
	if err != nil {
		t.Fatal(err)
	}
	// STATUS: ready, also with no iptables tool on the plugin's PATH (the
	// eBPF backend runs none).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := n.cni.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Errorf("STATUS with backend ebpf: %v", err)
	}
	noTools := h.runtime(filepath.Join(t.TempDir(), "cache"), []string{"PATH=" + t.TempDir()})
	if err := noTools.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Errorf("STATUS with backend ebpf and no iptables tool on PATH: %v", err)
	}
	ns := h.newNamespace(t, nil)
	// a excludes inbound port 8081, b excludes outbound port 9000.
	a := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled", "detour.io/exclude-inbound-ports": "8081"}, created)
	b := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled", "detour.io/exclude-outbound-ports": "9000"}, created)
	plain := h.newPod(t, ns, nil, created)
	ipA, ipB := podIP(t, n.mustAdd(t, a)), podIP(t, n.mustAdd(t, b))
	ipPlain := podIP(t, n.mustAdd(t, plain))
	hostBefore := saveAll(t, "")
	for _, p := range []*pod{a, b, plain} {
		serve(t, p.netns, "0.0.0.0:15001", "outbound-proxy")
		serve(t, p.netns, "0.0.0.0:15006", "inbound-proxy")
		serve(t, p.netns, "0.0.0.0:8080", "app8080")
		serve(t, p.netns, "0.0.0.0:8081", "app8081")
	}
	serve(t, "", gatewayIP+":9000", "remote")

	type conn struct {
		name, from, to, want string
	}
	check := func(conns []conn) {
		t.Helper()
		for _, c := range conns {
			got, err := ask(c.from, c.to)
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				continue
			}
			if !strings.HasPrefix(got, c.want) {
				t.Errorf("%s: answer %q, want %q", c.name, got, c.want)
			}
		}
	}
	gw := gatewayIP + ":9000"
	at := func(ip fmt.Stringer, port string) string { return ip.String() + ":" + port }
	check([]conn{
		{"a: outbound to the gateway goes to the proxy with its destination", a.netns, gw, "outbound-proxy " + gw},
		{"a: outbound to a remote address goes to the proxy", a.netns, remoteAddr, "outbound-proxy " + remoteAddr},
		{"b: outbound to excluded port 9000 is not captured", b.netns, gw, "remote "},
		{"b: outbound to a remote address goes to the proxy", b.netns, remoteAddr, "outbound-proxy " + remoteAddr},
		{"a: inbound goes to the inbound proxy with its destination", "", at(ipA, "8080"), "inbound-proxy " + at(ipA, "8080")},
		{"a: inbound to excluded port 8081 reaches the app", "", at(ipA, "8081"), "app8081 "},
		{"b: inbound to 8081 (excluded only in a) goes to the proxy", "", at(ipB, "8081"), "inbound-proxy " + at(ipB, "8081")},
		{"a: loopback is not captured", a.netns, "127.0.0.1:8080", "app8080 "},
		{"plain pod: outbound untouched", plain.netns, gw, "remote "},
		{"plain pod: inbound untouched", "", at(ipPlain, "8080"), "app8080 "},
	})

	for _, p := range []*pod{a, b} {
		if got := nftTables(t, p); got != "table inet detour_ebpf_inbound" {
			t.Errorf("pod %s: nft tables %q, want only the eBPF backend's inbound table", p.name, got)
		}
		if r := detourRules(t, p); len(r) != 0 {
			t.Errorf("pod %s: backend ebpf, yet iptables rules of detour:\n%s", p.name, strings.Join(r, "\n"))
		}
		if err := n.check(p); err != nil {
			t.Errorf("CHECK of pod %s: %v\n%s", p.name, err, n.logTail())
		}
		st, ok := n.state(t, p)
		if cookie, _ := st["netnsCookie"].(float64); !ok || cookie == 0 {
			t.Errorf("pod %s: state records no netns cookie: %v", p.name, st)
		}
	}
	if got := nftTables(t, plain); got != "" {
		t.Errorf("plain pod: nft tables %q, want none", got)
	}
	if err := n.check(plain); err != nil {
		t.Errorf("CHECK of the plain pod: %v", err)
	}
	installed := pins(pinDir)
	if len(installed) == 0 {
		t.Fatalf("pods enrolled, yet nothing is pinned under %s", pinDir)
	}
	linkDir := ""
	for _, p := range installed {
		if strings.HasPrefix(p, "links/netns@") && !strings.Contains(p[len("links/"):], "/") {
			linkDir = p
		}
	}
	if linkDir == "" {
		t.Errorf("no links/netns@<cgroup id> directory under the pin dir: %q", installed)
	}
	if after := saveAll(t, ""); after != hostBefore {
		t.Errorf("the host namespace's rules changed:\nbefore:\n%s\nafter:\n%s", hostBefore, after)
	}

	// Someone deletes a's inbound table: CHECK reports drift.
	privtest.Run(t, "ip", "netns", "exec", a.netnsName, "nft", "delete", "table", "inet", "detour_ebpf_inbound")
	if err := n.check(a); cniCode(err) != 103 {
		t.Errorf("CHECK after deleting a's inbound table: %v (code %d), want code 103 (drift)", err, cniCode(err))
	}

	// DEL a: its namespace (still there) is unenrolled, its table goes;
	// b keeps its settings.
	if err := n.del(a); err != nil {
		t.Fatalf("DEL a: %v\n%s", err, n.logTail())
	}
	if got := nftTables(t, a); got != "" {
		t.Errorf("after DEL, pod a's namespace holds nftables tables: %q", got)
	}
	if _, ok := n.state(t, a); ok {
		t.Error("after DEL, pod a's state remains")
	}
	// The chain's DEL took a's interface away; were the namespace still
	// enrolled, connect() would still be redirected to the proxy listening
	// on its loopback.
	if got, err := ask(a.netns, remoteAddr); err == nil {
		t.Errorf("a after DEL: outbound to %s answered %q, want it unreachable (not redirected)", remoteAddr, got)
	}
	check([]conn{
		{"b after a's DEL: outbound still captured", b.netns, remoteAddr, "outbound-proxy " + remoteAddr},
		{"b after a's DEL: excluded port still excluded", b.netns, gw, "remote "},
		{"b after a's DEL: inbound still captured", "", at(ipB, "8081"), "inbound-proxy " + at(ipB, "8081")},
	})
	if len(pins(pinDir)) == 0 {
		t.Errorf("b is still enrolled, yet the pins are gone")
	}

	// DEL b after its namespace is gone: the enrolment is removed by the
	// cookie ADD recorded, and with no pod left nothing stays pinned.
	privtest.Run(t, "ip", "netns", "delete", b.netnsName)
	for i := range 2 {
		if err := n.del(b); err != nil {
			t.Fatalf("DEL #%d of b with its netns gone: %v\n%s", i+1, err, n.logTail())
		}
	}
	if err := n.del(plain); err != nil {
		t.Fatalf("DEL of the plain pod: %v", err)
	}
	if left := pins(pinDir); len(left) != 0 {
		t.Errorf("after every pod's DEL, pins remain under %s: %q", pinDir, left)
	}
}

// TestEBPFAccelerate turns socket acceleration on for every pod through the
// plugin config (`"config": {"backend": "ebpf", "ebpf": {"accelerate":
// true}}`) and off for one pod by its annotation
// (`detour.io/ebpf-accelerate: "false"`): the accelerated pod's app sends a
// payload that its outbound proxy (a read/write echo, as Envoy reads)
// returns whole, and its TCP socket itself sends less than half of it (the
// bytes went socket to socket); the other pod's socket sends all of it.
// CHECK passes for both; DEL of the accelerated pod detaches the sk_msg
// program (no pod asks for it any more) while the other stays enrolled; the
// last DEL leaves no pin.
func TestEBPFAccelerate(t *testing.T) {
	h := setup(t)
	privtest.Require(t, "nft")
	pinDir, cgroup := ebpfNode(t)
	n, err := h.newNetwork("dt-ebpf-accel", "1.1.0", map[string]any{
		"config":         map[string]any{"backend": "ebpf", "ebpf": map[string]any{"accelerate": true}},
		"ebpfPinDir":     pinDir,
		"ebpfCgroupRoot": cgroup,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := h.newNamespace(t, nil)
	fast := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled"}, created)
	plain := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled", "detour.io/ebpf-accelerate": "false"}, created)
	n.mustAdd(t, fast)
	n.mustAdd(t, plain)
	const accelPin = "links/sk_msg/detour_accel"
	if !slices.Contains(pins(pinDir), accelPin) {
		t.Errorf("a pod asks for acceleration, yet %s is not pinned: %q", accelPin, pins(pinDir))
	}
	for _, p := range []*pod{fast, plain} {
		serveEcho(t, p.netns, "0.0.0.0:15001")
		if err := n.check(p); err != nil {
			t.Errorf("CHECK of pod %s: %v\n%s", p.name, err, n.logTail())
		}
	}
	const size = 1 << 20
	if sent := echoThroughProxy(t, fast.netns, size); sent > size/2 {
		t.Errorf("accelerated pod: the app's TCP socket sent %d of %d bytes itself: not accelerated", sent, size)
	}
	if sent := echoThroughProxy(t, plain.netns, size); sent < size {
		t.Errorf("pod with detour.io/ebpf-accelerate: \"false\": the app's TCP socket sent %d of %d bytes, want all (not accelerated)", sent, size)
	}

	if err := n.del(fast); err != nil {
		t.Fatalf("DEL of the accelerated pod: %v\n%s", err, n.logTail())
	}
	left := pins(pinDir)
	if slices.Contains(left, accelPin) || len(left) == 0 {
		t.Errorf("after DEL of the only accelerated pod, want the other pod's pins without %s: %q", accelPin, left)
	}
	if err := n.check(plain); err != nil {
		t.Errorf("CHECK of the remaining pod after the other's DEL: %v", err)
	}
	if err := n.del(plain); err != nil {
		t.Fatalf("DEL of the last pod: %v\n%s", err, n.logTail())
	}
	if left := pins(pinDir); len(left) != 0 {
		t.Errorf("after every pod's DEL, pins remain under %s: %q", pinDir, left)
	}
}

// serveEcho is a pod's outbound proxy that echoes what it reads with
// read(2)/write(2), never splice(2) (acceleration's caveat).
func serveEcho(t *testing.T, netns, addr string) {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(netns, func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, netns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.AcceptEach(ln, lab.Echo)
}

// echoThroughProxy dials remoteAddr from the pod (captured: it reaches the
// pod's echoing proxy), sends size bytes after one round trip (both ends are
// established, so accelerated ones are in the sockhash), checks they all
// come back, and returns TCP_INFO's bytes_sent of the app's socket.
func echoThroughProxy(t *testing.T, netns string, size int) uint64 {
	t.Helper()
	var c net.Conn
	if err := inNetNS(netns, func() (err error) { c, err = net.DialTimeout("tcp4", remoteAddr, 3*time.Second); return err }); err != nil {
		t.Fatalf("dial %s from %s: %v", remoteAddr, netns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hello := []byte("hello\n")
	got := make([]byte, len(hello))
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, hello) {
		t.Fatalf("first round trip through the proxy: %q, %v", got, err)
	}
	payload := make([]byte, size)
	crand.Read(payload)
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("the proxy echoed %d bytes (%v), want the %d sent, unchanged", len(back), err, size)
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || serr != nil {
		t.Fatalf("TCP_INFO: %v %v", err, serr)
	}
	return info.Bytes_sent
}

// TestEBPFBadPaths: with backend ebpf, a plugin config whose ebpfCgroupRoot
// does not exist or is not a cgroup v2 directory, or whose ebpfPinDir sits
// under a directory that does not exist, makes STATUS report the plugin not
// ready (code 50) naming the key and the value, and ADD of an opted-in pod
// fail closed naming them too, recording no state.
func TestEBPFBadPaths(t *testing.T) {
	h := setup(t)
	mnt := func(fstype, opts string) string {
		dir := t.TempDir()
		if err := unix.Mount(fstype, dir, fstype, 0, opts); err != nil {
			privtest.Skip(t, fmt.Sprintf("mount %s: %v", fstype, err))
		}
		t.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		return dir
	}
	mkCgroup := func(parent string) string {
		dir := filepath.Join(parent, "detour-cni-bad-"+randHex(4))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := os.Remove(dir); err != nil {
				t.Errorf("remove test cgroup: %v", err)
			}
		})
		return dir
	}
	// A named cgroup v1 hierarchy outlives its unmount while the child
	// removed just before is still dying, and stays listed in every
	// process's /proc/self/cgroup: one fixed name bounds that to one, and
	// mounting it again once the child is gone and unmounting ends it.
	const v1Name = "detour-test-v1"
	t.Cleanup(func() {
		listed := func() bool {
			self, err := os.ReadFile("/proc/self/cgroup")
			return err == nil && strings.Contains(string(self), "name="+v1Name+":")
		}
		dir := t.TempDir()
		for deadline := time.Now().Add(5 * time.Second); listed(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("the cgroup v1 hierarchy %s is still there 5 s after the test", v1Name)
				return
			}
			if err := unix.Mount("cgroup", dir, "cgroup", 0, "none,name="+v1Name); err != nil {
				t.Errorf("mount the v1 hierarchy again to end it: %v", err)
				return
			}
			if err := unix.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
				return
			}
		}
	})
	// Registered before the mounts, so that it runs after their cleanup.
	v1 := mkCgroup(mnt("cgroup", "none,name="+v1Name))
	v2 := mkCgroup(mnt("cgroup2", ""))
	missingCgroup := filepath.Join(v2, "no-such-cgroup")
	missingPin := filepath.Join(t.TempDir(), "no-such-dir", "detour")
	goodPin := filepath.Join(t.TempDir(), "detour")

	ns := h.newNamespace(t, nil)
	for _, tt := range []struct {
		name, pinDir, cgroupRoot string
		wantMsg                  string
	}{
		{name: "cgroup root missing", pinDir: goodPin, cgroupRoot: missingCgroup, wantMsg: fmt.Sprintf("plugin config key ebpfCgroupRoot: %q", missingCgroup)},
		{name: "cgroup v1 directory", pinDir: goodPin, cgroupRoot: v1, wantMsg: fmt.Sprintf("plugin config key ebpfCgroupRoot: %q is not a cgroup v2 directory", v1)},
		{name: "pin dir under a missing directory", pinDir: missingPin, cgroupRoot: v2, wantMsg: fmt.Sprintf("plugin config key ebpfPinDir: %q", missingPin)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, err := h.newNetwork("dt-ebpf-bad-"+randHex(2), "1.1.0", map[string]any{
				"config":         map[string]any{"backend": "ebpf"},
				"ebpfPinDir":     tt.pinDir,
				"ebpfCgroupRoot": tt.cgroupRoot,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err = n.cni.GetStatusNetworkList(ctx, n.list)
			if cniCode(err) != 50 || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("STATUS: %v (code %d), want code 50 containing %q", err, cniCode(err), tt.wantMsg)
			}
			p := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled"}, created)
			_, err = n.add(t, p)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("ADD of an opted-in pod: %v (code %d), want a failure containing %q", err, cniCode(err), tt.wantMsg)
			}
			if _, ok := n.state(t, p); ok {
				t.Error("state recorded for a failed ADD")
			}
			if got := pins(filepath.Dir(tt.pinDir)); len(got) != 0 {
				t.Errorf("pinned after a failed ADD: %v", got)
			}
		})
	}
}

// TestEBPFHandOver runs the lean detour-cni (built with -tags detour_lean,
// as make build does) where the eBPF backend is needed without the plugin
// config saying so: the calls go to detour-cni-ebpf next to it. A pod
// whose own annotation asks for backend ebpf is enrolled (the lean plugin
// cannot do that itself); while the eBPF backend's maps are pinned, the
// calls of an nftables pod are handed over too (logged at debug, with why)
// and still get the nftables table; after the last DEL nothing is pinned
// and the next pod's ADD is served by the lean plugin itself. Without
// detour-cni-ebpf, the ebpf pod's ADD fails with code 50 naming it.
func TestEBPFHandOver(t *testing.T) {
	h := setup(t)
	privtest.Require(t, "nft")
	pinDir, cgroup := ebpfNode(t)
	keys := map[string]any{
		"config":         map[string]any{"backend": "nftables"},
		"logLevel":       "debug",
		"ebpfPinDir":     pinDir,
		"ebpfCgroupRoot": cgroup,
	}
	n, err := h.newNetwork("dt-handover", "1.1.0", keys)
	if err != nil {
		t.Fatal(err)
	}
	ns := h.newNamespace(t, nil)
	handOvers := func() int {
		b, _ := os.ReadFile(n.logFile)
		return strings.Count(string(b), `"msg":"handing the call to the plugin with the eBPF backend"`)
	}

	e := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled", "detour.io/backend": "ebpf"}, created)
	ipE := podIP(t, n.mustAdd(t, e))
	if got := handOvers(); got != 1 {
		t.Errorf("ADD of the pod asking for ebpf: %d hand-overs logged, want 1\n%s", got, n.logTail())
	}
	if !strings.Contains(readFile(t, n.logFile), `"why":"pod `+ns+`/`+e.name+` asks for backend ebpf"`) {
		t.Errorf("the hand-over does not say why\n%s", n.logTail())
	}
	st, _ := n.state(t, e)
	if cookie, _ := st["netnsCookie"].(float64); cookie == 0 {
		t.Errorf("ebpf pod: state records no netns cookie: %v", st)
	}
	if got := nftTables(t, e); got != "table inet detour_ebpf_inbound" {
		t.Errorf("ebpf pod: nft tables %q, want only the eBPF backend's inbound table", got)
	}
	serve(t, e.netns, "0.0.0.0:15001", "outbound-proxy")
	serve(t, e.netns, "0.0.0.0:15006", "inbound-proxy")
	if got, err := ask(e.netns, remoteAddr); err != nil || !strings.HasPrefix(got, "outbound-proxy "+remoteAddr) {
		t.Errorf("ebpf pod: outbound to %s: %q, %v; want it at the proxy", remoteAddr, got, err)
	}
	if got, err := ask("", ipE.String()+":8080"); err != nil || !strings.HasPrefix(got, "inbound-proxy ") {
		t.Errorf("ebpf pod: inbound: %q, %v; want it at the inbound proxy", got, err)
	}

	// Maps pinned: an nftables pod's calls go to detour-cni-ebpf, which
	// installs what the config says.
	f := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled"}, created)
	n.mustAdd(t, f)
	if got := handOvers(); got != 2 {
		t.Errorf("ADD of an nftables pod while the maps are pinned: %d hand-overs logged in all, want 2\n%s", got, n.logTail())
	}
	if got := nftTables(t, f); got != "table inet detour" {
		t.Errorf("nftables pod: nft tables %q, want table inet detour", got)
	}
	for _, p := range []*pod{e, f} {
		if err := n.check(p); err != nil {
			t.Errorf("CHECK of pod %s: %v\n%s", p.name, err, n.logTail())
		}
	}
	for _, p := range []*pod{e, f} {
		if err := n.del(p); err != nil {
			t.Fatalf("DEL of pod %s: %v\n%s", p.name, err, n.logTail())
		}
	}
	if left := pins(pinDir); len(left) != 0 {
		t.Errorf("after the ebpf pod's DEL, pins remain under %s: %q", pinDir, left)
	}
	// Nothing pinned: the lean plugin serves an nftables pod itself.
	before := handOvers()
	g := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled"}, created)
	n.mustAdd(t, g)
	if got := handOvers(); got != before {
		t.Errorf("ADD with nothing pinned was handed over (%d → %d)\n%s", before, got, n.logTail())
	}
	if got := nftTables(t, g); got != "table inet detour" {
		t.Errorf("nftables pod: nft tables %q, want table inet detour", got)
	}

	// A node without detour-cni-ebpf: the ebpf pod fails closed, code 50.
	lean := t.TempDir()
	data, err := os.ReadFile(filepath.Join(h.binDir, "detour-cni"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lean, "detour-cni"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	alone := libcni.NewCNIConfigWithCacheDir([]string{h.pluginsBin, lean}, filepath.Join(t.TempDir(), "cache"), nil)
	m := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled", "detour.io/backend": "ebpf"}, created)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = alone.AddNetworkList(ctx, n.list, m.rt)
	if cniCode(err) != 50 || !strings.Contains(fmt.Sprint(err), "detour-cni-ebpf") {
		t.Errorf("ADD of an ebpf pod without detour-cni-ebpf: %v (code %d), want code 50 naming detour-cni-ebpf", err, cniCode(err))
	}
	_ = alone.DelNetworkList(ctx, n.list, m.rt)
	if left := pins(pinDir); len(left) != 0 {
		t.Errorf("a failed hand-over pinned something under %s: %q", pinDir, left)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
