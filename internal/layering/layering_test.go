package layering

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/detour-mesh/detour"

// rule says what a package (with its subpackages when pkg ends in "/...") must
// not depend on, directly or through other packages. A forbidden pattern
// matches an import path equal to it or below it; allow lists exceptions.
type rule struct {
	pkg       string
	forbidden []string
	allow     []string
	// why is what the package's doc.go says, for the failure message.
	why string
}

// heavy is what the install path must not link: each of these costs
// milliseconds and MiB at every start of the binary.
var heavy = []string{
	"k8s.io/client-go", "k8s.io/api", "k8s.io/apimachinery",
	"github.com/envoyproxy", "google.golang.org/grpc",
	module + "/controlplane",
}

// rules mirror the doc.go comments. Keep them in step: TestDocRulesAreChecked
// fails when a doc.go has a rule that no entry here checks.
var rules = []rule{
	{pkg: "cmd/detour", forbidden: heavy, why: "the install path starts in milliseconds: no Kubernetes client, Envoy protos, gRPC or control plane"},
	{pkg: "cmd/detour-cni", forbidden: append([]string{module + "/cni/install", "github.com/spf13/cobra", "github.com/fsnotify/fsnotify"}, heavy...), why: "the CNI plugin starts in milliseconds: no Kubernetes client, Envoy protos, gRPC, control plane, node installer or command-line framework"},
	{pkg: "cni/...", forbidden: append([]string{module + "/cmd", module + "/bpf", module + "/redirect/backends", "github.com/cilium/ebpf"}, heavy...),
		allow: []string{module + "/redirect/backends/netfilter"},
		why:   "must not import cmd/... or controlplane (and it runs in every ADD), nor bpf, redirect/backends or cilium/ebpf: the lean detour-cni links it, and cmd/detour-cni gives it the eBPF backend"},
	{pkg: "redirect/...", forbidden: []string{module + "/cmd", module + "/cni", module + "/controlplane"}, why: "must not import cmd/..., cni or controlplane"},
	{pkg: "redirect/iptables", forbidden: []string{module + "/bpf"}, why: "a backend must not import another backend (bpf is the eBPF backend)"},
	{pkg: "bpf", forbidden: []string{module + "/redirect/iptables", module + "/redirect/nftables", module + "/redirect/backends", module + "/cmd", module + "/cni"}, why: "a backend must not import another backend, cmd/... or cni"},
	{pkg: "redirect", forbidden: []string{module + "/redirect/iptables", module + "/redirect/nftables", module + "/redirect/backends", module + "/bpf"}, why: "the orchestration must not import any Driver package (redirect/iptables, redirect/nftables, bpf, redirect/backends)"},
	{pkg: "redirect/iptables", forbidden: []string{module + "/redirect/nftables", module + "/redirect/backends"}, why: "a backend must not import another backend"},
	{pkg: "redirect/backends/netfilter", forbidden: []string{module + "/bpf", "github.com/cilium/ebpf"}, why: "the lean detour links it: must not import bpf or github.com/cilium/ebpf"},
	{pkg: "controlplane/...", forbidden: []string{module + "/cmd", module + "/cni", module + "/bpf"}, why: "must not import cmd/..., cni or bpf"},
	{pkg: "controlplane/xds", forbidden: []string{module + "/controlplane", module + "/redirect", module + "/cmd", module + "/cni", module + "/bpf"},
		allow: []string{module + "/controlplane/xds"}, why: "must not import controlplane (the generation side imports it, not the other way round), controlplane/kube, redirect, cmd/..., cni or bpf"},
	{pkg: "internal/systemd", forbidden: []string{module + "/cmd", module + "/cni", module + "/controlplane"}, why: "must not import cmd/..., cni or controlplane"},
	{pkg: "internal/atomicfile", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/origdst", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/sibling", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/cmdgroup", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/nlmsg", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/regularfile", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/tcplisten", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/ebpfpins", forbidden: []string{module, "github.com/cilium/ebpf"}, why: "the lean binaries link it: must not import other detour packages or cilium/ebpf"},
	{pkg: "internal/xtables", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/excerpt", forbidden: []string{module}, why: "must not import other detour packages"},
	{pkg: "internal/netns", forbidden: []string{module}, allow: []string{module + "/internal"}, why: "must not import anything of detour outside internal/"},
	{pkg: "internal/lab", forbidden: []string{module + "/redirect"}, why: "must not import the redirect engine: it is the independent witness"},
	{pkg: "internal/meshconfig", forbidden: append([]string{module + "/cmd", "github.com/cilium/ebpf"}, heavy...), why: "the lean binaries link it: must not import client-go, go-control-plane or cilium/ebpf"},
	{pkg: "inject", forbidden: []string{"k8s.io/client-go", "github.com/envoyproxy", "google.golang.org/grpc", module + "/controlplane", module + "/cmd"}, why: "pure mutation: must not import client-go, go-control-plane (the bootstrap comes from a function) or cmd/..."},
	{pkg: "inject/webhook", forbidden: []string{module + "/cmd", module + "/cni", module + "/bpf"}, why: "must not import cmd/..., cni or bpf"},
	{pkg: "internal/kubeapi", forbidden: []string{"k8s.io/client-go", "k8s.io/api", "k8s.io/apimachinery", module + "/cmd"}, why: "must not import client-go, k8s.io/api, k8s.io/apimachinery or cmd/..."},
}

// onlyImporters says which packages alone may import a library directly
// ("Each third-party library is used by one package", STYLE.md).
var onlyImporters = []struct {
	library string
	pkgs    []string // patterns as in rule.pkg
}{
	{"github.com/envoyproxy/go-control-plane", []string{"controlplane/..."}},
	{"google.golang.org/grpc", []string{"controlplane/..."}},
	{"k8s.io/client-go", []string{"controlplane/kube", "inject/webhook"}},
	{"github.com/prometheus/client_golang", []string{"controlplane/..."}},
	{"github.com/cilium/ebpf", []string{"bpf"}},
}

// pkgInfo is one package of the module as `go list` reports it.
type pkgInfo struct {
	path    string
	imports []string // direct, production code
	deps    []string // transitive, production code
}

func listPackages(t *testing.T, args ...string) map[string]pkgInfo {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the go command is not on PATH")
	}
	if len(args) == 0 {
		args = []string{module + "/..."}
	}
	cmd := exec.Command("go", append([]string{"list", "-f", `{{.ImportPath}}{{"\t"}}{{join .Imports " "}}{{"\t"}}{{join .Deps " "}}`}, args...)...)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]pkgInfo{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 3 {
			t.Fatalf("go list line %q", sc.Text())
		}
		pkgs[f[0]] = pkgInfo{path: f[0], imports: strings.Fields(f[1]), deps: strings.Fields(f[2])}
	}
	return pkgs
}

