package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/kubeapi"
	"github.com/detour-mesh/detour/redirect"
)

// fakeNetworks is an in-memory stand-in for the redirect engine: what each
// network namespace holds, and the calls made.
type fakeNetworks struct {
	mu        sync.Mutex
	installed map[string]redirect.Config
	calls     []string
	// drift makes Check report drift; failInstall makes Install fail.
	drift, failInstall bool
	// passthroughRoute is RedirectorOptions.PassthroughRoute of each
	// Redirector made.
	passthroughRoute []bool
}

func (f *fakeNetworks) factory(o RedirectorOptions) Redirector {
	f.mu.Lock()
	f.passthroughRoute = append(f.passthroughRoute, o.PassthroughRoute)
	f.mu.Unlock()
	return fakeNS{f: f, netns: o.Netns}
}

func (f *fakeNetworks) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeNetworks) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

type fakeNS struct {
	f     *fakeNetworks
	netns string
}

func (n fakeNS) Install(_ context.Context, cfg redirect.Config) error {
	n.f.record("install " + n.netns)
	if n.f.failInstall {
		return errors.New("restore ipv4 nat table: exit status 1")
	}
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	if n.f.installed == nil {
		n.f.installed = map[string]redirect.Config{}
	}
	n.f.installed[n.netns] = cfg
	return nil
}

func (n fakeNS) Check(_ context.Context, cfg redirect.Config) error {
	n.f.record("check " + n.netns)
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	got, ok := n.f.installed[n.netns]
	if !ok {
		return fmt.Errorf("%w: nothing is installed", ErrDrift)
	}
	if n.f.drift {
		return fmt.Errorf("%w:\n-A DETOUR_OUTPUT -j DETOUR_REDIRECT", ErrDrift)
	}
	if d := cmp.Diff(cfg, got, cmpNet); d != "" {
		return fmt.Errorf("%w:\n%s", ErrDrift, d)
	}
	return nil
}

func (n fakeNS) Uninstall(context.Context) error {
	n.f.record("uninstall " + n.netns)
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	delete(n.f.installed, n.netns)
	return nil
}

// env is one plugin under test with a fake API and fake engine.
type env struct {
	t        *testing.T
	p        *Plugin
	kube     *fakeKube
	net      *fakeNetworks
	stdout   bytes.Buffer
	stderr   bytes.Buffer
	stateDir string
	// kubeErr, when set, is returned instead of a client (kubeconfig missing).
	kubeErr error
	now     time.Time
}

// a network namespace path that exists without root
const testNetns = "/proc/self/ns/net"

func newEnv(t *testing.T, objs ...any) *env {
	t.Helper()
	e := &env{t: t, kube: newFakeKube(objs...), net: &fakeNetworks{}, stateDir: t.TempDir(), now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	e.p = New(Options{
		Stdout: &e.stdout,
		Stderr: &e.stderr,
		Kube: func(path string) (KubeClient, error) {
			if e.kubeErr != nil {
				return nil, e.kubeErr
			}
			return e.kube, nil
		},
		NewRedirector: e.net.factory,
		APIBackoff:    time.Millisecond,
		Now:           func() time.Time { return e.now },
	})
	return e
}

func (e *env) conf(cniVersion, prevResult string, extra map[string]any) []byte {
	e.t.Helper()
	m := map[string]any{
		"cniVersion": cniVersion,
		"name":       "k8s-pod-network",
		"type":       "detour-cni",
		"kubeconfig": "/nonexistent/kubeconfig", // the fake client ignores it
		"stateDir":   e.stateDir,
	}
	if prevResult != "" {
		m["prevResult"] = json.RawMessage(prevResult)
	}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func podArgs(ns, name string) string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name + ";K8S_POD_INFRA_CONTAINER_ID=abc"
}

func (e *env) args(containerID, podArgs string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: containerID, Netns: testNetns, IfName: "eth0", Args: podArgs, Path: "/opt/cni/bin", StdinData: conf}
}

func (e *env) state(containerID string) (State, bool) {
	e.t.Helper()
	st, err := newStateStore(e.stateDir, "k8s-pod-network").load(containerID, "eth0")
	if errors.Is(err, os.ErrNotExist) {
		return State{}, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return st, true
}

func pod(ns, name string, annotations map[string]string) *kubeapi.Pod {
	return &kubeapi.Pod{Metadata: kubeapi.ObjectMeta{Namespace: ns, Name: name, UID: "uid-" + name, Annotations: annotations}}
}

func namespace(name string, labels map[string]string) *kubeapi.Namespace {
	return &kubeapi.Namespace{Metadata: kubeapi.ObjectMeta{Name: name, Labels: labels}}
}

// fakeKube is an in-memory API server of pods and namespaces. Missing objects
// fail as the API server says it (404, `pods "NAME" not found`).
type fakeKube struct {
	mu         sync.Mutex
	pods       map[string]*kubeapi.Pod
	namespaces map[string]*kubeapi.Namespace
	actions    []string
	// podErr, when set, is asked before each pod read; a non-nil error is the
	// answer.
	podErr func() error
}

func newFakeKube(objs ...any) *fakeKube {
	f := &fakeKube{pods: map[string]*kubeapi.Pod{}, namespaces: map[string]*kubeapi.Namespace{}}
	for _, o := range objs {
		switch o := o.(type) {
		case *kubeapi.Pod:
			f.pods[o.Metadata.Namespace+"/"+o.Metadata.Name] = o
		case *kubeapi.Namespace:
			f.namespaces[o.Metadata.Name] = o
		default:
			panic(fmt.Sprintf("fakeKube: unknown object %T", o))
		}
	}
	return f
}

func (f *fakeKube) Pod(_ context.Context, ns, name string) (*kubeapi.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, "get pod "+ns+"/"+name)
	if f.podErr != nil {
		if err := f.podErr(); err != nil {
			return nil, err
		}
	}
	p, ok := f.pods[ns+"/"+name]
	if !ok {
		return nil, &kubeapi.StatusError{Code: 404, Reason: "NotFound", Message: fmt.Sprintf("pods %q not found", name)}
	}
	return p, nil
}

func (f *fakeKube) Namespace(_ context.Context, name string) (*kubeapi.Namespace, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, "get namespace "+name)
	n, ok := f.namespaces[name]
	if !ok {
		return nil, &kubeapi.StatusError{Code: 404, Reason: "NotFound", Message: fmt.Sprintf("namespaces %q not found", name)}
	}
	return n, nil
}

