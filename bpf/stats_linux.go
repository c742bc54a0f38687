package bpf

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// EnableRunStats turns on the kernel's run-time statistics of every BPF
// program (BPF_ENABLE_STATS) until the returned Closer is closed. No sysctl
// is written: the kernel keeps them on while any such holder is open, so
// closing it (or the process exiting) restores what was there. They add two
// clock reads to every program run, so the figures they give are upper
// bounds. Needs CAP_SYS_ADMIN.
func EnableRunStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable bpf run-time statistics: %w", err)
	}
	return c, nil
}

// RunStats reads the run count and run time of detour's programs linked
// under the loader's pin directory, by program name without the detour_
// prefix (connect4, sockops, …). A program linked for several scopes is
// counted once. The counts only grow while statistics are on
// (EnableRunStats); take the difference of two readings.
func (l *Loader) RunStats() (map[string]RunStat, error) {
	out := map[string]RunStat{}
	seen := map[ebpf.ProgramID]bool{}
	dirs, err := filepath.Glob(filepath.Join(l.opts.pinDir(), "links", "*"))
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, d := range dirs {
		pins, err := os.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		for _, p := range pins {
			lk, err := link.LoadPinnedLink(filepath.Join(d, p.Name()), nil)
			if err != nil {
				return nil, fmt.Errorf("load link %s: %w", p.Name(), err)
			}
			info, err := lk.Info()
			lk.Close()
			if err != nil {
				return nil, fmt.Errorf("read link %s: %w", p.Name(), err)
			}
			if seen[info.Program] {
				continue
			}
			seen[info.Program] = true
			prog, err := ebpf.NewProgramFromID(info.Program)
			if err != nil {
				return nil, fmt.Errorf("open program of link %s: %w", p.Name(), err)
			}
			st, err := prog.Stats()
			prog.Close()
			if err != nil {
				return nil, fmt.Errorf("read program of link %s: %w", p.Name(), err)
			}
			name := strings.TrimPrefix(p.Name(), "detour_")
			if filepath.Base(d) == aliveDir {
				name = "alive" // a namespace's liveness mark (sk_lookup), pinned by cookie
			}
			s := out[name]
			s.Runs += st.RunCount
			s.RunTime += st.Runtime
			out[name] = s
		}
	}
	return out, nil
}