// under reports whether path is pattern or below it.
func under(path, pattern string) bool {
	return path == pattern || strings.HasPrefix(path, pattern+"/")
}

// selects reports whether the package pattern p ("cni/..." or "cmd/detour")
// covers the import path.
func selects(p, path string) bool {
	if base, ok := strings.CutSuffix(p, "/..."); ok {
		return under(path, module+"/"+base)
	}
	return path == module+"/"+p
}

// violations returns the deps of pkg that r forbids.
func (r rule) violations(pkg pkgInfo) []string {
	var bad []string
	for _, d := range pkg.deps {
		if !strings.Contains(d, ".") && !strings.HasPrefix(d, module) {
			continue // standard library
		}
		forbidden := slices.ContainsFunc(r.forbidden, func(f string) bool { return under(d, f) })
		allowed := slices.ContainsFunc(r.allow, func(a string) bool { return under(d, a) })
		if forbidden && !allowed {
			bad = append(bad, d)
		}
	}
	return bad
}

// TestImportRules fails when a package depends on what its doc.go (or the
// install path's start-up budget) forbids.
func TestImportRules(t *testing.T) {
	t.Parallel()
	pkgs := listPackages(t)
	for _, r := range rules {
		matched := 0
		for path, p := range pkgs {
			if !selects(r.pkg, path) {
				continue
			}
			matched++
			if bad := r.violations(p); len(bad) > 0 {
				if len(bad) > 8 {
					bad = append(bad[:8], "…")
				}
				t.Errorf("%s depends on %s; its rule: %s (go list -deps %s shows the path)", path, strings.Join(bad, ", "), r.why, path)
			}
		}
		if matched == 0 {
			t.Errorf("rule for %s matches no package: update the table", r.pkg)
		}
	}
	for _, o := range onlyImporters {
		for path, p := range pkgs {
			if slices.ContainsFunc(o.pkgs, func(s string) bool { return selects(s, path) }) {
				continue
			}
			for _, imp := range p.imports {
				if under(imp, o.library) {
					t.Errorf("%s imports %s; only %s may (each third-party library is used by one package)", path, imp, strings.Join(o.pkgs, ", "))
				}
			}
		}
	}
}

