package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/redirect"
)

// Annotations and names the injector reads and writes.
const (
	// AnnotationInject is the pod annotation (and namespace label) that opts
	// in ("enabled") or out ("disabled").
	AnnotationInject = redirect.AnnotationInject
	InjectEnabled    = "enabled"
	InjectDisabled   = "disabled"

	// SidecarPrefix starts the injector's own per-pod settings.
	SidecarPrefix = "sidecar.detour.io/"
	// AnnotationStatus records what was injected (JSON, see Status).
	AnnotationStatus = SidecarPrefix + "status"
	// Per-pod overrides of the mesh config's proxy image and resources.
	AnnotationProxyImage       = SidecarPrefix + "proxy-image"
	AnnotationProxyCPU         = SidecarPrefix + "proxy-cpu"
	AnnotationProxyMemory      = SidecarPrefix + "proxy-memory"
	AnnotationProxyCPULimit    = SidecarPrefix + "proxy-cpu-limit"
	AnnotationProxyMemoryLimit = SidecarPrefix + "proxy-memory-limit"

	// Names of what is added to the pod.
	ProxyName    = "detour-proxy"
	InitName     = "detour-init"
	ValidateName = "detour-validate"
	RunVolume    = "detour-run"

	// NodeID is the node id the sidecar presents (the control plane's
	// Kubernetes source names pods <name>.<namespace>); the kubelet expands the
	// variables from the downward API when it starts the container, so it is
	// right for pods whose name the API server generates after admission.
	NodeID = "$(DETOUR_POD_NAME).$(DETOUR_POD_NAMESPACE)"
)

// NamespaceLabelOnSpellings are the values of a namespace's detour.io/inject
// label that mean "on" but are not InjectEnabled (true, Istio's habit; yes;
// another case of enabled). Pods of such a namespace that do not decide for
// themselves are refused rather than started without a sidecar unseen. Every
// other value (false, no, off, "", disabled, anything else) leaves the
// namespace's pods as they are: a label meaning off must not stop its pods,
// nor make them wait on the control plane.
var NamespaceLabelOnSpellings = []string{
	"true", "True", "TRUE",
	"yes", "Yes", "YES", "y", "Y",
	"on", "On", "ON",
	"1",
	"enable", "Enable", "ENABLE", "Enabled", "ENABLED",
}

const annotationDefaultContainer = "kubectl.kubernetes.io/default-container"

// Namespaces the injector never touches, whatever their labels say.
var systemNamespaces = []string{"kube-system", meshconfig.Namespace}

// BootstrapRequest is what the sidecar's Envoy bootstrap is built from.
type BootstrapRequest struct {
	// NodeID is the node id, with the kubelet's $(VAR) references (see NodeID).
	NodeID string
	// ControlPlane is the xDS server's host:port.
	ControlPlane string
	// AdminAddress (127.0.0.1:adminPort) and ReadyAddress (0.0.0.0:readyPort,
	// [::]:readyPort for a pod that captures IPv6) are Envoy's admin
	// listener and the listener that serves /ready.
	AdminAddress, ReadyAddress string
	// Config is the pod's redirect config.
	Config redirect.Config
}

// BootstrapFunc renders an Envoy bootstrap as JSON (which Envoy's
// --config-yaml accepts). The control plane's commands pass one built on
// controlplane.Bootstrap.
type BootstrapFunc func(BootstrapRequest) ([]byte, error)

// Options configure an Injector.
type Options struct {
	// Mesh is the mesh-wide configuration; the zero value means
	// meshconfig.Default().
	Mesh meshconfig.Config
	// Sidecar, when set, overrides Mesh.Injection.Sidecar. auto means native:
	// callers that know the API server's version resolve auto first
	// (SidecarFor).
	Sidecar meshconfig.Sidecar
	// Bootstrap renders the sidecar's bootstrap; required.
	Bootstrap BootstrapFunc
	// DetourImage is the image of the injected detour-init and
	// detour-validate containers when Mesh leaves injection.detourImage
	// unset; the webhook passes the control plane's own image (webhook.OwnImage).
	DetourImage string
	// DetourImageUnknown, when DetourImage is empty, says why (appended to
	// the error New returns when a container needs the image).
	DetourImageUnknown string
}

// Injector computes the mutation of a pod template. It is safe for
// concurrent use.
type Injector struct {
	mesh      meshconfig.Config
	native    bool
	bootstrap BootstrapFunc
	resources corev1.ResourceRequirements
}

