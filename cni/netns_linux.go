package cni

import (
	"errors"
	"io/fs"

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
