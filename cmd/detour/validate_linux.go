package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/redirect"
)

// runProbe listens on the outbound port inside the namespace, dials p.dst there
// as p.uid/p.gid, and returns the original destination the listener read. An
// error wrapping errPortInUse means the check itself cannot run.
func runProbe(ctx context.Context, nsPath string, port uint16, p probe, timeout time.Duration) (netip.AddrPort, error) {
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
	if err := ln.SetDeadline(time.Now().Add(timeout)); err != nil {
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

	dialErr := onThread(nsPath, &p, func() error {
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
		return netip.AddrPort{}, dialErr
	}
	a := <-got
	return a.dst, a.err
}

// onThread runs fn on a fresh OS thread that joined the network namespace at
// nsPath (if any) and took the probe's uid and gid (if any). Linux keeps
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
				errc <- fmt.Errorf("drop supplementary groups: %w", e)
				return
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(as.gid), uintptr(as.gid), uintptr(as.gid)); e != 0 {
				errc <- fmt.Errorf("become gid %d: %w", as.gid, e)
				return
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(as.uid), uintptr(as.uid), uintptr(as.uid)); e != 0 {
				errc <- fmt.Errorf("become uid %d: %w", as.uid, e)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}