func (f *fakeKube) Actions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.actions)
}

var prevResults = map[string]string{
	"0.3.0": `{"cniVersion":"0.3.0","interfaces":[{"name":"cni0","mac":"0a:58:c6:33:64:01"},{"name":"eth0","mac":"0a:58:c6:33:64:05","sandbox":"/var/run/netns/cni-1"}],"ips":[{"version":"4","interface":1,"address":"198.51.100.5/24","gateway":"198.51.100.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}`,
	"0.3.1": `{"cniVersion":"0.3.1","interfaces":[{"name":"cni0","mac":"0a:58:c6:33:64:01"},{"name":"eth0","mac":"0a:58:c6:33:64:05","sandbox":"/var/run/netns/cni-1"}],"ips":[{"version":"4","interface":1,"address":"198.51.100.5/24","gateway":"198.51.100.1"},{"version":"6","interface":1,"address":"2001:db8::5/64","gateway":"2001:db8::1"}],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}],"dns":{"nameservers":["198.51.100.53"],"search":["svc.cluster.local"]}}`,
	"0.4.0": `{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","mac":"0a:58:c6:33:64:05","sandbox":"/var/run/netns/cni-1"}],"ips":[{"version":"4","interface":0,"address":"198.51.100.5/24","gateway":"198.51.100.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"198.51.100.1"}],"dns":{}}`,
	"1.0.0": `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"0a:58:c6:33:64:05","sandbox":"/var/run/netns/cni-1"}],"ips":[{"interface":0,"address":"198.51.100.5/24","gateway":"198.51.100.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["198.51.100.53"]}}`,
	"1.1.0": `{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"0a:58:c6:33:64:05","mtu":1450,"sandbox":"/var/run/netns/cni-1"}],"ips":[{"interface":0,"address":"198.51.100.5/24","gateway":"198.51.100.1"},{"interface":0,"address":"2001:db8::5/64"}],"routes":[{"dst":"0.0.0.0/0","gw":"198.51.100.1","mtu":1400,"priority":10,"table":100,"scope":0}],"dns":{}}`,
}

func TestAddPassesPrevResultThrough(t *testing.T) {
	t.Parallel()
	for _, v := range SupportedVersions().SupportedVersions() {
		for _, meshed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/meshed=%v", v, meshed), func(t *testing.T) {
				t.Parallel()
				ann := map[string]string{}
				if meshed {
					ann[redirect.AnnotationRedirect] = redirect.RedirectEnabled
				}
				e := newEnv(t, pod("shop", "cart", ann), namespace("shop", nil))
				prev := prevResults[v]
				if err := e.p.Add(e.args("c1", podArgs("shop", "cart"), e.conf(v, prev, nil))); err != nil {
					t.Fatal(err)
				}
				if got := e.stdout.String(); got != prev {
					t.Errorf("stdout is not the prevResult unchanged:\n got %s\nwant %s", got, prev)
				}
				if _, ok := e.net.installed[testNetns]; ok != meshed {
					t.Errorf("installed = %v, want %v", ok, meshed)
				}
			})
		}
	}
}

func TestAddWithoutPrevResultPrintsVersionedResult(t *testing.T) {
	t.Parallel()
	for _, v := range SupportedVersions().SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if err := e.p.Add(e.args("c1", "", e.conf(v, "", nil))); err != nil {
				t.Fatal(err)
			}
			var head struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(e.stdout.Bytes(), &head); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, e.stdout.String())
			}
			if head.CNIVersion != v {
				t.Errorf("cniVersion = %q, want %q", head.CNIVersion, v)
			}
			if _, err := version.NewResult(v, e.stdout.Bytes()); err != nil {
				t.Errorf("stdout is not a %s result: %v", v, err)
			}
		})
	}
}

func TestAddPrevResultWithoutVersionGetsOne(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	prev := `{"interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","interface":0,"address":"198.51.100.7/24"}]}`
	if err := e.p.Add(e.args("c1", "", e.conf("0.4.0", prev, nil))); err != nil {
		t.Fatal(err)
	}
	r, err := version.NewResult("0.4.0", e.stdout.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var head struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(e.stdout.Bytes(), &head); err != nil {
		t.Fatal(err)
	}
	if head.CNIVersion != "0.4.0" || len(head.IPs) != 1 || head.IPs[0].Address != "198.51.100.7/24" {
		t.Errorf("result %s (%v)", e.stdout.String(), r)
	}
}

func TestAddRejectsInvalidPrevResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	err := e.p.Add(e.args("c1", "", e.conf("1.0.0", `{"cniVersion":"1.0.0","ips":[{"address":"not-an-ip"}]}`, nil)))
	if ErrorCode(err) != types.ErrDecodingFailure {
		t.Fatalf("err = %v (code %d), want code %d", err, ErrorCode(err), types.ErrDecodingFailure)
	}
	if e.stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing (skel prints the error)", e.stdout.String())
	}
}

