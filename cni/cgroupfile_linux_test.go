package cni

import (
	"path/filepath"

	"golang.org/x/sys/unix"
)

// cgroup2File is a file (not a directory) of the machine's cgroup v2
// hierarchy, or "" when none is mounted where systems mount it.
func cgroup2File() string {
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return filepath.Join(root, "cgroup.procs")
		}
	}
	return ""
}
