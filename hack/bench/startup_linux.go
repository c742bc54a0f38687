package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"
)

// startupCmd is a command whose start-up cost is measured: it does next to no
// work, so what it costs is loading and initializing the binary.
type startupCmd struct {
	name string
	bin  string
	args []string
	env  []string
}

// startupSample is one run's CPU (user+sys) and peak resident memory.
type startupSample struct {
	cpu time.Duration
	hwm int64 // bytes
}

// measureStartup runs each command runs times, interleaved so load spikes hit
// all alike, and prints the median and p90 of CPU time and of peak resident
// memory (ru_maxrss, which is the process's VmHWM).
func measureStartup(ctx context.Context, cmds []startupCmd, runs int) error {
	samples := make([][]startupSample, len(cmds))
	for i := 0; i < runs; i++ {
		for j, c := range cmds {
			if err := ctx.Err(); err != nil {
				return err
			}
			s, err := runOnce(ctx, c)
			if err != nil {
				return err
			}
			samples[j] = append(samples[j], s)
		}
	}
	fmt.Printf("start-up: %d runs per command, interleaved; CPU = user+sys of the process, memory = its peak resident set (VmHWM)\n\n", runs)
	fmt.Printf("%-36s %12s %12s %14s %14s\n", "command", "CPU median", "CPU p90", "VmHWM median", "VmHWM p90")
	for j, c := range cmds {
		cpu := make([]time.Duration, len(samples[j]))
		hwm := make([]int64, len(samples[j]))
		for k, s := range samples[j] {
			cpu[k], hwm[k] = s.cpu, s.hwm
		}
		fmt.Printf("%-36s %12s %12s %14s %14s\n", c.name,
			percentile(cpu, 50).Round(10*time.Microsecond), percentile(cpu, 90).Round(10*time.Microsecond),
			mib(percentileInt(hwm, 50)), mib(percentileInt(hwm, 90)))
	}
	fmt.Println()
	return nil
}

func runOnce(ctx context.Context, c startupCmd) (startupSample, error) {
	cmd := exec.CommandContext(ctx, c.bin, c.args...)
	cmd.Env = append(os.Environ(), c.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return startupSample{}, fmt.Errorf("%s: %v: %s", c.name, err, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return startupSample{}, fmt.Errorf("%s: no resource usage", c.name)
	}
	return startupSample{
		cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		hwm: ru.Maxrss * 1024, // Linux reports kilobytes
	}, nil
}

func percentileInt(v []int64, p int) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func mib(b int64) string {
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
