package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// One kube-apiserver and etcd serve every test of the package; each test works
// in namespaces of its own.
var (
	envOnce sync.Once
	env     *envtest.Environment
	envCfg  *rest.Config
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop kube-apiserver and etcd:", err)
		}
	}
	os.Exit(code)
}

// apiServer returns a client of the shared real API server.
func apiServer(t *testing.T) kubernetes.Interface {
	t.Helper()
	dir := privtest.KubeAssets(t)
	envOnce.Do(func() {
		env = &envtest.Environment{BinaryAssetsDirectory: dir}
		envCfg, envErr = env.Start()
	})
	if envErr != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", envErr)
	}
	c, err := kubernetes.NewForConfig(envCfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// meshSink records the meshes a source delivers.
type meshSink struct {
	mu      sync.Mutex
	meshes  []*controlplane.Mesh
	changed chan struct{}
}

func newMeshSink() *meshSink { return &meshSink{changed: make(chan struct{}, 1)} }

func (s *meshSink) Update(_ context.Context, m *controlplane.Mesh) (xds.UpdateResult, error) {
	s.mu.Lock()
	s.meshes = append(s.meshes, m)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return xds.UpdateResult{}, m.Validate()
}

func (s *meshSink) Invalid(err error) { panic(fmt.Sprintf("source reported an invalid mesh: %v", err)) }

// waitMesh waits for a delivered mesh that satisfies ok.
func (s *meshSink) waitMesh(t *testing.T, what string, ok func(*controlplane.Mesh) bool) *controlplane.Mesh {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		s.mu.Lock()
		var last *controlplane.Mesh
		if len(s.meshes) > 0 {
			last = s.meshes[len(s.meshes)-1]
		}
		s.mu.Unlock()
		if last != nil && ok(last) {
			return last
		}
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("no mesh with %s; last: %+v", what, last)
		}
	}
}

// cluster holds the objects a test creates.
type cluster struct {
	t   *testing.T
	c   kubernetes.Interface
	ctx context.Context
}

