package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/redirect"
)

// DefaultDebounce is how long the source waits after a change for more before
// it rebuilds the mesh: a rollout changes many objects at once.
const DefaultDebounce = 100 * time.Millisecond

// Options configure a Source. Client is required.
type Options struct {
	// Client reads the API (list and watch services, endpoint slices, pods and
	// namespaces: nothing else, and nothing is written).
	Client kubernetes.Interface
	// Namespace limits the source to one namespace; "" watches all.
	Namespace string
	// Base is every pod's redirect config before its annotations: it must be
	// the base the CNI plugin (or the init container) installs from, so a
	// pod's listeners and its rules agree. The zero value means
	// redirect.Default().
	Base *redirect.Config
	// OutboundPolicy for destinations that are not services; "" = allow-any.
	OutboundPolicy controlplane.OutboundPolicy
	// DNS is what the DNS listeners of pods that capture DNS answer: services
	// as <name>.<namespace>.<suffix>.
	DNS controlplane.DNS
	// Debounce; 0 means DefaultDebounce.
	Debounce time.Duration
	// SyncReport is how often, until the caches have synced, the source
	// asks the API itself why a resource has not and logs the answer;
	// 0 means DefaultSyncReport.
	SyncReport time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Source builds the mesh from the Kubernetes API: services with a cluster IP are
// services (named "<name>.<namespace>"), their endpoint slices' ready endpoints
// are endpoints, and pods that opt in (the annotation detour.io/redirect:
// enabled, or that label on their namespace) are workloads (node id
// "<name>.<namespace>", the pod IPs, the TCP container ports, every service
// reachable, the transparent proxy from redirect.FromAnnotations).
//
// A source only reads, and everything it serves is a function of the API's
// state, with content-hash versions: several control plane replicas can serve
// side by side from one API server and give a proxy the same versions.
type Source struct {
	o      Options
	log    *slog.Logger
	health *watchHealth

	mu       sync.Mutex
	reported map[string]string // pod key → resourceVersion whose problem was logged
}

// maxDNSSuffix is the longest DNS suffix with which every Kubernetes service
// name (<name>.<namespace>, 63 characters each at most) is a DNS name.
const maxDNSSuffix = 253 - 63 - 1 - 63 - 1

// New returns a Source.
func New(o Options) (*Source, error) {
	if o.Client == nil {
		return nil, errors.New("kubernetes source: no client")
	}
	if o.Base == nil {
		d := redirect.Default()
		o.Base = &d
	}
	if err := o.Base.Validate(); err != nil {
		return nil, fmt.Errorf("kubernetes source base config: %w", err)
	}
	// An absolute suffix (mesh.) is the same suffix, as in a mesh file;
	// "." is none, not the default.
	if given := o.DNS.Suffix; given != "" {
		o.DNS.Suffix = strings.TrimSuffix(given, ".")
		if o.DNS.Suffix == "" {
			return nil, fmt.Errorf("kubernetes source dns options: %w", &redirect.FieldError{Field: "dns.suffix", Value: given,
				Reason: "is empty; leave it out for the default suffix " + controlplane.DefaultDNSSuffix})
		}
	}
	if err := (&controlplane.Mesh{OutboundPolicy: controlplane.AllowAny, DNS: o.DNS}).Validate(); err != nil {
		return nil, fmt.Errorf("kubernetes source dns options: %w", err)
	}
	// Services are answered as <name>.<namespace>.<suffix>, names and
	// namespaces up to 63 characters each: a longer suffix would make some
	// valid service's name longer than DNS carries (253), and refuse the
	// whole mesh for it.
	if suffix := o.DNS.Suffix; len(suffix) > maxDNSSuffix {
		return nil, fmt.Errorf("kubernetes source dns options: %w", &redirect.FieldError{Field: "dns.suffix", Value: suffix,
			Reason: fmt.Sprintf("is longer than %d characters: <service>.<namespace>.<suffix> (up to 63 characters each for service and namespace) would be longer than 253", maxDNSSuffix)})
	}
	// A namespace name is a DNS label: with any other name the watch would
	// see no object, forever, without a word.
	if o.Namespace != "" {
		if errs := validation.IsDNS1123Label(o.Namespace); len(errs) > 0 {
			return nil, &redirect.FieldError{Field: "namespace", Value: o.Namespace,
				Reason: "is not a namespace name: " + strings.Join(errs, "; ")}
		}
	}
	switch o.OutboundPolicy {
	case "":
		o.OutboundPolicy = controlplane.AllowAny
	case controlplane.AllowAny, controlplane.RegistryOnly:
	default:
		return nil, &redirect.FieldError{Field: "outbound-policy", Value: string(o.OutboundPolicy), Reason: "is not one of allow-any, registry-only"}
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultDebounce
	}
	if o.SyncReport <= 0 {
		o.SyncReport = DefaultSyncReport
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{o: o, log: log, health: newWatchHealth(), reported: map[string]string{}}, nil
}

// DefaultSyncReport is how often the source says why its caches have not
// synced yet.
const DefaultSyncReport = 10 * time.Second

// reportUnsynced logs, every SyncReport until synced is closed, why each
// resource whose cache has not synced cannot be read. client-go's reflector
// retries an unreachable API server (a wrong kubeconfig's address, the API
// down) without a word at the default log level: the control plane stayed
// unready and said nothing. A refused list (RBAC) is logged the same way.
func (s *Source) reportUnsynced(ctx context.Context, synced <-chan struct{}, informers map[string]cache.SharedIndexInformer) {
	t := time.NewTicker(s.o.SyncReport)
	defer t.Stop()
	list := map[string]func(context.Context, metav1.ListOptions) error{
		"services": func(ctx context.Context, o metav1.ListOptions) error {
			_, err := s.o.Client.CoreV1().Services(s.o.Namespace).List(ctx, o)
			return err
		},
		"endpointslices": func(ctx context.Context, o metav1.ListOptions) error {
			_, err := s.o.Client.DiscoveryV1().EndpointSlices(s.o.Namespace).List(ctx, o)
			return err
		},
		"pods": func(ctx context.Context, o metav1.ListOptions) error {
			_, err := s.o.Client.CoreV1().Pods(s.o.Namespace).List(ctx, o)
			return err
		},
		"namespaces": func(ctx context.Context, o metav1.ListOptions) error {
			_, err := s.o.Client.CoreV1().Namespaces().List(ctx, o)
			return err
		},
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-synced:
			return
		case <-t.C:
		}
		for _, resource := range slices.Sorted(maps.Keys(informers)) {
			if informers[resource].HasSynced() {
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, s.o.SyncReport)
			err := list[resource](lctx, metav1.ListOptions{Limit: 1})
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("kubernetes API unreachable or refusing; caches not synced, retrying", "resource", resource, "error", err)
			}
		}
	}
}

