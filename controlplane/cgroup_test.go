package controlplane

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// writeFiles writes files (path relative to root → content) under root.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for path, content := range files {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupMemoryMax(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		self    string
		files   map[string]string
		want    int64
		wantOK  bool
		wantErr string
	}{
		{name: "v2 limit of the process's cgroup", self: "0::/kubepods/pod1/app\n",
			files: map[string]string{"kubepods/pod1/app/memory.max": "536870912\n", "memory.max": "max\n"}, want: 512 << 20, wantOK: true},
		{name: "v2 container namespace: the cgroup is the mount's root", self: "0::/\n",
			files: map[string]string{"memory.max": "268435456\n"}, want: 256 << 20, wantOK: true},
		{name: "v2 path not mounted: the root's file", self: "0::/elsewhere\n",
			files: map[string]string{"memory.max": "268435456\n"}, want: 256 << 20, wantOK: true},
		{name: "v2 no limit", self: "0::/app\n", files: map[string]string{"app/memory.max": "max\n"}},
		{name: "v2 the limit of a parent (a slice's MemoryMax) binds", self: "0::/system.slice/detour.slice/detour-cp.service\n",
			files: map[string]string{
				"system.slice/detour.slice/detour-cp.service/memory.max": "max\n",
				"system.slice/detour.slice/memory.max":                   "402653184\n",
				"system.slice/memory.max":                                "max\n",
			}, want: 384 << 20, wantOK: true},
		{name: "v2 the smallest of the cgroup's and its parents' limits", self: "0::/kubepods/pod1/app\n",
			files: map[string]string{"kubepods/pod1/app/memory.max": "1073741824\n", "kubepods/pod1/memory.max": "536870912\n", "kubepods/memory.max": "2147483648\n"},
			want:  512 << 20, wantOK: true},
		{name: "v1 the limit of a parent binds", self: "4:memory:/docker/abc\n",
			files: map[string]string{"memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n", "memory/docker/memory.limit_in_bytes": "1073741824\n"},
			want:  1 << 30, wantOK: true},
		{name: "a path with .. stays under the mount", self: "0::/../../etc\n",
			files: map[string]string{"memory.max": "268435456\n"}, want: 256 << 20, wantOK: true},
		{name: "v1 limit", self: "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n",
			files: map[string]string{"memory/docker/abc/memory.limit_in_bytes": "1073741824\n"}, want: 1 << 30, wantOK: true},
		{name: "v1 no limit", self: "4:memory:/\n",
			files: map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}},
		{name: "no memory controller", self: "1:cpu:/\n"},
		{name: "not a number", self: "0::/\n", files: map[string]string{"memory.max": "lots\n"}, wantErr: `"lots" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			writeFiles(t, root, tt.files)
			got, ok, err := cgroupMemoryMax(root, []byte(tt.self))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one saying %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || ok != tt.wantOK {
				t.Errorf("cgroupMemoryMax = %d, %v, %v; want %d, %v", got, ok, err, tt.want, tt.wantOK)
			}
		})
	}
}

// TestMemoryLimitAuto: in a cgroup with a memory limit the default mode sets
// the runtime's soft limit to 90% of it and restores the previous one after;
// GOMEMLIMIT and off leave it alone. Not parallel: the limit is the process's.
func TestMemoryLimitAuto(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"memory.max": "1073741824\n", "self": "0::/\n"})
	self := filepath.Join(root, "self")
	t.Setenv("GOMEMLIMIT", "")
	before := debug.SetMemoryLimit(-1)
	for _, mode := range []MemoryLimit{"", MemoryLimitAuto} {
		restore := applyMemoryLimit(mode, nil, root, self)
		if got, want := debug.SetMemoryLimit(-1), int64(966367641); got != want {
			t.Errorf("mode %q: limit %d, want %d (90%% of the cgroup's 1 GiB)", mode, got, want)
		}
		restore()
		if got := debug.SetMemoryLimit(-1); got != before {
			t.Errorf("mode %q: after restore the limit is %d, want %d", mode, got, before)
		}
	}
	if restore := applyMemoryLimit(MemoryLimitOff, nil, root, self); debug.SetMemoryLimit(-1) != before {
		t.Errorf("off set a limit")
		restore()
	}
	t.Setenv("GOMEMLIMIT", "2GiB")
	if restore := applyMemoryLimit(MemoryLimitAuto, nil, root, self); debug.SetMemoryLimit(-1) != before {
		t.Errorf("auto with GOMEMLIMIT set changed the limit")
		restore()
	}
	t.Setenv("GOMEMLIMIT", "")
	// No cgroup limit: nothing set.
	writeFiles(t, root, map[string]string{"memory.max": "max\n"})
	if restore := applyMemoryLimit(MemoryLimitAuto, nil, root, self); debug.SetMemoryLimit(-1) != before {
		t.Errorf("auto without a cgroup limit set one")
		restore()
	}
	if before != math.MaxInt64 {
		t.Logf("the test ran with a memory limit of %d", before)
	}
}