func TestAddDecides(t *testing.T) {
	t.Parallel()
	enabled := map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}
	meshNS := namespace("mesh", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled})
	plainNS := namespace("plain", nil)
	hostNet := pod("plain", "node-agent", enabled)
	hostNet.Spec.HostNetwork = true
	base := redirect.Default()
	withPorts := redirect.Default()
	withPorts.Outbound.ExcludePorts = []redirect.PortRange{{First: 5432, Last: 5432}, {First: 6379, Last: 6379}}

	tests := []struct {
		name     string
		objs     []any
		args     string
		conf     map[string]any
		wantCode uint   // 0 = success
		wantMsg  string // substring of the error
		want     *redirect.Config
		reason   string // substring of State.Reason
		apiCalls int    // -1 = do not check
	}{
		{name: "not a kubernetes pod", args: "", reason: "not a kubernetes pod", apiCalls: 0},
		{name: "pod annotation enabled", objs: []any{pod("plain", "web", enabled), plainNS}, args: podArgs("plain", "web"), want: &base, reason: "pod annotation", apiCalls: 1},
		{name: "namespace label enabled", objs: []any{pod("mesh", "web", nil), meshNS}, args: podArgs("mesh", "web"), want: &base, reason: "namespace label", apiCalls: 2},
		{name: "pod annotation disabled beats namespace label", objs: []any{pod("mesh", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectDisabled}), meshNS}, args: podArgs("mesh", "web"), reason: "not enabled", apiCalls: 1},
		{name: "no annotation and no label", objs: []any{pod("plain", "web", nil), plainNS}, args: podArgs("plain", "web"), reason: "not enabled", apiCalls: 2},
		{name: "host network pod", objs: []any{hostNet, plainNS}, args: podArgs("plain", "node-agent"), reason: "host network", apiCalls: 1},
		{name: "excluded namespace needs no api", objs: []any{pod("mesh", "web", enabled), meshNS}, args: podArgs("mesh", "web"), conf: map[string]any{"excludeNamespaces": []string{"kube-system", "mesh"}}, reason: "excluded", apiCalls: 0},
		{name: "short-form annotations", objs: []any{pod("plain", "db-client", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled, "detour.io/exclude-outbound-ports": "5432,6379"}), plainNS}, args: podArgs("plain", "db-client"), want: &withPorts, reason: "pod annotation", apiCalls: 1},
		{name: "preset from the plugin config", objs: []any{pod("plain", "web", enabled)}, args: podArgs("plain", "web"), conf: map[string]any{"preset": "istio", "config": map[string]any{"proxy": map[string]any{"inboundPort": 15106}}}, want: func() *redirect.Config {
			c, _ := redirect.Preset("istio")
			c.Proxy.InboundPort = 15106
			return &c
		}(), reason: "pod annotation", apiCalls: 1},
		{name: "config document as a YAML string", objs: []any{pod("plain", "web", enabled)}, args: podArgs("plain", "web"), conf: map[string]any{"config": "outbound:\n  excludePorts: [5432, 6379]\n"}, want: &withPorts, reason: "pod annotation", apiCalls: 1},
		{name: "typo in pod annotation fails", objs: []any{pod("plain", "web", map[string]string{redirect.AnnotationRedirect: "enable"}), plainNS}, args: podArgs("plain", "web"), wantCode: CodeInvalidAnnotation, wantMsg: `pod plain/web annotation: detour.io/redirect: "enable" is not enabled or disabled`, apiCalls: 1},
		{name: "typo in namespace label fails", objs: []any{pod("mesh", "web", nil), namespace("mesh", map[string]string{redirect.AnnotationRedirect: "on"})}, args: podArgs("mesh", "web"), wantCode: CodeInvalidAnnotation, wantMsg: `namespace mesh label: detour.io/redirect: "on" is not enabled or disabled`, apiCalls: 2},
		{name: "pod missing fails closed", objs: []any{plainNS}, args: podArgs("plain", "ghost"), wantCode: CodePodNotFound, wantMsg: `read pod plain/ghost: pods "ghost" not found`, apiCalls: 1},
		{name: "pod uid differs fails closed", objs: []any{pod("plain", "web", enabled)}, args: podArgs("plain", "web") + ";K8S_POD_UID=uid-older", wantCode: CodePodNotFound, wantMsg: "the api has uid uid-web, the runtime asked for uid uid-older", apiCalls: 1},
		{name: "namespace without pod name", args: "K8S_POD_NAMESPACE=plain", wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "without K8S_POD_NAME", apiCalls: 0},

		// The runtime passes the pod's annotations (the conflist entry
		// declares the capability): the pod is not read from the API.
		{name: "runtime annotations enabled", args: podArgs("plain", "web"), conf: fromRuntime(enabled), want: &base, reason: "pod annotation", apiCalls: 0},
		{name: "runtime annotations win over the api", objs: []any{pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectDisabled}), plainNS}, args: podArgs("plain", "web"), conf: fromRuntime(enabled), want: &base, reason: "pod annotation", apiCalls: 0},
		{name: "runtime annotations disabled", objs: []any{meshNS}, args: podArgs("mesh", "web"), conf: fromRuntime(map[string]string{redirect.AnnotationRedirect: redirect.RedirectDisabled}), reason: "not enabled", apiCalls: 0},
		{name: "runtime annotations short forms", args: podArgs("plain", "db-client"), conf: fromRuntime(map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled, "detour.io/exclude-outbound-ports": "5432,6379"}), want: &withPorts, reason: "pod annotation", apiCalls: 0},
		{name: "runtime annotations without ours read the namespace only", objs: []any{meshNS}, args: podArgs("mesh", "web"), conf: fromRuntime(nil), want: &base, reason: "namespace label", apiCalls: 1},
		{name: "runtime annotations without ours and no label", objs: []any{plainNS}, args: podArgs("plain", "web"), conf: fromRuntime(nil), reason: "not enabled", apiCalls: 1},
		{name: "runtime annotation typo fails", args: podArgs("plain", "web"), conf: fromRuntime(map[string]string{redirect.AnnotationRedirect: "on"}), wantCode: CodeInvalidAnnotation, wantMsg: `pod plain/web annotation: detour.io/redirect: "on" is not enabled or disabled`, apiCalls: 0},
		{name: "runtime annotation bad value fails", args: podArgs("plain", "web"), conf: fromRuntime(map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled, "detour.io/exclude-outbound-ports": "5432,70000"}), wantCode: CodeInvalidAnnotation, wantMsg: `annotation detour.io/exclude-outbound-ports "5432,70000"`, apiCalls: 0},
		{name: "empty runtime annotations read the pod", objs: []any{pod("plain", "web", enabled)}, args: podArgs("plain", "web"), conf: map[string]any{"runtimeConfig": map[string]any{CapabilityPodAnnotations: map[string]string{}}}, want: &base, reason: "pod annotation", apiCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tt.objs...)
			prev := prevResults["1.1.0"]
			err := e.p.Add(e.args("c1", tt.args, e.conf("1.1.0", prev, tt.conf)))
			if tt.apiCalls >= 0 {
				if got := len(e.kube.Actions()); got != tt.apiCalls {
					t.Errorf("api calls = %d, want %d: %v", got, tt.apiCalls, e.kube.Actions())
				}
			}
			if tt.wantCode != 0 {
				if ErrorCode(err) != tt.wantCode || !strings.Contains(fmt.Sprint(err), tt.wantMsg) {
					t.Fatalf("err = %v (code %d), want code %d containing %q", err, ErrorCode(err), tt.wantCode, tt.wantMsg)
				}
				if e.stdout.Len() != 0 {
					t.Errorf("stdout = %q after a failed ADD", e.stdout.String())
				}
				if len(e.net.Calls()) != 0 {
					t.Errorf("engine calls %v after a failed decision", e.net.Calls())
				}
				if _, ok := e.state("c1"); ok {
					t.Errorf("state recorded for a failed ADD")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.stdout.String() != prev {
				t.Errorf("stdout = %s, want the prevResult", e.stdout.String())
			}
			st, ok := e.state("c1")
			if !ok {
				t.Fatal("no state recorded")
			}
			if !strings.Contains(st.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to contain %q", st.Reason, tt.reason)
			}
			got, installed := e.net.installed[testNetns]
			if installed != (tt.want != nil) || st.Redirect != (tt.want != nil) {
				t.Fatalf("installed = %v, state.redirect = %v, want %v (calls %v)", installed, st.Redirect, tt.want != nil, e.net.Calls())
			}
			if tt.want != nil {
				if d := cmp.Diff(*tt.want, got, cmpNet); d != "" {
					t.Errorf("installed config (-want +got):\n%s", d)
				}
				if d := cmp.Diff(*tt.want, *st.Config, cmpNet); d != "" {
					t.Errorf("state config (-want +got):\n%s", d)
				}
			}
		})
	}
}

