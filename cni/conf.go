package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/detour-mesh/detour/redirect"
)

// CapabilityPodAnnotations is the CNI capability under which containerd and
// CRI-O pass a pod's annotations in runtimeConfig, when the plugin's conflist
// entry declares it ("capabilities": {"io.kubernetes.cri.pod-annotations": true}).
const CapabilityPodAnnotations = "io.kubernetes.cri.pod-annotations"

// Values of the plugin config key passthroughOnLo.
const (
	// PassthroughRoute makes the inbound passthrough source local with a
	// route on lo in table local, without an address: the runtime's loopback
	// network, which may be set up at the same time as detour-cni's ADD and
	// refuses any address on lo but 127.0.0.0/8 and ::1, never sees one.
	// The proxy binds the source with IPV6_FREEBIND (detour's control plane
	// sets it). The default without a preset (DefaultPassthroughOnLo).
	PassthroughRoute = "route"
	// PassthroughAddress puts the source on lo as an address, as `detour
	// install` does, for a proxy that binds it without IPV6_FREEBIND
	// (istiod's Envoy configuration). The runtime must then set up its
	// loopback network before the pod's network (containerd:
	// setup_serially = true). The default with preset istio or kuma
	// (DefaultPassthroughOnLo).
	PassthroughAddress = "address"
)

// DefaultPassthroughOnLo is passthroughOnLo when the plugin config does not
// set it: PassthroughAddress with preset istio or kuma, whose control planes
// (istiod, Kuma's) configure Envoy to bind ::6 without IPV6_FREEBIND, so an
// entry written before the key existed keeps the address it always gave;
// PassthroughRoute otherwise (detour's control plane sets freebind). detour
// cni install writes the same value into the entry when
// --passthrough-on-lo is not given.
func DefaultPassthroughOnLo(preset string) string {
	switch preset {
	case "istio", "kuma":
		return PassthroughAddress
	}
	return PassthroughRoute
}

// Defaults of the plugin configuration keys.
const (
	// DefaultKubeconfig is where the DaemonSet (detour cni install) writes the
	// plugin's kubeconfig when the conflist entry names none.
	DefaultKubeconfig = "/etc/cni/net.d/detour-kubeconfig"
	// DefaultStateDir holds one small file per attachment (see State).
	DefaultStateDir = "/var/lib/cni/detour"
)

// Conf is the plugin's entry in the conflist as the runtime hands it over on
// stdin, plus the keys the runtime adds (prevResult, cni.dev/valid-attachments).
// ParseConf fills it; a key it does not know is an error (see ParseConf).
type Conf struct {
	CNIVersion string // cniVersion
	Name       string // name
	Type       string // type

	// Kubeconfig (kubeconfig) is the path of the kubeconfig the plugin
	// reads pods with.
	Kubeconfig string
	// LogFile (logFile) receives the plugin's log lines (JSON, appended);
	// empty = stderr.
	LogFile string
	// LogLevel (logLevel) is debug, info (the default), warn or error.
	LogLevel string
	// ExcludeNamespaces (excludeNamespaces) are never redirected, whatever
	// their pods say.
	ExcludeNamespaces []string
	// StateDir (stateDir) holds the per-attachment state; empty =
	// DefaultStateDir.
	StateDir string
	// Preset (preset) is the base config for every pod (redirect.Preset);
	// empty = defaults.
	Preset string
	// Config (config) is a redirect.Config document (a JSON object, or a
	// string holding YAML or JSON) applied on top of Preset for every pod,
	// before the pod's own annotations.
	Config json.RawMessage
	// EBPFPinDir (ebpfPinDir) is where the eBPF backend pins its maps and
	// links on this node (pods whose config says backend: ebpf); empty =
	// bpf's default, /sys/fs/bpf/detour. Tests point it at a private bpffs.
	EBPFPinDir string
	// EBPFCgroupRoot (ebpfCgroupRoot) is the cgroup v2 directory the eBPF
	// backend's programs attach to once per node; they act only for
	// enrolled pod namespaces. Empty = the root of the cgroup v2 hierarchy.
	// Tests point it at a cgroup of their own.
	EBPFCgroupRoot string
	// PassthroughOnLo (passthroughOnLo) says how the IPv6 inbound passthrough
	// source (::6) is made local in a pod: PassthroughRoute or
	// PassthroughAddress; unset, DefaultPassthroughOnLo of Preset.
	PassthroughOnLo string

	// RuntimeConfig holds what the runtime passes (runtimeConfig) for the
	// capabilities the conflist entry declares. detour cni install declares
	// CapabilityPodAnnotations, so containerd and CRI-O hand over the pod's
	// annotations and ADD need not read the pod from the API.
	RuntimeConfig struct {
		PodAnnotations map[string]string // io.kubernetes.cri.pod-annotations
	}

	// PrevResult (prevResult) is the result of the previous plugin in the
	// chain, kept as raw bytes so ADD can print it back byte for byte.
	PrevResult json.RawMessage
	// ValidAttachments (cni.dev/valid-attachments) is set by the runtime
	// for GC only.
	ValidAttachments []types.GCAttachment

	// base is BaseConfig as ParseConf computed it (valid when parsed), so
	// that ADD does not decode the config document twice.
	base   redirect.Config
	parsed bool
}