func (k *cluster) namespace(name string, lbls map[string]string) {
	k.t.Helper()
	if _, err := k.c.CoreV1().Namespaces().Create(k.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}, metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *cluster) service(ns, name, clusterIP string, ports ...corev1.ServicePort) {
	k.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports},
	}
	if _, err := k.c.CoreV1().Services(ns).Create(k.ctx, svc, metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *cluster) endpointSlice(ns, svc, name string, port int32, portName string, ready map[string]bool) {
	k.t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
	}
	var addrs []string
	for a := range ready {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	for _, a := range addrs {
		r := ready[a]
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	cur, err := k.c.DiscoveryV1().EndpointSlices(ns).Get(k.ctx, name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = cur.ResourceVersion
		_, err = k.c.DiscoveryV1().EndpointSlices(ns).Update(k.ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = k.c.DiscoveryV1().EndpointSlices(ns).Create(k.ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		k.t.Fatal(err)
	}
}

// pod creates a pod and gives it its IP (there is no kubelet: the test plays it).
func (k *cluster) pod(ns, name, ip string, annotations map[string]string, hostNetwork bool, ports ...corev1.ContainerPort) {
	k.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			HostNetwork: hostNetwork,
			Containers:  []corev1.Container{{Name: "app", Image: "example.invalid/app", Ports: ports}},
		},
	}
	created, err := k.c.CoreV1().Pods(ns).Create(k.ctx, p, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = ip
	created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if _, err := k.c.CoreV1().Pods(ns).UpdateStatus(k.ctx, created, metav1.UpdateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func workloadIDs(m *controlplane.Mesh) []string {
	var ids []string
	for _, w := range m.Workloads {
		ids = append(ids, w.NodeID)
	}
	return ids
}

func findService(m *controlplane.Mesh, name string) (controlplane.Service, bool) {
	for _, s := range m.Services {
		if s.Name == name {
			return s, true
		}
	}
	return controlplane.Service{}, false
}

func endpointAddrs(s controlplane.Service) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.Address.String())
	}
	return out
}

func TestSourceBuildsMeshFromTheAPI(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := &cluster{t: t, c: apiServer(t), ctx: ctx}
	k.namespace("shop", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled})
	k.namespace("plain", nil)

	k.service("shop", "backend", "10.0.0.80",
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	k.endpointSlice("shop", "backend", "backend-a", 8080, "http", map[string]bool{"10.1.0.1": true, "10.1.0.2": true, "10.1.0.3": false})
	k.service("plain", "headless", "None", corev1.ServicePort{Name: "tcp", Port: 5000})

	tcp := corev1.ProtocolTCP
	k.pod("shop", "web-1", "10.1.0.10", map[string]string{"detour.io/exclude-outbound-ports": "22,2222"}, false,
		corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: tcp},
		corev1.ContainerPort{Name: "metrics", ContainerPort: 9090},
		corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		corev1.ContainerPort{Name: "proxy", ContainerPort: 15006})
	k.pod("shop", "web-2", "10.1.0.11", map[string]string{redirect.AnnotationRedirect: redirect.RedirectDisabled}, false)
	k.pod("shop", "host-1", "10.1.0.12", nil, true)
	k.pod("shop", "bad-1", "10.1.0.13", map[string]string{"detour.io/inbound-port": "x"}, false)
	k.pod("plain", "db-1", "10.1.0.20", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled,
		redirect.AnnotationConfig: `{"mode": "tproxy"}`}, false)
	k.pod("plain", "other-1", "10.1.0.21", nil, false)
	// ipFamilies dual on a single-stack pod: its rules would capture a family
	// the pod has no address of. Not served.
	k.pod("shop", "dual-1", "fd00::14", map[string]string{redirect.AnnotationConfig: `{"ipFamilies": "dual"}`}, false)
	// DNS capture: served, with a DNS listener.
	k.pod("shop", "dns-1", "10.1.0.15", map[string]string{redirect.AnnotationConfig: `{"dns": {"capture": "all"}}`}, false)

	src, err := New(Options{Client: k.c, Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sink := newMeshSink()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, sink) }()

	m := sink.waitMesh(t, "web-1 and db-1", func(m *controlplane.Mesh) bool {
		return slices.Contains(workloadIDs(m), "web-1.shop") && slices.Contains(workloadIDs(m), "db-1.plain")
	})
	// Other tests share the API server: look at this test's namespaces only.
	var got []string
	for _, id := range workloadIDs(m) {
		if strings.HasSuffix(id, ".shop") || strings.HasSuffix(id, ".plain") {
			got = append(got, id)
		}
	}
	if want := []string{"db-1.plain", "dns-1.shop", "web-1.shop"}; !slices.Equal(got, want) {
		t.Errorf("workloads %v, want %v (opt-out, host network and invalid pods are not served)", got, want)
	}
	// The pods left out are reported with the field and value at fault.
	excluded := map[string]string{}
	for _, e := range m.Excluded {
		excluded[e.NodeID] = e.Reason
	}
	for id, want := range map[string]string{
		"bad-1.shop":  `inbound-port`,
		"dual-1.shop": `transparentProxy.ipFamilies: "dual" needs an IPv4 address`,
	} {
		if !strings.Contains(excluded[id], want) {
			t.Errorf("excluded %s: reason %q, want it to contain %q", id, excluded[id], want)
		}
	}
	web, _ := m.Workload("web-1.shop")
	wantTP, err := redirect.FromAnnotations(redirect.Default(), map[string]string{"detour.io/exclude-outbound-ports": "22,2222"})
	if err != nil {
		t.Fatal(err)
	}
	want := controlplane.Workload{
		NodeID:    "web-1.shop",
		Addresses: []netip.Addr{netip.MustParseAddr("10.1.0.10")},
		Labels:    map[string]string{"app": "web-1"},
		Inbound: []controlplane.InboundPort{
			{Port: 8080, AppPort: 8080, Protocol: controlplane.ProtocolHTTP},
			{Port: 9090, AppPort: 9090, Protocol: controlplane.ProtocolTCP},
		},
		Reach:            []string{controlplane.ReachAll},
		TransparentProxy: wantTP,
	}
	if diff := cmp.Diff(want, web, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("web-1 (-want +got):\n%s", diff)
	}
	if db, _ := m.Workload("db-1.plain"); db.TransparentProxy.Mode != redirect.ModeTProxy {
		t.Errorf("db-1's detour.io/config was not applied: mode %s", db.TransparentProxy.Mode)
	}
	backend, ok := findService(m, "backend.shop")
	if !ok {
		t.Fatalf("no service backend.shop in %+v", m.Services)
	}
	// The pod that captures DNS gets a DNS listener answering the services
	// as <name>.<namespace>.mesh.
	dnsRes, err := m.Resources("dns-1.shop")
	if err != nil {
		t.Fatalf("resources of dns-1.shop: %v", err)
	}
	dnsYAML, err := dnsRes.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dnsYAML), "name: "+controlplane.ListenerDNS+"\n") || !strings.Contains(string(dnsYAML), "name: backend.shop.mesh\n") {
		t.Errorf("dns-1.shop has no DNS listener answering backend.shop.mesh:\n%s", dnsYAML)
	}
	wantSvc := controlplane.Service{
		Name:       "backend.shop",
		VirtualIPs: []netip.Addr{netip.MustParseAddr("10.0.0.80")},
		Ports:      []controlplane.ServicePort{{Name: "http", Port: 80, TargetPort: 80, Protocol: controlplane.ProtocolHTTP}},
		Endpoints: []controlplane.Endpoint{
			{Address: netip.MustParseAddr("10.1.0.1"), TargetPorts: map[string]uint16{"http": 8080}},
			{Address: netip.MustParseAddr("10.1.0.2"), TargetPorts: map[string]uint16{"http": 8080}},
		},
	}
	if diff := cmp.Diff(wantSvc, backend, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("backend.shop (-want +got):\n%s", diff)
	}
	if _, ok := findService(m, "headless.plain"); ok {
		t.Error("a headless service has no virtual IP and must not be served")
	}
	// The mesh serves: web-1's proxy gets a listener for the VIP and a cluster
	// with the ready endpoints on the slice's resolved port.
	r, err := m.Resources("web-1.shop")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range r.Listeners {
		names = append(names, l.GetName())
	}
	if !slices.Contains(names, "10.0.0.80:80") {
		t.Errorf("web-1's listeners %v lack 10.0.0.80:80", names)
	}

	// Changes follow: an endpoint becomes ready, a pod goes away, a namespace
	// opts in.
	k.endpointSlice("shop", "backend", "backend-a", 8080, "http", map[string]bool{"10.1.0.1": true, "10.1.0.2": true, "10.1.0.3": true})
	sink.waitMesh(t, "three backend endpoints", func(m *controlplane.Mesh) bool {
		s, _ := findService(m, "backend.shop")
		return len(s.Endpoints) == 3
	})
	if err := k.c.CoreV1().Pods("plain").Delete(ctx, "db-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	sink.waitMesh(t, "db-1 gone", func(m *controlplane.Mesh) bool { return !slices.Contains(workloadIDs(m), "db-1.plain") })
	ns, err := k.c.CoreV1().Namespaces().Get(ctx, "plain", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}
	if _, err := k.c.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.waitMesh(t, "other-1 opted in by its namespace", func(m *controlplane.Mesh) bool {
		return slices.Contains(workloadIDs(m), "other-1.plain")
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestDNSUpstreamOfNoFamilyOfThePod: a pod capturing DNS that can reach none
// of --dns-upstream (IPv4 upstreams, an IPv6-only pod) is left out with the
// reason; the others are served.
func TestDNSUpstreamOfNoFamilyOfThePod(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := &cluster{t: t, c: apiServer(t), ctx: ctx}
	k.namespace("dnsfam", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled})
	capture := map[string]string{redirect.AnnotationConfig: `{"dns": {"capture": "all"}}`}
	k.pod("dnsfam", "v4-1", "10.1.0.16", capture, false)
	k.pod("dnsfam", "v6-1", "fd00::16", capture, false)
	k.pod("dnsfam", "v6-2", "fd00::17", nil, false) // no DNS capture: served

	src, err := New(Options{Client: k.c, Debounce: 20 * time.Millisecond,
		DNS: controlplane.DNS{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}}})
	if err != nil {
		t.Fatal(err)
	}
	sink := newMeshSink()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, sink) }()
	m := sink.waitMesh(t, "v4-1 and v6-2", func(m *controlplane.Mesh) bool {
		return slices.Contains(workloadIDs(m), "v4-1.dnsfam") && slices.Contains(workloadIDs(m), "v6-2.dnsfam")
	})
	if slices.Contains(workloadIDs(m), "v6-1.dnsfam") {
		t.Errorf("v6-1.dnsfam is served, though it reaches no upstream")
	}
	var reason string
	for _, e := range m.Excluded {
		if e.NodeID == "v6-1.dnsfam" {
			reason = e.Reason
		}
	}
	if want := `dns.upstreams: "192.0.2.53:53" has no upstream workloads[0] (v6-1.dnsfam) can reach: it reaches IPv6 only`; !strings.Contains(reason, want) {
		t.Errorf("v6-1.dnsfam excluded with %q, want it to contain %q", reason, want)
	}
	cancel()
	<-done
}