// fromRuntime is the runtimeConfig a runtime adds for a pod with these
// annotations when the conflist entry declares CapabilityPodAnnotations
// (kubelet adds its own to every pod).
func fromRuntime(annotations map[string]string) map[string]any {
	m := map[string]string{"kubernetes.io/config.seen": "2030-01-02T03:04:05.000000000Z", "kubernetes.io/config.source": "api"}
	for k, v := range annotations {
		m[k] = v
	}
	return map[string]any{"runtimeConfig": map[string]any{CapabilityPodAnnotations: m}}
}

// TestAddRuntimeAnnotationsNeedNoAPI: with the pod's annotations from the
// runtime, an opted-in pod is set up without the kubeconfig or the API; a pod
// whose annotations do not say still needs its namespace, and fails closed
// without the API.
func TestAddRuntimeAnnotationsNeedNoAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.kubeErr = errors.New("read kubeconfig: open /nonexistent/kubeconfig: no such file or directory")
	err := e.p.Add(e.args("c1", podArgs("plain", "web"), e.conf("1.1.0", "", fromRuntime(map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}))))
	if err != nil {
		t.Fatalf("ADD with the annotations from the runtime and no API: %v", err)
	}
	if _, ok := e.net.installed[testNetns]; !ok {
		t.Errorf("not installed (calls %v)", e.net.Calls())
	}
	if !strings.Contains(e.stderr.String(), `"annotations_from":"runtime"`) {
		t.Errorf("log does not say the annotations came from the runtime:\n%s", e.stderr.String())
	}
	err = e.p.Add(e.args("c2", podArgs("plain", "other"), e.conf("1.1.0", "", fromRuntime(nil))))
	if ErrorCode(err) != types.ErrTryAgainLater || !strings.Contains(fmt.Sprint(err), "read namespace plain") {
		t.Fatalf("ADD needing the namespace without the API: err = %v (code %d), want code %d naming the namespace read", err, ErrorCode(err), types.ErrTryAgainLater)
	}
	if _, ok := e.state("c2"); ok {
		t.Error("state recorded for a failed ADD")
	}
}

func TestAddRetriesTransientAPIErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		err      error
		failures int // then the real object is served
		wantCode uint
		wantGets int
	}{
		{name: "unavailable then ok", err: &kubeapi.StatusError{Code: 503, Reason: "ServiceUnavailable", Message: "etcd leader change"}, failures: 2, wantGets: 3},
		{name: "too many requests then ok", err: &kubeapi.StatusError{Code: 429, Reason: "TooManyRequests", Message: "slow down"}, failures: 1, wantGets: 2},
		{name: "unreachable every time fails closed", err: errors.New(`dial tcp 192.0.2.1:443: connect: connection refused`), failures: 100, wantCode: types.ErrTryAgainLater, wantGets: 5},
		{name: "forbidden is not retried", err: &kubeapi.StatusError{Code: 403, Reason: "Forbidden", Message: `pods "web" is forbidden: rbac`}, failures: 100, wantCode: CodeAPIDenied, wantGets: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}))
			var mu sync.Mutex
			gets := 0
			e.kube.podErr = func() error {
				mu.Lock()
				defer mu.Unlock()
				gets++
				if gets <= tt.failures {
					return tt.err
				}
				return nil
			}
			err := e.p.Add(e.args("c1", podArgs("plain", "web"), e.conf("1.1.0", "", nil)))
			if ErrorCode(err) != tt.wantCode {
				t.Fatalf("err = %v (code %d), want code %d", err, ErrorCode(err), tt.wantCode)
			}
			if gets != tt.wantGets {
				t.Errorf("pod reads = %d, want %d", gets, tt.wantGets)
			}
			if tt.wantCode == 0 {
				if _, ok := e.net.installed[testNetns]; !ok {
					t.Error("not installed after the API recovered")
				}
			} else if len(e.net.Calls()) != 0 {
				t.Errorf("engine calls %v after the API failed", e.net.Calls())
			}
		})
	}
}

func TestAddFailsClosedWithoutKubeconfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.p = New(Options{Stdout: &e.stdout, Stderr: &e.stderr, NewRedirector: e.net.factory})
	conf := e.conf("1.1.0", "", map[string]any{"kubeconfig": filepath.Join(t.TempDir(), "missing")})
	err := e.p.Add(e.args("c1", podArgs("plain", "web"), conf))
	if ErrorCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("err = %v (code %d), want code %d naming the kubeconfig", err, ErrorCode(err), types.ErrTryAgainLater)
	}
	if e.stdout.Len() != 0 || len(e.net.Calls()) != 0 {
		t.Errorf("stdout %q, engine calls %v after a failed ADD", e.stdout.String(), e.net.Calls())
	}
}

func TestAddInstallFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}))
	e.net.failInstall = true
	err := e.p.Add(e.args("c1", podArgs("plain", "web"), e.conf("1.1.0", "", nil)))
	if ErrorCode(err) != CodeInstall || !strings.Contains(err.Error(), "pod plain/web: restore ipv4 nat table") {
		t.Fatalf("err = %v (code %d), want code %d", err, ErrorCode(err), CodeInstall)
	}
	if _, ok := e.state("c1"); ok {
		t.Error("state kept after a failed install")
	}
	if e.stdout.Len() != 0 {
		t.Errorf("stdout = %q after a failed ADD", e.stdout.String())
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		pod      *kubeapi.Pod
		add      bool // run ADD first
		drift    bool
		wantCode uint
		wantMsg  string
		engine   []string // engine calls made by CHECK
	}{
		{name: "redirected and intact", pod: pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}), add: true, engine: []string{"check " + testNetns}},
		{name: "redirected with drift", pod: pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}), add: true, drift: true, wantCode: CodeDrift, wantMsg: "pod plain/web: installed redirection differs from the plan", engine: []string{"check " + testNetns}},
		{name: "skipped pod has nothing to verify", pod: pod("plain", "web", nil), add: true},
		{name: "no ADD recorded", pod: pod("plain", "web", nil), wantCode: types.ErrUnknownContainer, wantMsg: "no state recorded by ADD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tt.pod, namespace("plain", nil))
			conf := e.conf("1.1.0", prevResults["1.1.0"], nil)
			if tt.add {
				if err := e.p.Add(e.args("c1", podArgs("plain", "web"), conf)); err != nil {
					t.Fatal(err)
				}
			}
			before := len(e.net.Calls())
			e.stdout.Reset()
			e.net.drift = tt.drift
			err := e.p.Check(e.args("c1", podArgs("plain", "web"), conf))
			if ErrorCode(err) != tt.wantCode || (tt.wantCode != 0 && !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Fatalf("err = %v (code %d), want code %d containing %q", err, ErrorCode(err), tt.wantCode, tt.wantMsg)
			}
			if d := cmp.Diff(tt.engine, e.net.Calls()[before:], cmpEmpty); d != "" {
				t.Errorf("engine calls (-want +got):\n%s", d)
			}
			if e.stdout.Len() != 0 {
				t.Errorf("CHECK wrote %q to stdout", e.stdout.String())
			}
		})
	}
}

// TestPassthroughOnLo: ADD makes the passthrough source local with a route
// unless the plugin config says address, and records which; CHECK verifies
// what ADD made, also for a state an older detour-cni wrote (an address).
func TestPassthroughOnLo(t *testing.T) {
	t.Parallel()
	enabled := map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}
	tests := []struct {
		name      string
		extra     map[string]any
		oldState  bool // drop the state's passthroughRoute before CHECK
		wantRoute bool
	}{
		{name: "default", wantRoute: true},
		{name: "route", extra: map[string]any{"passthroughOnLo": "route"}, wantRoute: true},
		{name: "address", extra: map[string]any{"passthroughOnLo": "address"}},
		// An entry of istiod's or Kuma's users written before the key
		// existed keeps the address: their Envoy binds ::6 without freebind.
		{name: "preset istio without the key", extra: map[string]any{"preset": "istio"}},
		{name: "preset kuma without the key", extra: map[string]any{"preset": "kuma"}},
		{name: "preset istio, route", extra: map[string]any{"preset": "istio", "passthroughOnLo": "route"}, wantRoute: true},
		{name: "state of an older detour-cni", oldState: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pod("plain", "web", enabled), namespace("plain", nil))
			conf := e.conf("1.1.0", prevResults["1.1.0"], tt.extra)
			if err := e.p.Add(e.args("c1", podArgs("plain", "web"), conf)); err != nil {
				t.Fatal(err)
			}
			st, ok := e.state("c1")
			if !ok {
				t.Fatal("no state after ADD")
			}
			if tt.oldState {
				st.PassthroughRoute = false
				b, err := json.Marshal(st)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(b, []byte("passthroughRoute")) {
					t.Fatalf("the older state still names passthroughRoute: %s", b)
				}
				if err := os.WriteFile(newStateStore(e.stateDir, "k8s-pod-network").path("c1", "eth0"), b, 0o600); err != nil {
					t.Fatal(err)
				}
			} else if st.PassthroughRoute != tt.wantRoute {
				t.Errorf("state passthroughRoute = %v, want %v", st.PassthroughRoute, tt.wantRoute)
			}
			if err := e.p.Check(e.args("c1", podArgs("plain", "web"), conf)); err != nil {
				t.Fatal(err)
			}
			wantADD := tt.wantRoute || tt.oldState
			if got := e.net.passthroughRoute; len(got) != 2 || got[0] != wantADD || got[1] != tt.wantRoute {
				t.Errorf("PassthroughRoute of ADD's and CHECK's Redirector = %v, want [%v %v]", got, wantADD, tt.wantRoute)
			}
		})
	}
}

// cmpNet compares netip values (their fields are unexported).
var cmpNet = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

var cmpEmpty = cmp.Comparer(func(a, b []string) bool { return len(a) == 0 && len(b) == 0 || cmp.Equal(a, b) })

func TestDel(t *testing.T) {
	t.Parallel()
	gone := filepath.Join(os.TempDir(), "detour-no-such-netns")
	tests := []struct {
		name    string
		pod     *kubeapi.Pod
		add     bool
		netns   string
		corrupt bool     // garble the state file before DEL
		engine  []string // engine calls made by the two DELs
	}{
		{name: "redirected pod", pod: pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}), add: true, netns: testNetns,
			engine: []string{"uninstall " + testNetns}},
		{name: "skipped pod is not touched", pod: pod("plain", "web", nil), add: true, netns: testNetns},
		{name: "unreadable state uninstalls anyway", pod: pod("plain", "web", nil), add: true, netns: testNetns, corrupt: true,
			engine: []string{"uninstall " + testNetns}},
		{name: "netns gone", pod: pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}), add: true, netns: gone},
		{name: "empty netns", pod: pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}), add: true, netns: ""},
		{name: "never added", pod: pod("plain", "web", nil), netns: gone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tt.pod, namespace("plain", nil))
			conf := e.conf("1.1.0", prevResults["1.1.0"], nil)
			if tt.add {
				if err := e.p.Add(e.args("c1", podArgs("plain", "web"), conf)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.corrupt {
				p := newStateStore(e.stateDir, "k8s-pod-network").path("c1", "eth0")
				if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := len(e.net.Calls())
			e.stdout.Reset()
			for i := range 2 {
				args := e.args("c1", podArgs("plain", "web"), conf)
				args.Netns = tt.netns
				if err := e.p.Del(args); err != nil {
					t.Fatalf("DEL #%d: %v", i+1, err)
				}
				if _, ok := e.state("c1"); ok {
					t.Fatalf("state left after DEL #%d", i+1)
				}
			}
			if d := cmp.Diff(tt.engine, e.net.Calls()[before:], cmpEmpty); d != "" {
				t.Errorf("engine calls (-want +got):\n%s", d)
			}
			if e.stdout.Len() != 0 {
				t.Errorf("DEL wrote %q to stdout", e.stdout.String())
			}
		})
	}
}

func writeKubeconfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const validKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://192.0.2.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: "t"}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`

func TestStatus(t *testing.T) {
	t.Parallel()
	valid := writeKubeconfig(t, validKubeconfig)
	broken := writeKubeconfig(t, "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://192.0.2.1'}}]\ncurrent-context: nowhere\n")
	allTools := func(string) (string, error) { return "/usr/sbin/x", nil }
	legacyOnly := func(f string) (string, error) {
		if strings.Contains(f, "legacy") {
			return "/usr/sbin/" + f, nil
		}
		return "", errors.New("not found")
	}
	noRestore := func(f string) (string, error) {
		if strings.Contains(f, "restore") {
			return "", errors.New("not found")
		}
		return "/usr/sbin/" + f, nil
	}
	halfEach := func(f string) (string, error) { // nft lacks IPv6, legacy lacks IPv4
		if f == "ip6tables-nft-restore" || f == "iptables-legacy-save" {
			return "", errors.New("not found")
		}
		return "/usr/sbin/" + f, nil
	}
	cgFile := cgroup2File()
	tests := []struct {
		name       string
		kubeconfig string
		lookPath   func(string) (string, error)
		extra      map[string]any // plugin config keys
		ebpfReady  error
		nftReady   error // nil = the kernel's nf_tables answers
		wantCode   uint
		wantMsg    string
	}{
		{name: "ready", kubeconfig: valid, lookPath: allTools},
		{name: "ready with legacy tools only", kubeconfig: valid, lookPath: legacyOnly},
		{name: "kubeconfig missing", kubeconfig: "/nonexistent/detour-kubeconfig", lookPath: allTools, wantCode: types.ErrPluginNotAvailable, wantMsg: "kubeconfig /nonexistent/detour-kubeconfig: no such file or directory"},
		{name: "kubeconfig unusable", kubeconfig: broken, lookPath: allTools, wantCode: types.ErrPluginNotAvailable, wantMsg: "kubeconfig " + broken},
		{name: "restore tools missing and no nf_tables", kubeconfig: valid, lookPath: noRestore, nftReady: errors.New("the kernel's nf_tables does not answer"), wantCode: types.ErrPluginNotAvailable,
			wantMsg: "no complete iptables backend on PATH (missing iptables-nft-restore, ip6tables-nft-restore, iptables-legacy-restore, ip6tables-legacy-restore), and backend nftables: the kernel's nf_tables does not answer"},
		{name: "no backend complete and no nf_tables", kubeconfig: valid, lookPath: halfEach, nftReady: errors.New("the kernel's nf_tables does not answer"), wantCode: types.ErrPluginNotAvailable, wantMsg: "(missing ip6tables-nft-restore, iptables-legacy-save)"},
		{name: "auto without iptables tools installs with nftables", kubeconfig: valid, lookPath: noRestore},
		{name: "nftables needs no iptables tool", kubeconfig: valid, lookPath: noRestore, extra: map[string]any{"config": map[string]any{"backend": "nftables"}}},
		{name: "nftables on a kernel without nf_tables", kubeconfig: valid, lookPath: allTools, nftReady: errors.New("the kernel's nf_tables does not answer"), extra: map[string]any{"config": map[string]any{"backend": "nftables"}},
			wantCode: types.ErrPluginNotAvailable, wantMsg: "backend nftables: the kernel's nf_tables does not answer"},
		{name: "iptables-nft needs its tools, not nf_tables' answer", kubeconfig: valid, lookPath: noRestore, extra: map[string]any{"config": map[string]any{"backend": "iptables-nft"}},
			wantCode: types.ErrPluginNotAvailable, wantMsg: "no complete iptables backend on PATH"},
		{name: "ebpf needs no iptables tool", kubeconfig: valid, lookPath: noRestore, extra: map[string]any{"config": map[string]any{"backend": "ebpf"}}},
		{name: "ebpf on a kernel without it", kubeconfig: valid, lookPath: allTools, extra: map[string]any{"config": map[string]any{"backend": "ebpf"}},
			ebpfReady: errors.New("ebpf backend needs program type cgroup_sockopt: not supported"), wantCode: types.ErrPluginNotAvailable, wantMsg: "backend ebpf: ebpf backend needs program type cgroup_sockopt"},
		{name: "ebpf cgroup root missing", kubeconfig: valid, lookPath: allTools, extra: map[string]any{"config": map[string]any{"backend": "ebpf"}, "ebpfCgroupRoot": "/nonexistent/detour-cgroup"},
			wantCode: types.ErrPluginNotAvailable, wantMsg: `backend ebpf: plugin config key ebpfCgroupRoot: "/nonexistent/detour-cgroup": no such file or directory`},
		{name: "ebpf cgroup root not cgroup v2", kubeconfig: valid, lookPath: allTools, extra: map[string]any{"config": map[string]any{"backend": "ebpf"}, "ebpfCgroupRoot": "/proc"},
			wantCode: types.ErrPluginNotAvailable, wantMsg: `backend ebpf: plugin config key ebpfCgroupRoot: "/proc" is not a cgroup v2 directory`},
		{name: "ebpf cgroup root a file of cgroup v2", kubeconfig: valid, lookPath: allTools, extra: map[string]any{"config": map[string]any{"backend": "ebpf"}, "ebpfCgroupRoot": cgFile},
			wantCode: types.ErrPluginNotAvailable, wantMsg: fmt.Sprintf(`backend ebpf: plugin config key ebpfCgroupRoot: %q is not a cgroup v2 directory`, cgFile)},
		{name: "ebpf pin dir under a missing directory", kubeconfig: valid, lookPath: allTools, extra: map[string]any{"config": map[string]any{"backend": "ebpf"}, "ebpfPinDir": "/nonexistent/bpf/detour"},
			wantCode: types.ErrPluginNotAvailable, wantMsg: `backend ebpf: plugin config key ebpfPinDir: "/nonexistent/bpf/detour": directory /nonexistent/bpf: no such file or directory`},
		{name: "ebpf paths unchecked with iptables", kubeconfig: valid, lookPath: allTools, extra: map[string]any{"ebpfCgroupRoot": "/nonexistent/detour-cgroup"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if root, ok := tt.extra["ebpfCgroupRoot"]; ok && root == "" {
				t.Skip("no cgroup v2 hierarchy is mounted here")
			}
			e := newEnv(t)
			probed := false
			ready := func() error { probed = true; return tt.ebpfReady }
			nftReady := func() error { return tt.nftReady }
			e.p = New(Options{Stdout: &e.stdout, Stderr: &e.stderr, LookPath: tt.lookPath, EBPFReady: ready, NFTablesReady: nftReady})
			conf := map[string]any{"kubeconfig": tt.kubeconfig}
			for k, v := range tt.extra {
				conf[k] = v
			}
			err := e.p.Status(&skel.CmdArgs{Path: "/opt/cni/bin", StdinData: e.conf("1.1.0", "", conf)})
			if ErrorCode(err) != tt.wantCode || (tt.wantCode != 0 && !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Fatalf("err = %v (code %d), want code %d containing %q", err, ErrorCode(err), tt.wantCode, tt.wantMsg)
			}
			if e.stdout.Len() != 0 {
				t.Errorf("STATUS wrote %q to stdout", e.stdout.String())
			}
			if wantProbe := tt.extra["config"] != nil && tt.extra["config"].(map[string]any)["backend"] == "ebpf"; probed != wantProbe {
				t.Errorf("probed the kernel for ebpf: %v, want %v", probed, wantProbe)
			}
		})
	}
}