// ParseConf decodes the stdin configuration and fills the defaults. Errors name
// the key and the value and carry the CNI code for an invalid network config
// (a value of the wrong JSON type: decoding failure). A key that is neither
// one of detour-cni's (Keys) nor one the CNI specification defines or
// reserves (SpecKeys, and every key starting with "cni.dev/") is an error
// naming it: a misspelt key would otherwise leave its setting at the default
// without a word. Keys are case-sensitive, as the specification's are.
func ParseConf(stdin []byte) (*Conf, error) {
	c, unknown, err := parseConf(stdin)
	if err != nil {
		return nil, err
	}
	if unknown != nil {
		return nil, unknown
	}
	return c, nil
}

// Keys are the plugin configuration keys detour-cni reads, besides those of
// the CNI specification (SpecKeys).
var Keys = []string{"kubeconfig", "logFile", "logLevel", "excludeNamespaces", "stateDir", "preset", "config", "ebpfPinDir", "ebpfCgroupRoot", "passthroughOnLo"}

// SpecKeys are the plugin configuration keys the CNI specification (1.1)
// defines or reserves: what a runtime adds (runtimeConfig, args, prevResult,
// name and cniVersion from the conflist) and the well-known keys other
// plugins of a chain read (ipMasq, ipam, dns). detour-cni accepts them all,
// and every key starting with "cni.dev/" (reserved for the runtime: GC's
// cni.dev/valid-attachments, and libcni's cni.dev/attachments).
var SpecKeys = []string{"cniVersion", "name", "type", "capabilities", "runtimeConfig", "args", "prevResult", "ipMasq", "ipam", "dns"}

// specKeyPrefix starts the keys the specification reserves for the runtime.
const specKeyPrefix = "cni.dev/"

