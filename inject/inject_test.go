package inject_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/redirect"
)

func newInjector(t *testing.T, meshDoc string, sidecar meshconfig.Sidecar) *inject.Injector {
	t.Helper()
	mesh, err := meshconfig.Parse([]byte(meshDoc))
	if err != nil {
		t.Fatal(err)
	}
	in, err := inject.New(inject.Options{Mesh: mesh, Sidecar: sidecar, Bootstrap: webhook.Bootstrap})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func readInput(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "input", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// generic parses every document of a YAML stream, for semantic comparison.
func generic(t *testing.T, b []byte) []any {
	t.Helper()
	var out []any
	for _, doc := range strings.Split(string(b), "\n---") {
		var v any
		if err := yaml.Unmarshal([]byte(doc), &v); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		if v != nil {
			out = append(out, v)
		}
	}
	return out
}

func TestManifests(t *testing.T) {
	t.Parallel()
	kinds := []string{"deployment", "statefulset", "daemonset", "job", "cronjob", "pod", "list", "multidoc"}
	type tc struct {
		name, input, mesh string
		sidecar           meshconfig.Sidecar
	}
	var cases []tc
	for _, k := range kinds {
		cases = append(cases, tc{name: k, input: k, sidecar: meshconfig.SidecarNative})
	}
	cases = append(cases,
		tc{name: "deployment-classic", input: "deployment", sidecar: meshconfig.SidecarClassic},
		tc{name: "deployment-init-container", input: "deployment", sidecar: meshconfig.SidecarNative,
			mesh: "preset: istio\nredirect: {outbound: {excludePorts: [5432]}}\ninjection: {redirect: init-container, detourImage: registry.example/detour:v1}\n"},
		tc{name: "statefulset-validate-classic", input: "statefulset", sidecar: meshconfig.SidecarClassic,
			mesh: "injection: {validate: true, controlPlane: cp.example:15010, detourImage: registry.example/detour:v1}\n"},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in := newInjector(t, c.mesh, c.sidecar)
			src := readInput(t, c.input)
			var out bytes.Buffer
			if err := in.Manifests(bytes.NewReader(src), &out, ""); err != nil {
				t.Fatal(err)
			}
			golden.Check(t, golden.Path(t, c.name), out.Bytes())

			// Idempotent: injecting the output again changes nothing.
			var again bytes.Buffer
			if err := in.Manifests(bytes.NewReader(out.Bytes()), &again, ""); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(out.String(), again.String()); diff != "" {
				t.Errorf("a second injection changed the output (-first +second):\n%s", diff)
			}

			// --uninject gives back the input, semantically.
			var back bytes.Buffer
			if err := inject.UninjectManifests(bytes.NewReader(out.Bytes()), &back); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(generic(t, src), generic(t, back.Bytes())); diff != "" {
				t.Errorf("uninject does not restore the input (-input +uninjected):\n%s", diff)
			}
			// And uninjecting what is not injected changes nothing.
			var back2 bytes.Buffer
			if err := inject.UninjectManifests(bytes.NewReader(back.Bytes()), &back2); err != nil {
				t.Fatal(err)
			}
			if back.String() != back2.String() {
				t.Errorf("uninject of an uninjected manifest changed it")
			}
		})
	}
}