// ErrKubeconfig wraps a client configuration that cannot be loaded (invalid
// input for the command line).
var ErrKubeconfig = errors.New("load kubeconfig")

// NewClient returns a client for the kubeconfig file when given, else the
// in-cluster configuration, else $KUBECONFIG or ~/.kube/config. A configuration
// that cannot be loaded is an error wrapping ErrKubeconfig.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		if c, err := rest.InClusterConfig(); err == nil {
			return c, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}

// listers are the informers' caches the mesh is built from.
type listers struct {
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
}

// Run implements controlplane.Source: it starts the informers, waits for
// their caches, gives sink the first mesh and then a new one after every
// change (debounced), until ctx ends.
func (s *Source) Run(ctx context.Context, sink controlplane.Sink) error {
	var opts []informers.SharedInformerOption
	if s.o.Namespace != "" {
		opts = append(opts, informers.WithNamespace(s.o.Namespace))
	}
	f := informers.NewSharedInformerFactoryWithOptions(s.o.Client, 0, opts...)
	// The factory's informers, but with lists and watches that say whether
	// they work (Ready): registered first, the typed accessors below return
	// them.
	ns, c := s.o.Namespace, s.o.Client
	s.informer(f, "services", &corev1.Service{},
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.CoreV1().Services(ns).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.CoreV1().Services(ns).Watch(ctx, o)
		})
	s.informer(f, "endpointslices", &discoveryv1.EndpointSlice{},
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.DiscoveryV1().EndpointSlices(ns).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.DiscoveryV1().EndpointSlices(ns).Watch(ctx, o)
		})
	s.informer(f, "pods", &corev1.Pod{},
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.CoreV1().Pods(ns).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.CoreV1().Pods(ns).Watch(ctx, o)
		})
	s.informer(f, "namespaces", &corev1.Namespace{},
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.CoreV1().Namespaces().List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.CoreV1().Namespaces().Watch(ctx, o)
		})
	l := listers{
		services:   f.Core().V1().Services().Lister(),
		slices:     f.Discovery().V1().EndpointSlices().Lister(),
		pods:       f.Core().V1().Pods().Lister(),
		namespaces: f.Core().V1().Namespaces().Lister(),
	}
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	informers := map[string]cache.SharedIndexInformer{
		"services":       f.Core().V1().Services().Informer(),
		"endpointslices": f.Discovery().V1().EndpointSlices().Informer(),
		"pods":           f.Core().V1().Pods().Informer(),
		"namespaces":     f.Core().V1().Namespaces().Informer(),
	}
	for resource, inf := range informers {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("watch kubernetes: %w", err)
		}
		// client-go's own report goes to klog, which says nothing here: an
		// unreachable or refusing API server (a wrong kubeconfig, missing
		// RBAC) left the control plane unready without a word.
		if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				// A watch closed, or its resource version expired: the
				// reflector lists again, as it does all the time.
				s.log.Debug("kubernetes watch closed; watching again", "resource", resource, "error", err)
				return
			}
			s.log.Warn("kubernetes API unreachable or refusing; retrying", "resource", resource, "error", err)
		}); err != nil {
			return fmt.Errorf("watch kubernetes: %w", err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		f.Shutdown()
	}()
	f.Start(runCtx.Done())
	synced := make(chan struct{})
	go s.reportUnsynced(runCtx, synced, informers)
	waited := f.WaitForCacheSync(runCtx.Done())
	close(synced)
	for typ, ok := range waited {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sync kubernetes cache of %v", typ)
		}
	}
	s.log.Info("kubernetes caches synced", "namespace", cmp.Or(s.o.Namespace, "(all)"))

	m, err := s.mesh(l)
	if err != nil {
		return err
	}
	if _, err := sink.Update(ctx, m); err != nil {
		return fmt.Errorf("first mesh from kubernetes: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		// Let a burst of changes (a rollout, a scale) settle into one push.
		t := time.NewTimer(s.o.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		select {
		case <-changed: // already covered by this rebuild
		default:
		}
		m, err := s.mesh(l)
		if err != nil {
			sink.Invalid(err)
			continue
		}
		// An invalid mesh is logged and counted by the sink.
		_, _ = sink.Update(ctx, m)
	}
}

// mesh builds the mesh from the caches. Objects that cannot be served (a pod
// with invalid annotations) are left out and logged, so one bad pod never
// holds back everyone else's config.
func (s *Source) mesh(l listers) (*controlplane.Mesh, error) {
	m := &controlplane.Mesh{OutboundPolicy: s.o.OutboundPolicy, DNS: s.o.DNS}
	services, err := l.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	endpointSlices, err := l.slices.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list endpoint slices: %w", err)
	}
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range endpointSlices {
		if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
			key := es.Namespace + "/" + svc
			bySvc[key] = append(bySvc[key], es)
		}
	}
	for _, svc := range services {
		if ms, ok := service(svc, bySvc[svc.Namespace+"/"+svc.Name]); ok {
			m.Services = append(m.Services, ms)
		}
	}
	slices.SortFunc(m.Services, func(a, b controlplane.Service) int { return cmp.Compare(a.Name, b.Name) })

	pods, err := l.pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	slices.SortFunc(pods, func(a, b *corev1.Pod) int { return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	s.forget(pods)
	for _, pod := range pods {
		w, ok, err := s.workload(pod, l.namespaces)
		if err != nil {
			s.report(pod, err)
			m.Excluded = append(m.Excluded, controlplane.Excluded{NodeID: NodeID(pod), Reason: err.Error()})
			continue
		}
		if ok {
			m.Workloads = append(m.Workloads, w)
		}
	}
	return m, nil
}

// report logs why a pod is not served, once per version of the pod.
func (s *Source) report(pod *corev1.Pod, err error) {
	key := pod.Namespace + "/" + pod.Name
	s.mu.Lock()
	seen := s.reported[key] == pod.ResourceVersion
	s.reported[key] = pod.ResourceVersion
	s.mu.Unlock()
	if !seen {
		s.log.Warn("pod not served", "pod", key, "error", err)
	}
}

// forget drops what was reported about pods that are gone.
func (s *Source) forget(pods []*corev1.Pod) {
	present := make(map[string]bool, len(pods))
	for _, p := range pods {
		present[p.Namespace+"/"+p.Name] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.reported {
		if !present[k] {
			delete(s.reported, k)
		}
	}
}

// NodeID is the node id a pod's proxy presents: "<name>.<namespace>".
func NodeID(pod *corev1.Pod) string { return pod.Name + "." + pod.Namespace }

// ServiceName is a service's name in the mesh: "<name>.<namespace>".
func ServiceName(svc *corev1.Service) string { return svc.Name + "." + svc.Namespace }

// service turns a service with a cluster IP and its endpoint slices into a
// mesh service. Only TCP ports are served.
func service(svc *corev1.Service, eps []*discoveryv1.EndpointSlice) (controlplane.Service, bool) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return controlplane.Service{}, false
	}
	ms := controlplane.Service{Name: ServiceName(svc)}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil {
			ms.VirtualIPs = append(ms.VirtualIPs, a)
		}
	}
	names := map[string]string{} // Kubernetes port name → mesh port name
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		name := p.Name
		if name == "" {
			name = strconv.Itoa(int(p.Port))
		}
		names[p.Name] = name
		target := uint16(p.Port)
		if p.TargetPort.IntValue() > 0 {
			target = uint16(p.TargetPort.IntValue())
		}
		ms.Ports = append(ms.Ports, controlplane.ServicePort{
			Name: name, Port: uint16(p.Port), TargetPort: target, Protocol: protocol(p.Name, p.AppProtocol),
		})
	}
	if len(ms.VirtualIPs) == 0 || len(ms.Ports) == 0 {
		return controlplane.Service{}, false
	}
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		// The slice's ports are the resolved target ports (named ports differ
		// per pod), by service port name.
		targets := map[string]uint16{}
		for _, p := range es.Ports {
			if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			n := ""
			if p.Name != nil {
				n = *p.Name
			}
			if meshName, ok := names[n]; ok {
				targets[meshName] = uint16(*p.Port)
			}
		}
		for _, e := range es.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, addr := range e.Addresses {
				a, err := netip.ParseAddr(addr)
				// Kubernetes takes a multicast address in an EndpointSlice;
				// the mesh refuses it as an endpoint, and one such slice
				// would make every mesh built from the API invalid.
				if err != nil || a.IsUnspecified() || a.IsMulticast() {
					continue
				}
				ms.Endpoints = append(ms.Endpoints, controlplane.Endpoint{Address: a, TargetPorts: targets})
			}
		}
	}
	slices.SortFunc(ms.Endpoints, func(a, b controlplane.Endpoint) int { return a.Address.Compare(b.Address) })
	return ms, true
}