func TestGC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pod("plain", "web", nil), namespace("plain", nil))
	conf := e.conf("1.1.0", "", nil)
	for _, id := range []string{"keep", "stale", "fresh-stale"} {
		if err := e.p.Add(e.args(id, podArgs("plain", "web"), conf)); err != nil {
			t.Fatal(err)
		}
	}
	dir := newStateStore(e.stateDir, "k8s-pod-network").dir
	old := e.now.Add(-time.Hour)
	recent := e.now.Add(-10 * time.Second) // within the 1m grace
	for id, at := range map[string]time.Time{"keep": old, "stale": old, "fresh-stale": recent} {
		if err := os.Chtimes(filepath.Join(dir, stateName(id, "eth0")), at, at); err != nil {
			t.Fatal(err)
		}
	}
	e.stdout.Reset()
	// a temporary file left by a crashed write
	if err := os.WriteFile(filepath.Join(dir, ".c1:eth0.json.123.tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dir, ".c1:eth0.json.123.tmp"), old, old); err != nil {
		t.Fatal(err)
	}
	// Another network's state is not this GC's business.
	other := newStateStore(e.stateDir, "other-net")
	if err := other.save(State{ContainerID: "stale", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}

	valid := []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}, {ContainerID: "stale", IfName: "net1"}}
	gcConf := e.conf("1.1.0", "", map[string]any{"cni.dev/valid-attachments": valid})
	for i := range 2 {
		if err := e.p.GC(&skel.CmdArgs{Path: "/opt/cni/bin", StdinData: gcConf}); err != nil {
			t.Fatalf("GC #%d: %v", i+1, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	want := []string{"fresh-stale:eth0.json", "keep:eth0.json"}
	if d := cmp.Diff(want, names); d != "" {
		t.Errorf("state files after GC (-want +got):\n%s", d)
	}
	if _, err := other.load("stale", "eth0"); err != nil {
		t.Errorf("GC of one network removed another network's state: %v", err)
	}
	if !strings.Contains(e.stderr.String(), `"msg":"dropped stale state","verb":"GC","network":"k8s-pod-network","attachment":"stale:eth0"`) {
		t.Errorf("no log line for the dropped attachment:\n%s", e.stderr.String())
	}
	if e.stdout.Len() != 0 {
		t.Errorf("GC wrote %q to stdout", e.stdout.String())
	}
}

// TestEBPFEnrolmentOutlivesTheNamespace: the eBPF backend's enrolment lives
// in the node's maps, so when the namespace is gone DEL and GC remove it by
// the cookie ADD recorded, and keep the state when that fails.
func TestEBPFEnrolmentOutlivesTheNamespace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pod("plain", "web", nil))
	conf := e.conf("1.1.0", "", map[string]any{"ebpfPinDir": "/sys/fs/bpf/test-detour", "ebpfCgroupRoot": "/sys/fs/cgroup/test"})
	var (
		mu      sync.Mutex
		removed []string
		fail    error
	)
	e.p.o.RemoveEBPFEnrolment = func(o RedirectorOptions, cookie uint64) error {
		mu.Lock()
		defer mu.Unlock()
		if fail != nil {
			return fail
		}
		removed = append(removed, fmt.Sprintf("%d %s %s", cookie, o.EBPFPinDir, o.EBPFCgroupRoot))
		return nil
	}
	store := newStateStore(e.stateDir, "k8s-pod-network")
	gone := filepath.Join(t.TempDir(), "gone-netns")
	for id, cookie := range map[string]uint64{"del": 4097, "gc": 4098, "iptables": 0} {
		if err := store.save(State{ContainerID: id, IfName: "eth0", Netns: gone, Redirect: true, NetnsCookie: cookie}); err != nil {
			t.Fatal(err)
		}
	}
	del := e.args("del", podArgs("plain", "web"), conf)
	del.Netns = gone
	fail = errors.New("maps unreadable")
	if err := e.p.Del(del); ErrorCode(err) != CodeInstall {
		t.Errorf("DEL whose unenrolment fails: err = %v, want code %d", err, CodeInstall)
	}
	if _, err := store.load("del", "eth0"); err != nil {
		t.Errorf("a failed DEL dropped the state that names the cookie: %v", err)
	}
	fail = nil
	for range 2 {
		if err := e.p.Del(del); err != nil {
			t.Fatalf("DEL with the namespace gone: %v", err)
		}
	}
	old := e.now.Add(-time.Hour)
	for _, id := range []string{"gc", "iptables"} {
		if err := os.Chtimes(store.path(id, "eth0"), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.p.GC(&skel.CmdArgs{Path: "/opt/cni/bin", StdinData: conf}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	want := []string{"4097 /sys/fs/bpf/test-detour /sys/fs/cgroup/test", "4098 /sys/fs/bpf/test-detour /sys/fs/cgroup/test"}
	if d := cmp.Diff(want, removed); d != "" {
		t.Errorf("enrolments removed (-want +got):\n%s", d)
	}
	for _, id := range []string{"del", "gc", "iptables"} {
		if _, err := store.load(id, "eth0"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("state of %s after DEL and GC: %v, want none", id, err)
		}
	}
}

func TestParseConfErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		conf     string
		wantCode uint
		wantMsg  string
	}{
		{name: "not json", conf: `{"cniVersion":`, wantCode: types.ErrDecodingFailure, wantMsg: "decode plugin config"},
		{name: "log level", conf: `{"cniVersion":"1.1.0","name":"n","logLevel":"loud"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key logLevel: "loud" is not debug, info, warn or error`},
		{name: "preset", conf: `{"cniVersion":"1.1.0","name":"n","preset":"linkerd"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key preset: preset: "linkerd" is not one of istio, kuma`},
		{name: "config document", conf: `{"cniVersion":"1.1.0","name":"n","config":{"proxy":{"inboundPort":70000}}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key config: proxy.inboundPort: "70000"`},
		{name: "empty namespace", conf: `{"cniVersion":"1.1.0","name":"n","excludeNamespaces":["kube-system",""]}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `excludeNamespaces[1]: "" is not a namespace name`},
		{name: "relative pin dir", conf: `{"cniVersion":"1.1.0","name":"n","ebpfPinDir":"bpf/detour"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key ebpfPinDir: "bpf/detour" is not a clean absolute path below /`},
		{name: "cgroup root is /", conf: `{"cniVersion":"1.1.0","name":"n","ebpfCgroupRoot":"/"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key ebpfCgroupRoot: "/" is not a clean absolute path below /`},
		{name: "unclean cgroup root", conf: `{"cniVersion":"1.1.0","name":"n","ebpfCgroupRoot":"/sys/fs/cgroup/../x"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key ebpfCgroupRoot: "/sys/fs/cgroup/../x"`},
		{name: "passthrough on lo", conf: `{"cniVersion":"1.1.0","name":"n","passthroughOnLo":"dummy"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `plugin config key passthroughOnLo: "dummy" is not route or address`},
		{name: "ebpf with tproxy", conf: `{"cniVersion":"1.1.0","name":"n","config":{"backend":"ebpf","mode":"tproxy"}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `mode: "tproxy" is not available with backend ebpf`},
		{name: "unknown backend", conf: `{"cniVersion":"1.1.0","name":"n","config":{"backend":"bpf"}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `backend: "bpf"`},
		{name: "acceleration without ebpf", conf: `{"cniVersion":"1.1.0","name":"n","config":{"ebpf":{"accelerate":true}}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `ebpf.accelerate: "true" needs backend ebpf`},
		{name: "acceleration with iptables", conf: `{"cniVersion":"1.1.0","name":"n","config":{"backend":"iptables","ebpf":{"accelerate":true}}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `ebpf.accelerate: "true" needs backend ebpf`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseConf([]byte(tt.conf))
			if ErrorCode(err) != tt.wantCode || !strings.Contains(fmt.Sprint(err), tt.wantMsg) {
				t.Fatalf("err = %v (code %d), want code %d containing %q", err, ErrorCode(err), tt.wantCode, tt.wantMsg)
			}
		})
	}
	c, err := ParseConf([]byte(`{"cniVersion":"1.1.0","name":"n"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubeconfig != DefaultKubeconfig || c.StateDir != DefaultStateDir || c.PassthroughOnLo != PassthroughRoute {
		t.Errorf("defaults: kubeconfig %q, stateDir %q, passthroughOnLo %q", c.Kubeconfig, c.StateDir, c.PassthroughOnLo)
	}
}

func TestLogsGoToLogFileNeverStdout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}))
	logFile := filepath.Join(t.TempDir(), "detour-cni.log")
	conf := e.conf("1.0.0", prevResults["1.0.0"], map[string]any{"logFile": logFile, "logLevel": "debug"})
	if err := e.p.Add(e.args("c1", podArgs("plain", "web"), conf)); err != nil {
		t.Fatal(err)
	}
	if e.stdout.String() != prevResults["1.0.0"] {
		t.Errorf("stdout = %q, want the result only", e.stdout.String())
	}
	if e.stderr.Len() != 0 {
		t.Errorf("stderr = %q, want the logs in logFile", e.stderr.String())
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(b), &line); err != nil {
		t.Fatalf("log line is not JSON: %v\n%s", err, b)
	}
	for k, want := range map[string]any{"msg": "added", "verb": "ADD", "container_id": "c1", "netns": testNetns, "pod": "plain/web", "redirect": true} {
		if line[k] != want {
			t.Errorf("log %s = %v, want %v (%s)", k, line[k], want, b)
		}
	}
}

func TestStateRoundTripsConfig(t *testing.T) {
	t.Parallel()
	cfg, _ := redirect.Preset("istio")
	gid := uint32(1337)
	cfg.Proxy.GID = &gid
	if err := cfg.Set("outbound.excludePortsForUIDs", "tcp:53,3000-5000:106-108"); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Set("outbound.excludeCIDRs", "192.0.2.0/24,2001:db8::/32"); err != nil {
		t.Fatal(err)
	}
	s := newStateStore(t.TempDir(), "net")
	in := State{ContainerID: "c", IfName: "eth0", Netns: "/var/run/netns/x", Pod: &PodRef{Namespace: "a", Name: "b", UID: "u"}, Redirect: true, Reason: "r", Config: &cfg, Added: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := s.save(in); err != nil {
		t.Fatal(err)
	}
	out, err := s.load("c", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(in, out, cmpNet); d != "" {
		t.Errorf("state round trip (-in +out):\n%s", d)
	}
}

func TestParsePodArgs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    string
		want    PodRef
		ok      bool
		wantErr string
	}{
		{name: "kubelet", args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u", want: PodRef{Namespace: "ns", Name: "p", UID: "u"}, ok: true},
		{name: "empty", args: ""},
		{name: "not kubernetes", args: "IgnoreUnknown=1;FOO=bar"},
		{name: "malformed", args: "K8S_POD_NAME", wantErr: `"K8S_POD_NAME" is not KEY=VALUE`},
		{name: "name only", args: "K8S_POD_NAME=p", wantErr: "without K8S_POD_NAMESPACE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok, err := ParsePodArgs(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || ok != tt.ok || got != tt.want {
				t.Errorf("= %+v, %v, %v; want %+v, %v", got, ok, err, tt.want, tt.ok)
			}
		})
	}
}
