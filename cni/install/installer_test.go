package install

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/internal/atomicfile"
	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/redirect"
)

// testCA is a syntactically valid PEM certificate block; the installer only
// inlines it.
const testCA = `-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwp0ZXN0LWNhLTAw
HhcNMjYwMTAxMDAwMDAwWhcNMzYwMTAxMDAwMDAwWjAVMRMwEQYDVQQDEwp0ZXN0LWNh
-----END CERTIFICATE-----
`

// node is a fake node's file system: CNI dirs, a service account and a plugin
// binary to install.
type node struct {
	root, bin, conf, token, ca, plugin string
	goodConfig, badConfig              string
}

func newNode(t *testing.T) node {
	t.Helper()
	root := t.TempDir()
	n := node{
		root:   root,
		bin:    filepath.Join(root, "opt/cni/bin"),
		conf:   filepath.Join(root, "etc/cni/net.d"),
		token:  filepath.Join(root, "sa/token"),
		ca:     filepath.Join(root, "sa/ca.crt"),
		plugin: filepath.Join(root, "image/detour-cni"),
	}
	for _, d := range []string{n.bin, n.conf, filepath.Dir(n.token), filepath.Dir(n.plugin)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, n.token, jwt(time.Now().Add(time.Hour))+"\n")
	writeFile(t, n.ca, testCA)
	writeFile(t, n.plugin, "#!/bin/sh\necho detour-cni build 1\n")
	n.goodConfig = filepath.Join(root, "base.yaml")
	writeFile(t, n.goodConfig, "outbound:\n  excludePorts: [5432, 6379]\ndns:\n  capture: all\n")
	n.badConfig = filepath.Join(root, "bad.yaml")
	writeFile(t, n.badConfig, "outbound:\n  excludePorts: [70000]\n")
	// Another plugin and the primary's own kubeconfig: never ours to touch.
	writeFile(t, filepath.Join(n.bin, "bridge"), "bridge binary")
	writeFile(t, filepath.Join(n.conf, "calico-kubeconfig"), "calico's")
	return n
}