// TestManifestsLeaveSystemNamespaces: offline injection decides as the
// webhook does, which never injects pods of kube-system or detour-system. A
// workload's namespace is its metadata.namespace, else the one given (where
// kubectl apply -n puts it). Before 2026-12-05 every namespace was injected.
func TestManifestsLeaveSystemNamespaces(t *testing.T) {
	t.Parallel()
	workload := func(kind, ns string) string {
		meta := "{name: w}"
		if ns != "" {
			meta = "{name: w, namespace: " + ns + "}"
		}
		if kind == "Pod" {
			return "apiVersion: v1\nkind: Pod\nmetadata: " + meta + "\nspec:\n  containers: [{name: app, image: example.com/app:1}]\n"
		}
		return "apiVersion: apps/v1\nkind: " + kind + "\nmetadata: " + meta + "\nspec:\n  selector: {matchLabels: {app: w}}\n  template:\n    metadata: {labels: {app: w}}\n    spec:\n      containers: [{name: app, image: example.com/app:1}]\n"
	}
	list := func(items ...string) string {
		var b strings.Builder
		b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
		for _, it := range items {
			var v any
			if err := yaml.Unmarshal([]byte(it), &v); err != nil {
				t.Fatal(err)
			}
			j, _ := yaml.Marshal([]any{v})
			b.Write(j)
		}
		return b.String()
	}
	tests := []struct {
		name, input, namespace string
		injected               bool
	}{
		{"deployment in kube-system", workload("Deployment", "kube-system"), "", false},
		{"pod in detour-system", workload("Pod", "detour-system"), "", false},
		{"daemonset in kube-system", workload("DaemonSet", "kube-system"), "shop", false},
		{"no namespace, applied to kube-system", workload("Deployment", ""), "kube-system", false},
		{"no namespace, applied to detour-system", workload("Pod", ""), "detour-system", false},
		{"list item in kube-system", list(workload("Deployment", "kube-system")), "", false},
		{"list item without namespace, applied to kube-system", list(workload("Deployment", "")), "kube-system", false},
		{"metadata wins over the namespace given", workload("Deployment", "shop"), "kube-system", true},
		{"deployment in shop", workload("Deployment", "shop"), "", true},
		{"no namespace, not known", workload("Deployment", ""), "", true},
		{"a namespace named like one", workload("Pod", "kube-system-tools"), "", true},
	}
	in := newInjector(t, "", meshconfig.SidecarNative)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			if err := in.Manifests(strings.NewReader(tc.input), &out, tc.namespace); err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(out.String(), inject.ProxyName); got != tc.injected {
				t.Errorf("injected = %v, want %v:\n%s", got, tc.injected, out.String())
			}
			if !tc.injected {
				if diff := cmp.Diff(generic(t, []byte(tc.input)), generic(t, out.Bytes())); diff != "" {
					t.Errorf("a workload left alone changed (-input +output):\n%s", diff)
				}
			}
		})
	}
}

func pod(ann map[string]string) (metav1.ObjectMeta, corev1.PodSpec) {
	return metav1.ObjectMeta{Name: "p", Namespace: "shop", Annotations: ann},
		corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}}
}

