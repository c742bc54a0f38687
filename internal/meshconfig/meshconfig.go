package meshconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/redirect"
)

// Where the object lives in a cluster, and where the shipped manifests mount it.
const (
	Namespace     = "detour-system"
	ConfigMapName = "detour-config"
	// Key is the ConfigMap's data key holding the document.
	Key = "config.yaml"
	// DefaultPath is where the shipped manifests mount Key.
	DefaultPath = "/etc/detour/config.yaml"
)

// RedirectMode is how an injected pod's redirection is installed.
type RedirectMode string

// Redirect modes.
const (
	// RedirectCNI leaves it to the chained detour-cni plugin; the injector adds
	// the detour.io/redirect annotation (and, when asked, the validate init
	// container).
	RedirectCNI RedirectMode = "cni"
	// RedirectInitContainer adds a `detour install` init container with
	// NET_ADMIN and NET_RAW.
	RedirectInitContainer RedirectMode = "init-container"
)

// Sidecar is how the proxy container is added.
type Sidecar string

// Sidecar kinds.
const (
	// SidecarAuto picks native where the API server supports it (Kubernetes
	// 1.29 and later) and classic otherwise.
	SidecarAuto Sidecar = "auto"
	// SidecarNative is an init container with restartPolicy Always.
	SidecarNative Sidecar = "native"
	// SidecarClassic is a regular container.
	SidecarClassic Sidecar = "classic"
)

// Config is the mesh-wide configuration document.
type Config struct {
	// Preset is the starting point of every pod's redirect config: istio, kuma
	// or "" (the built-in defaults).
	Preset string `json:"preset,omitempty"`
	// Redirect is a redirect.Config document applied on top of Preset; a pod's
	// detour.io/* annotations apply on top of the result.
	Redirect json.RawMessage `json:"redirect,omitempty"`
	// Injection configures the sidecar injector.
	Injection Injection `json:"injection"`

	base redirect.Config
}

// Injection is what the injector adds to a pod.
type Injection struct {
	// Redirect is cni (default) or init-container.
	Redirect RedirectMode `json:"redirect,omitempty"`
	// Sidecar is auto (default), native or classic.
	Sidecar Sidecar `json:"sidecar,omitempty"`
	// Validate adds the `detour validate` race guard as the first init
	// container (cni mode only).
	Validate bool `json:"validate,omitempty"`
	// ProxyImage is the Envoy image.
	ProxyImage string `json:"proxyImage,omitempty"`
	// DetourImage runs `detour install` and `detour validate` (the injected
	// detour-init and detour-validate containers). Empty: the injection
	// webhook uses the image the control plane itself runs
	// (docs/injection.md#the-detour-image); `detour inject` has no such image
	// and needs it set when it adds one of those containers.
	DetourImage string `json:"detourImage,omitempty"`
	// ControlPlane is the xDS server's host:port the sidecar's bootstrap dials.
	ControlPlane string `json:"controlPlane,omitempty"`
	// AdminPort is Envoy's admin listener, on 127.0.0.1.
	AdminPort uint16 `json:"adminPort,omitempty"`
	// ReadyPort serves Envoy's /ready on every address, for the kubelet's probes.
	ReadyPort uint16 `json:"readyPort,omitempty"`
	// Resources are the proxy container's requests and limits (Kubernetes
	// quantities; "" leaves one out).
	Resources Resources `json:"resources"`
}

// Resources are the proxy container's requests and limits.
type Resources struct {
	CPURequest    string `json:"cpuRequest,omitempty"`
	MemoryRequest string `json:"memoryRequest,omitempty"`
	CPULimit      string `json:"cpuLimit,omitempty"`
	MemoryLimit   string `json:"memoryLimit,omitempty"`
}

// Defaults of the injection settings.
const (
	DefaultProxyImage   = "envoyproxy/envoy:v1.36.0"
	DefaultControlPlane = "detour-control-plane.detour-system.svc:15010"
	DefaultAdminPort    = 15000
	DefaultReadyPort    = 15021
)

// Default is the configuration of an empty document.
func Default() Config {
	c, err := Parse(nil)
	if err != nil {
		panic("meshconfig: the defaults do not parse: " + err.Error())
	}
	return c
}

// Load reads and parses the document at path.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read mesh config: %w", err)
	}
	return LoadDocument(path, b)
}

