package privtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The tools `make deps` builds into the cache, and the variables make exports to
// find them (the cache paths are the Makefile's).
const (
	kubeCache       = ".cache/detour/kube-v1.37.2-etcd-v3.7.3/bin"
	cniPluginsCache = ".cache/detour/cni-plugins-v1.10.0/bin"
)

// KubeAssetsDir returns the directory holding kube-apiserver and etcd:
// KUBEBUILDER_ASSETS or DETOUR_KUBE_BIN, else the cache `make deps-kube` fills.
// The error says which binary is missing; TestMain functions use it, tests use
// KubeAssets.
func KubeAssetsDir() (string, error) {
	return toolDir([]string{"KUBEBUILDER_ASSETS", "DETOUR_KUBE_BIN"}, kubeCache, "make deps-kube", "kube-apiserver", "etcd")
}

// KubeAssets is KubeAssetsDir for a test: a missing binary skips t, or fails it
// under DETOUR_REQUIRE_PRIVILEGED=1.
func KubeAssets(t testing.TB) string {
	t.Helper()
	dir, err := KubeAssetsDir()
	if err != nil {
		Skip(t, err.Error())
	}
	return dir
}

// CNIPluginsDir returns the directory holding the reference CNI plugins named:
// DETOUR_CNI_PLUGINS_BIN, else the cache `make deps-cni-plugins` fills.
func CNIPluginsDir(plugins ...string) (string, error) {
	return toolDir([]string{"DETOUR_CNI_PLUGINS_BIN"}, cniPluginsCache, "make deps-cni-plugins", plugins...)
}

func toolDir(vars []string, cache, target string, binaries ...string) (string, error) {
	var dir string
	for _, v := range vars {
		if dir = os.Getenv(v); dir != "" {
			break
		}
	}
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no home directory to find %v in (%s builds them)", binaries, target)
		}
		dir = filepath.Join(home, cache)
	}
	for _, b := range binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("needs %s in %s (%s builds it)", b, dir, target)
		}
	}
	return dir, nil
}

// Build compiles the command package pkg (an import path of this module, e.g.
// github.com/detour-mesh/detour/cmd/detour) into dir, static as `make build`
// makes it, and returns the binary's path. End-to-end tests call it once from
// TestMain, so they exercise the binary a user runs.
func Build(dir, pkg string) (string, error) {
	return BuildAs(dir, pkg, filepath.Base(pkg), "")
}

// BuildAs is Build with the binary's name and build tags ("" = none): `make
// build` builds cmd/detour twice, as detour with -tags detour_lean and as
// detour-ebpf without.
func BuildAs(dir, pkg, name, tags string) (string, error) {
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-tags", tags, "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}
