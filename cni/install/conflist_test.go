package install

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/internal/golden"
)

var testEntry = Entry{
	Kubeconfig:        "/etc/cni/net.d/detour-kubeconfig",
	LogFile:           "/var/log/detour-cni.log",
	ExcludeNamespaces: []string{"kube-system", "detour-system"},
}

// conflistCases are realistic primary CNI configurations, written from each
// project's documented format.
var conflistCases = []struct {
	name, file string
}{
	{"calico", "10-calico.conflist"},
	{"cilium", "05-cilium.conflist"},
	{"flannel", "10-flannel.conflist"},
	{"kindnet", "10-kindnet.conflist"},
	{"bridge-conf", "10-bridge.conf"},
	{"containerd-bridge", "10-containerd-net.conflist"},
	{"calico-stale-entries", "10-calico-stale.conflist"},
}

func readInput(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "input", file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// asList returns the document as a conflist, converting a .conf the way the
// installer does.
func asList(t *testing.T, file string, doc []byte) []byte {
	t.Helper()
	if filepath.Ext(file) == ".conflist" {
		return doc
	}
	out, err := ConfToList(doc)
	if err != nil {
		t.Fatalf("ConfToList: %v", err)
	}
	return out
}

// runtimeView is what a container runtime loads from a network configuration
// file: libcni's parse, with each plugin's JSON decoded for comparison.
type runtimeView struct {
	Name, CNIVersion string
	DisableCheck     bool
	Plugins          []any
}

func loadAsRuntime(t *testing.T, file string, doc []byte) runtimeView {
	t.Helper()
	var list *libcni.NetworkConfigList
	var err error
	if filepath.Ext(file) == ".conflist" {
		list, err = libcni.ConfListFromBytes(doc)
	} else {
		var conf *libcni.PluginConfig
		if conf, err = libcni.ConfFromBytes(doc); err == nil {
			list, err = libcni.ConfListFromConf(conf)
		}
	}
	if err != nil {
		t.Fatalf("libcni cannot load %s: %v\n%s", file, err, doc)
	}
	v := runtimeView{Name: list.Name, CNIVersion: list.CNIVersion, DisableCheck: list.DisableCheck}
	for _, p := range list.Plugins {
		var m any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			t.Fatal(err)
		}
		v.Plugins = append(v.Plugins, m)
	}
	return v
}

func withoutOurs(v runtimeView) runtimeView {
	var kept []any
	for _, p := range v.Plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			continue
		}
		kept = append(kept, p)
	}
	v.Plugins = kept
	return v
}

func TestInsert(t *testing.T) {
	t.Parallel()
	for _, tc := range conflistCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			orig := readInput(t, tc.file)
			out, err := Insert(asList(t, tc.file, orig), testEntry)
			if err != nil {
				t.Fatalf("Insert: %v", err)
			}
			golden.Check(t, golden.Path(t, tc.name), out)

			// The runtime sees the primary's plugins unchanged and in order, then ours, once.
			before := withoutOurs(loadAsRuntime(t, tc.file, orig))
			after := loadAsRuntime(t, "x.conflist", out)
			last, _ := json.Marshal(after.Plugins[len(after.Plugins)-1])
			if !jsonEqual(last, mustJSON(t, testEntry)) {
				t.Errorf("last plugin = %s, want our entry %s", last, mustJSON(t, testEntry))
			}
			after.Plugins = after.Plugins[:len(after.Plugins)-1]
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("primary's network changed (-before +after):\n%s", diff)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInsertIdempotent(t *testing.T) {
	t.Parallel()
	for _, tc := range conflistCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			once, err := Insert(asList(t, tc.file, readInput(t, tc.file)), testEntry)
			if err != nil {
				t.Fatal(err)
			}
			twice, err := Insert(once, testEntry)
			if err != nil {
				t.Fatal(err)
			}
			if string(twice) != string(once) {
				t.Errorf("second Insert changed the file:\n%s\nto\n%s", once, twice)
			}
			if ok, err := Contains(once, testEntry); err != nil || !ok {
				t.Errorf("Contains = %v, %v; want true", ok, err)
			}
			other := testEntry
			other.LogFile = "/var/log/other.log"
			if ok, _ := Contains(once, other); ok {
				t.Error("Contains reports an entry with different settings as present")
			}
			// Changed settings replace the entry: still exactly one, last.
			changed, err := Insert(once, other)
			if err != nil {
				t.Fatal(err)
			}
			v := loadAsRuntime(t, "x.conflist", changed)
			if n := len(v.Plugins) - len(withoutOurs(v).Plugins); n != 1 {
				t.Errorf("%d detour-cni entries after changing settings, want 1", n)
			}
			if !strings.Contains(string(changed), "/var/log/other.log") {
				t.Errorf("changed settings not written:\n%s", changed)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	t.Parallel()
	for _, tc := range conflistCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			orig := readInput(t, tc.file)
			inserted, err := Insert(asList(t, tc.file, orig), testEntry)
			if err != nil {
				t.Fatal(err)
			}
			out, removed, err := Remove(inserted)
			if err != nil || !removed {
				t.Fatalf("Remove = %v, %v; want removed", removed, err)
			}
			golden.Check(t, golden.Path(t, tc.name), out)
			// The runtime loads exactly the primary's network again.
			want := withoutOurs(loadAsRuntime(t, tc.file, orig))
			if diff := cmp.Diff(want, loadAsRuntime(t, "x.conflist", out)); diff != "" {
				t.Errorf("network after Remove differs from the original (-want +got):\n%s", diff)
			}
			again, removed, err := Remove(out)
			if err != nil || removed || string(again) != string(out) {
				t.Errorf("second Remove = removed %v, err %v, changed %v; want nothing", removed, err, string(again) != string(out))
			}
		})
	}
}

