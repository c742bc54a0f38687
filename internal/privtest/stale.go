package privtest

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DeadRun reports whether path's base name is prefix followed by the id of
// a process that is gone ("detour-e2e-1234", "dtb-1234-…"): what a test run
// names its namespaces, mounts and cgroups with, so that a later run can
// remove those a killed run could not. This process's own and a live
// process's names are not a dead run's.
func DeadRun(path, prefix string) (pid int, dead bool) {
	rest, ok := strings.CutPrefix(filepath.Base(path), prefix)
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
	return pid, err == nil && pid > 0 && pid != os.Getpid() && errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}
