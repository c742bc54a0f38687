package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
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

// runOnce runs c twice: once directly, for its CPU time (user+sys from
// wait4), and once under ptrace, stopped just before it exits to read VmHWM
// from /proc/PID/status. ru_maxrss would not do for memory: the kernel folds
// the memory of the process a child was started from into it at exec, which
// here is this Go program.
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
	hwm, err := peakResident(c)
	if err != nil {
		return startupSample{}, err
	}
	return startupSample{cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), hwm: hwm}, nil
}

// peakResident runs c traced and returns its VmHWM at exit, in bytes.
func peakResident(c startupCmd) (int64, error) {
	// ptrace requests must come from the thread that started the tracee.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command(c.bin, c.args...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%s: %w", c.name, err)
	}
	pid := cmd.Process.Pid
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil || !ws.Stopped() {
		return 0, fmt.Errorf("%s: not stopped at exec: %v %v", c.name, ws, err)
	}
	if err := syscall.PtraceSetOptions(pid, syscall.PTRACE_O_TRACEEXIT); err != nil {
		return 0, fmt.Errorf("%s: ptrace: %w", c.name, err)
	}
	var hwm int64 = -1
	sig := 0
	for {
		if err := syscall.PtraceCont(pid, sig); err != nil {
			return 0, fmt.Errorf("%s: ptrace continue: %w", c.name, err)
		}
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
			return 0, fmt.Errorf("%s: wait: %w", c.name, err)
		}
		if ws.Exited() || ws.Signaled() {
			break
		}
		sig = 0
		if ws.TrapCause() == syscall.PTRACE_EVENT_EXIT {
			var err error
			if hwm, err = vmHWM(pid); err != nil {
				return 0, fmt.Errorf("%s: %w", c.name, err)
			}
		} else if s := ws.StopSignal(); s != syscall.SIGTRAP {
			sig = int(s) // a signal for the tracee (Go preempts with SIGURG): deliver it
		}
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return 0, fmt.Errorf("%s: traced run ended %v", c.name, ws)
	}
	if hwm < 0 {
		return 0, fmt.Errorf("%s: exited without an exit stop", c.name)
	}
	return hwm, nil
}

func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

func percentileInt(v []int64, p int) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func mib(b int64) string {
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
