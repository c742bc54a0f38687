package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// PluginType is the CNI "type" of detour's plugin: the name of its binary in the
// CNI bin directory and the mark by which Insert and Remove recognise our entry.
const PluginType = "detour-cni"

// EBPFPluginType is the name of the plugin with the eBPF backend in the CNI
// bin directory: detour-cni (built lean) execs it, from next to itself, for
// the calls that need that backend. No conflist entry names it.
const EBPFPluginType = "detour-cni-ebpf"

// ConfExtensions are the file extensions a container runtime reads from the CNI
// conf directory (libcni's set), in no particular order.
var confExtensions = []string{".conf", ".conflist", ".json"}

// ErrNoPrimary reports a CNI conf directory without any network configuration:
// the primary CNI has not written its file yet.
var ErrNoPrimary = errors.New("no CNI network configuration")

// Entry is detour's plugin entry in a conflist. Its keys are the plugin
// configuration keys detour-cni reads.
type Entry struct {
	// Kubeconfig is the path, on the node, of the kubeconfig the plugin reads pods with.
	Kubeconfig string `json:"kubeconfig"`
	// LogFile is the path, on the node, of the plugin's log; empty means stderr.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is the plugin's log level (debug, info, warn, error); empty = info.
	LogLevel string `json:"logLevel,omitempty"`
	// ExcludeNamespaces are namespaces whose pods the plugin never redirects.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// Preset is the redirect.Preset every pod starts from; empty = the defaults.
	Preset string `json:"preset,omitempty"`
	// Config is a redirect.Config document (JSON) applied on top of Preset for
	// every pod, before the pod's own annotations.
	Config json.RawMessage `json:"config,omitempty"`
	// PassthroughOnLo is how the plugin makes the IPv6 passthrough source
	// local in a pod: "route" or "address"; empty = the plugin's default
	// (route).
	PassthroughOnLo string `json:"passthroughOnLo,omitempty"`
	// Capabilities are the CNI capabilities the plugin asks the runtime for:
	// the installer asks for CapabilityPodAnnotations.
	Capabilities map[string]bool `json:"capabilities,omitempty"`
}

// CapabilityPodAnnotations makes containerd and CRI-O pass the pod's
// annotations to the plugin (runtimeConfig), so that ADD of a pod that says
// whether it is redirected needs no Kubernetes API read. Runtimes that do not
// know the capability ignore it; the plugin then reads the pod.
const CapabilityPodAnnotations = "io.kubernetes.cri.pod-annotations"

// MarshalJSON writes the entry with "type": "detour-cni" first.
func (e Entry) MarshalJSON() ([]byte, error) {
	type plain Entry
	body, err := json.Marshal(plain(e))
	if err != nil {
		return nil, err
	}
	// body is a non-empty object: splice the type in front of its keys.
	return append([]byte(`{"type":"`+PluginType+`",`), body[1:]...), nil
}

// Primary returns the path of the network configuration a container runtime
// uses: the lexically first regular file (or symlink) in dir whose extension is
// .conf, .conflist or .json. It returns ErrNoPrimary when there is none.
func Primary(dir string) (string, error) {
	files, err := confFiles(dir)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("%s: %w", dir, ErrNoPrimary)
	}
	return files[0], nil
}

// confFiles lists dir's network configuration files in the order a runtime
// considers them.
func confFiles(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read CNI conf dir: %w", err)
	}
	var files []string
	for _, de := range des {
		if de.IsDir() || !slices.Contains(confExtensions, filepath.Ext(de.Name())) {
			continue
		}
		files = append(files, filepath.Join(dir, de.Name()))
	}
	slices.Sort(files)
	return files, nil
}

// IsList reports whether a network configuration document is a conflist (it
// has a "plugins" key) rather than a single plugin's configuration.
func IsList(doc []byte) (bool, error) {
	obj, err := parseObject(doc)
	if err != nil {
		return false, err
	}
	_, ok := obj.get("plugins")
	return ok, nil
}

// ConfToList turns a single-plugin network configuration (a .conf file) into the
// equivalent conflist, the way libcni does when it loads one: the network's name
// and cniVersion move up to the list and the plugin object is kept verbatim as
// the only entry of "plugins".
func ConfToList(conf []byte) ([]byte, error) {
	obj, err := parseObject(conf)
	if err != nil {
		return nil, err
	}
	if _, ok := obj.get("plugins"); ok {
		return nil, errors.New(`plugins: present, the document is already a conflist`)
	}
	name, ok := obj.get("name")
	if !ok {
		return nil, errors.New("name: missing")
	}
	list := object{{"cniVersion", nil}, {"name", name}}
	if v, ok := obj.get("cniVersion"); ok {
		list[0].value = v
	} else {
		list = list[1:]
	}
	plugins, err := json.Marshal([]json.RawMessage{compactJSON(conf)})
	if err != nil {
		return nil, err
	}
	list = append(list, member{"plugins", plugins})
	return list.marshal()
}

