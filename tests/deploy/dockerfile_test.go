package deploy

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

const repoRoot = "../.."

// dockerfile returns deploy/Dockerfile's instructions, continuation lines joined.
func dockerfile(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "deploy/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cont := strings.HasSuffix(line, "\\")
		cur += strings.TrimSuffix(line, "\\") + " "
		if !cont {
			out = append(out, strings.Join(strings.Fields(cur), " "))
			cur = ""
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDockerfileCopiesExist checks that every path the build stage copies from
// the context exists and is not filtered out by the .dockerignore. (No Docker
// engine runs on these machines, so the image itself is not built.)
func TestDockerfileCopiesExist(t *testing.T) {
	t.Parallel()
	ignore, err := os.ReadFile(filepath.Join(repoRoot, "deploy/Dockerfile.dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	ignored := map[string]bool{}
	for _, l := range strings.Split(string(ignore), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			ignored[l] = true
		}
	}
	copies := 0
	for _, ins := range dockerfile(t) {
		f := strings.Fields(ins)
		if strings.ToUpper(f[0]) != "COPY" || strings.HasPrefix(f[1], "--from") {
			continue
		}
		for _, src := range f[1 : len(f)-1] {
			copies++
			if _, err := os.Stat(filepath.Join(repoRoot, src)); err != nil {
				t.Errorf("COPY %s: %v", src, err)
			}
			if ignored[src] {
				t.Errorf("COPY %s: excluded by Dockerfile.dockerignore", src)
			}
		}
	}
	if copies == 0 {
		t.Fatal("no COPY from the build context found")
	}
	for _, needed := range []string{"go.mod", "go.sum", "cmd", "redirect", "cni"} {
		if ignored[needed] {
			t.Errorf("Dockerfile.dockerignore drops %s, which the build needs", needed)
		}
	}
}

// TestDockerfileBuildIsStatic runs the Dockerfile's own `go build` line here and
// checks that every binary is static (no ELF interpreter, no shared library),
// so it runs on the slim base and when copied onto a node by the CNI installer.
func TestDockerfileBuildIsStatic(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	var build string
	for _, ins := range dockerfile(t) {
		if strings.HasPrefix(ins, "RUN ") && strings.Contains(ins, "go build") {
			build = strings.TrimPrefix(ins, "RUN ")
		}
	}
	if build == "" || !strings.Contains(build, "CGO_ENABLED=0") || !strings.Contains(build, "-o /out/ ") {
		t.Fatalf("Dockerfile build line %q: want CGO_ENABLED=0 go build ... -o /out/ ...", build)
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "-c", strings.ReplaceAll(build, "-o /out/", "-o "+out+"/"))
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "VERSION=v0.0.0-test")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, b)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	built := map[string]bool{}
	for _, e := range entries {
		built[e.Name()] = true
		f, err := elf.Open(filepath.Join(out, e.Name()))
		if err != nil {
			t.Errorf("%s: not an ELF binary: %v", e.Name(), err)
			continue
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s: dynamically linked (has an ELF interpreter)", e.Name())
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s: needs shared libraries %v", e.Name(), libs)
		}
		f.Close()
	}
	if !built["detour"] {
		t.Fatalf("the build made %v, not detour", entries)
	}
	// The image's entrypoint and the CNI DaemonSet run /usr/local/bin/detour;
	// the CNI installer looks for detour-cni next to it; the control plane's
	// Deployment runs detour-cp, which `detour control-plane` and `detour
	// bootstrap` also exec from next to detour.
	// detour-ebpf is the CLI with the eBPF backend, which the lean detour
	// execs from next to itself for the commands that need it.
	// detour-cni-ebpf is the plugin with the eBPF backend, which the lean
	// detour-cni execs (and `detour cni install` copies next to it).
	for _, want := range []string{"detour-cni", "detour-cp", "detour-ebpf", "detour-cni-ebpf"} {
		if !built[want] {
			t.Errorf("the build made %v, not %s", entries, want)
		}
	}
	// The lean binaries link no cilium/ebpf; the ebpf ones do.
	for bin, wantEBPF := range map[string]bool{"detour": false, "detour-cni": false, "detour-ebpf": true, "detour-cni-ebpf": true} {
		info, err := buildinfo.ReadFile(filepath.Join(out, bin))
		if err != nil {
			t.Errorf("%s: %v", bin, err)
			continue
		}
		hasEBPF := slices.ContainsFunc(info.Deps, func(m *debug.Module) bool { return m.Path == "github.com/cilium/ebpf" })
		if hasEBPF != wantEBPF {
			t.Errorf("%s links github.com/cilium/ebpf: %v, want %v", bin, hasEBPF, wantEBPF)
		}
	}
	for _, bin := range []string{"detour", "detour-cp"} {
		v, err := exec.Command(filepath.Join(out, bin), "version").Output()
		if err != nil || strings.TrimSpace(string(v)) != bin+" v0.0.0-test" {
			t.Errorf("%s version = %q, %v; want the VERSION build arg", bin, v, err)
		}
	}
	// The hand-over works in the image's layout: detour finds detour-cp next
	// to itself (PATH is empty here).
	cmd = exec.Command(filepath.Join(out, "detour"), "bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:18000")
	cmd.Env = []string{"PATH="}
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "127.0.0.1") {
		t.Errorf("detour bootstrap through detour-cp: %v\n%s", err, b)
	}
}
