package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const cmdTestCA = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAV\n-----END CERTIFICATE-----\n"

// cniNode lays out a fake node and returns the flags that point the command at it.
func cniNode(t *testing.T) (root string, flags []string) {
	t.Helper()
	root = t.TempDir()
	for _, d := range []string{"bin", "net.d", "sa"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"detour-cni":                "plugin",
		"sa/token":                  "tok",
		"sa/ca.crt":                 cmdTestCA,
		"net.d/10-flannel.conflist": `{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, []string{
		"--bin-dir", filepath.Join(root, "bin"),
		"--conf-dir", filepath.Join(root, "net.d"),
	}
}

func installFlags(root string) []string {
	return []string{
		"--plugin-binary", filepath.Join(root, "detour-cni"),
		"--token-file", filepath.Join(root, "sa/token"),
		"--ca-file", filepath.Join(root, "sa/ca.crt"),
		"--api-server", "https://192.0.2.10:6443",
		"--exclude-namespaces", "kube-system,monitoring",
	}
}

func runCmd(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCNIInstallOnceAndUninstall(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	args := append(append([]string{"cni", "install", "--once"}, dirs...), installFlags(root)...)
	code, out, stderr := runCmd(t, context.Background(), args...)
	if code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	for _, want := range []string{"wrote " + filepath.Join(root, "bin/detour-cni"), "wrote " + filepath.Join(root, "net.d/detour-kubeconfig"), "inserted detour-cni into " + filepath.Join(root, "net.d/10-flannel.conflist")} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	b, _ := os.ReadFile(filepath.Join(root, "net.d/10-flannel.conflist"))
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	last := list.Plugins[len(list.Plugins)-1]
	if last["type"] != "detour-cni" || last["kubeconfig"] != filepath.Join(root, "net.d/detour-kubeconfig") ||
		last["logFile"] != "/var/log/detour-cni.log" || len(last["excludeNamespaces"].([]any)) != 2 {
		t.Errorf("entry = %v", last)
	}

	if code, out, _ := runCmd(t, context.Background(), args...); code != exitOK || out != "nothing to change\n" {
		t.Errorf("second install: exit %d, output %q", code, out)
	}

	uargs := append([]string{"cni", "uninstall"}, dirs...)
	code, out, stderr = runCmd(t, context.Background(), uargs...)
	if code != exitOK || strings.Count(out, "\n") != 3 {
		t.Fatalf("uninstall: exit %d, output:\n%s%s", code, out, stderr)
	}
	if _, err := os.Stat(filepath.Join(root, "bin/detour-cni")); !os.IsNotExist(err) {
		t.Error("binary left after uninstall")
	}
	if code, out, _ := runCmd(t, context.Background(), uargs...); code != exitOK || out != "nothing to change\n" {
		t.Errorf("second uninstall: exit %d, output %q", code, out)
	}
}

// TestCNIInstallOnceWithoutPrimary: --once does not wait, so on a node whose
// primary CNI has not written its configuration yet it installs no entry, and
// a pod created then would start unmeshed. It must not exit 0 as if installed:
// exit 1 naming the conf dir, after doing what it could (binary, kubeconfig),
// and a run once the primary is there completes it.
func TestCNIInstallOnceWithoutPrimary(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	primary := filepath.Join(root, "net.d/10-flannel.conflist")
	doc, err := os.ReadFile(primary)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(primary); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"cni", "install", "--once"}, dirs...), installFlags(root)...)
	code, out, stderr := runCmd(t, context.Background(), args...)
	if code != 1 {
		t.Errorf("exit %d, want 1: no entry was installed (stdout %q)", code, out)
	}
	for _, want := range []string{filepath.Join(root, "net.d"), "not installed", "without --once"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr)
		}
	}
	if !strings.Contains(out, "wrote "+filepath.Join(root, "bin/detour-cni")) {
		t.Errorf("stdout does not list the binary written:\n%s", out)
	}
	if err := os.WriteFile(primary, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCmd(t, context.Background(), args...)
	if code != exitOK || out != "inserted detour-cni into "+primary+"\n" {
		t.Errorf("once the primary is there: exit %d, stdout %q, stderr:\n%s", code, out, stderr)
	}
}

func TestCNIInstallInvalidInput(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	emptyFile := filepath.Join(root, "empty.yaml")
	if err := os.WriteFile(emptyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		extra []string
		want  string
	}{
		{"missing plugin", []string{"--plugin-binary", filepath.Join(root, "nope")}, "--plugin-binary: "},
		{"bad namespace", []string{"--exclude-namespaces", "UPPER"}, `--exclude-namespaces: "UPPER" is not a namespace name`},
		{"no api server", []string{"--api-server", ""}, "--api-server: "},
		{"zero poll", []string{"--poll-interval", "0s"}, "--poll-interval"},
		{"poll below the floor", []string{"--poll-interval", "1ns"}, `--poll-interval: "1ns" is below 100ms`},
		{"unknown preset", []string{"--preset", "linkerd"}, `--preset: "linkerd" is not one of istio, kuma`},
		{"bad log level", []string{"--log-level", "loud"}, `--log-level: "loud"`},
		{"missing config", []string{"--config", filepath.Join(root, "nope.yaml")}, "--config: "},
		{"empty config", []string{"--config", emptyFile}, `--config: "` + emptyFile + `" is empty`},
		{"bad duration", []string{"--poll-interval", "soon"}, "invalid argument"},
		{"unknown flag", []string{"--frobnicate"}, "unknown flag"},
		{"empty bin dir", []string{"--bin-dir", ""}, "--bin-dir: an empty value names no path"},
		{"empty conf dir", []string{"--conf-dir", ""}, "--conf-dir: an empty value names no path"},
		{"relative bin dir", []string{"--bin-dir", "bin"}, `--bin-dir: "bin" is not an absolute path`},
		{"relative conf dir", []string{"--conf-dir", "net.d"}, `--conf-dir: "net.d" is not an absolute path`},
		{"empty token file", []string{"--token-file", ""}, "--token-file: an empty value"},
		{"empty ebpf plugin binary", []string{"--ebpf-plugin-binary", ""}, "--ebpf-plugin-binary: an empty value names no path"},
		{"relative ebpf plugin binary", []string{"--ebpf-plugin-binary", "detour-cni-ebpf"}, `--ebpf-plugin-binary: "detour-cni-ebpf" is not an absolute path`},
		{"missing ebpf plugin binary", []string{"--ebpf-plugin-binary", filepath.Join(root, "nope")}, "--ebpf-plugin-binary: "},
		{"empty preset", []string{"--preset", ""}, "--preset: an empty value is refused"},
		{"empty mesh config", []string{"--mesh-config", ""}, "--mesh-config: an empty value is refused"},
		// An unset variable: "" used to drop kube-system from the exclusions.
		{"empty exclude namespaces", []string{"--exclude-namespaces", ""}, `invalid argument "" for "--exclude-namespaces" flag: an empty value names nothing (an unset variable?); leave the flag out for its default (kube-system)`},
		{"empty exclude namespaces element", []string{"--exclude-namespaces", "kube-system,,monitoring"}, `invalid argument "kube-system,,monitoring" for "--exclude-namespaces" flag: an empty item`},
		{"trailing empty exclude namespaces element", []string{"--exclude-namespaces", "kube-system,"}, `invalid argument "kube-system," for "--exclude-namespaces" flag: an empty item`},
		{"empty daemonset", []string{"--cleanup-on-exit", "--daemonset", ""}, `--daemonset "" is empty; give it a value`},
		{"empty node name", []string{"--plugin-service-account", "detour-system/detour-cni-plugin", "--node-name", ""}, `--node-name "" is empty`},
		{"empty plugin service account", []string{"--plugin-service-account", ""}, `--plugin-service-account "" is empty; give it a value`},
		{"bad daemonset", []string{"--cleanup-on-exit", "--daemonset", "detour-cni-node"}, `--daemonset: "detour-cni-node" is not namespace/name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append(append(append([]string{"cni", "install", "--once"}, dirs...), installFlags(root)...), tc.extra...)
			code, _, stderr := runCmd(t, context.Background(), args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, "bin/detour-cni")); !os.IsNotExist(err) {
		t.Error("invalid input installed the binary")
	}
}