func TestPlanRefusesBadAnnotations(t *testing.T) {
	t.Parallel()
	in := newInjector(t, "", meshconfig.SidecarNative)
	for _, c := range []struct {
		name string
		ann  map[string]string
		want []string // in the message: the annotation and the value
	}{
		{"bad port", map[string]string{"detour.io/exclude-outbound-ports": "5432,70000"}, []string{"detour.io/exclude-outbound-ports", "70000"}},
		{"unknown detour key", map[string]string{"detour.io/exclude-outbund-ports": "80"}, []string{"detour.io/exclude-outbund-ports", "80"}},
		{"unknown sidecar key", map[string]string{"sidecar.detour.io/proxy-cpus": "1"}, []string{"sidecar.detour.io/proxy-cpus", `"1"`}},
		{"bad cpu", map[string]string{inject.AnnotationProxyCPU: "lots"}, []string{inject.AnnotationProxyCPU, "lots"}},
		{"request above limit", map[string]string{inject.AnnotationProxyMemory: "2Gi"}, []string{inject.AnnotationProxyMemory, "2Gi", "limit 1Gi"}},
		{"bad image", map[string]string{inject.AnnotationProxyImage: "envoy latest"}, []string{inject.AnnotationProxyImage, "envoy latest"}},
		{"redirect disabled", map[string]string{"detour.io/redirect": "disabled"}, []string{"detour.io/redirect", "disabled"}},
		{"bad config document", map[string]string{"detour.io/config": "proxy: {uid: -1}"}, []string{"detour.io/config", "proxy.uid", "-1"}},
		{"ready port only included", map[string]string{"detour.io/include-inbound-ports": "8080,15021"}, []string{"inbound.includePorts", "15021"}},
		{"empty include list", map[string]string{"detour.io/include-outbound-cidrs": ""}, []string{`detour.io/include-outbound-cidrs ""`, "would capture every destination"}},
		{"node file", map[string]string{"detour.io/dns-resolv-conf": "/etc/shadow"}, []string{"detour.io/dns-resolv-conf", "/etc/shadow"}},
		{"inbound port on the admin port", map[string]string{"detour.io/inbound-port": "15000"}, []string{"admin-address", "15000", "proxy.inboundPort"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			meta, spec := pod(c.ann)
			_, err := in.Plan(meta, spec)
			if err == nil {
				t.Fatalf("annotations %v were accepted", c.ann)
			}
			if !errors.Is(err, redirect.ErrInvalid) {
				t.Errorf("error %v does not match redirect.ErrInvalid", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestPlanRefusesAppOnProxyPort: an app container that declares one of the
// sidecar's TCP ports would fight Envoy for it in the pod's one network
// namespace; the pod is refused naming the container and the port.
func TestPlanRefusesAppOnProxyPort(t *testing.T) {
	t.Parallel()
	in := newInjector(t, "", meshconfig.SidecarNative)
	for _, port := range []int32{15001, 15006, 15000, 15021} {
		meta, spec := pod(nil)
		spec.Containers = append(spec.Containers, corev1.Container{Name: "web", Image: "x", Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: port}}})
		_, err := in.Plan(meta, spec)
		want := fmt.Sprintf(`spec.containers[1].ports[1].containerPort: "%d" is a port of the sidecar`, port)
		if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("app on port %d: Plan = %v, want an error containing %q", port, err, want)
		}
	}
	// UDP, or a port the sidecar does not use, is fine.
	meta, spec := pod(nil)
	spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 15001, Protocol: corev1.ProtocolUDP}, {ContainerPort: 15002}, {ContainerPort: 15053, Protocol: corev1.ProtocolUDP}}
	if _, err := in.Plan(meta, spec); err != nil {
		t.Errorf("app on UDP 15001 and 15053 and TCP 15002 without DNS capture: %v", err)
	}
	// A pod that captures DNS has Envoy's DNS listener on UDP dns.port: an app
	// declaring it would fight Envoy for it (and could take the captured
	// queries).
	meta, spec = pod(map[string]string{"detour.io/dns-capture": "all", "detour.io/dns-port": "15054"})
	spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 15053, Protocol: corev1.ProtocolUDP}, {ContainerPort: 15054, Protocol: corev1.ProtocolUDP}}
	_, err := in.Plan(meta, spec)
	want := `spec.containers[0].ports[1].containerPort: "15054" is a port of the sidecar (container app; the proxy's DNS port is 15054/UDP)`
	if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Errorf("app on the DNS port: Plan = %v, want an error containing %q", err, want)
	}
	// TCP on the DNS port is not the DNS listener's (TCP queries follow the
	// outbound rules).
	spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 15054}}
	if _, err := in.Plan(meta, spec); err != nil {
		t.Errorf("app on TCP 15054 with DNS capture on 15054: %v", err)
	}
}