func (n node) options() Options {
	return Options{
		PluginBinary:      n.plugin,
		BinDir:            n.bin,
		ConfDir:           n.conf,
		LogFile:           "/var/log/detour-cni.log",
		ExcludeNamespaces: []string{"kube-system"},
		Server:            "https://[2001:db8::1]:6443",
		TokenFile:         n.token,
		CAFile:            n.ca,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func (n node) primary(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(n.conf, name)
	if err := os.WriteFile(p, readInput(t, name), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// jwt returns an unsigned token whose exp claim is exp.
func jwt(exp time.Time) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"RS256"}`)) + "." +
		enc.EncodeToString([]byte(fmt.Sprintf(`{"iss":"kubernetes/serviceaccount","exp":%d}`, exp.Unix()))) + ".c2ln"
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// entries counts the detour-cni entries a runtime would load from the file.
func entries(t *testing.T, path string) int {
	t.Helper()
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatalf("runtime cannot load %s: %v", path, err)
	}
	n := 0
	for i, p := range list.Plugins {
		if p.Network.Type == PluginType {
			if i != len(list.Plugins)-1 {
				t.Errorf("%s: detour-cni is plugin %d of %d, not the last", path, i, len(list.Plugins))
			}
			n++
		}
	}
	return n
}

func TestInstallUninstall(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	primary := n.primary(t, "10-calico.conflist")
	orig := readInput(t, "10-calico.conflist")
	in := New(n.options())
	ctx := context.Background()

	changes, err := in.Install(ctx)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if len(changes) != 3 {
		t.Errorf("Install changes = %q, want binary, kubeconfig and entry", changes)
	}
	bin := filepath.Join(n.bin, PluginType)
	if !bytes.Equal(readFile(t, bin), readFile(t, n.plugin)) {
		t.Error("installed binary differs from the plugin binary")
	}
	if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o755 {
		t.Errorf("binary mode = %v, want 0755", fi.Mode())
	}
	kcPath := filepath.Join(n.conf, DefaultKubeconfigName)
	if fi, err := os.Stat(kcPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig stat = %v, %v; want mode 0600", fi, err)
	}
	kc, err := clientcmd.LoadFromFile(kcPath)
	if err != nil {
		t.Fatalf("client-go cannot load the kubeconfig: %v", err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatalf("client-go cannot use the kubeconfig: %v", err)
	}
	if rc.Host != "https://[2001:db8::1]:6443" || rc.BearerToken != strings.TrimSpace(string(readFile(t, n.token))) || string(rc.CAData) != testCA {
		t.Errorf("kubeconfig gives host %q token %q CA %q", rc.Host, rc.BearerToken, rc.CAData)
	}
	if got := entries(t, primary); got != 1 {
		t.Errorf("%d detour-cni entries, want 1", got)
	}
	list, _ := libcni.ConfListFromFile(primary)
	last := string(list.Plugins[len(list.Plugins)-1].Bytes)
	for _, want := range []string{`"kubeconfig":"` + kcPath + `"`, `"logFile":"/var/log/detour-cni.log"`, `"excludeNamespaces":["kube-system"]`} {
		if !strings.Contains(last, want) {
			t.Errorf("entry %s lacks %s", last, want)
		}
	}

	// Again: nothing to do, nothing rewritten.
	before := statAll(t, n.root)
	if changes, err := in.Install(ctx); err != nil || len(changes) != 0 {
		t.Errorf("second Install = %q, %v; want no change", changes, err)
	}
	// A fresh installer (a restarted pod) does not rewrite either.
	if changes, err := New(n.options()).Install(ctx); err != nil || len(changes) != 0 {
		t.Errorf("Install by a new installer = %q, %v; want no change", changes, err)
	}
	if diff := diffStats(before, statAll(t, n.root)); diff != "" {
		t.Errorf("idempotent Install touched files: %s", diff)
	}

	changes, err = in.Uninstall(ctx)
	if err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	if len(changes) != 3 {
		t.Errorf("Uninstall changes = %q, want entry, kubeconfig, binary", changes)
	}
	for _, gone := range []string{bin, kcPath} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Uninstall (%v)", gone, err)
		}
	}
	if !jsonEqual(readFile(t, primary), orig) {
		t.Errorf("primary after Uninstall:\n%s\nwant the original:\n%s", readFile(t, primary), orig)
	}
	if string(readFile(t, filepath.Join(n.bin, "bridge"))) != "bridge binary" || string(readFile(t, filepath.Join(n.conf, "calico-kubeconfig"))) != "calico's" {
		t.Error("Uninstall touched files that are not ours")
	}
	if changes, err := in.Uninstall(ctx); err != nil || len(changes) != 0 {
		t.Errorf("second Uninstall = %q, %v; want no change", changes, err)
	}
	assertNoTempFiles(t, n.root)
}

// statAll maps every file under root to its inode and modification time.
func statAll(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		m[p] = fmt.Sprintf("%v %d %v", fi.ModTime().UnixNano(), fi.Size(), inode(fi))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func diffStats(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "new "+k)
		}
	}
	return strings.Join(d, ", ")
}

func assertNoTempFiles(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".tmp") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func TestInstallConvertsConf(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	conf := n.primary(t, "10-bridge.conf")
	if _, err := New(n.options()).Install(context.Background()); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the converted .conf is still there (%v): the runtime would read it first", err)
	}
	list := filepath.Join(n.conf, "10-bridge.conflist")
	if p, _ := Primary(n.conf); p != list {
		t.Errorf("primary = %s, want %s", p, list)
	}
	if got := entries(t, list); got != 1 {
		t.Errorf("%d entries, want 1", got)
	}
	// Uninstall leaves the bridge network as the runtime loaded it from the .conf.
	if _, err := New(n.options()).Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := loadAsRuntime(t, "10-bridge.conf", readInput(t, "10-bridge.conf"))
	got := loadAsRuntime(t, list, readFile(t, list))
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Errorf("after Uninstall the runtime loads %v, want %v", got, want)
	}
}

func TestInstallRefusesConversionThatChangesOrder(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	conf := n.primary(t, "10-bridge.conf")
	between := filepath.Join(n.conf, "10-bridge.conf.d.conflist")
	writeFile(t, between, `{"name":"other","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}`)
	_, err := New(n.options()).Install(context.Background())
	if err == nil || !strings.Contains(err.Error(), "10-bridge.conf.d.conflist") || !strings.Contains(err.Error(), conf) {
		t.Fatalf("Install error = %v, want one naming both files", err)
	}
	if !bytes.Equal(readFile(t, conf), readInput(t, "10-bridge.conf")) {
		t.Error("the .conf changed although the install failed")
	}
}

func TestInstallBrokenPrimary(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	p := filepath.Join(n.conf, "10-broken.conflist")
	writeFile(t, p, `{"name": "x", "plugins": [`)
	_, err := New(n.options()).Install(context.Background())
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "is not JSON") {
		t.Fatalf("Install error = %v, want one naming %s", err, p)
	}
	if string(readFile(t, p)) != `{"name": "x", "plugins": [` {
		t.Error("broken primary was rewritten")
	}
}

// TestInstallRefusesEmptyPrimary: a conflist without plugins is one the runtime
// refuses to load; with detour-cni as its only plugin it would load, and give
// every pod of the node a network namespace without an interface. The installer
// leaves it alone, and Ready says the node is not ready.
func TestInstallRefusesEmptyPrimary(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	p := filepath.Join(n.conf, "10-empty.conflist")
	const doc = `{"cniVersion": "1.0.0", "name": "x", "plugins": []}`
	writeFile(t, p, doc)
	in := New(n.options())
	_, err := in.Install(context.Background())
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "no plugin for detour-cni to chain after") {
		t.Fatalf("Install error = %v, want one naming %s and the missing plugin", err, p)
	}
	if string(readFile(t, p)) != doc {
		t.Error("the empty primary was rewritten")
	}
	writeFile(t, p, `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "detour-cni"}]}`)
	if err := in.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "no plugin before detour-cni") {
		t.Errorf("Ready with detour-cni alone in %s = %v, want not ready", p, err)
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	tests := []struct {
		name   string
		change func(*Options)
		option string
	}{
		{"no plugin binary", func(o *Options) { o.PluginBinary = "" }, "plugin-binary"},
		{"missing plugin binary", func(o *Options) { o.PluginBinary = "/nonexistent/detour-cni" }, "plugin-binary"},
		{"plugin binary is a dir", func(o *Options) { o.PluginBinary = n.bin }, "plugin-binary"},
		{"missing ebpf plugin binary", func(o *Options) { o.EBPFPluginBinary = "/nonexistent/detour-cni-ebpf" }, "ebpf-plugin-binary"},
		{"ebpf plugin binary is a dir", func(o *Options) { o.EBPFPluginBinary = n.bin }, "ebpf-plugin-binary"},
		{"missing bin dir", func(o *Options) { o.BinDir = filepath.Join(n.root, "nope") }, "bin-dir"},
		{"conf dir is a file", func(o *Options) { o.ConfDir = n.plugin }, "conf-dir"},
		{"kubeconfig named like a conflist", func(o *Options) { o.KubeconfigFile = filepath.Join(n.conf, "zz.conf") }, "kubeconfig-file"},
		{"relative plugin kubeconfig", func(o *Options) { o.PluginKubeconfig = "etc/kc" }, "plugin-kubeconfig"},
		{"relative log file", func(o *Options) { o.LogFile = "cni.log" }, "log-file"},
		{"bad namespace", func(o *Options) { o.ExcludeNamespaces = []string{"kube-system", "Not_A_Name"} }, "exclude-namespaces"},
		{"no server", func(o *Options) { o.Server = "" }, "api-server"},
		{"http server", func(o *Options) { o.Server = "http://192.0.2.1:6443" }, "api-server"},
		// The plugin's every ADD would fail (code 11) against these.
		{"server port out of range", func(o *Options) { o.Server = "https://192.0.2.1:99999" }, "api-server"},
		{"server port 0", func(o *Options) { o.Server = "https://192.0.2.1:0" }, "api-server"},
		{"server without host", func(o *Options) { o.Server = "https://:6443" }, "api-server"},
		{"server with credentials", func(o *Options) { o.Server = "https://user:pw@192.0.2.1:6443" }, "api-server"},
		{"server with a query", func(o *Options) { o.Server = "https://192.0.2.1:6443?x=1" }, "api-server"},
		{"negative poll", func(o *Options) { o.PollInterval = -time.Second }, "poll-interval"},
		{"bad log level", func(o *Options) { o.LogLevel = "loud" }, "log-level"},
		{"bad passthrough on lo", func(o *Options) { o.PassthroughOnLo = "dummy" }, "passthrough-on-lo"},
		{"unknown preset", func(o *Options) { o.Preset = "linkerd" }, "preset"},
		{"missing config file", func(o *Options) { o.ConfigFile = filepath.Join(n.root, "nope.yaml") }, "config"},
		{"invalid config", func(o *Options) { o.ConfigFile = n.badConfig }, "config"},
		{"plugin service account without namespace", func(o *Options) { o.PluginServiceAccount = "detour-cni-plugin" }, "plugin-service-account"},
		{"plugin token named like a conflist", func(o *Options) {
			o.PluginServiceAccount = "detour-system/p"
			o.PluginTokenFile = filepath.Join(n.conf, "token.json")
		}, "plugin-token-file"},
		{"plugin token too short", func(o *Options) {
			o.PluginServiceAccount = "detour-system/p"
			o.PluginTokenLifetime = time.Minute
		}, "plugin-token-lifetime"},
		{"daemonset without namespace", func(o *Options) { o.DaemonSet = "detour-cni-node" }, "daemonset"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := n.options()
			tc.change(&o)
			err := o.Validate()
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Option != tc.option || !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("Validate = %v, want an OptionError for --%s", err, tc.option)
			}
			if !strings.HasPrefix(err.Error(), "--"+tc.option+": ") {
				t.Errorf("message %q does not start with the flag", err)
			}
			// Install refuses before it writes anything.
			before := statAll(t, n.root)
			if _, err := New(o).Install(context.Background()); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("Install = %v, want the validation error", err)
			}
			if d := diffStats(before, statAll(t, n.root)); d != "" {
				t.Errorf("invalid options changed files: %s", d)
			}
		})
	}
	if err := n.options().Validate(); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

