package cni

import (
	"errors"
	"io/fs"

	"golang.org/x/sys/unix"
)

// netnsGone reports whether path no longer names a network namespace: it does
// not exist, or it is a leftover mount point that is no longer an nsfs inode
// (what a runtime's unmounted /var/run/netns/cni-… file looks like).
func netnsGone(path string) (bool, error) {
	if path == "" {
		return true, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return true, nil
		}
		return false, &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	return st.Type != unix.NSFS_MAGIC, nil
}