// TestPlanRefusesAppAsProxyUID: the rules never capture the proxy's uid (nor
// its gid, when set), so an app container running as it would bypass the mesh
// with nothing to show for it. Such a pod is refused, naming the field and the
// value; an init container may run as it (the documented way to let it reach
// the network before Envoy), and other uids are fine.
func TestPlanRefusesAppAsProxyUID(t *testing.T) {
	t.Parallel()
	in := newInjector(t, "", meshconfig.SidecarNative)
	uid := func(v int64) *int64 { return &v }
	for _, c := range []struct {
		name string
		ann  map[string]string
		edit func(*corev1.PodSpec)
		want []string
	}{
		{"container runAsUser", nil, func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: uid(5678)}
		}, []string{`spec.containers[0].securityContext.runAsUser: "5678"`, "container app", "proxy.uid"}},
		{"pod runAsUser", nil, func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{RunAsUser: uid(5678)}
		}, []string{`spec.securityContext.runAsUser: "5678"`, "container app", "proxy.uid"}},
		{"annotated proxy uid", map[string]string{"detour.io/proxy-uid": "1000"}, func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{RunAsUser: uid(1000)}
		}, []string{`spec.securityContext.runAsUser: "1000"`, "proxy.uid"}},
		{"second container", nil, func(s *corev1.PodSpec) {
			s.Containers = append(s.Containers, corev1.Container{Name: "log", Image: "x", SecurityContext: &corev1.SecurityContext{RunAsUser: uid(5678)}})
		}, []string{`spec.containers[1].securityContext.runAsUser: "5678"`, "container log"}},
		{"restartable init container", nil, func(s *corev1.PodSpec) {
			always := corev1.ContainerRestartPolicyAlways
			s.InitContainers = []corev1.Container{{Name: "shipper", Image: "x", RestartPolicy: &always, SecurityContext: &corev1.SecurityContext{RunAsUser: uid(5678)}}}
		}, []string{`spec.initContainers[0].securityContext.runAsUser: "5678"`, "container shipper"}},
		{"proxy gid", map[string]string{"detour.io/proxy-gid": "5679"}, func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: uid(1000), RunAsGroup: uid(5679)}
		}, []string{`spec.containers[0].securityContext.runAsGroup: "5679"`, "proxy.gid"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			meta, spec := pod(c.ann)
			c.edit(&spec)
			_, err := in.Plan(meta, spec)
			if !errors.Is(err, redirect.ErrInvalid) {
				t.Fatalf("Plan = %v, want a refusal matching redirect.ErrInvalid", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	for _, c := range []struct {
		name string
		edit func(*corev1.PodSpec)
	}{
		{"init container as the proxy uid", func(s *corev1.PodSpec) {
			s.InitContainers = []corev1.Container{{Name: "migrate", Image: "x", SecurityContext: &corev1.SecurityContext{RunAsUser: uid(5678)}}}
		}},
		{"container overrides the pod's uid", func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{RunAsUser: uid(5678)}
			s.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: uid(1000)}
		}},
		{"gid of the proxy uid without proxy.gid", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: uid(1000), RunAsGroup: uid(5678)}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			meta, spec := pod(nil)
			c.edit(&spec)
			if _, err := in.Plan(meta, spec); err != nil {
				t.Errorf("Plan: %v", err)
			}
		})
	}
}

// injectedAnnotations injects pod(ann) and returns the mutation and the
// annotations the injected pod carries (its own, then the injector's).
func injectedAnnotations(t *testing.T, in *inject.Injector, ann map[string]string) (*inject.Mutation, map[string]string) {
	t.Helper()
	meta, spec := pod(ann)
	m, err := in.Plan(meta, spec)
	if err != nil {
		t.Fatal(err)
	}
	out := maps.Clone(meta.Annotations)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, m.Annotations)
	return m, out
}

// TestInjectedConfigOutlivesTheBase: the CNI plugin (at the pod's ADD) and
// the control plane (on every change, and after a restart) derive an injected
// pod's redirect config from its annotations over the base they read then. An
// edit of the mesh-wide ConfigMap followed by the documented control plane
// restart must not move the ports of pods already running: the sidecar's
// bootstrap and the pod's rules keep the config it was injected with. So the
// annotations of an injected pod give that config whatever the base.
func TestInjectedConfigOutlivesTheBase(t *testing.T) {
	t.Parallel()
	const atInjection = "redirect: {outbound: {excludePorts: [5432]}}"
	in := newInjector(t, atInjection, meshconfig.SidecarNative)
	m, ann := injectedAnnotations(t, in, map[string]string{"detour.io/exclude-outbound-uids": "33", "detour.io/mode": "tproxy"})
	want, err := json.Marshal(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, mesh string }{
		{"the base at injection", atInjection},
		{"a later base", "preset: istio\nredirect: {proxy: {outboundPort: 15002}, ipFamilies: ipv4, dns: {capture: all}}"},
	} {
		mesh, err := meshconfig.Parse([]byte(c.mesh))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := redirect.FromAnnotations(mesh.Base(), ann)
		if err != nil {
			t.Fatalf("%s: the injected annotations do not decode: %v", c.name, err)
		}
		got, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("over %s, the injected pod's annotations give another config than it was injected with:\ninjected: %s\nderived:  %s", c.name, want, got)
		}
	}
}