func TestWriteAtomicFailureLeavesTarget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "10-x.conflist")
	writeFile(t, p, "old")
	r := io.MultiReader(strings.NewReader("half of the new"), errReader{})
	if err := atomicfile.WriteFrom(p, r, 0o644); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("writeAtomic = %v, want an error naming %s", err, p)
	}
	if got := string(readFile(t, p)); got != "old" {
		t.Errorf("target = %q after a failed write, want the old content", got)
	}
	assertNoTempFiles(t, dir)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk full") }

// runInstaller starts Run in the background and returns a function that stops it
// and returns Run's error.
func runInstaller(t *testing.T, o Options) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(o).Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("Run did not return after cancel")
		}
	})
	t.Cleanup(func() { stop() })
	return stop
}

// eventually waits, bounded, for cond to hold.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hasEntry(path string) bool {
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		return false
	}
	n := 0
	for _, p := range list.Plugins {
		if p.Network.Type == PluginType {
			n++
		}
	}
	return n == 1 && list.Plugins[len(list.Plugins)-1].Network.Type == PluginType
}

func TestRunRepairs(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"notify", "poll"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			o := n.options()
			if mode == "poll" {
				o.pollOnly = true
				o.PollInterval = 20 * time.Millisecond
			} else {
				o.PollInterval = time.Hour // only notifications can trigger a repair in time
			}
			stop := runInstaller(t, o)

			// The primary CNI starts after us: the entry follows its file.
			primary := filepath.Join(n.conf, "10-calico.conflist")
			if err := atomicfile.WriteFrom(primary, bytes.NewReader(readInput(t, "10-calico.conflist")), 0o644); err != nil {
				t.Fatal(err)
			}
			eventually(t, "entry inserted into the new primary", func() bool { return hasEntry(primary) })

			// The primary CNI rewrites its file (renaming a new one into place, as
			// Calico's installer does): the entry comes back, once.
			if err := atomicfile.WriteFrom(primary, bytes.NewReader(readInput(t, "10-calico.conflist")), 0o644); err != nil {
				t.Fatal(err)
			}
			eventually(t, "entry re-inserted after a rename", func() bool { return hasEntry(primary) })
			// ...or writes it in place.
			writeFile(t, primary, string(readInput(t, "10-calico.conflist")))
			eventually(t, "entry re-inserted after an in-place write", func() bool { return hasEntry(primary) })

			// Someone deletes the binary: it comes back.
			bin := filepath.Join(n.bin, PluginType)
			if err := os.Remove(bin); err != nil {
				t.Fatal(err)
			}
			eventually(t, "binary restored", func() bool {
				b, err := os.ReadFile(bin)
				return err == nil && bytes.Equal(b, readFile(t, n.plugin))
			})

			// The kubelet rotates the token: the kubeconfig follows before the old one expires.
			kcPath := filepath.Join(n.conf, DefaultKubeconfigName)
			newToken := jwt(time.Now().Add(2 * time.Hour))
			writeFile(t, n.token, newToken)
			eventually(t, "kubeconfig refreshed with the rotated token", func() bool {
				kc, err := clientcmd.LoadFromFile(kcPath)
				return err == nil && kc.AuthInfos["detour-cni"] != nil && kc.AuthInfos["detour-cni"].Token == newToken
			})

			if err := stop(); err != nil {
				t.Errorf("Run returned %v after cancel", err)
			}
			// Without CleanupOnExit the installation stays for the next pod.
			if !hasEntry(primary) {
				t.Error("entry removed on exit without CleanupOnExit")
			}
			if entries(t, primary) != 1 {
				t.Error("more than one entry")
			}
			assertNoTempFiles(t, n.root)
		})
	}
}

