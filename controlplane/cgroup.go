package controlplane

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cgroupMemoryMax returns the memory limit the process runs under, read
// under root (normally /sys/fs/cgroup) with selfCgroup the content of
// /proc/self/cgroup; ok is false when no limit applies. cgroup v2
// (memory.max, "max" for none) and v1 (the memory controller's
// memory.limit_in_bytes, a huge value for none) are read. A limit on any
// ancestor binds too (a systemd slice's MemoryMax, a pod-level limit above
// the container's cgroup), so the smallest from the process's cgroup up to
// the mount's root wins. A container's own cgroup namespace shows its cgroup
// as "/", the root of the mount; a path that is not under the mount is read
// at the root.
func cgroupMemoryMax(root string, selfCgroup []byte) (limit int64, ok bool, err error) {
	var v2, v1 string
	var hasV2, hasV1 bool
	sc := bufio.NewScanner(bytes.NewReader(selfCgroup))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2, hasV2 = parts[2], true
		case hasController(parts[1], "memory"):
			v1, hasV1 = parts[2], true
		}
	}
	// v1 first: on a hybrid host the memory controller is v1's.
	if hasV1 {
		limit, ok, err = smallestLimit(filepath.Join(root, "memory"), v1, "memory.limit_in_bytes")
		if err != nil || ok {
			return limit, ok, err
		}
	}
	if hasV2 {
		return smallestLimit(root, v2, "memory.max")
	}
	return 0, false, nil
}

// smallestLimit reads file in the cgroup directory of path under mount and
// in each of its parents up to mount, and returns the smallest limit set.
func smallestLimit(mount, path, file string) (limit int64, ok bool, err error) {
	dir := filepath.Join(mount, filepath.Clean("/"+path))
	if _, err := os.Stat(dir); err != nil {
		dir = mount
	}
	for {
		n, set, err := readLimit(filepath.Join(dir, file))
		if err != nil {
			return 0, false, err
		}
		if set && (!ok || n < limit) {
			limit, ok = n, true
		}
		if len(dir) <= len(mount) { // the mount itself, or (never) above it
			return limit, ok, nil
		}
		dir = filepath.Dir(dir)
	}
}

// readLimit reads one memory limit file; set is false when it is missing
// or says there is no limit.
func readLimit(path string) (n int64, set bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read cgroup memory limit: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false, nil
	}
	n, err = strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("read cgroup memory limit %s: %q is not a number", path, s)
	}
	// cgroup v1 reports "no limit" as the largest page-aligned int64.
	if n <= 0 || n >= 1<<62 {
		return 0, false, nil
	}
	return n, true, nil
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