// The node decides its backend, eBPF options, rule logging and the file DNS
// capture reads (the CNI plugin's config there): the pin must not carry the
// mesh-wide base's values of those over it, or an injected pod on a node
// configured for nftables would get the mesh's "auto", and one whose node
// names another resolv.conf would fail its ADD (a pod may not name node
// files). A value the pod itself asked for stays pinned.
func TestPinLeavesNodeSettingsToTheNode(t *testing.T) {
	t.Parallel()
	node, err := meshconfig.Parse([]byte("redirect: {backend: nftables, log: {enabled: true}, dns: {resolvConf: /etc/cluster-dns.conf}}"))
	if err != nil {
		t.Fatal(err)
	}
	in := newInjector(t, "redirect: {outbound: {excludePorts: [5432]}}", meshconfig.SidecarNative)
	for _, c := range []struct {
		name        string
		ann         map[string]string
		wantBackend redirect.Backend
	}{
		{"the node's backend", nil, redirect.BackendNFTables},
		{"the pod's own document", map[string]string{redirect.AnnotationConfig: "backend: iptables-nft"}, redirect.BackendIPTablesNFT},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, ann := injectedAnnotations(t, in, c.ann)
			cfg, err := redirect.FromAnnotations(node.Base(), ann)
			if err != nil {
				t.Fatalf("the injected annotations do not decode over the node's config: %v", err)
			}
			if cfg.Backend != c.wantBackend {
				t.Errorf("backend = %q, want %q", cfg.Backend, c.wantBackend)
			}
			if cfg.DNS.ResolvConf != "/etc/cluster-dns.conf" || !cfg.Log.Enabled {
				t.Errorf("dns.resolvConf = %q, log.enabled = %v: want the node's /etc/cluster-dns.conf and true", cfg.DNS.ResolvConf, cfg.Log.Enabled)
			}
			if cfg.Proxy != m.Config.Proxy || !slices.Equal(cfg.Outbound.ExcludePorts, m.Config.Outbound.ExcludePorts) {
				t.Errorf("proxy %+v, outbound.excludePorts %v: want the injected %+v, %v", cfg.Proxy, cfg.Outbound.ExcludePorts, m.Config.Proxy, m.Config.Outbound.ExcludePorts)
			}
		})
	}
}