// Insert returns the conflist doc with e as its last plugin. Entries of type
// detour-cni already in the list are dropped first, so the result holds exactly
// one. When doc already ends with exactly e and holds no other detour-cni entry,
// Insert returns doc itself, byte for byte: re-inserting changes nothing. The
// other plugins' JSON is kept as it was, in order; the document is re-indented.
func Insert(doc []byte, e Entry) ([]byte, error) {
	obj, plugins, err := parseList(doc)
	if err != nil {
		return nil, err
	}
	want, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	ours := ownIndexes(plugins)
	if len(ours) == 1 && ours[0] == len(plugins)-1 && jsonEqual(plugins[ours[0]], want) {
		return doc, nil
	}
	kept := dropIndexes(plugins, ours)
	if len(kept) == 0 {
		// The runtime refuses a conflist without plugins; one with only
		// detour-cni would load and give pods no interface.
		return nil, errors.New("plugins: no plugin for detour-cni to chain after (the primary CNI's own plugins come first)")
	}
	return obj.withPlugins(append(kept, want))
}

// Remove returns the conflist doc without its detour-cni entries and whether
// there were any. Without one it returns doc itself. The other plugins' JSON is
// kept as it was, in order.
func Remove(doc []byte) ([]byte, bool, error) {
	obj, plugins, err := parseList(doc)
	if err != nil {
		return nil, false, err
	}
	ours := ownIndexes(plugins)
	if len(ours) == 0 {
		return doc, false, nil
	}
	out, err := obj.withPlugins(dropIndexes(plugins, ours))
	return out, true, err
}

// Contains reports whether the conflist doc holds exactly e as its last plugin
// and no other detour-cni entry.
func Contains(doc []byte, e Entry) (bool, error) {
	out, err := Insert(doc, e)
	if err != nil {
		return false, err
	}
	return bytes.Equal(out, doc), nil
}

func parseList(doc []byte) (object, []json.RawMessage, error) {
	obj, err := parseObject(doc)
	if err != nil {
		return nil, nil, err
	}
	raw, ok := obj.get("plugins")
	if !ok {
		return nil, nil, errors.New("plugins: missing, the document is not a conflist")
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(raw, &plugins); err != nil || plugins == nil {
		return nil, nil, fmt.Errorf("plugins: is not a list")
	}
	for i, p := range plugins {
		if _, err := parseObject(p); err != nil {
			return nil, nil, fmt.Errorf("plugins[%d]: %w", i, err)
		}
	}
	return obj, plugins, nil
}

func (o object) withPlugins(plugins []json.RawMessage) ([]byte, error) {
	raw, err := json.Marshal(plugins)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(o)
	out.set("plugins", raw)
	return out.marshal()
}

// ownIndexes returns the positions of the detour-cni entries.
func ownIndexes(plugins []json.RawMessage) []int {
	var idx []int
	for i, p := range plugins {
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(p, &head) == nil && head.Type == PluginType {
			idx = append(idx, i)
		}
	}
	return idx
}

func dropIndexes(plugins []json.RawMessage, drop []int) []json.RawMessage {
	var kept []json.RawMessage
	for i, p := range plugins {
		if !slices.Contains(drop, i) {
			kept = append(kept, p)
		}
	}
	return kept
}

// object is a JSON object that keeps its keys in document order, so that
// rewriting a primary CNI's file leaves it recognisable to its owner.
type object []member

type member struct {
	key   string
	value json.RawMessage
}

func parseObject(doc []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("is not JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("is not a JSON object")
	}
	var obj object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("is not JSON: %w", err)
		}
		key := tok.(string) // inside an object the decoder only yields string keys
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: is not JSON: %w", key, err)
		}
		obj.set(key, v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("is not JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("is not JSON: data after the object")
	}
	return obj, nil
}

func (o object) get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.value, true
		}
	}
	return nil, false
}

// set replaces key's value, or appends it; a repeated key keeps its first place
// and its last value, as encoding/json reads it.
func (o *object) set(key string, v json.RawMessage) {
	for i := range *o {
		if (*o)[i].key == key {
			(*o)[i].value = v
			return
		}
	}
	*o = append(*o, member{key, v})
}

// marshal writes the object indented by two spaces, with a final newline.
func (o object) marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func compactJSON(doc []byte) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, doc); err != nil {
		return doc
	}
	return b.Bytes()
}

// jsonEqual compares two JSON values by meaning: key order and spacing aside.
func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xs, _ := json.Marshal(x)
	ys, _ := json.Marshal(y)
	return bytes.Equal(xs, ys)
}

// listName returns the conflist file name a .conf or single-plugin .json file
// becomes.
func listName(path string) string {
	return strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
}
