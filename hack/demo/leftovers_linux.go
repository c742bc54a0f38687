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
func removeLeftovers(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	dead := map[int]bool{}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix+"-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid <= 0 || pid == os.Getpid() || !errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
			continue
		}
		dead[pid] = true
	}
	var gone []string
	var errs []error
	for pid := range dead {
		g, err := lab.RemoveLeftovers(ctx, fmt.Sprintf("%s-%d", prefix, pid))
		gone = append(gone, g...)
		errs = append(errs, err)
	}
	return gone, errors.Join(errs...)
}