// TestReplicasServeTheSameVersions runs two control planes on one API server:
// both serve a pod the same versions, before and after a change.
func TestReplicasServeTheSameVersions(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := &cluster{t: t, c: apiServer(t), ctx: ctx}
	k.namespace("replicas", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled})
	k.service("replicas", "api", "10.0.0.90", corev1.ServicePort{Name: "grpc", Port: 9000})
	k.endpointSlice("replicas", "api", "api-a", 9000, "grpc", map[string]bool{"10.2.0.1": true})
	k.pod("replicas", "client-1", "10.2.0.10", nil, false, corev1.ContainerPort{ContainerPort: 7000})

	var servers []*controlplane.Server
	for range 2 {
		srv := controlplane.NewServer(xds.Options{})
		src, err := New(Options{Client: k.c, Namespace: "replicas", Debounce: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx, srv) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("source: %v", err)
			}
		})
		t.Cleanup(func() { srv.Stop() })
		servers = append(servers, srv)
	}
	const node = "client-1.replicas"
	agree := func(what string, cond func(v xds.Versions) bool) xds.Versions {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			a, okA := servers[0].Versions(node)
			b, okB := servers[1].Versions(node)
			if okA && okB && a == b && cond(a) {
				return a
			}
			if time.Now().After(deadline) {
				t.Fatalf("replicas do not agree on %s: %v %v / %v %v", what, a, okA, b, okB)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	first := agree("the first mesh", func(xds.Versions) bool { return true })
	k.endpointSlice("replicas", "api", "api-a", 9000, "grpc", map[string]bool{"10.2.0.1": true, "10.2.0.2": true})
	second := agree("the new endpoint", func(v xds.Versions) bool { return v.Clusters != first.Clusters })
	if second.Listeners != first.Listeners {
		t.Errorf("an endpoint change changed the listeners: %v → %v", first, second)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	if _, err := New(Options{}); err == nil {
		t.Error("New without a client succeeded")
	}
	bad := redirect.Default()
	bad.Proxy.InboundPort = bad.Proxy.OutboundPort
	if _, err := New(Options{Client: &kubernetes.Clientset{}, Base: &bad}); err == nil {
		t.Error("New with an invalid base config succeeded")
	}
	dns := redirect.Default()
	dns.DNS.Capture = redirect.DNSCaptureAll
	if _, err := New(Options{Client: &kubernetes.Clientset{}, Base: &dns}); err != nil {
		t.Errorf("New with a base config capturing DNS: %v; DNS is served", err)
	}
	// <service>.<namespace>.<suffix>: 63 + 1 + 63 + 1 + 126 is over DNS's
	// 253; such a suffix would refuse the whole mesh for one long name.
	long := strings.Repeat("s", 61) + "." + strings.Repeat("s", 63)
	if _, err := New(Options{Client: &kubernetes.Clientset{}, DNS: controlplane.DNS{Suffix: long}}); err != nil {
		t.Errorf("New with a %d-character DNS suffix: %v", len(long), err)
	}
	if _, err := New(Options{Client: &kubernetes.Clientset{}, DNS: controlplane.DNS{Suffix: "s" + long}}); err == nil || !strings.Contains(err.Error(), `dns.suffix: "s`) ||
		!strings.Contains(err.Error(), "is longer than 125 characters") {
		t.Errorf("New with a %d-character DNS suffix: %v, want an error naming dns.suffix", len(long)+1, err)
	}
	if _, err := New(Options{Client: &kubernetes.Clientset{}, DNS: controlplane.DNS{Suffix: "-mesh"}}); err == nil || !strings.Contains(err.Error(), `dns.suffix: "-mesh"`) {
		t.Errorf("New with DNS suffix -mesh: %v, want an error naming dns.suffix", err)
	}
	// An absolute suffix is the same suffix, as in a mesh file (dns.suffix:
	// mesh.); --dns-suffix mesh. was refused as "not a DNS name".
	if src, err := New(Options{Client: &kubernetes.Clientset{}, DNS: controlplane.DNS{Suffix: "mesh."}}); err != nil {
		t.Errorf("New with DNS suffix mesh.: %v", err)
	} else if src.o.DNS.Suffix != "mesh" {
		t.Errorf("New with DNS suffix mesh. answers under %q, want mesh", src.o.DNS.Suffix)
	}
	// "." is no suffix at all, not the default one.
	if _, err := New(Options{Client: &kubernetes.Clientset{}, DNS: controlplane.DNS{Suffix: "."}}); err == nil || !strings.Contains(err.Error(), `dns.suffix: "." is empty`) {
		t.Errorf("New with DNS suffix .: %v, want an error naming dns.suffix", err)
	}
	if _, err := New(Options{Client: &kubernetes.Clientset{}, OutboundPolicy: "deny"}); err == nil {
		t.Error("New with an unknown outbound policy succeeded")
	}
	// A namespace no object can be in watched nothing, forever, and said
	// nothing (--namespace Shop_1).
	for _, ns := range []string{"Shop_1", "shop.a", "-shop", strings.Repeat("n", 64)} {
		_, err := New(Options{Client: &kubernetes.Clientset{}, Namespace: ns})
		if err == nil || !strings.Contains(err.Error(), `namespace: "`+ns+`" is not a namespace name`) || !errors.Is(err, redirect.ErrInvalid) {
			t.Errorf("New with namespace %q: %v, want an invalid-input error naming namespace", ns, err)
		}
	}
	if _, err := New(Options{Client: &kubernetes.Clientset{}, Namespace: "shop-1"}); err != nil {
		t.Errorf("New with namespace shop-1: %v", err)
	}
}

// TestUnreachableAPIServerIsLogged: while the API server cannot be reached
// (a wrong kubeconfig, the API down) the control plane is not ready, and its
// log says why, naming the resource and the error — it said nothing at all.
// No API server is started: the client points at a port nothing listens on.
func TestUnreachableAPIServerIsLogged(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: "https://" + addr, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	src, err := New(Options{Client: client, SyncReport: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, newMeshSink()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "kubernetes API unreachable") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line says the API server cannot be reached after 20 s; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if line := logs.String(); !strings.Contains(line, addr) || !strings.Contains(line, "resource=") {
		t.Errorf("the log line names neither the address nor the resource:\n%s", line)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEndpointTheMeshCannotServe: Kubernetes accepts a multicast address
// (239.1.2.3, ff05::1) in an EndpointSlice of a selectorless Service, which
// the mesh refuses as an endpoint. One such slice, in any namespace, made
// every mesh the source built invalid: the whole change was rejected, and
// no pod's config changed again until the slice was deleted. The address is
// left out; the rest of the service and the mesh are served.
func TestEndpointTheMeshCannotServe(t *testing.T) {
	t.Parallel()
	index := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, eps, pods, nss := index(), index(), index(), index()
	add := func(i cache.Indexer, obj any) {
		if err := i.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	add(svcs, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "feed"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.70", ClusterIPs: []string{"10.0.0.70"}, Ports: []corev1.ServicePort{{Port: 5000}}}})
	port := int32(5000)
	for _, s := range []struct {
		name string
		typ  discoveryv1.AddressType
		addr []string
	}{
		{"feed-v4", discoveryv1.AddressTypeIPv4, []string{"239.1.2.3", "192.0.2.70"}},
		{"feed-v6", discoveryv1.AddressTypeIPv6, []string{"ff05::1"}},
	} {
		add(eps, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: s.name, Labels: map[string]string{discoveryv1.LabelServiceName: "feed"}},
			AddressType: s.typ,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: s.addr}},
			Ports:       []discoveryv1.EndpointPort{{Port: &port}},
		})
	}
	src, err := New(Options{Client: &kubernetes.Clientset{}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := src.mesh(listers{
		services:   corelisters.NewServiceLister(svcs),
		slices:     discoverylisters.NewEndpointSliceLister(eps),
		pods:       corelisters.NewPodLister(pods),
		namespaces: corelisters.NewNamespaceLister(nss),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("the mesh built from the API is invalid (every change would be rejected): %v", err)
	}
	if len(m.Services) != 1 {
		t.Fatalf("services %+v, want feed.shop", m.Services)
	}
	var got []string
	for _, e := range m.Services[0].Endpoints {
		got = append(got, e.Address.String())
	}
	if !slices.Equal(got, []string{"192.0.2.70"}) {
		t.Errorf("feed.shop endpoints %v, want [192.0.2.70]", got)
	}
}
