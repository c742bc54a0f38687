package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// lab is one privileged test's world: a private bpffs, a cgroup of its own
// that the test process runs in for the test's duration, and a network
// namespace whose loopback carries the traffic.
type lab struct {
	pinDir string
	cgroup string
	ns     privtest.NS
}

const unified = "/sys/fs/cgroup/unified"

func newLab(t testing.TB) lab {
	t.Helper()
	privtest.Require(t, "ip")
	if err := New(Options{}).Ready(); err != nil {
		privtest.Skip(t, err.Error())
	}
	root := unified
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		root = "/sys/fs/cgroup"
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			privtest.Skip(t, "no cgroup v2 hierarchy")
		}
	}
	bpffs := privtest.BPFFS(t)
	cg := filepath.Join(root, fmt.Sprintf("detour-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return lab{pinDir: filepath.Join(bpffs, "detour"), cgroup: cg, ns: privtest.NetNS(t)}
}

// engine is the Engine `detour install --backend ebpf` assembles for the
// lab: the cgroup scope cgroup, or the network namespace's when it is "".
func (l lab) engine(t *testing.T, cgroup string) *redirect.Engine {
	return &redirect.Engine{
		NetNS:   l.ns.Path,
		LockDir: t.TempDir(),
		Drivers: []redirect.Driver{NewDriver(DriverOptions{Loader: Options{PinDir: l.pinDir, Root: l.cgroup}, Cgroup: cgroup})},
	}
}

// outboundConfig is an eBPF configuration for both families without inbound
// capture.
func outboundConfig() redirect.Config {
	cfg := redirect.Default()
	cfg.Backend = redirect.BackendEBPF
	cfg.IPFamilies = redirect.IPFamiliesDual
	cfg.Inbound.Enabled = false
	return cfg
}

// enter moves the whole test process into dir until the test ends.
func enter(t testing.TB, dir string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var origin string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			origin = filepath.Join(filepath.Dir(dir), rest)
		}
	}
	if origin == "" {
		t.Fatal("no cgroup v2 line in /proc/self/cgroup")
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("enter test cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(origin, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("leave test cgroup: %v", err)
		}
	})
}

func testCapture(t testing.TB, mutate func(*redirect.Config)) redirect.Capture {
	t.Helper()
	cfg := redirect.Default()
	cfg.IPFamilies = redirect.IPFamiliesDual
	cfg.Inbound.Enabled = false
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := redirect.NewCapture(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// proxy accepts on the outbound port (IPv4 and IPv6) and reports what
// SO_ORIGINAL_DST says for each accepted connection.
type proxy struct {
	got chan string
}

func startProxy(t *testing.T, ns privtest.NS, port int) *proxy {
	t.Helper()
	p := &proxy{got: make(chan string, 16)}
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)} {
		var ln net.Listener
		inNS(t, ns, func() (err error) {
			ln, err = net.Listen("tcp", addr)
			return err
		})
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				dst, err := origdst.Get(c.(*net.TCPConn))
				if err != nil {
					p.got <- "error: " + err.Error()
				} else {
					p.got <- dst.String()
				}
				c.Close()
			}
		}()
	}
	return p
}

func inNS(t *testing.T, ns privtest.NS, fn func() error) {
	t.Helper()
	if err := doNS(ns.Path, fn); err != nil {
		t.Fatal(err)
	}
}

// dial connects from the namespace and returns the peer the app sees
// (getpeername), or the error.
func dial(t *testing.T, ns privtest.NS, addr string) (string, error) {
	t.Helper()
	var peer string
	err := doNS(ns.Path, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		peer = c.RemoteAddr().String()
		return nil
	})
	return peer, err
}

func (p *proxy) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-p.got:
		return s
	case <-time.After(3 * time.Second):
		t.Fatal("the proxy accepted nothing")
		return ""
	}
}