func TestWanted(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		namespace string
		ann       map[string]string
		host      bool
		os        corev1.OSName
		nsOptedIn bool
		want      bool
		err       string
	}{
		{name: "labelled namespace", namespace: "shop", nsOptedIn: true, want: true},
		{name: "unlabelled namespace", namespace: "shop"},
		{name: "pod annotation", namespace: "shop", ann: map[string]string{"detour.io/inject": "enabled"}, want: true},
		{name: "opted out", namespace: "shop", nsOptedIn: true, ann: map[string]string{"detour.io/inject": "disabled"}},
		{name: "host network", namespace: "shop", nsOptedIn: true, host: true},
		{name: "windows", namespace: "shop", nsOptedIn: true, os: corev1.Windows},
		{name: "windows asking", namespace: "shop", ann: map[string]string{"detour.io/inject": "enabled"}, os: corev1.Windows},
		{name: "linux", namespace: "shop", nsOptedIn: true, os: corev1.Linux, want: true},
		{name: "already injected", namespace: "shop", nsOptedIn: true, ann: map[string]string{inject.AnnotationStatus: "{}"}},
		{name: "kube-system", namespace: "kube-system", nsOptedIn: true, ann: map[string]string{"detour.io/inject": "enabled"}},
		{name: "detour-system", namespace: "detour-system", nsOptedIn: true},
		{name: "typo", namespace: "shop", ann: map[string]string{"detour.io/inject": "yes"}, err: `annotation detour.io/inject: "yes"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			spec := corev1.PodSpec{HostNetwork: c.host}
			if c.os != "" {
				spec.OS = &corev1.PodOS{Name: c.os}
			}
			got, _, err := inject.Wanted(c.namespace, metav1.ObjectMeta{Annotations: c.ann}, spec, c.nsOptedIn)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("Wanted = %v, %v; want %v", got, err, c.want)
			}
		})
	}
}

// TestInjectedPod checks an injected pod as a user would: the sidecar's uid is
// the config's proxy uid, its bootstrap validates deeply and points at the
// control plane, the admin/ready ports are excluded from inbound capture, and
// the native sidecar starts before the app's init containers.
func TestInjectedPod(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, mesh string
		ann        map[string]string
		uid        uint32
		cp         string
		// ready is the ready listener's address: the kubelet probes the
		// pod's IP, an IPv6 one in an IPv6-only or IPv6-first cluster.
		ready string
	}{
		{name: "defaults", uid: 5678, cp: meshconfig.DefaultControlPlane, ready: "0.0.0.0"},
		{name: "istio preset", mesh: "preset: istio\ninjection: {controlPlane: 'xds.example:18000'}", uid: 1337, cp: "xds.example:18000", ready: "0.0.0.0"},
		{name: "uid annotation", ann: map[string]string{"detour.io/proxy-uid": "4242"}, uid: 4242, cp: meshconfig.DefaultControlPlane, ready: "0.0.0.0"},
		{name: "ipv6 pod", ann: map[string]string{"detour.io/ip-families": "ipv6"}, uid: 5678, cp: meshconfig.DefaultControlPlane, ready: "::"},
		{name: "dual-stack pod", ann: map[string]string{"detour.io/ip-families": "dual"}, uid: 5678, cp: meshconfig.DefaultControlPlane, ready: "::"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			mesh, err := meshconfig.Parse([]byte(c.mesh))
			if err != nil {
				t.Fatal(err)
			}
			in := newInjector(t, c.mesh, meshconfig.SidecarNative)
			meta, spec := pod(c.ann)
			spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "x"}}
			m, err := in.Plan(meta, spec)
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.Typed(corev1.PodTemplateSpec{ObjectMeta: meta, Spec: spec})
			if err != nil {
				t.Fatal(err)
			}
			ics := out.Spec.InitContainers
			if len(ics) != 2 || ics[0].Name != inject.ProxyName || ics[1].Name != "migrate" {
				t.Fatalf("init containers %v: want the proxy first, then the app's", names(ics))
			}
			proxy := ics[0]
			if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("proxy restartPolicy %v, want Always (native sidecar)", proxy.RestartPolicy)
			}
			if sc := proxy.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != int64(c.uid) {
				t.Errorf("proxy runs as %v, want uid %d", proxy.SecurityContext, c.uid)
			}
			// The CNI plugin decodes the same annotations: its config must agree.
			cfg, err := redirect.FromAnnotations(mesh.Base(), out.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Proxy.UID != c.uid {
				t.Errorf("the plugin would exclude uid %d, the proxy runs as %d", cfg.Proxy.UID, c.uid)
			}
			for _, p := range []uint16{mesh.Injection.AdminPort, mesh.Injection.ReadyPort} {
				if !containsPort(cfg.Inbound.ExcludePorts, p) {
					t.Errorf("inbound.excludePorts %v lacks the sidecar's port %d", cfg.Inbound.ExcludePorts, p)
				}
			}
			if out.Annotations["detour.io/redirect"] != "enabled" {
				t.Errorf("annotations %v: the plugin is not asked to redirect", out.Annotations)
			}

			b := bootstrapOf(t, proxy)
			if err := controlplane.ValidateResource(b); err != nil {
				t.Errorf("bootstrap does not validate: %v", err)
			}
			if got := b.GetNode().GetId(); got != "web-1.shop" {
				t.Errorf("node id %q after the kubelet's expansion, want web-1.shop (the control plane's <name>.<namespace>)", got)
			}
			sa := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if got := sa.GetAddress() + ":" + itoa(sa.GetPortValue()); got != c.cp {
				t.Errorf("bootstrap's xds cluster dials %s, want the control plane %s", got, c.cp)
			}
			md := b.GetNode().GetMetadata().GetFields()
			if got := md[controlplane.MetadataProxyUID].GetStringValue(); got != itoa(c.uid) {
				t.Errorf("bootstrap metadata proxy uid %q, want %d", got, c.uid)
			}
			var readyListener bool
			for _, l := range b.GetStaticResources().GetListeners() {
				if sa := l.GetAddress().GetSocketAddress(); sa.GetPortValue() == uint32(mesh.Injection.ReadyPort) {
					readyListener = true
					// "::" must take IPv4 too: a dual-stack pod's podIP,
					// which the kubelet probes, may be either family.
					if sa.GetAddress() != c.ready || sa.GetIpv4Compat() != (c.ready == "::") {
						t.Errorf("ready listener on %s (ipv4_compat %v), want %s the kubelet can reach", sa.GetAddress(), sa.GetIpv4Compat(), c.ready)
					}
				}
			}
			if !readyListener {
				t.Errorf("bootstrap has no listener on the ready port %d the probes use", mesh.Injection.ReadyPort)
			}
			if proxy.ReadinessProbe.HTTPGet.Port.IntValue() != int(mesh.Injection.ReadyPort) || proxy.StartupProbe == nil {
				t.Errorf("probes %+v do not use the ready port", proxy.ReadinessProbe)
			}
		})
	}
}

func bootstrapOf(t *testing.T, c corev1.Container) *bootstrapv3.Bootstrap {
	t.Helper()
	var doc string
	for i, a := range c.Args {
		if a == "--config-yaml" && i+1 < len(c.Args) {
			doc = c.Args[i+1]
		}
	}
	if doc == "" {
		t.Fatalf("proxy args %v have no --config-yaml", c.Args)
	}
	// What the kubelet does with $(VAR) from the container's env.
	env := map[string]string{}
	for _, e := range c.Env {
		switch e.ValueFrom.FieldRef.FieldPath {
		case "metadata.name":
			env[e.Name] = "web-1"
		case "metadata.namespace":
			env[e.Name] = "shop"
		}
	}
	for k, v := range env {
		doc = strings.ReplaceAll(doc, "$("+k+")", v)
	}
	if strings.Contains(doc, "$(") {
		t.Fatalf("bootstrap keeps an unexpanded variable: %s", doc)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal([]byte(doc), &b); err != nil {
		t.Fatalf("bootstrap is not an Envoy bootstrap: %v", err)
	}
	return &b
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func containsPort(rs []redirect.PortRange, p uint16) bool {
	for _, r := range rs {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

func itoa[T ~uint32](v T) string { return strconv.FormatUint(uint64(v), 10) }

func TestSidecarFor(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		configured   meshconfig.Sidecar
		major, minor string
		want         meshconfig.Sidecar
		err          bool
	}{
		{meshconfig.SidecarAuto, "1", "29", meshconfig.SidecarNative, false},
		{meshconfig.SidecarAuto, "1", "37", meshconfig.SidecarNative, false},
		{meshconfig.SidecarAuto, "1", "28", meshconfig.SidecarClassic, false},
		{meshconfig.SidecarAuto, "1", "27+", meshconfig.SidecarClassic, false}, // GKE/EKS style minor
		{meshconfig.SidecarAuto, "1", "30+", meshconfig.SidecarNative, false},
		{meshconfig.SidecarClassic, "1", "37", meshconfig.SidecarClassic, false},
		{meshconfig.SidecarNative, "1", "20", meshconfig.SidecarNative, false},
		{meshconfig.SidecarAuto, "", "", "", true},
	} {
		got, err := inject.SidecarFor(c.configured, c.major, c.minor)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("SidecarFor(%s, %q, %q) = %s, %v; want %s (error %v)", c.configured, c.major, c.minor, got, err, c.want, c.err)
		}
	}
}

// TestAnnotationErrorsAreBounded: the injector's own annotations were quoted
// whole in a refusal (a 200 KB detour.io/inject value: a 200 KB admission
// message); the value is quoted as its first 200 bytes and its size.
func TestAnnotationErrorsAreBounded(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("y", 200_000)
	in := newInjector(t, "", meshconfig.SidecarNative)
	for _, key := range []string{inject.AnnotationInject, redirect.AnnotationRedirect, "sidecar.detour.io/proxy-cpu", "sidecar.detour.io/proxy-cpuz"} {
		meta := metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: map[string]string{key: huge}}
		spec := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}}
		_, _, err := inject.Wanted("shop", meta, spec, true)
		if err == nil {
			_, err = in.Plan(meta, spec)
		}
		if err == nil {
			t.Errorf("%s of 200,000 bytes accepted", key)
			continue
		}
		if msg := err.Error(); len(msg) > 1024 || !strings.Contains(msg, "… (200000 bytes)") {
			t.Errorf("%s: error of %d bytes (%.100q…), want the value's first bytes and its size", key, len(msg), msg)
		}
	}
}