// TestDocRulesAreChecked: every doc.go that states an import rule has an entry
// in the table, so a rule written in prose is also a rule that is checked.
func TestDocRulesAreChecked(t *testing.T) {
	t.Parallel()
	root := "../.."
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "hack" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.Name() != "doc.go" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		text := strings.ToLower(strings.Join(strings.Fields(string(b)), " "))
		if !strings.Contains(text, "must not import") && !strings.Contains(text, "must not link") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		pkg := module + "/" + filepath.ToSlash(rel)
		if pkg == module+"/internal/layering" {
			return nil // this package quotes the rules
		}
		if !slices.ContainsFunc(rules, func(r rule) bool { return selects(r.pkg, pkg) }) {
			t.Errorf("%s states an import rule that layering_test.go does not check: add it to rules", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRuleCatchesAViolation proves the check can fail: a package that depends
// on what its rule forbids is reported.
func TestRuleCatchesAViolation(t *testing.T) {
	t.Parallel()
	r := rules[0]
	p := pkgInfo{path: module + "/cmd/detour", deps: []string{"fmt", module + "/redirect", "k8s.io/client-go/kubernetes", "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"}}
	got := r.violations(p)
	want := []string{"k8s.io/client-go/kubernetes", "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"}
	if !slices.Equal(got, want) {
		t.Errorf("violations = %v, want %v", got, want)
	}
	netns := rule{forbidden: []string{module}, allow: []string{module + "/internal"}}
	if got := netns.violations(pkgInfo{deps: []string{module + "/internal/atomicfile", module + "/redirect", "golang.org/x/sys/unix"}}); !slices.Equal(got, []string{module + "/redirect"}) {
		t.Errorf("allow list: violations = %v, want only redirect", got)
	}
}

// leanForbidden is what the lean detour (`-tags detour_lean`, the bin/detour
// of `make build`) must not link besides heavy: the eBPF backend and
// cilium/ebpf, whose package initialization costs every start of the binary
// milliseconds; detour-ebpf serves the commands that need them
// (cmd/detour/ebpf.go).
var leanForbidden = append([]string{module + "/bpf", "github.com/cilium/ebpf"}, heavy...)

// TestLeanCNILinksNoEBPF fails when the lean build of cmd/detour-cni (the
// bin/detour-cni of make build, run once per pod) depends on the eBPF
// backend; detour-cni-ebpf (the build without the tag) serves the calls that
// need it.
func TestLeanCNILinksNoEBPF(t *testing.T) {
	t.Parallel()
	const pkg = module + "/cmd/detour-cni"
	p, ok := listPackages(t, "-tags", "detour_lean", pkg)[pkg]
	if !ok {
		t.Fatal("go list did not report cmd/detour-cni")
	}
	r := rule{pkg: "cmd/detour-cni", forbidden: leanForbidden}
	if bad := r.violations(p); len(bad) > 0 {
		t.Errorf("cmd/detour-cni built with -tags detour_lean depends on %s; the lean plugin must not link the eBPF backend (go list -tags detour_lean -deps ./cmd/detour-cni shows the path)", strings.Join(bad, ", "))
	}
	full := listPackages(t, pkg)[pkg]
	if bad := r.violations(full); len(bad) == 0 {
		t.Error("cmd/detour-cni without the tag links no eBPF backend: is the detour_lean tag still what selects the lean build?")
	}
}

// TestLeanDetourLinksNoEBPF fails when the lean build of cmd/detour depends
// on the eBPF backend.
func TestLeanDetourLinksNoEBPF(t *testing.T) {
	t.Parallel()
	pkgs := listPackages(t, "-tags", "detour_lean", module+"/cmd/detour")
	p, ok := pkgs[module+"/cmd/detour"]
	if !ok {
		t.Fatal("go list did not report cmd/detour")
	}
	r := rule{pkg: "cmd/detour", forbidden: leanForbidden}
	if bad := r.violations(p); len(bad) > 0 {
		t.Errorf("cmd/detour built with -tags detour_lean depends on %s; the lean detour must not link the eBPF backend (go list -tags detour_lean -deps ./cmd/detour shows the path)", strings.Join(bad, ", "))
	}
	full := listPackages(t, module+"/cmd/detour")[module+"/cmd/detour"]
	if bad := r.violations(full); len(bad) == 0 {
		t.Error("cmd/detour without the tag links no eBPF backend: is the detour_lean tag still what selects the lean build?")
	}
}