// New validates o and returns an Injector.
func New(o Options) (*Injector, error) {
	if o.Bootstrap == nil {
		return nil, errors.New("inject: Options.Bootstrap is required")
	}
	mesh := o.Mesh
	if mesh.Injection.ControlPlane == "" {
		mesh = meshconfig.Default()
	}
	sidecar := mesh.Injection.Sidecar
	if o.Sidecar != "" {
		sidecar = o.Sidecar
	}
	switch sidecar {
	case meshconfig.SidecarAuto, meshconfig.SidecarNative, meshconfig.SidecarClassic:
	default:
		return nil, &redirect.FieldError{Field: "sidecar", Value: string(sidecar), Reason: "is not auto, native or classic"}
	}
	in := &Injector{mesh: mesh, native: sidecar != meshconfig.SidecarClassic, bootstrap: o.Bootstrap}
	if in.mesh.Injection.DetourImage == "" {
		in.mesh.Injection.DetourImage = o.DetourImage
	}
	if inj := in.mesh.Injection; inj.DetourImage == "" && DetourImageNeededBy(inj) != "" {
		reason := "is unset, and " + DetourImageNeededBy(inj) + " runs the detour image: set it in the mesh config"
		if o.DetourImageUnknown != "" {
			reason += " (" + o.DetourImageUnknown + ")"
		}
		return nil, &redirect.FieldError{Field: "injection.detourImage", Value: "", Reason: reason}
	}
	r := mesh.Injection.Resources
	res, err := resources(r.CPURequest, r.MemoryRequest, r.CPULimit, r.MemoryLimit, func(i int) string {
		return [...]string{"injection.resources.cpuRequest", "injection.resources.memoryRequest", "injection.resources.cpuLimit", "injection.resources.memoryLimit"}[i]
	})
	if err != nil {
		return nil, err
	}
	in.resources = res
	return in, nil
}

// DetourImageNeededBy names the container the injector adds under inj that
// runs the detour image (detour-init in init-container mode, detour-validate
// in cni mode with validate), or "" when it adds none.
func DetourImageNeededBy(inj meshconfig.Injection) string {
	switch {
	case inj.Redirect == meshconfig.RedirectInitContainer:
		return "the " + InitName + " container of injection.redirect: init-container"
	case inj.Redirect == meshconfig.RedirectCNI && inj.Validate:
		return "the " + ValidateName + " container of injection.validate: true"
	}
	return ""
}

// SidecarFor resolves "auto" for an API server of the given version (the
// GitVersion or Major.Minor of its /version): native sidecars from
// Kubernetes 1.29 (beta, on by default) on, classic before. An unreadable
// version is an error.
func SidecarFor(configured meshconfig.Sidecar, major, minor string) (meshconfig.Sidecar, error) {
	if configured != meshconfig.SidecarAuto && configured != "" {
		return configured, nil
	}
	ma, err1 := strconv.Atoi(strings.TrimSuffix(major, "+"))
	mi, err2 := strconv.Atoi(strings.TrimSuffix(minor, "+"))
	if err1 != nil || err2 != nil {
		return "", fmt.Errorf("read kubernetes version %q.%q: not numbers", major, minor)
	}
	if ma > 1 || (ma == 1 && mi >= 29) {
		return meshconfig.SidecarNative, nil
	}
	return meshconfig.SidecarClassic, nil
}

// Native reports whether the proxy is injected as a native sidecar.
func (in *Injector) Native() bool { return in.native }

// Wanted decides whether a pod of namespace is injected. namespaceOptedIn
// says whether the namespace carries the label detour.io/inject=enabled. A
// pod's own annotation wins (enabled or disabled); host-network pods, pods
// already injected, Windows pods (spec.os.name) and pods of kube-system and
// detour-system are left alone.
// A value of detour.io/inject other than enabled or disabled is an error
// naming it (it matches redirect.ErrInvalid).
func Wanted(namespace string, meta metav1.ObjectMeta, spec corev1.PodSpec, namespaceOptedIn bool) (bool, string, error) {
	if slices.Contains(systemNamespaces, namespace) {
		return false, "system namespace " + namespace, nil
	}
	if _, ok := meta.Annotations[AnnotationStatus]; ok {
		return false, "already injected", nil
	}
	if spec.HostNetwork {
		return false, "host network pod", nil
	}
	if spec.OS != nil && spec.OS.Name == corev1.Windows {
		// detour redirects Linux network namespaces only, and the sidecar's
		// Linux securityContext makes the API server refuse the pod.
		return false, "windows pod", nil
	}
	if v, ok := meta.Annotations[AnnotationInject]; ok {
		switch strings.TrimSpace(v) {
		case InjectEnabled:
			return true, "enabled by pod annotation", nil
		case InjectDisabled:
			return false, "disabled by pod annotation", nil
		}
		return false, "", &redirect.FieldError{Field: "annotation " + AnnotationInject, Value: redirect.BoundedValue(v), Reason: "is not " + InjectEnabled + " or " + InjectDisabled}
	}
	if namespaceOptedIn {
		return true, "enabled by namespace label", nil
	}
	return false, "not enabled", nil
}