// parseConf is ParseConf with the unknown keys reported apart (nil when
// there are none), as a CNI error: DEL and GC go on without them.
func parseConf(stdin []byte) (c *Conf, unknown *types.Error, err error) {
	// The top level is read key by key rather than into a tagged struct:
	// encoding/json's reflection over a struct costs every ADD page faults,
	// and matches keys case-insensitively ("Kubeconfig" would be read as
	// kubeconfig), where CNI keys are case-sensitive.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &top); err != nil || top == nil {
		if err == nil {
			err = errors.New("null is not a JSON object")
		}
		return nil, nil, newError(types.ErrDecodingFailure, fmt.Errorf("decode plugin config: %w", err))
	}
	c = &Conf{}
	var unknownKeys []string
	for k, v := range top {
		var err error
		switch k {
		case "cniVersion":
			err = decodeKey(k, v, &c.CNIVersion)
		case "name":
			err = decodeKey(k, v, &c.Name)
		case "type":
			err = decodeKey(k, v, &c.Type)
		case "kubeconfig":
			err = decodeKey(k, v, &c.Kubeconfig)
		case "logFile":
			err = decodeKey(k, v, &c.LogFile)
		case "logLevel":
			err = decodeKey(k, v, &c.LogLevel)
		case "excludeNamespaces":
			err = decodeKey(k, v, &c.ExcludeNamespaces)
		case "stateDir":
			err = decodeKey(k, v, &c.StateDir)
		case "preset":
			err = decodeKey(k, v, &c.Preset)
		case "config":
			c.Config = v
		case "ebpfPinDir":
			err = decodeKey(k, v, &c.EBPFPinDir)
		case "ebpfCgroupRoot":
			err = decodeKey(k, v, &c.EBPFCgroupRoot)
		case "passthroughOnLo":
			err = decodeKey(k, v, &c.PassthroughOnLo)
		case "runtimeConfig":
			err = c.decodeRuntimeConfig(v)
		case "prevResult":
			c.PrevResult = v
		case "cni.dev/valid-attachments":
			err = decodeKey(k, v, &c.ValidAttachments)
		default:
			if !slices.Contains(SpecKeys, k) && !strings.HasPrefix(k, specKeyPrefix) {
				unknownKeys = append(unknownKeys, k)
			}
		}
		if err != nil {
			return nil, nil, newError(types.ErrDecodingFailure, err)
		}
	}
	if len(unknownKeys) > 0 {
		unknown = newError(types.ErrInvalidNetworkConfig, unknownKeysError(unknownKeys))
	}
	if c.Kubeconfig == "" {
		c.Kubeconfig = DefaultKubeconfig
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	switch c.PassthroughOnLo {
	case "":
		c.PassthroughOnLo = DefaultPassthroughOnLo(c.Preset)
	case PassthroughRoute, PassthroughAddress:
	default:
		return nil, unknown, newError(types.ErrInvalidNetworkConfig, fmt.Errorf("plugin config key passthroughOnLo: %q is not %s or %s", c.PassthroughOnLo, PassthroughRoute, PassthroughAddress))
	}
	if _, err := c.level(); err != nil {
		return nil, unknown, newError(types.ErrInvalidNetworkConfig, err)
	}
	base, err := c.BaseConfig()
	if err != nil {
		return nil, unknown, newError(types.ErrInvalidNetworkConfig, err)
	}
	c.base, c.parsed = base, true
	for _, k := range []struct{ key, path string }{{"ebpfPinDir", c.EBPFPinDir}, {"ebpfCgroupRoot", c.EBPFCgroupRoot}} {
		if k.path != "" && (!filepath.IsAbs(k.path) || filepath.Clean(k.path) != k.path || k.path == "/") {
			return nil, unknown, newError(types.ErrInvalidNetworkConfig, fmt.Errorf("plugin config key %s: %q is not a clean absolute path below /", k.key, k.path))
		}
	}
	for i, ns := range c.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			return nil, unknown, newError(types.ErrInvalidNetworkConfig, fmt.Errorf("excludeNamespaces[%d]: %q is not a namespace name", i, ns))
		}
	}
	if len(c.PrevResult) > 0 && string(c.PrevResult) == "null" {
		c.PrevResult = nil
	}
	return c, unknown, nil
}

// decodeKey decodes the value of the plugin config key into dst (null
// leaves it unchanged).
func decodeKey[T any](key string, value json.RawMessage, dst *T) error {
	if err := json.Unmarshal(value, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("decode plugin config: key %s: %s is not %s", key, compactValue(value), jsonKind(*dst))
		}
		return fmt.Errorf("decode plugin config: key %s: %w", key, err)
	}
	return nil
}

// decodeRuntimeConfig reads the capabilities' values detour-cni uses from
// runtimeConfig; the others are the business of other plugins.
func (c *Conf) decodeRuntimeConfig(v json.RawMessage) error {
	var rc map[string]json.RawMessage
	if err := decodeKey("runtimeConfig", v, &rc); err != nil {
		return err
	}
	if a, ok := rc[CapabilityPodAnnotations]; ok {
		return decodeKey("runtimeConfig."+CapabilityPodAnnotations, a, &c.RuntimeConfig.PodAnnotations)
	}
	return nil
}

// jsonKind names what a value decoded into v must be in JSON.
func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case []string:
		return "a list of strings"
	case map[string]string:
		return "an object of strings"
	case map[string]json.RawMessage:
		return "an object"
	}
	return "a valid value"
}

// compactValue is a JSON value for an error message: at most 60 bytes.
func compactValue(v json.RawMessage) string {
	s := strings.TrimSpace(string(v))
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// unknownKeysError says which keys detour-cni does not read and, for each,
// what was probably meant.
func unknownKeysError(keys []string) error {
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString("plugin config ")
	if len(keys) == 1 {
		b.WriteString("key ")
	} else {
		b.WriteString("keys ")
	}
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(k))
		if hint := keyHint(k); hint != "" {
			b.WriteString(" (" + hint + ")")
		}
	}
	if len(keys) == 1 {
		b.WriteString(" is unknown")
	} else {
		b.WriteString(" are unknown")
	}
	b.WriteString(": detour-cni reads " + strings.Join(Keys, ", ") + " besides the CNI specification's keys; redirection settings go in the config document (\"config\": {...}, docs/cni.md)")
	return errors.New(b.String())
}

