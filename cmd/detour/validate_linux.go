package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/ebpfpins"
	"github.com/detour-mesh/detour/internal/nlmsg"
	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/redirect"
)

// joinCgroup moves this process (every thread) into the cgroup v2 directory
// path: the eBPF cgroup scope redirects only sockets made below its cgroup,
// so a probe from anywhere else would prove nothing. validate exits right
// after its probes.
func joinCgroup(path string) error {
	if err := os.WriteFile(filepath.Join(path, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("join cgroup %s: %w", path, err)
	}
	return nil
}

// runProbe listens on the outbound port inside the namespace, dials p.dst there
// as p.uid/p.gid, and returns the original destination the listener read.
// When a proxy already listens on the port, it dials anyway and asks the
// kernel where the connection landed (probeThroughProxy). An error wrapping
// errCannotProbe means the check itself cannot run.
func runProbe(ctx context.Context, nsPath string, port uint16, p probe, timeout time.Duration) (probeResult, error) {
	dst, err := probeWithListener(ctx, nsPath, port, p, timeout)
	if errors.Is(err, errPortInUse) {
		return probeThroughProxy(ctx, nsPath, port, p, timeout)
	}
	return probeResult{dst: dst}, err
}

func probeWithListener(ctx context.Context, nsPath string, port uint16, p probe, timeout time.Duration) (netip.AddrPort, error) {
	var ln *net.TCPListener
	listenAddr := netip.AddrPortFrom(netip.IPv4Unspecified(), port)
	if p.family == redirect.IPv6 {
		listenAddr = netip.AddrPortFrom(netip.IPv6Unspecified(), port)
	}
	err := onThread(nsPath, nil, func() error {
		l, err := net.ListenTCP(familyNetwork(listenAddr.Addr()), net.TCPAddrFromAddrPort(listenAddr))
		ln = l
		return err
	})
	if errors.Is(err, syscall.EADDRINUSE) {
		return netip.AddrPort{}, fmt.Errorf("listen on %s: %w", listenAddr, errPortInUse)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("listen on %s: %w", listenAddr, err)
	}
	defer ln.Close()
	// The probe is dialed after the route check: give the listener that long.
	if err := ln.SetDeadline(time.Now().Add(timeout + time.Second)); err != nil {
		return netip.AddrPort{}, err
	}

	type accepted struct {
		dst netip.AddrPort
		err error
	}
	got := make(chan accepted, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			got <- accepted{err: fmt.Errorf("nothing arrived on :%d", port)}
			return
		}
		defer c.Close()
		dst, err := origdst.Get(c)
		got <- accepted{dst, err}
	}()

	if err := routeCheck(nsPath, p); err != nil {
		return netip.AddrPort{}, err
	}
	var as *probe
	if p.become {
		as = &p
	}
	dialErr := onThread(nsPath, as, func() error {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", p.dst.String())
		if err != nil {
			return err
		}
		return c.Close()
	})
	if dialErr != nil {
		ln.Close() // unblocks the accept
		<-got
		return netip.AddrPort{}, noAnswer(dialErr, timeout, fmt.Sprintf("nothing arrived on :%d, where a redirected connection is answered at once", port))
	}
	a := <-got
	return a.dst, a.err
}

// noAnswer wraps a dial error that is a timeout in errNoAnswer, saying what
// is known (why); other errors are returned as they are.
func noAnswer(err error, timeout time.Duration, why string) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w within %s (not refused either): %s", errNoAnswer, timeout, why)
	}
	return err
}

// loopbackDown reports whether lo is down in the namespace at nsPath (the
// current one when empty). A REDIRECT (or an eBPF connect rewrite) delivers a
// captured connection to the proxy over lo, so with lo down every one of them
// is dropped there: probes time out, and the reason is this.
func loopbackDown(nsPath string) bool {
	down := false
	_ = onThread(nsPath, nil, func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		down = lo.Flags&net.FlagUp == 0
		return nil
	})
	return down
}