// Status is the value of AnnotationStatus: what injection added, so that
// Uninject removes exactly that.
type Status struct {
	// Sidecar is native or classic.
	Sidecar meshconfig.Sidecar `json:"sidecar"`
	// InitContainers, Containers and Volumes name what was added.
	InitContainers []string `json:"initContainers,omitempty"`
	Containers     []string `json:"containers,omitempty"`
	Volumes        []string `json:"volumes,omitempty"`
	// Annotations maps each annotation injection set to its value before
	// (null: it was absent).
	Annotations map[string]*string `json:"annotations,omitempty"`
}

// Mutation is what injecting one pod template adds.
type Mutation struct {
	// Annotations to set (AnnotationStatus among them).
	Annotations map[string]string
	// InitContainers go before the template's own, in this order; Containers
	// before its containers; Volumes after its volumes.
	InitContainers []corev1.Container
	Containers     []corev1.Container
	Volumes        []corev1.Volume
	// Config is the pod's redirect config after injection (what the CNI
	// plugin will install and the control plane will serve).
	Config redirect.Config
	Status Status
}

// Plan computes the mutation of a pod template with metadata meta and spec
// spec. It does not decide whether to inject (see Wanted); a template that
// is already injected is an error (ErrInjected). Invalid annotations are
// errors naming the annotation and the value.
func (in *Injector) Plan(meta metav1.ObjectMeta, spec corev1.PodSpec) (*Mutation, error) {
	ann := meta.Annotations
	if _, ok := ann[AnnotationStatus]; ok {
		return nil, ErrInjected
	}
	if err := checkSidecarAnnotations(ann); err != nil {
		return nil, err
	}
	if v, ok := ann[redirect.AnnotationRedirect]; ok && strings.TrimSpace(v) != redirect.RedirectEnabled {
		return nil, &redirect.FieldError{Field: "annotation " + redirect.AnnotationRedirect, Value: redirect.BoundedValue(v),
			Reason: "contradicts sidecar injection (remove it, or opt the pod out with " + AnnotationInject + ": " + InjectDisabled + ")"}
	}
	base := in.mesh.Base()
	cfg, err := redirect.FromAnnotations(base, ann)
	if err != nil {
		return nil, err
	}
	if cfg.DNS.ResolvConf != base.DNS.ResolvConf {
		return nil, &redirect.FieldError{Field: "annotation " + redirect.FieldAnnotation(mustField("dns.resolvConf")), Value: cfg.DNS.ResolvConf,
			Reason: "cannot be set per pod: it names a file on the node; set it in the mesh config"}
	}
	if cfg.Proxy.UID == 0 {
		return nil, &redirect.FieldError{Field: "proxy.uid", Value: "0", Reason: "cannot run the sidecar: root's traffic would never be redirected"}
	}
	for _, name := range []string{ProxyName, InitName, ValidateName} {
		if hasContainer(spec.InitContainers, name) || hasContainer(spec.Containers, name) {
			return nil, fmt.Errorf("pod template already has a container named %s but no %s annotation: %w", name, AnnotationStatus, ErrConflict)
		}
	}
	if slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == RunVolume }) {
		return nil, fmt.Errorf("pod template already has a volume named %s: %w", RunVolume, ErrConflict)
	}

	m := &Mutation{Annotations: map[string]string{}}
	set := func(k, v string) {
		if old, ok := ann[k]; ok && old == v {
			return
		}
		m.Annotations[k] = v
	}
	set(redirect.AnnotationRedirect, redirect.RedirectEnabled)

	// The kubelet probes Envoy's ready port on the pod address: it must not be
	// redirected to the inbound listener. The admin port listens on loopback
	// only, but is excluded too so that no config can route to it.
	inj := in.mesh.Injection
	if cfg.Inbound.Enabled {
		var missing []redirect.PortRange
		for _, p := range []uint16{inj.AdminPort, inj.ReadyPort} {
			if slices.ContainsFunc(cfg.Inbound.IncludePorts, func(r redirect.PortRange) bool { return r.Contains(p) }) {
				return nil, &redirect.FieldError{Field: "inbound.includePorts", Value: joinPorts(cfg.Inbound.IncludePorts),
					Reason: fmt.Sprintf("includes the sidecar's admin/ready port %d, which must reach Envoy directly", p)}
			}
			if !slices.ContainsFunc(cfg.Inbound.ExcludePorts, func(r redirect.PortRange) bool { return r.Contains(p) }) {
				missing = append(missing, redirect.PortRange{First: p, Last: p})
			}
		}
		if len(missing) > 0 {
			cfg.Inbound.ExcludePorts = append(cfg.Inbound.ExcludePorts, missing...)
			f := mustField("inbound.excludePorts")
			set(redirect.FieldAnnotation(f), f.Get(&cfg))
		}
	}
	m.Config = cfg
	// Pin the pod's config in its annotations: the CNI plugin (at the pod's
	// ADD) and the control plane (on every change, and after a restart) read
	// the annotations over the base they have then, and a later edit of the
	// mesh-wide base must not move the ports, uid or mode of a pod whose
	// sidecar bootstrap and rules were made with this one.
	pinned, err := pin(cfg, base)
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", redirect.AnnotationConfig, err)
	}
	set(redirect.AnnotationConfig, pinned)
	if err := checkAppPorts(spec, corev1.ProtocolTCP, "the proxy's inbound, outbound, admin and ready ports are",
		cfg.Proxy.InboundPort, cfg.Proxy.OutboundPort, inj.AdminPort, inj.ReadyPort); err != nil {
		return nil, err
	}
	if cfg.DNS.Capture != redirect.DNSCaptureOff {
		if err := checkAppPorts(spec, corev1.ProtocolUDP, "the proxy's DNS port is", cfg.DNS.Port); err != nil {
			return nil, err
		}
	}
	if err := checkAppIdentity(spec, cfg.Proxy); err != nil {
		return nil, err
	}

	proxy, err := in.proxyContainer(ann, cfg)
	if err != nil {
		return nil, err
	}
	st := Status{Sidecar: meshconfig.SidecarClassic}
	if in.native {
		st.Sidecar = meshconfig.SidecarNative
	}
	switch inj.Redirect {
	case meshconfig.RedirectInitContainer:
		m.InitContainers = append(m.InitContainers, in.installContainer(cfg))
		m.Volumes = append(m.Volumes, corev1.Volume{Name: RunVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}})
	case meshconfig.RedirectCNI:
		if inj.Validate {
			m.InitContainers = append(m.InitContainers, in.validateContainer(cfg))
		}
	}
	if in.native {
		always := corev1.ContainerRestartPolicyAlways
		proxy.RestartPolicy = &always
		m.InitContainers = append(m.InitContainers, proxy)
	} else {
		m.Containers = append(m.Containers, proxy)
		// The proxy goes first so it starts first; kubectl logs/exec should
		// still pick the app.
		if _, ok := ann[annotationDefaultContainer]; !ok && len(spec.Containers) > 0 {
			set(annotationDefaultContainer, spec.Containers[0].Name)
		}
	}
	for _, c := range m.InitContainers {
		st.InitContainers = append(st.InitContainers, c.Name)
	}
	for _, c := range m.Containers {
		st.Containers = append(st.Containers, c.Name)
	}
	for _, v := range m.Volumes {
		st.Volumes = append(st.Volumes, v.Name)
	}
	st.Annotations = map[string]*string{}
	for k := range m.Annotations {
		if old, ok := ann[k]; ok {
			st.Annotations[k] = &old
		} else {
			st.Annotations[k] = nil
		}
	}
	js, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", AnnotationStatus, err)
	}
	m.Annotations[AnnotationStatus] = string(js)
	m.Status = st
	return m, nil
}