func TestCNIInstallRuntimeFailure(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	if err := os.WriteFile(filepath.Join(root, "net.d/10-flannel.conflist"), []byte("{broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"cni", "install", "--once"}, dirs...), installFlags(root)...)
	code, _, stderr := runCmd(t, context.Background(), args...)
	if code != exitFailure || !strings.Contains(stderr, "10-flannel.conflist") {
		t.Errorf("exit %d, stderr %q; want exit 1 naming the file", code, stderr)
	}
	// Again, with the binary and kubeconfig in place: the run changes nothing
	// and fails, and must not claim there was nothing to change.
	code, out, stderr := runCmd(t, context.Background(), args...)
	if code != exitFailure || out != "" {
		t.Errorf("second run: exit %d, stdout %q, stderr %q; want exit 1 and nothing on stdout", code, out, stderr)
	}
}

func TestCNIInstallWatchesUntilSignal(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	args := append(append([]string{"cni", "install", "--cleanup-on-exit"}, dirs...), installFlags(root)...)
	done := make(chan int, 1)
	go func() {
		code, _, _ := runCmd(t, ctx, args...)
		done <- code
	}()
	primary := filepath.Join(root, "net.d/10-flannel.conflist")
	waitForEntry(t, primary, cancel)
	cancel() // what SIGTERM does through signal.NotifyContext in main
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit %d after the signal", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("install did not stop after the signal")
	}
	if b, _ := os.ReadFile(primary); bytes.Contains(b, []byte("detour-cni")) {
		t.Errorf("--cleanup-on-exit left the entry:\n%s", b)
	}
}

// TestCNIReady is the DaemonSet's readiness probe: exit 1 naming what is
// missing before the install, exit 0 "ready" once the entry is in the
// conflist, exit 1 again after the uninstall.
func TestCNIReady(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	ready := append([]string{"cni", "ready"}, dirs...)
	code, _, stderr := runCmd(t, context.Background(), ready...)
	if code != exitFailure || !strings.Contains(stderr, "detour-cni is not ready: no executable "+filepath.Join(root, "bin/detour-cni")) {
		t.Errorf("before install: exit %d, stderr %q; want 1 naming the binary", code, stderr)
	}
	install := append(append([]string{"cni", "install", "--once"}, dirs...), installFlags(root)...)
	if code, _, stderr := runCmd(t, context.Background(), install...); code != exitOK {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	if code, out, stderr := runCmd(t, context.Background(), ready...); code != exitOK || out != "ready\n" {
		t.Errorf("after install: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, _, stderr := runCmd(t, context.Background(), append([]string{"cni", "uninstall"}, dirs...)...); code != exitOK {
		t.Fatalf("uninstall: exit %d: %s", code, stderr)
	}
	if code, _, _ := runCmd(t, context.Background(), ready...); code != exitFailure {
		t.Errorf("after uninstall: exit %d, want 1", code)
	}
}

// TestCNIUninstallAndReadyRefuseEmptyOrRelativeDirs: uninstall and ready take
// the same directory flags as install and refuse the same values (exit 2),
// before touching anything.
func TestCNIUninstallAndReadyRefuseEmptyOrRelativeDirs(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	install := append(append([]string{"cni", "install", "--once"}, dirs...), installFlags(root)...)
	if code, _, stderr := runCmd(t, context.Background(), install...); code != exitOK {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	for _, verb := range []string{"uninstall", "ready"} {
		for _, bad := range [][]string{{"--conf-dir", ""}, {"--bin-dir", "bin"}, {"--kubeconfig-file", ""}} {
			args := append(append([]string{"cni", verb}, dirs...), bad...)
			code, _, stderr := runCmd(t, context.Background(), args...)
			if code != exitUsage || !strings.Contains(stderr, bad[0]+":") {
				t.Errorf("%s %v: exit %d, stderr %q; want exit 2 naming %s", verb, bad, code, stderr, bad[0])
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "bin/detour-cni")); err != nil {
		t.Errorf("a refused uninstall removed the binary: %v", err)
	}
}

// TestCNIInstallConfigFromPipe: `detour cni install --config <(…)` gets a pipe
// that yields its document once; the command used to read it again after
// validating it and exit 2 with `--config: "/dev/fd/63" is empty`.
func TestCNIInstallConfigFromPipe(t *testing.T) {
	t.Parallel()
	root, dirs := cniNode(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.WriteString("dns:\n  capture: all\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	args := append(append([]string{"cni", "install", "--once", "--config", fmt.Sprintf("/proc/self/fd/%d", r.Fd())}, dirs...), installFlags(root)...)
	code, out, stderr := runCmd(t, context.Background(), args...)
	if code != exitOK {
		t.Fatalf("exit %d, stdout:\n%sstderr:\n%s", code, out, stderr)
	}
	b, _ := os.ReadFile(filepath.Join(root, "net.d/10-flannel.conflist"))
	if !strings.Contains(string(b), `"capture": "all"`) {
		t.Errorf("the plugin entry lacks the piped config:\n%s", b)
	}
}

// TestCNIInstallKeepsNodeWhileDaemonSetExists is the shipped DaemonSet's
// command line (--cleanup-on-exit --daemonset): SIGTERM while the DaemonSet
// still exists (a rolling update, an eviction, kubectl delete pod) leaves the
// node's installation to the next pod; once the DaemonSet is deleted, SIGTERM
// removes it. Before 2026-12-05 the command dropped --daemonset and every
// SIGTERM removed the entry: pods created on the node until the next installer
// pod ran started unmeshed.
func TestCNIInstallKeepsNodeWhileDaemonSetExists(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		gone bool
		gets int
	)
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/apis/apps/v1/namespaces/detour-system/daemonsets/detour-cni-node" || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, `{"kind":"Status","code":403}`, http.StatusForbidden)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		gets++
		if gone {
			http.Error(w, `{"kind":"Status","code":404}`, http.StatusNotFound)
			return
		}
		fmt.Fprint(w, `{"kind":"DaemonSet","metadata":{"name":"detour-cni-node","namespace":"detour-system"}}`)
	}))
	defer api.Close()
	root, dirs := cniNode(t)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(root, "sa/ca.crt"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	primary := filepath.Join(root, "net.d/10-flannel.conflist")
	sigterm := func() {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		args := append(append([]string{"cni", "install", "--cleanup-on-exit", "--daemonset=detour-system/detour-cni-node"}, dirs...), installFlags(root)...)
		args = append(args, "--api-server", api.URL)
		done := make(chan int, 1)
		var stderr string
		go func() {
			code, _, e := runCmd(t, ctx, args...)
			stderr = e
			done <- code
		}()
		waitForEntry(t, primary, cancel)
		cancel() // what SIGTERM does through signal.NotifyContext in main
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("exit %d after the signal: %s", code, stderr)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("install did not stop after the signal")
		}
	}

	sigterm()
	if b, _ := os.ReadFile(primary); !bytes.Contains(b, []byte("detour-cni")) {
		t.Errorf("SIGTERM with the DaemonSet in place removed the entry; the next installer pod would find pods started unmeshed:\n%s", b)
	}
	mu.Lock()
	if gets == 0 {
		t.Error("the installer never asked whether its DaemonSet exists")
	}
	gone = true
	mu.Unlock()

	// The next installer pod starts on a node whose primary CNI has just
	// rewritten its file, so that the entry it inserts shows it is running.
	if err := os.WriteFile(primary, []byte(`{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	sigterm()
	if b, _ := os.ReadFile(primary); bytes.Contains(b, []byte("detour-cni")) {
		t.Errorf("SIGTERM after the DaemonSet was deleted left the entry:\n%s", b)
	}
}

// waitForEntry waits until the installer put detour-cni into the primary
// conflist; when it never does, it stops the installer (cancel) and fails.
func waitForEntry(t *testing.T, primary string, cancel func()) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for b, _ := os.ReadFile(primary); !bytes.Contains(b, []byte("detour-cni")); b, _ = os.ReadFile(primary) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("entry never inserted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
