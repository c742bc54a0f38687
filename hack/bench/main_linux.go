package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// commands are the host tools detour may run; each gets a counting shim.
var commands = []string{
	"iptables", "ip6tables",
	"iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore",
	"iptables-nft", "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save", "iptables-nft-restore", "ip6tables-nft-restore",
	"iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-restore",
	"ip", "nft",
}

func main() {
	detour := flag.String("detour", "bin/detour", "the detour binary to measure")
	detourCP := flag.String("detour-cp", "", "the detour-cp binary whose start-up is measured (default: next to --detour)")
	detourCNI := flag.String("detour-cni", "", "the detour-cni binary whose start-up is measured (default: next to --detour)")
	detourEBPF := flag.String("detour-ebpf", "", "the detour-ebpf binary (the CLI with the eBPF backend) whose start-up is measured (default: next to --detour; skipped when missing)")
	floor := flag.String("floor", "", "a static Go binary that does nothing (hack/bench/floor), measured as the machine's floor (empty: skipped)")
	runs := flag.Int("runs", 25, "runs per step (the median is reported)")
	startupRuns := flag.Int("startup-runs", 100, "runs per start-up command")
	startupOnly := flag.Bool("startup-only", false, "measure start-up only (needs no root)")
	preset := flag.String("preset", "istio", "config preset to install")
	backends := flag.String("backends", "iptables-nft,iptables-legacy", "the backends to measure, comma-separated")
	istio := flag.String("istio", "", "Istio's pilot-agent binary: its istio-iptables is measured in the same run (make deps-istio builds it)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir := filepath.Dir(*detour)
	if *detourCP == "" {
		*detourCP = filepath.Join(dir, "detour-cp")
	}
	if *detourCNI == "" {
		*detourCNI = filepath.Join(dir, "detour-cni")
	}
	if *detourEBPF == "" {
		*detourEBPF = filepath.Join(dir, "detour-ebpf")
	}
	startup := []startupCmd{
		{name: "detour version", bin: *detour, args: []string{"version"}},
		{name: "detour-cni (CNI_COMMAND=VERSION)", bin: *detourCNI, env: []string{"CNI_COMMAND=VERSION"}},
		{name: "detour-cp version", bin: *detourCP, args: []string{"version"}},
	}
	if _, err := os.Stat(*detourEBPF); err == nil {
		startup = append(startup, startupCmd{name: "detour-ebpf version", bin: *detourEBPF, args: []string{"version"}})
	}
	// The plugin with the eBPF backend, which the lean detour-cni execs.
	if cniEBPF := filepath.Join(filepath.Dir(*detourCNI), "detour-cni-ebpf"); fileExists(cniEBPF) {
		startup = append(startup, startupCmd{name: "detour-cni-ebpf (CNI_COMMAND=VERSION)", bin: cniEBPF, env: []string{"CNI_COMMAND=VERSION"}})
	}
	if *floor != "" {
		startup = append(startup, startupCmd{name: "floor: Go binary doing nothing", bin: *floor})
	}
	if err := measureStartup(ctx, startup, *startupRuns); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if *startupOnly {
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (it creates network namespaces)")
		os.Exit(1)
	}
	installs, err := run(ctx, *detour, *runs, *preset, strings.Split(*backends, ","))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if *istio == "" {
		return
	}
	if err := runIstio(ctx, *istio, *runs, installs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type step struct {
	name  string
	args  []string
	times []time.Duration
	procs []int
}

// run measures detour per backend and returns each backend's median install.
func run(ctx context.Context, detour string, runs int, preset string, backends []string) (map[string]time.Duration, error) {
	installs := map[string]time.Duration{}
	bin, err := filepath.Abs(detour)
	if err != nil {
		return nil, err
	}
	shims, err := os.MkdirTemp("", "detour-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(shims)
	log := filepath.Join(shims, "exec.log")
	if err := writeShims(shims, log); err != nil {
		return nil, err
	}
	path := shims + ":" + os.Getenv("PATH")

	fmt.Printf("detour %s: %d runs per step, preset %s with DNS capture, IPv4 and IPv6, a fresh network namespace per run;\nprocesses = child processes, as detour reports them and as PATH shims counted them in an extra round\n\n", detour, runs, preset)
	fmt.Printf("%-16s %-22s %12s %12s %10s\n", "backend", "step", "median", "p90", "processes")
	for _, backend := range backends {
		steps := []*step{
			{name: "install", args: []string{"install", "--preset", preset, "--dns-capture", "all", "--backend", backend}},
			{name: "re-run, no change", args: []string{"install", "--preset", preset, "--dns-capture", "all", "--backend", backend}},
			{name: "uninstall", args: []string{"uninstall"}},
		}
		// One round through the counting shims checks the counts detour
		// reports; the timed rounds run the real commands.
		if err := oneRound(ctx, bin, path, log, steps); err != nil {
			return nil, fmt.Errorf("%s, counting round: %w", backend, err)
		}
		for _, s := range steps {
			s.times = nil
		}
		for i := 0; i < runs; i++ {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := oneRound(ctx, bin, os.Getenv("PATH"), "", steps); err != nil {
				return nil, fmt.Errorf("%s run %d: %w", backend, i+1, err)
			}
		}
		for _, s := range steps {
			fmt.Printf("%-16s %-22s %12s %12s %10s\n", backend, s.name,
				percentile(s.times, 50).Round(10*time.Microsecond), percentile(s.times, 90).Round(10*time.Microsecond), procRange(s.procs))
		}
		installs[backend] = percentile(steps[0].times, 50)
	}
	return installs, nil
}

// oneRound runs every step once in a namespace of its own. With a log (the
// shims on path write it), it checks the child processes detour reports
// against the ones the shims saw.
func oneRound(ctx context.Context, bin, path, log string, steps []*step) error {
	ns := fmt.Sprintf("dt-bench-%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "delete", ns).Run()
	if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	for _, s := range steps {
		if log != "" {
			if err := os.WriteFile(log, nil, 0o644); err != nil {
				return err
			}
		}
		cmd := exec.CommandContext(ctx, bin, append(s.args, "--netns", ns, "-o", "json")...)
		cmd.Env = append(os.Environ(), "PATH="+path)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		elapsed := time.Since(start)
		if err != nil {
			return fmt.Errorf("detour %s: %v: %s", strings.Join(s.args, " "), err, out)
		}
		var res struct {
			Processes int `json:"processes"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return fmt.Errorf("detour %s: read its json: %v", s.args[0], err)
		}
		if log != "" {
			counted, err := os.ReadFile(log)
			if err != nil {
				return err
			}
			if n := strings.Count(string(counted), "\n"); n != res.Processes {
				return fmt.Errorf("detour %s reported %d child processes, the shims counted %d", s.args[0], res.Processes, n)
			}
		}
		s.times = append(s.times, elapsed)
		s.procs = append(s.procs, res.Processes)
	}
	return nil
}

// writeShims puts a script per command in dir that logs one line and runs the
// real command, so every child process detour starts is counted from outside.
func writeShims(dir, log string) error {
	for _, c := range commands {
		real, err := exec.LookPath(c)
		if errors.Is(err, exec.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		script := fmt.Sprintf("#!/bin/sh\necho %s >> %s\nexec %s \"$@\"\n", c, log, real)
		if err := os.WriteFile(filepath.Join(dir, c), []byte(script), 0o755); err != nil {
			return err
		}
	}
	return nil
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func procRange(ns []int) string {
	lo, hi := slices.Min(ns), slices.Max(ns)
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
