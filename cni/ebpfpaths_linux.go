package cni

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ebpfPaths checks, on this node, the plugin config keys the eBPF backend
// works with (those that are set; empty ones are the backend's defaults):
// ebpfCgroupRoot must be a cgroup v2 directory, and the directory ebpfPinDir
// sits in must exist (a bpffs is mounted there when none is). Every ADD of an
// eBPF pod would fail otherwise, so STATUS reports it and ADD fails early with
// an error naming the key and the value. It only reads the host.
func ebpfPaths(pinDir, cgroupRoot string) error {
	var errs []error
	if cgroupRoot != "" {
		var st unix.Statfs_t
		var fi unix.Stat_t
		if err := unix.Statfs(cgroupRoot, &st); err != nil {
			errs = append(errs, fmt.Errorf("plugin config key ebpfCgroupRoot: %q: %w", cgroupRoot, err))
		} else if err := unix.Stat(cgroupRoot, &fi); err != nil {
			errs = append(errs, fmt.Errorf("plugin config key ebpfCgroupRoot: %q: %w", cgroupRoot, err))
		} else if st.Type != unix.CGROUP2_SUPER_MAGIC || fi.Mode&unix.S_IFMT != unix.S_IFDIR { // cgroup.procs is on cgroup v2 too
			errs = append(errs, fmt.Errorf("plugin config key ebpfCgroupRoot: %q is not a cgroup v2 directory", cgroupRoot))
		}
	}
	if pinDir != "" {
		parent := filepath.Dir(pinDir)
		var st unix.Stat_t
		if err := unix.Stat(parent, &st); err != nil {
			errs = append(errs, fmt.Errorf("plugin config key ebpfPinDir: %q: directory %s: %w", pinDir, parent, err))
		} else if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			errs = append(errs, fmt.Errorf("plugin config key ebpfPinDir: %q: %s is not a directory", pinDir, parent))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}