// Errors Plan returns for templates it cannot inject.
var (
	// ErrInjected: the template carries AnnotationStatus already.
	ErrInjected = errors.New("already injected")
	// ErrConflict: the template has a container or volume with a name the
	// injector would add.
	ErrConflict = errors.New("name taken")
)

func (in *Injector) proxyContainer(ann map[string]string, cfg redirect.Config) (corev1.Container, error) {
	inj := in.mesh.Injection
	image := inj.ProxyImage
	if v, ok := ann[AnnotationProxyImage]; ok {
		if strings.TrimSpace(v) == "" || strings.ContainsAny(v, " \t\n") {
			return corev1.Container{}, &redirect.FieldError{Field: "annotation " + AnnotationProxyImage, Value: redirect.BoundedValue(v), Reason: "is not an image reference"}
		}
		image = v
	}
	res := in.resources
	if slices.ContainsFunc([]string{AnnotationProxyCPU, AnnotationProxyMemory, AnnotationProxyCPULimit, AnnotationProxyMemoryLimit}, func(k string) bool { _, ok := ann[k]; return ok }) {
		r := inj.Resources
		pick := func(k, def string) string {
			if v, ok := ann[k]; ok {
				return v
			}
			return def
		}
		var err error
		res, err = resources(pick(AnnotationProxyCPU, r.CPURequest), pick(AnnotationProxyMemory, r.MemoryRequest),
			pick(AnnotationProxyCPULimit, r.CPULimit), pick(AnnotationProxyMemoryLimit, r.MemoryLimit), func(i int) string {
				return "annotation " + [...]string{AnnotationProxyCPU, AnnotationProxyMemory, AnnotationProxyCPULimit, AnnotationProxyMemoryLimit}[i]
			})
		if err != nil {
			return corev1.Container{}, err
		}
	}
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(inj.AdminPort)))
	// The kubelet probes the pod's IP: an IPv6 one in an IPv6-only or
	// IPv6-first cluster, where 0.0.0.0 would never answer. A pod that
	// captures IPv6 (ipv6, dual) has it, so "::" (both families) binds there;
	// with auto the pod's families are not known at admission, and "::"
	// would fail Envoy's start on a node without IPv6.
	readyHost := "0.0.0.0"
	if cfg.IPFamilies == redirect.IPFamiliesIPv6 || cfg.IPFamilies == redirect.IPFamiliesDual {
		readyHost = "::"
	}
	ready := net.JoinHostPort(readyHost, strconv.Itoa(int(inj.ReadyPort)))
	bs, err := in.bootstrap(BootstrapRequest{NodeID: NodeID, ControlPlane: inj.ControlPlane, AdminAddress: admin, ReadyAddress: ready, Config: cfg})
	if err != nil {
		return corev1.Container{}, fmt.Errorf("sidecar bootstrap: %w", err)
	}
	uid := int64(cfg.Proxy.UID)
	gid := uid
	if cfg.Proxy.GID != nil {
		gid = int64(*cfg.Proxy.GID)
	}
	caps := &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}
	escalate := false
	if cfg.Mode == redirect.ModeTProxy {
		// A transparent inbound listener needs IP_TRANSPARENT, i.e. an
		// effective CAP_NET_ADMIN. Kubernetes gives a non-root process added
		// capabilities only through the binary's file capabilities, which
		// no_new_privs (allowPrivilegeEscalation: false) would ignore.
		caps.Add = []corev1.Capability{"NET_ADMIN"}
		escalate = true
	}
	probe := func(period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/ready", Port: intstr.FromInt32(int32(inj.ReadyPort)),
			}},
			PeriodSeconds: period, FailureThreshold: failures, TimeoutSeconds: 3,
		}
	}
	return corev1.Container{
		Name:    ProxyName,
		Image:   image,
		Command: []string{"envoy"},
		Args:    []string{"--config-yaml", string(bs), "--concurrency", "2", "--disable-hot-restart"},
		Env: []corev1.EnvVar{
			{Name: "DETOUR_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "DETOUR_POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		},
		Ports: []corev1.ContainerPort{{Name: "detour-ready", ContainerPort: int32(inj.ReadyPort), Protocol: corev1.ProtocolTCP}},
		// The first probe passes once Envoy has its first listeners and clusters:
		// a native sidecar holds the app's containers back until then.
		StartupProbe:   probe(1, 600),
		ReadinessProbe: probe(5, 3),
		LivenessProbe:  probe(10, 6),
		Resources:      res,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsGroup:               &gid,
			RunAsNonRoot:             ptr(true),
			AllowPrivilegeEscalation: ptr(escalate),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             caps,
		},
	}, nil
}