func TestRunCleanupOnExit(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	primary := n.primary(t, "10-flannel.conflist")
	o := n.options()
	o.CleanupOnExit = true
	stop := runInstaller(t, o)
	eventually(t, "entry inserted", func() bool { return hasEntry(primary) })
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if !jsonEqual(readFile(t, primary), readInput(t, "10-flannel.conflist")) {
		t.Errorf("primary after cleanup:\n%s", readFile(t, primary))
	}
	for _, f := range []string{filepath.Join(n.bin, PluginType), filepath.Join(n.conf, DefaultKubeconfigName)} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after cleanup", f)
		}
	}
}

func TestRunFailsWhenFirstInstallFails(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	if err := os.Remove(n.token); err != nil {
		t.Fatal(err)
	}
	n.primary(t, "10-flannel.conflist")
	err := New(n.options()).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), n.token) {
		t.Fatalf("Run = %v, want an error naming the token file", err)
	}
	if hasEntry(filepath.Join(n.conf, "10-flannel.conflist")) {
		t.Error("entry inserted although the kubeconfig could not be written")
	}
}

// TestRunAtomicForReaders races a container runtime (reading the conf dir as
// libcni does) against a primary CNI that keeps rewriting its file and the
// installer that keeps re-inserting: every read must load as a network
// configuration with the primary's plugins.
func TestRunAtomicForReaders(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	primary := n.primary(t, "10-calico.conflist")
	stop := runInstaller(t, n.options())
	eventually(t, "entry inserted", func() bool { return hasEntry(primary) })

	done := make(chan struct{})
	readErr := make(chan error, 1)
	reads := 0
	go func() {
		defer close(readErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			p, err := Primary(n.conf)
			if err != nil {
				readErr <- err
				return
			}
			list, err := libcni.ConfListFromFile(p)
			if err != nil {
				readErr <- fmt.Errorf("read %d: %w", reads, err)
				return
			}
			if list.Plugins[0].Network.Type != "calico" {
				readErr <- fmt.Errorf("read %d: first plugin %q", reads, list.Plugins[0].Network.Type)
				return
			}
			reads++
		}
	}()
	orig := readInput(t, "10-calico.conflist")
	for i := 0; i < 100; i++ {
		if err := atomicfile.WriteFrom(primary, bytes.NewReader(orig), 0o644); err != nil {
			t.Fatal(err)
		}
		eventually(t, fmt.Sprintf("re-insert %d", i), func() bool { return hasEntry(primary) })
	}
	close(done)
	if err := <-readErr; err != nil {
		t.Errorf("a runtime read a broken configuration: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if reads == 0 {
		t.Error("the reader never ran")
	}
	t.Logf("%d reads during 100 rewrites", reads)
}

func TestTokenExpiry(t *testing.T) {
	t.Parallel()
	exp := time.Unix(1900000000, 0)
	tests := []struct {
		name  string
		token string
		want  time.Time
		ok    bool
	}{
		{"projected", jwt(exp), exp, true},
		{"with newline", jwt(exp) + "\n", exp, true},
		{"legacy without exp", base64.RawURLEncoding.EncodeToString([]byte(`{}`)) + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"x"}`)) + ".sig", time.Time{}, false},
		{"not a jwt", "abc", time.Time{}, false},
		{"bad base64", "a.!!!.c", time.Time{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := TokenExpiry(tc.token)
			if ok != tc.ok || !got.Equal(tc.want) {
				t.Errorf("TokenExpiry = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestKubeconfig(t *testing.T) {
	t.Parallel()
	out, err := Kubeconfig(Credentials{Server: ServerURL("2001:db8::1", "443"), CA: []byte(testCA), Token: "tok\n"})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, golden.Path(t, "ipv6-server"), out)
	for _, tc := range []struct {
		name string
		c    Credentials
		want string
	}{
		{"no CA", Credentials{Server: "https://192.0.2.1:443", Token: "t"}, "CA: is not a PEM certificate"},
		{"no token", Credentials{Server: "https://192.0.2.1:443", CA: []byte(testCA), Token: " \n"}, "token: is empty"},
		{"no port", Credentials{Server: "https://192.0.2.1", CA: []byte(testCA), Token: "t"}, `server: "https://192.0.2.1" is not https://host:port`},
	} {
		if _, err := Kubeconfig(tc.c); err == nil || err.Error() != tc.want {
			t.Errorf("%s: error = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestInstallSymlinkedPrimary(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	real := filepath.Join(n.root, "cni-owner", "10-calico.conflist")
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, real, string(readInput(t, "10-calico.conflist")))
	link := filepath.Join(n.conf, "10-calico.conflist")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	in := New(n.options())
	if _, err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symlink was replaced (%v, %v)", fi, err)
	}
	if !hasEntry(real) {
		t.Error("the entry is not in the linked file")
	}
	if _, err := in.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(readFile(t, real), readInput(t, "10-calico.conflist")) {
		t.Error("uninstall did not restore the linked file")
	}
}

// TestEntryParsesAsThePluginReadsIt checks the contract between the installer
// and the plugin: the entry a runtime hands detour-cni (as libcni builds it from
// the conflist) decodes with the plugin's own parser into the settings given to
// the installer.
func TestEntryParsesAsThePluginReadsIt(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	primary := n.primary(t, "10-flannel.conflist")
	o := n.options()
	o.LogLevel = "debug"
	o.PassthroughOnLo = "address"
	o.Preset = "istio"
	o.ConfigFile = n.goodConfig
	if _, err := New(o).Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	conf, _, b := entryAsThePluginReadsIt(t, primary)
	if conf.Type != PluginType || conf.Kubeconfig != filepath.Join(n.conf, DefaultKubeconfigName) || conf.LogFile != o.LogFile ||
		conf.LogLevel != "debug" || strings.Join(conf.ExcludeNamespaces, ",") != "kube-system" || conf.PassthroughOnLo != "address" {
		t.Errorf("plugin reads %+v", conf)
	}
	// The entry asks the runtime for the pod's annotations, under the key the
	// plugin reads them from.
	var caps struct {
		Capabilities map[string]bool `json:"capabilities"`
	}
	if err := json.Unmarshal(b, &caps); err != nil || !caps.Capabilities[cni.CapabilityPodAnnotations] {
		t.Errorf("entry capabilities = %v (%v), want %s", caps.Capabilities, err, cni.CapabilityPodAnnotations)
	}
	base, err := conf.BaseConfig()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := redirect.Preset("istio")
	if err := want.Decode(readFile(t, n.goodConfig)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, base, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("the plugin's base config differs from --preset istio + --config (-want +got):\n%s", diff)
	}

	// A changed config file reaches the entry on the next repair.
	writeFile(t, n.goodConfig, "outbound:\n  excludePorts: [5432]\n")
	if changes, err := New(o).Install(context.Background()); err != nil || len(changes) != 1 {
		t.Fatalf("Install after a config change = %q, %v", changes, err)
	}
	list, err := libcni.ConfListFromFile(primary)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(list.Plugins[len(list.Plugins)-1].Bytes); !strings.Contains(got, `"config":{"outbound":{"excludePorts":[5432]}}`) {
		t.Errorf("entry not updated: %s", got)
	}
}

// entryAsThePluginReadsIt is detour-cni's entry in conflist (its last plugin)
// as the plugin gets it on stdin from libcni, which adds the network's name and
// cniVersion: decoded by the plugin's own parser, as a map, and as bytes.
func entryAsThePluginReadsIt(t *testing.T, conflist string) (*cni.Conf, map[string]any, []byte) {
	t.Helper()
	list, err := libcni.ConfListFromFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	var stdin map[string]any
	if err := json.Unmarshal(list.Plugins[len(list.Plugins)-1].Bytes, &stdin); err != nil {
		t.Fatal(err)
	}
	stdin["name"], stdin["cniVersion"] = list.Name, list.CNIVersion
	b, _ := json.Marshal(stdin)
	conf, err := cni.ParseConf(b)
	if err != nil {
		t.Fatalf("the plugin refuses the installer's entry: %v\n%s", err, b)
	}
	return conf, stdin, b
}

// TestPassthroughOnLoOfAPreset: what the plugin does with ::6 in a pod after
// detour cni install. With --preset istio or kuma and no --passthrough-on-lo
// the entry says address (istiod's and Kuma's Envoy bind ::6 without
// freebind: an upgrade keeps their pods' address); without a preset, or with
// --mesh-config (detour's control plane, which sets freebind), the plugin
// makes the route; the flag wins over the preset.
func TestPassthroughOnLoOfAPreset(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, preset, flag string
		mesh               bool
		wantKey, want      string // the entry's key ("" = absent), what the plugin reads
	}{
		{name: "no preset", want: "route"},
		{name: "istio", preset: "istio", wantKey: "address", want: "address"},
		{name: "kuma", preset: "kuma", wantKey: "address", want: "address"},
		{name: "istio with route", preset: "istio", flag: "route", wantKey: "route", want: "route"},
		{name: "no preset with address", flag: "address", wantKey: "address", want: "address"},
		{name: "mesh config", mesh: true, want: "route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			primary := n.primary(t, "10-flannel.conflist")
			o := n.options()
			o.Preset, o.PassthroughOnLo = tt.preset, tt.flag
			if tt.mesh {
				o.MeshConfigFile = filepath.Join(n.root, "mesh.yaml")
				writeFile(t, o.MeshConfigFile, "preset: istio\n")
			}
			if _, err := New(o).Install(context.Background()); err != nil {
				t.Fatal(err)
			}
			conf, stdin, b := entryAsThePluginReadsIt(t, primary)
			if got, _ := stdin["passthroughOnLo"].(string); got != tt.wantKey {
				t.Errorf("entry passthroughOnLo = %q, want %q", got, tt.wantKey)
			}
			if conf.PassthroughOnLo != tt.want {
				t.Errorf("the plugin reads passthroughOnLo %q, want %q\n%s", conf.PassthroughOnLo, tt.want, b)
			}
		})
	}
}

