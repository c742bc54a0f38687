package netns

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn with its OS thread inside the network namespace at path (a bind
// mount such as /run/netns/NAME, or /proc/PID/ns/net) and returns fn's error.
// An empty path runs fn in the caller's namespace, on the caller's goroutine.
// A panic in fn is re-raised in the caller.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	// O_NONBLOCK: a FIFO at path (CNI_NETNS is whatever the runtime says)
	// must fail setns below, not wait in open(2) for a writer.
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer unix.Close(target)
	return do(target, path, fn)
}

// DoFd is Do for the network namespace of an open fd (of /run/netns/NAME or
// /proc/PID/ns/net); 0 runs fn in the caller's namespace, on the caller's
// goroutine. The fd stays open.
func DoFd(fd int, fn func() error) error {
	if fd == 0 {
		return fn()
	}
	return do(fd, fmt.Sprintf("fd %d", fd), fn)
}

// do runs fn on a locked OS thread inside the namespace of target; name
// names it in errors.
func do(target int, path string, fn func() error) error {
	type outcome struct {
		err   error
		panic any
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no deferred UnlockOSThread: it runs only once the thread
		// is known to be back in its own namespace.
		origin, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("open current network namespace: %w", err)}
			return
		}
		defer unix.Close(origin)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- outcome{err: fmt.Errorf("enter network namespace %s: %w", path, err)}
			return
		}
		var out outcome
		func() {
			defer func() {
				if p := recover(); p != nil {
					out.panic = p
				}
			}()
			out.err = fn()
		}()
		if err := unix.Setns(origin, unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and dies with this goroutine.
			out.err = errors.Join(out.err, fmt.Errorf("leave network namespace %s: %w", path, err))
			done <- out
			return
		}
		runtime.UnlockOSThread()
		done <- out
	}()
	out := <-done
	if out.panic != nil {
		panic(out.panic)
	}
	return out.err
}
