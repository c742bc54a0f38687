package bpf

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// root is Options.Root or the mount point of the cgroup v2 hierarchy.
func (o Options) root() (string, error) {
	if o.Root != "" {
		return o.Root, nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS
		fields := strings.Fields(s.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && fields[3] == "/" {
				return fields[4], nil
			}
		}
	}
	return "", fmt.Errorf("find cgroup v2 mount: none in /proc/self/mountinfo")
}

// CgroupRoot is the mount point of the cgroup v2 hierarchy, where the
// network-namespace scope attaches by default.
func CgroupRoot() (string, error) { return Options{}.root() }

// CurrentNetns returns the cookie of the calling thread's network namespace.
// The caller keeps the goroutine locked to the thread that entered it.
func CurrentNetns() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	return v, nil
}

// IsHierarchyRoot reports whether the cgroup v2 directory at path is the root
// of the hierarchy as this process sees it: the root cgroup (id 1), or the
// top of a cgroup2 mount (a container's, with its own cgroup namespace). A
// cgroup scope there would capture every process below it, in every network
// namespace: the whole machine, or the whole container.
func IsHierarchyRoot(path string) (bool, error) {
	id, err := cgroupID(path)
	if err != nil {
		return false, err
	}
	if id == 1 {
		return true, nil
	}
	var s, parent unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return false, fmt.Errorf("cgroup %s: %w", path, err)
	}
	// path+"/..", not filepath.Join: the kernel's parent of what path names
	// (a symlink's target's), not the lexical one.
	if err := unix.Stat(path+"/..", &parent); err != nil {
		return false, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return parent.Dev != s.Dev, nil
}

// CheckCgroup reports whether path is a cgroup v2 directory (a Scope.Cgroup).
func CheckCgroup(path string) error {
	_, err := cgroupID(path)
	return err
}