// TestReady follows a node from empty to installed and back: Ready says "not
// ready" (naming what is missing) until a pod created now would go through the
// plugin, and again once the primary CNI rewrites its file without the entry.
func TestReady(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	in := New(n.options())
	notReady := func(want string) {
		t.Helper()
		err := in.Ready()
		if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), want) {
			t.Errorf("Ready = %v, want not ready naming %q", err, want)
		}
	}
	notReady("no executable " + filepath.Join(n.bin, PluginType))
	if _, err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Binary and kubeconfig are in place, but no primary CNI config yet.
	notReady("no CNI network configuration")
	primary := n.primary(t, "10-calico.conflist")
	notReady("does not end with the detour-cni entry")
	if _, err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := in.Ready(); err != nil {
		t.Fatalf("Ready after install = %v", err)
	}
	// The primary CNI rewrites its file: not ready until the repair.
	n.primary(t, "10-calico.conflist")
	notReady(primary + " does not end with the detour-cni entry")
	if _, err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := in.Ready(); err != nil {
		t.Fatalf("Ready after the repair = %v", err)
	}
	if _, err := in.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	notReady("no executable")
}

// TestInstallEBPFPlugin: detour-cni-ebpf next to the plugin binary (as in
// the image) is copied into the bin dir before detour-cni, put back when it
// goes or changes, required by Ready, and removed by Uninstall.
func TestInstallEBPFPlugin(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.primary(t, "10-calico.conflist")
	src := filepath.Join(filepath.Dir(n.plugin), EBPFPluginType)
	writeFile(t, src, "#!/bin/sh\necho detour-cni-ebpf build 1\n")
	in := New(n.options())
	ctx := context.Background()
	changes, err := in.Install(ctx)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	ebpf, plugin := filepath.Join(n.bin, EBPFPluginType), filepath.Join(n.bin, PluginType)
	if len(changes) == 0 || changes[0] != "wrote "+ebpf+"\nwrote "+plugin {
		t.Errorf("Install changes = %q, want detour-cni-ebpf written first, then detour-cni", changes)
	}
	if !bytes.Equal(readFile(t, ebpf), readFile(t, src)) {
		t.Error("installed detour-cni-ebpf differs from the one next to the plugin binary")
	}
	if fi, _ := os.Stat(ebpf); fi.Mode().Perm() != 0o755 {
		t.Errorf("detour-cni-ebpf mode = %v, want 0755", fi.Mode())
	}
	if err := in.Ready(); err != nil {
		t.Errorf("Ready after Install: %v", err)
	}
	if changes, err := in.Install(ctx); err != nil || len(changes) != 0 {
		t.Errorf("second Install = %q, %v; want no change", changes, err)
	}

	if err := os.Remove(ebpf); err != nil {
		t.Fatal(err)
	}
	if err := in.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), ebpf) {
		t.Errorf("Ready without detour-cni-ebpf = %v, want ErrNotReady naming %s", err, ebpf)
	}
	if changes, err := in.Install(ctx); err != nil || !slices.Equal(changes, []string{"wrote " + ebpf}) {
		t.Errorf("Install after detour-cni-ebpf went = %q, %v; want it written back", changes, err)
	}
	writeFile(t, ebpf, "someone else's")
	if changes, err := in.Install(ctx); err != nil || !slices.Equal(changes, []string{"wrote " + ebpf}) {
		t.Errorf("Install after detour-cni-ebpf changed = %q, %v; want it written back", changes, err)
	}

	if _, err := in.Uninstall(ctx); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	for _, f := range []string{ebpf, plugin} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Uninstall %s: %v, want it gone", f, err)
		}
	}

	// A network whose base config says backend ebpf gets the whole plugin
	// as detour-cni (every call would be handed over otherwise); back to
	// the lean one when the config no longer says so.
	cfg := filepath.Join(n.root, "ebpf.yaml")
	writeFile(t, cfg, "backend: ebpf\n")
	o := n.options()
	o.ConfigFile = cfg
	eb := New(o)
	if _, err := eb.Install(ctx); err != nil {
		t.Fatalf("Install with backend ebpf: %v", err)
	}
	if !bytes.Equal(readFile(t, plugin), readFile(t, src)) || !bytes.Equal(readFile(t, ebpf), readFile(t, src)) {
		t.Error("base config backend ebpf: detour-cni and detour-cni-ebpf in the bin dir should both be detour-cni-ebpf")
	}
	writeFile(t, cfg, "backend: nftables\n")
	if changes, err := eb.Install(ctx); err != nil || !slices.Contains(changes, "wrote "+plugin) {
		t.Errorf("Install after the config left ebpf = %q, %v; want detour-cni written", changes, err)
	}
	if !bytes.Equal(readFile(t, plugin), readFile(t, n.plugin)) {
		t.Error("base config backend nftables: detour-cni in the bin dir is not the lean plugin")
	}
	if _, err := eb.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}

	// Without detour-cni-ebpf next to the plugin binary, only detour-cni.
	m := newNode(t)
	m.primary(t, "10-calico.conflist")
	if _, err := New(m.options()).Install(ctx); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.bin, EBPFPluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no detour-cni-ebpf to install, yet the bin dir has one: %v", err)
	}
}