func TestCgroupScopeRedirectsOutboundTCP(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	c := testCapture(t, func(c *redirect.Config) {
		c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:dead::/48")}
		c.Outbound.ExcludePorts = []redirect.PortRange{{First: 5000, Last: 5999}}
	})
	changed, err := ld.Apply(scope, c)
	if err != nil || !changed {
		t.Fatalf("Apply = %v, %v; want changed", changed, err)
	}
	t.Cleanup(func() {
		if err := ld.Remove(scope); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	p := startProxy(t, l.ns, 15001)

	for _, tc := range []struct{ name, dial, want string }{
		{"ipv4", "198.51.100.7:8080", "198.51.100.7:8080"},
		{"ipv6", "[2001:db8::7]:443", "[2001:db8::7]:443"},
		{"v4-mapped", "[::ffff:198.51.100.9]:80", "198.51.100.9:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var peer string
			inNS(t, l.ns, func() (err error) {
				peer, err = rawDial(netip.MustParseAddrPort(tc.dial))
				return err
			})
			if got := p.next(t); got != tc.want {
				t.Errorf("proxy's SO_ORIGINAL_DST = %s, want %s", got, tc.want)
			}
			if peer != tc.dial {
				t.Errorf("app's getpeername = %s, want %s (what it dialed)", peer, tc.dial)
			}
		})
	}

	// Excluded destinations are not redirected: with no route in the
	// namespace, the kernel refuses them at once.
	for _, addr := range []string{"203.0.113.5:80", "198.51.100.7:5432", "[2001:db8:dead::1]:80"} {
		if _, err := dial(t, l.ns, addr); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("dial %s = %v, want ENETUNREACH (not redirected)", addr, err)
		}
	}
	select {
	case got := <-p.got:
		t.Errorf("the proxy received an excluded connection for %s", got)
	default:
	}

	// A second Apply of the same capture changes nothing.
	if changed, err := ld.Apply(scope, c); err != nil || changed {
		t.Errorf("second Apply = %v, %v; want no change", changed, err)
	}

	// What is installed reads back as the plan's lines: programs and entries.
	st, err := ld.Observe()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ld.Lines(st, scope)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Lines(c)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("observed lines (-planned +installed):\n%s", diff)
	}
	for _, line := range []string{"program connect4 attach cgroup/connect4", "cidrs4 203.0.113.0/24", "cidrs6 2001:db8:dead::/48", "ports outbound 5000-5007", "ports outbound 5984-5999"} {
		if !slices.Contains(got, line) {
			t.Errorf("observed lines lack %q:\n%s", line, strings.Join(got, "\n"))
		}
	}
}

// rawDial connects a socket of the address's own family (an AF_INET6 socket
// for a v4-mapped address, which the net package will not make) and returns
// what getpeername says.
func rawDial(ap netip.AddrPort) (string, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
	if ap.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return "", fmt.Errorf("connect %s: %w", ap, err)
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return "", err
	}
	switch p := peer.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), uint16(p.Port)).String(), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(p.Addr), uint16(p.Port)).String(), nil
	}
	return "", fmt.Errorf("getpeername: %T", peer)
}

// cgroupScope moves the test's thread into l's cgroup and applies the
// default test capture to that cgroup as a scope, removed when the test ends.
func cgroupScope(t *testing.T, l lab) (*Loader, Scope) {
	t.Helper()
	enter(t, l.cgroup)
	ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
	scope := Scope{Cgroup: l.cgroup}
	if _, err := ld.Apply(scope, testCapture(t, nil)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ld.Remove(scope) })
	return ld, scope
}

func newLabNS(t *testing.T) privtest.NS { return privtest.NetNS(t) }

// TestMountBPFFSOnlyOnAnEmptyDir: the pin directory's parent gets a bpffs
// when it has none, but only when it is empty: DETOUR_EBPF_PIN_DIR=/tmp/detour
// mounted a bpffs over /tmp, hiding its files from the whole mount namespace.
func TestMountBPFFSOnlyOnAnEmptyDir(t *testing.T) {
	privtest.Require(t)
	unmount := func(dir string) {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC {
			if err := unix.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		}
	}
	full := t.TempDir()
	t.Cleanup(func() { unmount(full) })
	if err := os.WriteFile(filepath.Join(full, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := New(Options{PinDir: filepath.Join(full, "detour")}).mountBPFFS()
	if err == nil || !strings.Contains(err.Error(), "would hide what it holds") {
		t.Errorf("mountBPFFS below a directory with files = %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(full, "keep")); err != nil {
		t.Errorf("the directory's file is hidden: %v", err)
	}

	empty := t.TempDir()
	t.Cleanup(func() { unmount(empty) })
	if err := New(Options{PinDir: filepath.Join(empty, "detour")}).mountBPFFS(); err != nil {
		t.Fatalf("mountBPFFS below an empty directory: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(empty, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Errorf("no bpffs mounted on the empty directory %s (%v)", empty, err)
	}
}