// configArgs are the flags that give `detour install`/`detour validate` cfg:
// one per field that differs from the built-in default, in the fields'
// documentation order.
func configArgs(cfg redirect.Config) []string {
	def := redirect.Default()
	var args []string
	for _, f := range redirect.Fields() {
		if v := f.Get(&cfg); v != f.Get(&def) {
			args = append(args, "--"+f.Name+"="+v)
		}
	}
	return args
}

func (in *Injector) installContainer(cfg redirect.Config) corev1.Container {
	c := in.detourContainer(InitName, "install", cfg, "NET_ADMIN", "NET_RAW")
	// iptables takes its lock in /run/xtables.lock.
	c.VolumeMounts = []corev1.VolumeMount{{Name: RunVolume, MountPath: "/run"}}
	return c
}

func (in *Injector) validateContainer(cfg redirect.Config) corev1.Container {
	return in.detourContainer(ValidateName, "validate", cfg, "SETUID", "SETGID")
}

// detourContainer runs one detour command with cfg as flags, as root with
// exactly the capabilities caps.
func (in *Injector) detourContainer(name, command string, cfg redirect.Config, caps ...corev1.Capability) corev1.Container {
	return corev1.Container{
		Name:    name,
		Image:   in.mesh.Injection.DetourImage,
		Command: []string{"/usr/local/bin/detour"},
		Args:    append([]string{command}, configArgs(cfg)...),
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: caps},
		},
	}
}

