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

// CheckCgroup reports whether path is a cgroup v2 directory (a Scope.Cgroup).
func CheckCgroup(path string) error {
	_, err := cgroupID(path)
	return err
}