// buildTiny builds a small Go program into dir/name with the given build
// tags, as `make build` builds the plugins (-trimpath): what Validate reads
// is the build's settings, not what the program does.
func buildTiny(t *testing.T, dir, name, tags string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build a plugin stand-in")
	}
	src := filepath.Join(t.TempDir(), "main.go")
	writeFile(t, src, "package main\n\nfunc main() {}\n")
	out := filepath.Join(dir, name)
	args := []string{"build", "-trimpath", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command(goBin, append(args, src)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, b)
	}
	return out
}

// TestLeanPluginForEBPFIsRefused: where the base config says backend ebpf,
// every call needs the eBPF backend. A detour-cni built lean (make build's,
// the image's) with no detour-cni-ebpf to install beside it was installed
// anyway, and every pod's ADD then failed with code 50; a lean build given
// as --ebpf-plugin-binary was installed as detour-cni-ebpf, which refuses
// every call handed to it. Both are exit 2 naming the flag, nothing written.
func TestLeanPluginForEBPFIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two small programs")
	}
	t.Parallel()
	n := newNode(t)
	n.primary(t, "10-calico.conflist")
	lean := buildTiny(t, t.TempDir(), PluginType, "detour_lean")
	whole := buildTiny(t, t.TempDir(), PluginType, "")
	ebpfCfg := filepath.Join(n.root, "ebpf.yaml")
	writeFile(t, ebpfCfg, "backend: ebpf\n")
	nftCfg := filepath.Join(n.root, "nft.yaml")
	writeFile(t, nftCfg, "backend: nftables\n")
	tests := []struct {
		name             string
		plugin, ebpf     string
		config           string
		option, contains string // "" = valid
	}{
		{"lean plugin, base config ebpf, no detour-cni-ebpf", lean, "", ebpfCfg, "plugin-binary", "built without the eBPF backend"},
		{"lean build as detour-cni-ebpf", lean, lean, nftCfg, "ebpf-plugin-binary", "built without the eBPF backend"},
		{"lean plugin, base config nftables", lean, "", nftCfg, "", ""},
		{"whole plugin, base config ebpf", whole, "", ebpfCfg, "", ""},
		{"lean plugin with the whole one beside", lean, whole, ebpfCfg, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := n.options()
			o.PluginBinary, o.EBPFPluginBinary, o.ConfigFile = tc.plugin, tc.ebpf, tc.config
			err := o.Validate()
			if tc.option == "" {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Option != tc.option || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("Validate = %v, want an OptionError for --%s saying %q", err, tc.option, tc.contains)
			}
			before := statAll(t, n.root)
			if _, err := New(o).Install(context.Background()); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("Install = %v, want the validation error", err)
			}
			if d := diffStats(before, statAll(t, n.root)); d != "" {
				t.Errorf("invalid options changed files: %s", d)
			}
		})
	}
}