// keyHint guesses what an unknown key k was meant to be: a detour-cni key
// in another case or one or two letters off, or a setting of the config
// document (which belongs under "config"). "" when nothing is close.
func keyHint(k string) string {
	for _, known := range append(slices.Clone(Keys), SpecKeys...) {
		if strings.EqualFold(k, known) {
			return "keys are case-sensitive: " + known
		}
	}
	best, bestDist := "", 3
	for _, known := range Keys {
		if d := editDistance(strings.ToLower(k), strings.ToLower(known)); d < bestDist {
			best, bestDist = known, d
		}
	}
	if best != "" {
		return "did you mean " + best + "?"
	}
	for _, f := range redirect.Fields() {
		top, _, _ := strings.Cut(f.Path, ".")
		if strings.EqualFold(k, top) {
			return "a setting of the config document: write \"config\": {\"" + top + "\": ...}"
		}
		if d := editDistance(strings.ToLower(k), strings.ToLower(top)); d < bestDist {
			best, bestDist = top, d
		}
	}
	if best != "" {
		return "did you mean the config document's " + best + "? write \"config\": {\"" + best + "\": ...}"
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// BaseConfig is the redirect.Config every pod starts from: the preset (or the
// defaults) with the conflist's config document applied.
func (c *Conf) BaseConfig() (redirect.Config, error) {
	base := redirect.Default()
	if c.Preset != "" {
		p, err := redirect.Preset(c.Preset)
		if err != nil {
			return redirect.Config{}, fmt.Errorf("plugin config key preset: %w", err)
		}
		base = p
	}
	if len(c.Config) > 0 {
		doc := []byte(c.Config)
		// The document may also be given as a string (YAML or JSON).
		var s string
		if json.Unmarshal(c.Config, &s) == nil {
			doc = []byte(s)
		}
		if err := base.Decode(doc); err != nil {
			return redirect.Config{}, fmt.Errorf("plugin config key config: %w", err)
		}
	}
	if err := base.Validate(); err != nil {
		return redirect.Config{}, fmt.Errorf("plugin config keys preset and config: %w", err)
	}
	return base, nil
}

// baseConfig is BaseConfig, computed once by ParseConf.
func (c *Conf) baseConfig() (redirect.Config, error) {
	if c.parsed {
		return c.base, nil
	}
	return c.BaseConfig()
}

func (c *Conf) level() (slog.Level, error) {
	switch strings.ToLower(c.LogLevel) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("plugin config key logLevel: %q is not debug, info, warn or error", c.LogLevel)
}

func (c *Conf) excluded(namespace string) bool {
	for _, ns := range c.ExcludeNamespaces {
		if ns == namespace {
			return true
		}
	}
	return false
}

// PodRef names the Kubernetes pod of an attachment, from CNI_ARGS.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID is K8S_POD_UID when the runtime passes it (containerd and CRI-O do).
	UID string `json:"uid,omitempty"`
}

func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// ParsePodArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"); other keys are ignored. ok is false when CNI_ARGS names
// no pod (the runtime is not Kubernetes).
func ParsePodArgs(args string) (ref PodRef, ok bool, err error) {
	for _, kv := range strings.Split(args, ";") {
		if kv == "" {
			continue
		}
		k, v, found := strings.Cut(kv, "=")
		if !found {
			return PodRef{}, false, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", kv)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			ref.Namespace = v
		case "K8S_POD_NAME":
			ref.Name = v
		case "K8S_POD_UID":
			ref.UID = v
		}
	}
	switch {
	case ref.Namespace == "" && ref.Name == "":
		return PodRef{}, false, nil
	case ref.Namespace == "":
		return PodRef{}, false, fmt.Errorf("CNI_ARGS: K8S_POD_NAME %q without K8S_POD_NAMESPACE", ref.Name)
	case ref.Name == "":
		return PodRef{}, false, fmt.Errorf("CNI_ARGS: K8S_POD_NAMESPACE %q without K8S_POD_NAME", ref.Namespace)
	}
	return ref, true, nil
}