// routeCheck: a UDP connect looks the route up without sending anything. Only
// a route missing here means nothing of this family can leave; once the SYN is
// out, an unreachable answer from a router means the probe escaped capture.
func routeCheck(nsPath string, p probe) error {
	err := onThread(nsPath, nil, func() error {
		c, err := net.Dial("udp", p.dst.String())
		if err == nil {
			c.Close()
		}
		return err
	})
	if errors.Is(err, syscall.ENETUNREACH) {
		return errNoRoute
	}
	if err != nil {
		return fmt.Errorf("look up the route to %s: %w", p.dst.Addr(), err)
	}
	return nil
}

// probeThroughProxy proves the redirection while a proxy owns the outbound
// port: it dials p.dst and, while the connection is open, looks in the
// namespace's socket table (/proc/thread-self/net/tcp and tcp6) for the
// socket on the outbound port whose peer is the probe's own address and
// port. The kernel made that socket only if it sent the probe there; its
// owner is the proxy's uid. A connection that reached anything else (or
// nothing) fails the probe.
func probeThroughProxy(ctx context.Context, nsPath string, port uint16, p probe, timeout time.Duration) (probeResult, error) {
	if err := routeCheck(nsPath, p); err != nil {
		return probeResult{}, err
	}
	var as *probe
	if p.become {
		as = &p
	}
	var res probeResult
	err := onThread(nsPath, as, func() error {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", p.dst.String())
		if err != nil {
			return noAnswer(err, timeout, fmt.Sprintf("the proxy's socket on :%d answers a redirected connection at once unless its accept queue is full", port))
		}
		defer c.Close()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		// The accepting side exists once the handshake completes; over lo that
		// is before connect returns, but allow the kernel a moment under load.
		deadline := time.Now().Add(min(timeout, time.Second))
		for {
			socks, err := tcpSocketsOn(port)
			if err != nil {
				return err
			}
			if i := slices.IndexFunc(socks, func(s procSocket) bool { return s.remote == local }); i >= 0 {
				res = probeResult{dst: p.dst, viaProxy: true, proxyUID: socks[i].uid}
				// A connection the proxy has not accepted yet has no owner (uid
				// 0), and an accepted one the uid of the thread that accepted
				// it: the listener's owner is the proxy's uid.
				res.listenerUIDs = listenerUIDs(socks)
				if len(res.listenerUIDs) == 1 {
					res.proxyUID = res.listenerUIDs[0]
				}
				if p.scope != "" {
					res.proxyOutside, err = outsideScope(port, local, p.scope, p.answered)
				}
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the connection from %s was accepted, but not by a socket on :%d: it went somewhere else", local, port)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return res, err
}

// procSocket is a TCP socket as /proc/net/tcp{,6} lists it.
type procSocket struct {
	remote    netip.AddrPort
	listening bool
	uid       uint32 // its owner
}

// tcpSocketsOn lists the TCP sockets whose local port is port in the calling
// thread's network namespace (/proc/thread-self/net/tcp and tcp6, each read
// once).
func tcpSocketsOn(port uint16) ([]procSocket, error) {
	var socks []procSocket
	for _, name := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		data, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, fmt.Errorf("read the socket table: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			local, err1 := parseProcAddr(f[1])
			remote, err2 := parseProcAddr(f[2])
			if err1 != nil || err2 != nil || local.Port() != port {
				continue
			}
			u, err := strconv.ParseUint(f[7], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("read the socket table: uid %q", f[7])
			}
			socks = append(socks, procSocket{remote: remote, listening: f[3] == "0A", uid: uint32(u)}) // 0A: TCP_LISTEN
		}
	}
	return socks, nil
}

// listenerUIDs returns the owners' uids of the listening sockets of socks,
// each uid once.
func listenerUIDs(socks []procSocket) []uint32 {
	var uids []uint32
	for _, s := range socks {
		if s.listening && !slices.Contains(uids, s.uid) {
			uids = append(uids, s.uid)
		}
	}
	return uids
}

// parseProcAddr reads an address of /proc/net/tcp{,6}: the address in hex as
// the kernel holds it (32-bit words in host byte order), a colon, the port in
// hex. IPv4-mapped IPv6 addresses are unmapped.
func parseProcAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok || (len(hexAddr) != 8 && len(hexAddr) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each word is in host (little-endian) order
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad socket port %q", s)
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

// onThread runs fn on a fresh OS thread that joined the network namespace at
// nsPath (if any) and took the uid and gid of as (if not nil). Linux keeps
// namespaces and credentials per thread, and the raw syscalls below change only
// this thread; the thread is never unlocked, so it exits with the goroutine and
// no other goroutine ever runs with its namespace or credentials. (netns.Do
// hands its thread back to the runtime afterwards, which is safe for a
// namespace it can restore but not for dropped credentials.)
func onThread(nsPath string, as *probe, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if nsPath != "" {
			f, err := os.Open(nsPath)
			if err != nil {
				errc <- fmt.Errorf("open network namespace: %w", err)
				return
			}
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
			if err != nil {
				errc <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
				return
			}
		}
		if as != nil {
			if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
				errc <- fmt.Errorf("drop supplementary groups: %w: %w", errCannotProbe, e)
				return
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(as.gid), uintptr(as.gid), uintptr(as.gid)); e != 0 {
				errc <- fmt.Errorf("become gid %d: %w: %w", as.gid, errCannotProbe, e)
				return
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(as.uid), uintptr(as.uid), uintptr(as.uid)); e != 0 {
				errc <- fmt.Errorf("become uid %d: %w: %w", as.uid, errCannotProbe, e)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// canSwitchCredentials reports whether this process may take another uid and
// gid (CAP_SETUID and CAP_SETGID in its effective set). The restricted Pod
// Security standard drops both, even for uid 0.
func canSwitchCredentials() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SETUID) != 0 && caps&(1<<unix.CAP_SETGID) != 0
		}
	}
	return false
}

// outsideScope returns the cgroup of the proxy's socket that took the probe
// connection from peer on port (in the calling thread's network namespace)
// when no eBPF getsockopt program of detour is attached to it or to a cgroup
// above it (answered: getsockoptCgroups), else "". Only such
// a program answers the proxy's SO_ORIGINAL_DST, and an accepted socket is in
// its listener's cgroup: the proxy's. A probe from a leaf below a slice's
// scope, the proxy in a sibling leaf, is answered. When the accepted socket no
// longer says (the proxy closed it, and a closed socket keeps no cgroup), the
// listeners on port answer: outside when every one of them is. What cannot be
// told (a kernel without INET_DIAG_CGROUP_ID, a pin directory that could not
// be read: answered nil, a cgroup not found below scope's mount) is not a
// failure. It runs on the probe's thread, which may have dropped root: the
// pins are read before (the bpffs is root's only).
func outsideScope(port uint16, peer netip.AddrPort, scope string, answered map[uint64]bool) (string, error) {
	accepted, listeners, err := socketCgroups(port, peer)
	if err != nil {
		return "", err
	}
	ids := listeners
	if accepted != 0 {
		ids = []uint64{accepted}
	}
	if len(ids) == 0 || answered == nil {
		return "", nil
	}
	root := mountRoot(scope)
	outside := ""
	for _, id := range ids {
		path := cgroupPath(root, id)
		if path == "" {
			return "", nil
		}
		for dir := path; ; dir = filepath.Dir(dir) {
			var st unix.Stat_t
			if unix.Stat(dir, &st) == nil && answered[st.Ino] {
				return "", nil
			}
			if dir == root || dir == "/" {
				break
			}
		}
		if outside == "" {
			outside = path
		}
	}
	return outside, nil
}

// getsockoptCgroups (Linux) are the ids of the cgroups where the eBPF backend's
// getsockopt program is attached: its links are pinned under
// pinDir/links/<kind>@<cgroup id>/. nil when that cannot be read.
func getsockoptCgroups(pinDir string) map[uint64]bool {
	if pinDir == "" {
		pinDir = ebpfpins.DefaultDir
	}
	dirs, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if err != nil {
		return nil
	}
	out := map[uint64]bool{}
	for _, d := range dirs {
		_, idText, ok := strings.Cut(d.Name(), "@")
		id, err := strconv.ParseUint(idText, 10, 64)
		if !ok || err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(pinDir, "links", d.Name(), "detour_getsockopt")); err == nil {
			out[id] = true
		}
	}
	return out
}

// tcpListen is TCP_LISTEN, a socket's state in sock_diag.
const tcpListen = 10

// inetDiagCgroupID is INET_DIAG_CGROUP_ID of linux/inet_diag.h (Linux 5.7):
// the socket's cgroup v2 id, in every answer for a full socket.
const inetDiagCgroupID = 21

// socketCgroups asks the kernel (sock_diag) for the cgroup v2 ids of the TCP
// sockets in the calling thread's network namespace on local port port: the
// one whose peer is peer (0 when there is none, or it keeps no cgroup), and
// the listeners.
func socketCgroups(port uint16, peer netip.AddrPort) (accepted uint64, listeners []uint64, err error) {
	c, err := nlmsg.Open(unix.NETLINK_INET_DIAG)
	if err != nil {
		return 0, nil, fmt.Errorf("read the proxy socket's cgroup: %w", err)
	}
	defer c.Close()
	for _, family := range []byte{unix.AF_INET, unix.AF_INET6} {
		// struct inet_diag_req_v2: family, protocol, ext, pad, states, and
		// an empty inet_diag_sockid (a dump of every socket of the family).
		req := make([]byte, 56)
		req[0], req[1] = family, unix.IPPROTO_TCP
		binary.NativeEndian.PutUint32(req[4:], 0xffffffff)
		msgs, err := c.Dump(unix.SOCK_DIAG_BY_FAMILY, req)
		if err != nil {
			return 0, nil, fmt.Errorf("read the proxy socket's cgroup: %w", err)
		}
		for _, m := range msgs {
			// struct inet_diag_msg (72 bytes): family, state, timer,
			// retrans, then the sockid: sport, dport (big-endian), src,
			// dst (16 bytes each), interface, cookie; then expires, rqueue,
			// wqueue, uid, inode; then attributes.
			if len(m) < 72 || binary.BigEndian.Uint16(m[4:]) != port {
				continue
			}
			var dst netip.Addr
			if m[0] == unix.AF_INET {
				dst = netip.AddrFrom4([4]byte(m[24:28]))
			} else {
				dst = netip.AddrFrom16([16]byte(m[24:40])).Unmap()
			}
			isPeer := dst == peer.Addr() && binary.BigEndian.Uint16(m[6:]) == peer.Port()
			if !isPeer && m[1] != tcpListen {
				continue
			}
			var id uint64
			if err := nlmsg.EachAttr(m[72:], func(typ uint16, data []byte) {
				if typ == inetDiagCgroupID && len(data) >= 8 {
					id = binary.NativeEndian.Uint64(data)
				}
			}); err != nil {
				return 0, nil, fmt.Errorf("read the proxy socket's cgroup: %w", err)
			}
			switch {
			case id == 0:
			case isPeer:
				accepted = id
			default:
				listeners = append(listeners, id)
			}
		}
	}
	return accepted, listeners, nil
}

// mountRoot is the top of the cgroup2 mount that dir is in.
func mountRoot(dir string) string {
	var st unix.Stat_t
	if unix.Stat(dir, &st) != nil {
		return dir
	}
	for dir != "/" {
		var up unix.Stat_t
		if unix.Stat(filepath.Dir(dir), &up) != nil || up.Dev != st.Dev {
			break
		}
		dir = filepath.Dir(dir)
	}
	return dir
}

// cgroupPath finds the directory below root whose id (its inode number) is
// id, or "".
func cgroupPath(root string, id uint64) string {
	found := ""
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if s, ok := info.Sys().(*syscall.Stat_t); ok && s.Ino == id {
				found = path
				return filepath.SkipAll
			}
		}
		return nil
	})
	return found
}