// protocol follows the usual conventions: appProtocol http (or
// kubernetes.io/http), or a port named http or http-….
func protocol(name string, appProtocol *string) controlplane.Protocol {
	if appProtocol != nil {
		switch strings.ToLower(*appProtocol) {
		case "http", "kubernetes.io/http":
			return controlplane.ProtocolHTTP
		}
		return controlplane.ProtocolTCP
	}
	if name == "http" || strings.HasPrefix(name, "http-") {
		return controlplane.ProtocolHTTP
	}
	return controlplane.ProtocolTCP
}

// workload turns an opted-in pod into a workload. ok is false for a pod that
// is not meshed (not opted in, host network, finished, no IP yet); err says
// why an opted-in pod cannot be served.
func (s *Source) workload(pod *corev1.Pod, namespaces corelisters.NamespaceLister) (controlplane.Workload, bool, error) {
	if pod.Spec.HostNetwork || pod.DeletionTimestamp != nil ||
		pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return controlplane.Workload{}, false, nil
	}
	on, err := optedIn(pod, namespaces)
	if err != nil || !on {
		return controlplane.Workload{}, false, err
	}
	var addrs []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return controlplane.Workload{}, false, nil // not scheduled yet
	}
	tp, err := redirect.FromAnnotations(*s.o.Base, pod.Annotations)
	if err != nil {
		return controlplane.Workload{}, false, err
	}
	w := controlplane.Workload{
		NodeID:           NodeID(pod),
		Addresses:        addrs,
		Labels:           pod.Labels,
		Reach:            []string{controlplane.ReachAll},
		TransparentProxy: tp,
	}
	seen := map[uint16]bool{}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			port := uint16(p.ContainerPort)
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP || port == 0 || seen[port] {
				continue
			}
			// The sidecar's own ports are not the app's.
			if port == tp.Proxy.InboundPort || port == tp.Proxy.OutboundPort {
				continue
			}
			seen[port] = true
			w.Inbound = append(w.Inbound, controlplane.InboundPort{Port: port, AppPort: port, Protocol: protocol(p.Name, nil)})
		}
	}
	slices.SortFunc(w.Inbound, func(a, b controlplane.InboundPort) int { return cmp.Compare(a.Port, b.Port) })
	// Check the workload alone: a pod whose config does not fit (ipFamilies
	// dual on a single-stack pod) is left out rather than failing the mesh.
	one := controlplane.Mesh{OutboundPolicy: s.o.OutboundPolicy, DNS: s.o.DNS, Workloads: []controlplane.Workload{w}}
	if err := one.Validate(); err != nil {
		return controlplane.Workload{}, false, err
	}
	return w, true, nil
}

// optedIn applies the opt-in rules of the CNI plugin: the pod's
// detour.io/redirect annotation when it has one, else its namespace's label.
func optedIn(pod *corev1.Pod, namespaces corelisters.NamespaceLister) (bool, error) {
	if _, set := pod.Annotations[redirect.AnnotationRedirect]; set {
		on, err := redirect.RedirectRequested(pod.Annotations)
		if err != nil {
			return false, fmt.Errorf("annotation: %w", err)
		}
		return on, nil
	}
	ns, err := namespaces.Get(pod.Namespace)
	if err != nil {
		return false, nil // namespace not visible (yet): not opted in
	}
	on, err := redirect.RedirectRequested(ns.Labels)
	if err != nil {
		return false, fmt.Errorf("namespace %s label: %w", pod.Namespace, err)
	}
	return on, nil
}
