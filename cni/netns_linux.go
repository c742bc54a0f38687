package cni

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/netns"
)

// netnsGone reports whether path no longer names a network namespace: it does
// not exist, or it is a leftover mount point that is no longer an nsfs inode
// (what a runtime's unmounted /var/run/netns/cni-… file looks like).
func netnsGone(path string) (bool, error) {
	if path == "" {
		return true, nil
	}
	switch err := netns.Check(path); {
	case err == nil:
		return false, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, netns.ErrNotNetNS):
		return true, nil
	default:
		return false, err
	}
}

// netnsCookie returns the cookie of the network namespace at path (what the
// eBPF backend enrolls it by). It enters the namespace on a locked thread of
// its own and changes nothing there.
func netnsCookie(path string) (uint64, error) {
	var cookie uint64
	err := netns.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read netns cookie of %s: %w", path, err)
	}
	return cookie, nil
}
