package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/systemd"
	"github.com/detour-mesh/detour/redirect"
)

// recordingSystemctl stands in for systemctl.
type recordingSystemctl struct{ calls []string }

func (r *recordingSystemctl) Run(_ context.Context, args ...string) error {
	r.calls = append(r.calls, strings.Join(args, " "))
	return nil
}

func TestPersistWritesUnitForThisBinary(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	sc := &recordingSystemctl{}
	p := persistOptions{enabled: true, unit: systemd.Options{Root: root, Systemctl: sc}}
	cfg, err := redirect.Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := persist(context.Background(), p, cfg, &out); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if got := out.String(); got != "persisted: detour.service enabled; it installs /etc/detour/detour.yaml at boot\n" {
		t.Errorf("output %q", got)
	}
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/detour.service"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "ExecStart=" + exe + " install --config /etc/detour/detour.yaml\n"; !strings.Contains(string(unit), want) {
		t.Errorf("unit does not run this binary (%s):\n%s", want, unit)
	}
	doc, err := os.ReadFile(filepath.Join(root, "etc/detour/detour.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	back := redirect.Default()
	if err := back.Decode(doc); err != nil || back.Proxy.UID != 1337 || len(back.Inbound.ExcludePorts) != 4 {
		t.Errorf("persisted config reads back as uid %d, excludes %v (%v)", back.Proxy.UID, back.Inbound.ExcludePorts, err)
	}
	if got := strings.Join(sc.calls, "; "); got != "daemon-reload; enable --now detour.service" {
		t.Errorf("systemctl calls: %s", got)
	}

	sc.calls = nil
	out.Reset()
	if err := unpersist(context.Background(), p, &out); err != nil {
		t.Fatalf("unpersist: %v", err)
	}
	if got := strings.Join(sc.calls, "; "); got != "disable --now detour.service; daemon-reload" {
		t.Errorf("systemctl calls: %s", got)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/detour.service")); !os.IsNotExist(err) {
		t.Error("unit left after unpersist")
	}
}

// TestPersistRefusedBeforeAnyChange checks the combinations --persist refuses:
// they exit 2 before the host is read or changed (these run without root).
func TestPersistRefusedBeforeAnyChange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"install dry run", []string{"install", "--persist", "--dry-run"}, "--persist: not with --dry-run"},
		{"install in a netns", []string{"install", "--persist", "--netns", "/proc/self/ns/net"}, "--persist: not with --netns"},
		{"uninstall in a netns", []string{"uninstall", "--persist", "--netns", "/proc/self/ns/net"}, "--persist: not with --netns"},
	}
	if cg, _ := findChildCgroup(t); cg != "" {
		// The unit would install the network-namespace scope at boot: every
		// process of the host captured instead of the cgroup's. (The bad port
		// keeps a run that gets past --persist from changing the host.)
		tests = append(tests, struct {
			name string
			args []string
			want string
		}{"install with --cgroup", []string{"install", "--persist", "--backend", "ebpf", "--cgroup", cg, "--exclude-outbound-ports", "0"}, "--persist: not with --cgroup"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, stderr := runCmd(t, context.Background(), tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 saying %q", code, out, stderr, tc.want)
			}
		})
	}
}

func runCmd(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}
