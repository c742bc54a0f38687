package redirect

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// defaultLockDir holds the per-namespace locks that serialize detour's own
// observe-and-apply: the xtables lock covers one iptables command, not the
// time between reading the rules and changing them.
const defaultLockDir = "/run/detour"

// netnsLock is a held lock of one network namespace.
type netnsLock struct {
	f    *os.File
	path string
}

// lockNetNS takes the exclusive lock of the calling thread's network namespace
// (which must already be the target one), waiting at most LockWait and never
// past ctx. The lock file is named after the device and inode of the
// namespace, the identity every path to it (/run/netns/x, /proc/PID/ns/net)
// shares. When the lock directory cannot be made (a read-only /run), installs
// are not serialized, which is logged, and unlock does nothing.
func (e *Engine) lockNetNS(ctx context.Context) (unlock func(), err error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nil, fmt.Errorf("identify network namespace: %w", err)
	}
	dir := e.LockDir
	if dir == "" {
		dir = defaultLockDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		if errors.Is(err, unix.EROFS) || errors.Is(err, os.ErrPermission) {
			e.logger().Warn("cannot create the lock directory; concurrent detour runs in this namespace are not serialized", "dir", dir, "error", err)
			return func() {}, nil
		}
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	path := netnsLockFile(dir, st)
	wait := e.lockWait()
	deadline := time.Now().Add(wait)
	pause := time.Millisecond
	for {
		l, err := tryLock(path)
		if err != nil {
			return nil, err
		}
		if l != nil {
			return l.unlock, nil
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%w: another detour run holds the lock of this network namespace (%s) after %s", ErrLockTimeout, path, wait.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the lock of this network namespace: %w", ctx.Err())
		case <-time.After(min(pause, time.Until(deadline))):
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// netnsLockFile is the lock file in dir of the namespace whose nsfs file is st.
func netnsLockFile(dir string, st unix.Stat_t) string {
	return filepath.Join(dir, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino))
}

// NetNSLockFile is the lock file a detour run takes, in the default lock
// directory, for the network namespace at nsPath (a bind mount or
// /proc/PID/ns/net): what a test holds to stand for another detour run.
func NetNSLockFile(nsPath string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(nsPath, &st); err != nil {
		return "", fmt.Errorf("identify network namespace %s: %w", nsPath, err)
	}
	return netnsLockFile(defaultLockDir, st), nil
}

// tryLock takes the lock file without waiting; nil, nil when someone holds it.
// The holder removes the file on release, so a lock taken on a file that is
// no longer the one at path is worthless: then it tries again.
func tryLock(path string) (*netnsLock, error) {
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open lock file: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		var held, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, fmt.Errorf("stat lock file: %w", err)
		}
		if err := unix.Stat(path, &now); err == nil && now.Dev == held.Dev && now.Ino == held.Ino {
			return &netnsLock{f: f, path: path}, nil
		}
		f.Close() // removed or replaced while we took it
	}
}

// unlock removes the lock file and releases the lock (in that order, see tryLock).
func (l *netnsLock) unlock() {
	if l == nil {
		return
	}
	os.Remove(l.path)
	l.f.Close()
}
