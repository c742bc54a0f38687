package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/lab"
)

// runPrefix starts the names of this run's namespaces: the demo's prefix and
// this process's id, so that a later run tells a dead run's lab from the lab of
// a demo that is still running (two users, or a second terminal).
func runPrefix() string { return fmt.Sprintf("%s-%d", prefix, os.Getpid()) }

// removeLeftovers removes the namespaces of demo runs whose process is gone:
// what a run killed before its cleanup left. A running demo's lab stays.
// Namespaces named before the pid was in the name ("dt-demo-<lab id>-<role>",
// the lab id 8 hex digits) are leftovers too: no demo of this version runs them.
func removeLeftovers(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	dead := map[string]bool{} // the prefixes of dead runs' namespaces
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix+"-")
		if !ok {
			continue
		}
		field, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(field)
		if err != nil || strconv.Itoa(pid) != field {
			// Not a pid as runPrefix writes it: the lab id of a run from
			// before, or a name that is not the demo's.
			if len(field) == 8 && isHex(field) {
				dead[prefix+"-"+field] = true
			}
			continue
		}
		if pid <= 0 || pid == os.Getpid() || !errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
			continue
		}
		dead[prefix+"-"+field] = true
	}
	var gone []string
	var errs []error
	for p := range dead {
		g, err := lab.RemoveLeftovers(ctx, p)
		gone = append(gone, g...)
		errs = append(errs, err)
	}
	return gone, errors.Join(errs...)
}

func isHex(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}
