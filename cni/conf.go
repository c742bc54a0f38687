package cni

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/detour-mesh/detour/redirect"
)

// CapabilityPodAnnotations is the CNI capability under which containerd and
// CRI-O pass a pod's annotations in runtimeConfig, when the plugin's conflist
// entry declares it ("capabilities": {"io.kubernetes.cri.pod-annotations": true}).
const CapabilityPodAnnotations = "io.kubernetes.cri.pod-annotations"

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
// Unknown keys are ignored, as CNI plugins do.
type Conf struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`

	// Kubeconfig is the path of the kubeconfig the plugin reads pods with.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// LogFile receives the plugin's log lines (JSON, appended); empty = stderr.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info (the default), warn or error.
	LogLevel string `json:"logLevel,omitempty"`
	// ExcludeNamespaces are never redirected, whatever their pods say.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// StateDir holds the per-attachment state; empty = DefaultStateDir.
	StateDir string `json:"stateDir,omitempty"`
	// Preset is the base config for every pod (redirect.Preset); empty = defaults.
	Preset string `json:"preset,omitempty"`
	// Config is a redirect.Config document (a JSON object, or a string holding
	// YAML or JSON) applied on top of Preset for every pod, before the pod's own
	// annotations.
	Config json.RawMessage `json:"config,omitempty"`
	// EBPFPinDir is where the eBPF backend pins its maps and links on this
	// node (pods whose config says backend: ebpf); empty = bpf's default,
	// /sys/fs/bpf/detour. Tests point it at a private bpffs.
	EBPFPinDir string `json:"ebpfPinDir,omitempty"`
	// EBPFCgroupRoot is the cgroup v2 directory the eBPF backend's programs
	// attach to once per node; they act only for enrolled pod namespaces.
	// Empty = the root of the cgroup v2 hierarchy. Tests point it at a cgroup
	// of their own.
	EBPFCgroupRoot string `json:"ebpfCgroupRoot,omitempty"`

	// RuntimeConfig holds what the runtime passes for the capabilities the
	// conflist entry declares. detour cni install declares
	// CapabilityPodAnnotations, so containerd and CRI-O hand over the pod's
	// annotations and ADD need not read the pod from the API.
	RuntimeConfig struct {
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	// PrevResult is the result of the previous plugin in the chain, kept as raw
	// bytes so ADD can print it back byte for byte.
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
	// ValidAttachments is set by the runtime for GC only.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`

	// base is BaseConfig as ParseConf computed it (valid when parsed), so
	// that ADD does not decode the config document twice.
	base   redirect.Config
	parsed bool
}

// ParseConf decodes the stdin configuration and fills the defaults. Errors name
// the key and the value and carry the CNI code for an invalid network config.
func ParseConf(stdin []byte) (*Conf, error) {
	var c Conf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, newError(types.ErrDecodingFailure, fmt.Errorf("decode plugin config: %w", err))
	}
	if c.Kubeconfig == "" {
		c.Kubeconfig = DefaultKubeconfig
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if _, err := c.level(); err != nil {
		return nil, newError(types.ErrInvalidNetworkConfig, err)
	}
	base, err := c.BaseConfig()
	if err != nil {
		return nil, newError(types.ErrInvalidNetworkConfig, err)
	}
	c.base, c.parsed = base, true
	for _, k := range []struct{ key, path string }{{"ebpfPinDir", c.EBPFPinDir}, {"ebpfCgroupRoot", c.EBPFCgroupRoot}} {
		if k.path != "" && (!filepath.IsAbs(k.path) || filepath.Clean(k.path) != k.path || k.path == "/") {
			return nil, newError(types.ErrInvalidNetworkConfig, fmt.Errorf("plugin config key %s: %q is not a clean absolute path below /", k.key, k.path))
		}
	}
	for i, ns := range c.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			return nil, newError(types.ErrInvalidNetworkConfig, fmt.Errorf("excludeNamespaces[%d]: %q is not a namespace name", i, ns))
		}
	}
	if len(c.PrevResult) > 0 && string(c.PrevResult) == "null" {
		c.PrevResult = nil
	}
	return &c, nil
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
