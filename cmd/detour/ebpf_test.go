package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends/netfilter"
)

// TestNeedsEBPF: a lean detour hands over backend ebpf, --cgroup, and every
// command while the eBPF backend's maps are pinned, and nothing else.
func TestNeedsEBPF(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	pinned := t.TempDir()
	if err := os.Mkdir(filepath.Join(pinned, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		g       globalOptions
		backend redirect.Backend
		want    bool
	}{
		{"nftables, nothing pinned", globalOptions{bpfPinDir: empty}, redirect.BackendNFTables, false},
		{"auto, nothing pinned", globalOptions{bpfPinDir: empty}, redirect.BackendAuto, false},
		{"uninstall, nothing pinned", globalOptions{bpfPinDir: empty}, netfilter.AnyBackend, false},
		{"iptables, pin directory without maps", globalOptions{bpfPinDir: filepath.Join(empty, "missing")}, redirect.BackendIPTables, false},
		{"backend ebpf", globalOptions{bpfPinDir: empty}, redirect.BackendEBPF, true},
		{"--cgroup", globalOptions{bpfPinDir: empty, cgroup: "/sys/fs/cgroup/x"}, redirect.BackendAuto, true},
		{"uninstall, maps pinned", globalOptions{bpfPinDir: pinned}, netfilter.AnyBackend, true},
		{"nftables, maps pinned", globalOptions{bpfPinDir: pinned}, redirect.BackendNFTables, true},
	}
	for _, tt := range tests {
		if got := tt.g.needsEBPF(tt.backend); (got != "") != tt.want {
			t.Errorf("%s: needsEBPF = %q, want handed over: %v", tt.name, got, tt.want)
		}
	}
}

// TestDelegateEBPF: the command goes to detour-ebpf next to detour with
// detour's arguments unchanged, and the document --config - read is on
// stdin again for it.
func TestDelegateEBPF(t *testing.T) {
	// Not parallel: it replaces the test process's descriptor 0.
	saved, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Dup2(saved, 0); err != nil {
			t.Error(err)
		}
		unix.Close(saved)
	}()
	dir := t.TempDir()
	writeExecutable(t, filepath.Join(dir, ebpfBinary))
	args := []string{"install", "--backend", "ebpf", "--config", "-"}
	var calls []execCall
	g := globalOptions{delegate: fakeDelegator(args, dir, "", &calls), stdinDoc: []byte("mode: tproxy\n")}
	if err := g.delegateEBPF("backend ebpf", slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	want := append([]string{filepath.Join(dir, ebpfBinary)}, args...)
	if len(calls) != 1 || calls[0].path != want[0] || !slices.Equal(calls[0].argv, want) {
		t.Fatalf("exec calls = %+v, want one of %v", calls, want)
	}
	got, err := io.ReadAll(os.NewFile(0, "stdin"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "mode: tproxy\n" {
		t.Errorf("stdin after the hand-over = %q, want the document --config - read", got)
	}
}

// TestDelegateEBPFMissing: without detour-ebpf the command fails naming it
// and where it was looked for.
func TestDelegateEBPFMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var calls []execCall
	g := globalOptions{delegate: fakeDelegator([]string{"install", "--backend", "ebpf"}, dir, "", &calls)}
	err := g.delegateEBPF("backend ebpf", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || len(calls) != 0 {
		t.Fatalf("delegateEBPF = %v with exec calls %v, want an error and no exec", err, calls)
	}
	for _, want := range []string{ebpfBinary, filepath.Join(dir, ebpfBinary)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// TestEarlyEBPF: what a lean detour hands over before doing anything else.
func TestEarlyEBPF(t *testing.T) {
	t.Parallel()
	none := func(string) (string, bool) { return "", false }
	env := func(v string) func(string) (string, bool) {
		return func(k string) (string, bool) { return v, k == "DETOUR_BACKEND" }
	}
	tests := []struct {
		args   []string
		lookup func(string) (string, bool)
		want   bool
	}{
		{[]string{"install", "--backend", "ebpf"}, none, true},
		{[]string{"install", "--preset", "istio", "--backend=ebpf"}, none, true},
		{[]string{"-v", "status", "--cgroup", "/sys/fs/cgroup/app.slice"}, none, true},
		{[]string{"uninstall", "--cgroup=/sys/fs/cgroup/app.slice"}, none, true},
		{[]string{"install"}, env("ebpf"), true},
		{[]string{"install", "--backend", "nftables"}, none, false},
		{[]string{"install", "--backend", "iptables"}, env("nftables"), false},
		{[]string{"plan", "--config", "ebpf.yaml"}, none, false},
		{[]string{"version"}, none, false},
		{[]string{"install", "--", "--backend", "ebpf"}, none, false},
	}
	for _, tt := range tests {
		if got := earlyEBPF(tt.args, tt.lookup); (got != "") != tt.want {
			t.Errorf("earlyEBPF(%q) = %q, want handed over: %v", tt.args, got, tt.want)
		}
	}
}

// TestDelegateEBPFPipeConfig: `detour plan --config <(echo 'backend: ebpf')`
// hands the command to detour-ebpf after reading the pipe; detour-ebpf used
// to open the drained pipe again and refuse it (`--config: config:
// "/dev/fd/63" is empty`, exit 2), and a named FIFO hung it. The hand-over
// now names a file holding the document instead.
func TestDelegateEBPFPipeConfig(t *testing.T) {
	if !leanBuild {
		t.Skip("only the lean build hands commands over")
	}
	const doc = "backend: ebpf\noutbound:\n  excludePorts: [5432]\n"
	for _, form := range []string{"--config PATH", "--config=PATH", "DETOUR_CONFIG=PATH"} {
		t.Run(form, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, err := w.WriteString(doc); err != nil {
				t.Fatal(err)
			}
			w.Close()
			pipe := fmt.Sprintf("/proc/self/fd/%d", r.Fd())
			args := []string{"plan", "--ip-families", "ipv4"}
			switch form {
			case "--config PATH":
				args = append(args, "--config", pipe)
			case "--config=PATH":
				args = append(args, "--config="+pipe)
			default:
				t.Setenv("DETOUR_CONFIG", pipe)
			}
			t.Setenv("DETOUR_EBPF_PIN_DIR", t.TempDir())
			dir := t.TempDir()
			writeExecutable(t, filepath.Join(dir, ebpfBinary))
			var calls []execCall
			d := fakeDelegator(args, dir, "", &calls)
			// A real exec does not return; this one stops the command.
			record := d.exec
			d.exec = func(path string, argv, env []string) error {
				record(path, argv, env)
				return errors.New("exec'd")
			}
			_, _, stderr := runDelegated(t, d)
			if len(calls) != 1 {
				t.Fatalf("exec calls %v, stderr %q; want one hand-over", calls, stderr)
			}
			// What detour-ebpf reads for its --config: the document, not a
			// drained pipe.
			given := os.Getenv("DETOUR_CONFIG")
			for i, a := range calls[0].argv {
				if a == "--config" && i+1 < len(calls[0].argv) {
					given = calls[0].argv[i+1]
				} else if v, ok := strings.CutPrefix(a, "--config="); ok {
					given = v
				}
			}
			got, err := os.ReadFile(given)
			if err != nil || string(got) != doc {
				t.Errorf("detour-ebpf gets --config %s holding %q (%v), want %q", given, got, err, doc)
			}
		})
	}
}

// TestEBPFEnvRefused: DETOUR_EBPF_PIN_DIR=relative made `install --backend
// ebpf` mount a bpffs on the working directory, and an empty value (a test
// script's unset variable) meant the machine's own pin directory or cgroup
// root. Both are refused, exit 2, before anything is read or changed.
func TestEBPFEnvRefused(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"DETOUR_EBPF_PIN_DIR", "relative/detour"},
		{"DETOUR_EBPF_PIN_DIR", ""},
		{"DETOUR_EBPF_PIN_DIR", "/tmp/../tmp/detour"},
		{"DETOUR_EBPF_CGROUP_ROOT", "sys/fs/cgroup"},
		{"DETOUR_EBPF_CGROUP_ROOT", ""},
		{"DETOUR_EBPF_CGROUP_ROOT", "/"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			t.Setenv(tc.name, tc.value)
			for _, args := range [][]string{{"plan", "--ip-families", "ipv4"}, {"explain", "--config-only", "--ip-families", "ipv4", "--to", "192.0.2.1:80"}} {
				code, _, stderr := runCLI(t, args...)
				if code != exitUsage || !strings.Contains(stderr, tc.name+": ") {
					t.Errorf("detour %s with %s=%q: exit %d, stderr %q; want exit 2 naming the variable", strings.Join(args, " "), tc.name, tc.value, code, stderr)
				}
			}
		})
	}
}