var sidecarAnnotations = []string{AnnotationStatus, AnnotationProxyImage, AnnotationProxyCPU, AnnotationProxyMemory, AnnotationProxyCPULimit, AnnotationProxyMemoryLimit}

// checkSidecarAnnotations refuses an unknown sidecar.detour.io/ key: a
// misspelt override would otherwise be ignored.
func checkSidecarAnnotations(ann map[string]string) error {
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, SidecarPrefix) && !slices.Contains(sidecarAnnotations, k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	return &redirect.FieldError{Field: "annotation " + keys[0], Value: redirect.BoundedValue(ann[keys[0]]),
		Reason: "is not a sidecar annotation (" + strings.Join(sidecarAnnotations[1:], ", ") + ")"}
}

func resources(cpuReq, memReq, cpuLim, memLim string, field func(int) string) (corev1.ResourceRequirements, error) {
	var r corev1.ResourceRequirements
	for i, v := range []string{cpuReq, memReq, cpuLim, memLim} {
		if v == "" {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() < 0 {
			return r, &redirect.FieldError{Field: field(i), Value: redirect.BoundedValue(v), Reason: "is not a quantity (e.g. 100m, 128Mi)"}
		}
		list := &r.Requests
		if i >= 2 {
			list = &r.Limits
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		name := corev1.ResourceCPU
		if i%2 == 1 {
			name = corev1.ResourceMemory
		}
		(*list)[name] = q
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := r.Requests[name]
		lim, hasLim := r.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			i := 0
			if name == corev1.ResourceMemory {
				i = 1
			}
			return r, &redirect.FieldError{Field: field(i), Value: req.String(), Reason: "is above the limit " + lim.String()}
		}
	}
	return r, nil
}

// checkAppPorts refuses a container that declares one of the sidecar's
// ports of protocol proto (what names them says which they are): in the pod's
// one network namespace either the app or Envoy would fail to bind it (or, on
// the outbound port, the app's listener would take the redirected
// connections; on the DNS port of a pod that captures DNS, the app would take
// the captured queries).
func checkAppPorts(spec corev1.PodSpec, proto corev1.Protocol, what string, proxyPorts ...uint16) error {
	for _, list := range []struct {
		field string
		cs    []corev1.Container
	}{{"spec.initContainers", spec.InitContainers}, {"spec.containers", spec.Containers}} {
		for i, c := range list.cs {
			for j, p := range c.Ports {
				if p.Protocol != proto && (p.Protocol != "" || proto != corev1.ProtocolTCP) {
					continue // "" is TCP
				}
				if p.ContainerPort > 0 && p.ContainerPort <= 65535 && slices.Contains(proxyPorts, uint16(p.ContainerPort)) {
					return &redirect.FieldError{Field: fmt.Sprintf("%s[%d].ports[%d].containerPort", list.field, i, j), Value: strconv.Itoa(int(p.ContainerPort)),
						Reason: fmt.Sprintf("is a port of the sidecar (container %s; %s %s/%s)", c.Name, what, joinUint16(proxyPorts), proto)}
				}
			}
		}
	}
	return nil
}

// checkAppIdentity refuses a container that runs, by its own or the pod's
// securityContext, as the proxy's uid (or its gid, when proxy.gid is set):
// the rules never capture that identity, so the container's traffic would
// bypass the sidecar without anything saying so. Init containers that run to
// completion may (it is how one reaches the network before Envoy does);
// restartable ones (native sidecars) run beside the app and may not. An
// identity the image sets (its USER) cannot be seen here.
func checkAppIdentity(spec corev1.PodSpec, proxy redirect.Proxy) error {
	type ctr struct {
		field string
		c     corev1.Container
	}
	var cs []ctr
	for i, c := range spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			cs = append(cs, ctr{fmt.Sprintf("spec.initContainers[%d]", i), c})
		}
	}
	for i, c := range spec.Containers {
		cs = append(cs, ctr{fmt.Sprintf("spec.containers[%d]", i), c})
	}
	for _, c := range cs {
		for _, id := range []struct {
			field, proxyField string
			want              *uint32
			own, pod          func() *int64
		}{
			{"runAsUser", "proxy.uid", &proxy.UID,
				func() *int64 { return secCtx(c.c).RunAsUser }, func() *int64 { return podSecCtx(spec).RunAsUser }},
			{"runAsGroup", "proxy.gid", proxy.GID,
				func() *int64 { return secCtx(c.c).RunAsGroup }, func() *int64 { return podSecCtx(spec).RunAsGroup }},
		} {
			if id.want == nil {
				continue
			}
			field, v := c.field+".securityContext."+id.field, id.own()
			if v == nil {
				field, v = "spec.securityContext."+id.field, id.pod()
			}
			if v != nil && *v == int64(*id.want) {
				return &redirect.FieldError{Field: field, Value: strconv.FormatInt(*v, 10),
					Reason: fmt.Sprintf("runs container %s as the sidecar's %s, whose traffic is never redirected: the container would bypass the mesh (run it as another identity, or set %s to one no container uses)", c.c.Name, id.proxyField, id.proxyField)}
			}
		}
	}
	return nil
}

