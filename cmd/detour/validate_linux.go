package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
			uid, found, err := socketWithPeer(port, local)
			if err != nil {
				return err
			}
			if found {
				res = probeResult{dst: p.dst, viaProxy: true, proxyUID: uid}
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the connection from %s was accepted, but not by a socket on :%d: it went somewhere else", local, port)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return res, err
}

// socketWithPeer finds, in the calling thread's network namespace, a TCP
// socket whose local port is port and whose peer is peer, and returns its
// owner's uid.
func socketWithPeer(port uint16, peer netip.AddrPort) (uid uint32, found bool, err error) {
	for _, name := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		data, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return 0, false, fmt.Errorf("read the socket table: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			local, err1 := parseProcAddr(f[1])
			remote, err2 := parseProcAddr(f[2])
			if err1 != nil || err2 != nil || local.Port() != port || remote != peer {
				continue
			}
			u, err := strconv.ParseUint(f[7], 10, 32)
			if err != nil {
				return 0, false, fmt.Errorf("read the socket table: uid %q", f[7])
			}
			return uint32(u), true, nil
		}
	}
	return 0, false, nil
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
