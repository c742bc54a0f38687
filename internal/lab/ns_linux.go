package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// NetNS is a named network namespace (`ip netns add`). Servers started in it are
// closed by Close.
type NetNS struct {
	Name string // for `ip netns exec NAME` and `detour --netns NAME`
	Path string // /run/netns/NAME

	mu      sync.Mutex
	closers []io.Closer
}

// Cred is the owner a client socket is created with. The zero value is root.
type Cred struct {
	UID, GID uint32
}

func (c Cred) String() string { return fmt.Sprintf("uid %d gid %d", c.UID, c.GID) }

// CreateNetNS creates a network namespace with loopback up.
func CreateNetNS(ctx context.Context, name string) (*NetNS, error) {
	if _, err := runIP(ctx, "", "netns", "add", name); err != nil {
		return nil, err
	}
	n := &NetNS{Name: name, Path: "/run/netns/" + name}
	if _, err := runIP(ctx, name, "link", "set", "lo", "up"); err != nil {
		_ = n.Close()
		return nil, err
	}
	return n, nil
}

// Close stops the servers started in the namespace and deletes it. Safe to repeat.
func (n *NetNS) Close() error {
	n.mu.Lock()
	closers := n.closers
	n.closers = nil
	n.mu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat(n.Path); err == nil {
		if _, err := runIP(context.Background(), "", "netns", "delete", n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (n *NetNS) track(c io.Closer) {
	n.mu.Lock()
	n.closers = append(n.closers, c)
	n.mu.Unlock()
}

// Do runs fn on a new OS thread inside the namespace, with the given credentials when
// cred is not nil. The thread is locked and never unlocked, so the runtime discards it
// when fn returns: nothing else ever runs in the namespace or with the credentials.
// Sockets fn creates stay in the namespace and may be used from any goroutine.
func (n *NetNS) Do(cred *Cred, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see the doc comment.
		errc <- n.enter(cred, fn)
	}()
	return <-errc
}

func (n *NetNS) enter(cred *Cred, fn func() error) error {
	f, err := os.Open(n.Path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	if cred != nil {
		// setfsuid/setfsgid change only this thread (the raw syscalls, unlike
		// syscall.Setuid, are not broadcast to every thread by the runtime). They
		// return the previous value and report failure only by not changing it, so
		// read the value back with an invalid argument (-1), which changes nothing.
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(cred.GID), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(cred.UID), 0, 0)
		gid, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0)
		uid, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0)
		if uint32(uid) != cred.UID || uint32(gid) != cred.GID {
			return fmt.Errorf("set thread fsuid/fsgid to %s: got uid %d gid %d", cred, uid, gid)
		}
	}
	return fn()
}

// Sysctl writes a network sysctl of the namespace: key is the path under
// /proc/sys ("net/ipv6/conf/default/accept_dad").
func (n *NetNS) Sysctl(key, value string) error {
	return n.Do(nil, func() error {
		// /proc/sys/net follows the network namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0); err != nil {
			return fmt.Errorf("set sysctl %s in netns %s: %w", key, n.Name, err)
		}
		return nil
	})
}

// Command returns a command that runs name inside the namespace, as cred when it is
// not nil (`ip netns exec NS setpriv --reuid U --regid G --clear-groups -- name args…`).
// The process is a real one with those ids, unlike Do's threads.
func (n *NetNS) Command(ctx context.Context, cred *Cred, name string, args ...string) *exec.Cmd {
	argv := []string{"netns", "exec", n.Name}
	if cred != nil {
		argv = append(argv, "setpriv", "--reuid", strconv.FormatUint(uint64(cred.UID), 10),
			"--regid", strconv.FormatUint(uint64(cred.GID), 10), "--clear-groups", "--")
	}
	argv = append(argv, name)
	argv = append(argv, args...)
	return exec.CommandContext(ctx, "ip", argv...)
}

// Run runs a command inside the namespace as root and returns its standard output.
func (n *NetNS) Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, nil, name, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s in netns %s: %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// IPBatch runs iproute2 commands (one per line, without the leading "ip") inside the
// namespace in a single process.
func (n *NetNS) IPBatch(ctx context.Context, lines ...string) error {
	cmd := exec.CommandContext(ctx, "ip", "-n", n.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runIP runs `ip [-n NS] args…`.
func runIP(ctx context.Context, ns string, args ...string) (string, error) {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