// TestRunLogsAFailureOnce: a repair that keeps failing the same way is logged
// once, not at every file notification. With its log written into a watched
// directory (`detour cni install … 2> install.log` run from the token's
// directory), each logged failure was itself a notification: the installer
// wrote about 3 MB of the same line in 5 seconds, at full CPU, until stopped.
// The wait for the primary CNI is the same loop with an info line.
func TestRunLogsAFailureOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, line string
		conflist   string // "" = no network configuration
	}{
		{"broken primary", "repair failed", "{\"name\": \"k8s-pod-network\", \"plugins\": ["},
		{"no primary yet", "waiting for the primary CNI", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			primary := n.primary(t, "10-flannel.conflist")
			logPath := filepath.Join(filepath.Dir(n.token), "install.log")
			logFile, err := os.Create(logPath)
			if err != nil {
				t.Fatal(err)
			}
			defer logFile.Close()
			o := n.options()
			o.PollInterval = time.Hour // only notifications trigger repairs
			o.Logger = slog.New(slog.NewTextHandler(logFile, nil))
			stop := runInstaller(t, o)
			eventually(t, "entry inserted", func() bool { return hasEntry(primary) })
			if tc.conflist == "" {
				if err := os.Remove(primary); err != nil {
					t.Fatal(err)
				}
			} else {
				writeFile(t, primary, tc.conflist)
			}
			// Logged at least once (however loaded the machine), then a
			// second in which a loop would log it again and again.
			eventually(t, tc.line+" logged", func() bool { return strings.Contains(string(readFile(t, logPath)), tc.line) })
			time.Sleep(time.Second)
			if err := stop(); err != nil {
				t.Fatalf("Run returned %v", err)
			}
			lines := strings.Count(string(readFile(t, logPath)), tc.line)
			if lines == 0 || lines > 3 {
				t.Errorf("%q logged %d times in a second, want it once (at most 3: a half-written file may fail in a few ways); log:\n%.2000s", tc.line, lines, readFile(t, logPath))
			}
		})
	}
}