func secCtx(c corev1.Container) *corev1.SecurityContext {
	if c.SecurityContext == nil {
		return &corev1.SecurityContext{}
	}
	return c.SecurityContext
}

func podSecCtx(spec corev1.PodSpec) *corev1.PodSecurityContext {
	if spec.SecurityContext == nil {
		return &corev1.PodSecurityContext{}
	}
	return spec.SecurityContext
}

func joinUint16(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}

func hasContainer(cs []corev1.Container, name string) bool {
	return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == name })
}

func mustField(path string) redirect.Field {
	f, ok := redirect.FieldByPath(path)
	if !ok {
		panic("inject: no config field " + path)
	}
	return f
}

func joinPorts(rs []redirect.PortRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func ptr[T any](v T) *T { return &v }

// nodeLocal are the settings the node decides, by the CNI plugin's config
// there: the backend, its eBPF options, rule logging, and the node file that
// dns.capture resolvconf reads (which the plugin refuses from a pod). A pin
// leaves each out unless the pod's own annotations asked for another value
// than the mesh-wide base, so the node's config keeps deciding them.
var nodeLocal = [][]string{{"backend"}, {"ebpf"}, {"log"}, {"dns", "resolvConf"}}

// pin renders cfg as the JSON document of redirect.AnnotationConfig: every
// field, so that it decodes to cfg over any base, but the nodeLocal ones that
// equal base's.
func pin(cfg, base redirect.Config) (string, error) {
	doc, err := jsonObject(cfg)
	if err != nil {
		return "", err
	}
	from, err := jsonObject(base)
	if err != nil {
		return "", err
	}
	for _, path := range nodeLocal {
		d, b := doc, from
		for _, k := range path[:len(path)-1] {
			d, _ = d[k].(map[string]any)
			b, _ = b[k].(map[string]any)
		}
		last := path[len(path)-1]
		if d != nil && b != nil && reflect.DeepEqual(d[last], b[last]) {
			delete(d, last)
		}
	}
	out, err := json.Marshal(doc)
	return string(out), err
}

func jsonObject(c redirect.Config) (map[string]any, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}