// LoadDocument parses b, the contents of the file at path (named in errors),
// as Load does: for a caller that has read the file already (a pipe cannot
// be read twice).
func LoadDocument(path string, b []byte) (Config, error) {
	// A file given on purpose with no setting in it (an empty ConfigMap key,
	// a truncated write) is not the built-in defaults: with an istio preset
	// meant, their proxy uid would recapture the proxy's own traffic.
	if redirect.EmptyDocument(b) {
		return Config{}, fmt.Errorf("mesh config %s: %w", path, &redirect.FieldError{Field: "(mesh config)", Value: path,
			Reason: "is empty (no setting in it); leave the flag out for the built-in defaults, or write {}"})
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("mesh config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a YAML or JSON document, fills the defaults and validates it.
// An unknown key or an invalid value is an error naming the key and the value
// (it matches redirect.ErrInvalid).
func Parse(doc []byte) (Config, error) {
	var c Config
	if len(bytes.TrimSpace(doc)) > 0 {
		if n := redirect.Documents(doc); n > 1 {
			return Config{}, &redirect.FieldError{Field: "(mesh config)", Value: "---", Reason: fmt.Sprintf("starts another YAML document (%d hold settings); the mesh config is one document", n)}
		}
		// Strict: a key given twice is an error, not whichever came last.
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return Config{}, &redirect.FieldError{Field: "(mesh config)", Value: strings.Join(strings.Fields(err.Error()), " "), Reason: "is not valid YAML or JSON"}
		}
		// YAML to JSON made 01337 the number 735 already (YAML's octal), and
		// redirect's own check never sees the redirect block as written.
		tree := json.NewDecoder(bytes.NewReader(js))
		tree.UseNumber()
		var t any
		if tree.Decode(&t) == nil {
			if err := redirect.LeadingZero(doc, t); err != nil {
				return Config{}, err
			}
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return Config{}, &redirect.FieldError{Field: "(mesh config)", Value: firstLine(err.Error()), Reason: "does not decode (unknown key or wrong type)"}
		}
	}
	if string(c.Redirect) == "null" {
		c.Redirect = nil
	}
	in := &c.Injection
	if in.Redirect == "" {
		in.Redirect = RedirectCNI
	}
	if in.Sidecar == "" {
		in.Sidecar = SidecarAuto
	}
	if in.ProxyImage == "" {
		in.ProxyImage = DefaultProxyImage
	}
	if in.ControlPlane == "" {
		in.ControlPlane = DefaultControlPlane
	}
	if in.AdminPort == 0 {
		in.AdminPort = DefaultAdminPort
	}
	if in.ReadyPort == 0 {
		in.ReadyPort = DefaultReadyPort
	}
	if in.Resources == (Resources{}) {
		in.Resources = Resources{CPURequest: "100m", MemoryRequest: "128Mi", MemoryLimit: "1Gi"}
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c *Config) validate() error {
	base := redirect.Default()
	if c.Preset != "" {
		p, err := redirect.Preset(c.Preset)
		if err != nil {
			return err
		}
		base = p
	}
	if len(c.Redirect) > 0 {
		if err := base.Decode(c.Redirect); err != nil {
			return fmt.Errorf("redirect: %w", err)
		}
	}
	if err := base.Validate(); err != nil {
		return fmt.Errorf("preset and redirect: %w", err)
	}
	c.base = base

	in := c.Injection
	switch in.Redirect {
	case RedirectCNI, RedirectInitContainer:
	default:
		return &redirect.FieldError{Field: "injection.redirect", Value: string(in.Redirect), Reason: "is not cni or init-container"}
	}
	switch in.Sidecar {
	case SidecarAuto, SidecarNative, SidecarClassic:
	default:
		return &redirect.FieldError{Field: "injection.sidecar", Value: string(in.Sidecar), Reason: "is not auto, native or classic"}
	}
	if in.Validate && in.Redirect != RedirectCNI {
		return &redirect.FieldError{Field: "injection.validate", Value: "true", Reason: "is for redirect: cni (the init container of init-container mode checks its own install)"}
	}
	host, port, err := net.SplitHostPort(in.ControlPlane)
	if err != nil || host == "" {
		return &redirect.FieldError{Field: "injection.controlPlane", Value: in.ControlPlane, Reason: "is not host:port"}
	}
	if _, err := redirect.ParsePort(port); err != nil {
		return &redirect.FieldError{Field: "injection.controlPlane", Value: in.ControlPlane, Reason: "has no valid port"}
	}
	for _, img := range []struct{ field, v string }{{"injection.proxyImage", in.ProxyImage}, {"injection.detourImage", in.DetourImage}} {
		if strings.ContainsAny(img.v, " \t\n") {
			return &redirect.FieldError{Field: img.field, Value: img.v, Reason: "is not an image reference"}
		}
	}
	proxy := c.base.Proxy
	for _, p := range []struct {
		field string
		v     uint16
	}{{"injection.adminPort", in.AdminPort}, {"injection.readyPort", in.ReadyPort}} {
		if p.v == proxy.InboundPort || p.v == proxy.OutboundPort || (c.base.DNS.Capture != redirect.DNSCaptureOff && p.v == c.base.DNS.Port) {
			return &redirect.FieldError{Field: p.field, Value: fmt.Sprint(p.v), Reason: "is one of the proxy's redirect ports"}
		}
	}
	if in.AdminPort == in.ReadyPort {
		return &redirect.FieldError{Field: "injection.readyPort", Value: fmt.Sprint(in.ReadyPort), Reason: "equals injection.adminPort"}
	}
	return nil
}

// Base is the redirect config every pod starts from: the preset with the
// redirect document applied. Pods' annotations apply on top of it
// (redirect.FromAnnotations).
func (c Config) Base() redirect.Config { return c.base.Clone() }

// RedirectDocument renders Base as a redirect.Config document (JSON), the form
// the CNI plugin's conflist entry ("config") and the control plane's
// --base-config take.
func (c Config) RedirectDocument() ([]byte, error) {
	b, err := json.Marshal(c.base)
	if err != nil {
		return nil, fmt.Errorf("render base redirect config: %w", err)
	}
	return b, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