func TestRemoveKeepsForeignFileBytes(t *testing.T) {
	t.Parallel()
	orig := readInput(t, "10-kindnet.conflist")
	out, removed, err := Remove(orig)
	if err != nil || removed {
		t.Fatalf("Remove = %v, %v", removed, err)
	}
	if string(out) != string(orig) {
		t.Error("Remove rewrote a file without our entry")
	}
}

func TestConfToList(t *testing.T) {
	t.Parallel()
	out, err := ConfToList(readInput(t, "10-bridge.conf"))
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, golden.Path(t, "bridge"), out)
}

func TestTransformErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		doc  string
		fn   func([]byte) error
		want string
	}{
		{"not json", `{"name": "x", "plugins": [`, insertErr, "is not JSON"},
		{"array", `[1]`, insertErr, "is not a JSON object"},
		{"trailing data", `{"name":"x","plugins":[]} {}`, insertErr, "data after the object"},
		{"no plugins", `{"name":"x","type":"bridge"}`, insertErr, "plugins: missing"},
		{"plugins not a list", `{"name":"x","plugins":{"type":"bridge"}}`, insertErr, "plugins: is not a list"},
		{"plugin not an object", `{"name":"x","plugins":[{"type":"bridge"},"portmap"]}`, insertErr, "plugins[1]: is not a JSON object"},
		{"no plugin to chain after", `{"name":"x","plugins":[]}`, insertErr, "plugins: no plugin for detour-cni to chain after"},
		{"only detour-cni", `{"name":"x","plugins":[{"type":"detour-cni"}]}`, insertErr, "plugins: no plugin for detour-cni to chain after"},
		{"remove from broken", `{"name":"x","plugins":[{"type":"bridge"},7]}`, removeErr, "plugins[1]: is not a JSON object"},
		{"conf without name", `{"cniVersion":"1.0.0","type":"bridge"}`, convertErr, "name: missing"},
		{"conf that is a list", `{"name":"x","plugins":[]}`, convertErr, "already a conflist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.fn([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func insertErr(doc []byte) error  { _, err := Insert(doc, testEntry); return err }
func removeErr(doc []byte) error  { _, _, err := Remove(doc); return err }
func convertErr(doc []byte) error { _, err := ConfToList(doc); return err }

func TestEntryJSON(t *testing.T) {
	t.Parallel()
	got := string(mustJSON(t, Entry{Kubeconfig: "/k"}))
	if want := `{"type":"detour-cni","kubeconfig":"/k"}`; got != want {
		t.Errorf("Entry JSON = %s, want %s", got, want)
	}
}

func TestPrimary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files []string
		dirs  []string
		want  string
	}{
		{"lexical first", []string{"20-b.conflist", "10-a.conf", "99-z.json"}, nil, "10-a.conf"},
		{"other extensions ignored", []string{"00-notes.txt", "01-detour-kubeconfig", ".00-x.conflist.tmp", "50-x.json"}, nil, "50-x.json"},
		{"directories ignored", []string{"10-b.conflist"}, []string{"05-dir.conflist"}, "10-b.conflist"},
		{"conf before conflist of the same name", []string{"10-a.conflist", "10-a.conf"}, nil, "10-a.conf"},
		{"none", []string{"README"}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			for _, f := range tc.files {
				writeFile(t, filepath.Join(dir, f), "{}")
			}
			for _, d := range tc.dirs {
				if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got, err := Primary(dir)
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), ErrNoPrimary.Error()) {
					t.Errorf("Primary = %q, %v; want ErrNoPrimary", got, err)
				}
				return
			}
			if err != nil || got != filepath.Join(dir, tc.want) {
				t.Errorf("Primary = %q, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestEntryKeysAreThePluginsKeys: every key of an Entry with every field set
// is one the plugin reads (cni.ParseConf refuses unknown keys), and it reads
// back what the entry says.
func TestEntryKeysAreThePluginsKeys(t *testing.T) {
	t.Parallel()
	e := Entry{
		Kubeconfig: "/etc/cni/net.d/detour-kubeconfig", LogFile: "/var/log/detour-cni.log", LogLevel: "debug",
		ExcludeNamespaces: []string{"kube-system"}, Preset: "istio", Config: json.RawMessage(`{"backend":"nftables"}`),
		PassthroughOnLo: "address", Capabilities: map[string]bool{CapabilityPodAnnotations: true},
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	// The runtime adds the network's name and version.
	b = append([]byte(`{"cniVersion":"1.1.0","name":"k8s-pod-network",`), b[1:]...)
	conf, err := cni.ParseConf(b)
	if err != nil {
		t.Fatalf("the plugin refuses the entry: %v\n%s", err, b)
	}
	got := Entry{Kubeconfig: conf.Kubeconfig, LogFile: conf.LogFile, LogLevel: conf.LogLevel, ExcludeNamespaces: conf.ExcludeNamespaces, Preset: conf.Preset, Config: conf.Config, PassthroughOnLo: conf.PassthroughOnLo, Capabilities: e.Capabilities}
	if d := cmp.Diff(e, got); d != "" || conf.Type != PluginType {
		t.Errorf("the plugin reads the entry differently (-entry +plugin):\n%s\ntype %q", d, conf.Type)
	}
}
