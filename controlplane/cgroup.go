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

// cgroupMemoryMax returns the memory limit of the cgroup the process runs
// in, read under root (normally /sys/fs/cgroup) with selfCgroup the content
// of /proc/self/cgroup; ok is false when the cgroup has no limit. cgroup v2
// (memory.max, "max" for none) and v1 (the memory controller's
// memory.limit_in_bytes, a huge value for none) are read. A container's own
// cgroup namespace shows its cgroup as "/", the root of the mount: the files
// are looked for under the cgroup's path, then at the root.
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
	var candidates []string
	if hasV1 {
		candidates = append(candidates,
			filepath.Join(root, "memory", v1, "memory.limit_in_bytes"),
			filepath.Join(root, "memory", "memory.limit_in_bytes"))
	}
	if hasV2 {
		candidates = append(candidates, filepath.Join(root, v2, "memory.max"), filepath.Join(root, "memory.max"))
	}
	for _, path := range candidates {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("read cgroup memory limit: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("read cgroup memory limit %s: %q is not a number", path, s)
		}
		// cgroup v1 reports "no limit" as the largest page-aligned int64.
		if n <= 0 || n >= 1<<62 {
			return 0, false, nil
		}
		return n, true, nil
	}
	return 0, false, nil
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
