package cni_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
	"github.com/detour-mesh/detour/internal/privtest"
)

// The test cluster's pod network: a bridge in the test's host namespace with
// TEST-NET addresses. remoteAddr is an address no interface has, reached
// through the pod's default route.
const (
	bridgeName = "dtbr0"
	subnet     = "198.51.100.0/24"
	gatewayIP  = "198.51.100.1"
	remoteAddr = "203.0.113.9:80"
)

// suite is shared by the tests of this binary (they run one after another): one
// API server, one build of detour-cni, one pod network.
var suite harness

type harness struct {
	once sync.Once
	skip string // a missing prerequisite
	err  error  // a failed setup

	dir        string // everything the suite writes
	pluginsBin string // reference plugins
	binDir     string // detour-cni
	env        *envtest.Environment
	kube       kubernetes.Interface
	kubeconfig string
	net        *network
}

// setup returns the suite, starting it on first use. Every test calls it first.
func setup(t testing.TB) *harness {
	t.Helper()
	privtest.Require(t, "ip", "iptables-save", "iptables-legacy-save")
	if os.Getenv(hostNSEnv) == "" {
		t.Fatal("the end-to-end tests must run inside the namespace TestMain creates")
	}
	suite.once.Do(suite.start)
	if suite.skip != "" {
		privtest.Skip(t, suite.skip)
	}
	if suite.err != nil {
		t.Fatal(suite.err)
	}
	return &suite
}

func (h *harness) start() {
	var err error
	if h.pluginsBin, err = privtest.CNIPluginsDir("bridge", "host-local", "loopback"); err != nil {
		h.skip = err.Error()
		return
	}
	kubeBin, err := privtest.KubeAssetsDir()
	if err != nil {
		h.skip = err.Error()
		return
	}
	h.err = h.startErr(kubeBin)
}

func (h *harness) startErr(kubeBin string) error {
	var err error
	if h.dir, err = os.MkdirTemp("", "detour-cni-e2e-"); err != nil {
		return err
	}
	h.binDir = filepath.Join(h.dir, "bin")
	// As make build lays them out: the lean plugin, which hands the calls
	// that need the eBPF backend to detour-cni-ebpf next to it.
	if _, err := privtest.BuildAs(h.binDir, "github.com/detour-mesh/detour/cmd/detour-cni", "detour-cni", "detour_lean"); err != nil {
		return err
	}
	if _, err := privtest.BuildAs(h.binDir, "github.com/detour-mesh/detour/cmd/detour-cni", "detour-cni-ebpf", ""); err != nil {
		return err
	}

	no := false
	h.env = &envtest.Environment{
		BinaryAssetsDirectory:    kubeBin,
		UseExistingCluster:       &no,
		ControlPlaneStartTimeout: 3 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	// The host namespace has no default route, from which the API server would
	// guess the address it advertises (for the kubernetes Service, which no
	// test uses): give it a TEST-NET one and no endpoint reconciler.
	h.env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "192.0.2.1").
		Set("endpoint-reconciler-type", "none")
	ctrllog.SetLogger(logr.Discard())
	cfg, err := h.env.Start()
	if err != nil {
		h.env = nil
		return fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	h.kubeconfig = filepath.Join(h.dir, "kubeconfig")
	if err := os.WriteFile(h.kubeconfig, h.env.KubeConfig, 0o600); err != nil {
		return err
	}
	if h.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	h.net, err = h.newNetwork("dt-e2e", "1.1.0", nil)
	return err
}

func (h *harness) stop() {
	if h.env != nil {
		if err := h.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop kube-apiserver and etcd:", err)
		}
	}
	if h.dir != "" {
		_ = os.RemoveAll(h.dir)
	}
}

// network is one conflist (bridge + host-local, then detour-cni) and the libcni
// runtime that drives it.
type network struct {
	name     string
	list     *libcni.NetworkConfigList
	lo       *libcni.NetworkConfigList
	cni      *libcni.CNIConfig
	stateDir string
	logFile  string
}

// podNetwork is the pod network of a conflist: the bridge in the test's host
// namespace and host-local's ranges (one per family) and routes.
type podNetwork struct {
	bridge string
	ranges [][]map[string]string
	routes []map[string]string
}

// ipv4Net is the pod network of the suite's tests: IPv4 only.
var ipv4Net = podNetwork{
	bridge: bridgeName,
	ranges: [][]map[string]string{{{"subnet": subnet, "gateway": gatewayIP}}},
	routes: []map[string]string{{"dst": "0.0.0.0/0"}},
}

// newNetwork writes a conflist of the given version on ipv4Net; detour
// overrides or adds keys of the detour-cni entry.
func (h *harness) newNetwork(name, cniVersion string, detour map[string]any) (*network, error) {
	return h.newNetworkOn(ipv4Net, name, cniVersion, detour)
}

// newNetworkOn is newNetwork on the pod network pn.
func (h *harness) newNetworkOn(pn podNetwork, name, cniVersion string, detour map[string]any) (*network, error) {
	n := &network{name: name, stateDir: filepath.Join(h.dir, name, "state"), logFile: filepath.Join(h.dir, name, "detour-cni.log")}
	if err := os.MkdirAll(filepath.Dir(n.logFile), 0o755); err != nil {
		return nil, err
	}
	entry := map[string]any{
		"type":              "detour-cni",
		"kubeconfig":        h.kubeconfig,
		"stateDir":          n.stateDir,
		"logFile":           n.logFile,
		"excludeNamespaces": []string{"kube-system"},
	}
	for k, v := range detour {
		entry[k] = v
	}
	conf := map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": pn.bridge, "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  pn.ranges,
					"routes":  pn.routes,
					"dataDir": filepath.Join(h.dir, "ipam"),
				},
			},
			entry,
		},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	if n.list, err = libcni.ConfListFromBytes(b); err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	lo := fmt.Sprintf(`{"cniVersion":%q,"name":"lo","plugins":[{"type":"loopback"}]}`, cniVersion)
	if n.lo, err = libcni.ConfListFromBytes([]byte(lo)); err != nil {
		return nil, err
	}
	n.cni = h.runtime(filepath.Join(h.dir, name, "cache"), nil)
	return n, nil
}

// runtime is a libcni runtime over the reference plugins and detour-cni, with
// extra environment for the plugin processes.
func (h *harness) runtime(cacheDir string, env []string) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{h.pluginsBin, h.binDir}, cacheDir, newEnvExec(env))
}

// envExec runs plugins like libcni does, with extra environment variables.
type envExec struct {
	invoke.DefaultExec
	env []string
}

func newEnvExec(env []string) *envExec {
	return &envExec{DefaultExec: invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}, env: env}
}

func (e *envExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	return e.DefaultExec.ExecPlugin(ctx, path, stdin, append(environ, e.env...))
}

// pod is a Kubernetes pod object plus its sandbox: a network namespace and the
// libcni runtime arguments of its attachment.
type pod struct {
	namespace, name string
	uid             string
	netnsName       string
	netns           string // path
	rt              *libcni.RuntimeConf
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newNamespace creates a Kubernetes namespace with the labels.
func (h *harness) newNamespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e2e-" + randHex(4), Labels: labels}}
	if _, err := h.kube.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// podKind says how newPod creates the pod object.
type podKind int

const (
	created     podKind = iota // an ordinary pod
	notCreated                 // no object in the API: the runtime names a pod that does not exist
	hostNetwork                // a pod with spec.hostNetwork
)

// newPod creates the pod object and its network namespace; both go away when t
// ends (after a DEL, as a runtime would do).
func (h *harness) newPod(t testing.TB, namespace string, annotations map[string]string, kind podKind) *pod {
	t.Helper()
	p := &pod{namespace: namespace, name: "pod-" + randHex(4), uid: "uid-not-created"}
	if kind != notCreated {
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: p.name, Annotations: annotations},
			Spec: corev1.PodSpec{
				HostNetwork: kind == hostNetwork,
				Containers:  []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
			},
		}
		got, err := h.kube.CoreV1().Pods(namespace).Create(context.Background(), obj, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.uid = string(got.UID)
	}
	p.netnsName = "dt-pod-" + randHex(5)
	p.netns = "/run/netns/" + p.netnsName
	privtest.Run(t, "ip", "netns", "add", p.netnsName)
	t.Cleanup(func() {
		if _, err := os.Stat(p.netns); err == nil {
			if out, err := exec.Command("ip", "netns", "delete", p.netnsName).CombinedOutput(); err != nil {
				t.Errorf("delete netns %s: %v: %s", p.netnsName, err, out)
			}
		}
	})
	p.rt = &libcni.RuntimeConf{
		ContainerID: "ctr-" + randHex(8),
		NetNS:       p.netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace},
			{"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", "infra"},
			{"K8S_POD_UID", p.uid},
		},
	}
	return p
}

// add runs the pod's sandbox through the loopback network and n, as a runtime
// does; when t ends it runs DEL (which must succeed). Safe from any goroutine.
func (n *network) add(t testing.TB, p *pod) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lo := loConf(p)
	if _, err := n.cni.AddNetworkList(ctx, n.lo, lo); err != nil {
		return nil, fmt.Errorf("loopback ADD: %w", err)
	}
	// t.Cleanup is safe from any goroutine; t.Fatal is not, so add returns errors.
	n.deleteAtEnd(t, p, lo)
	return n.cni.AddNetworkList(ctx, n.list, p.rt)
}

// loConf is the runtime configuration of the pod's loopback network.
func loConf(p *pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.rt.ContainerID, NetNS: p.netns, IfName: "lo"}
}

// deleteAtEnd runs DEL of the pod network (which must succeed) and of the
// loopback network lo when t ends. Safe from any goroutine.
func (n *network) deleteAtEnd(t testing.TB, p *pod, lo *libcni.RuntimeConf) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := n.cni.DelNetworkList(ctx, n.list, p.rt); err != nil {
			t.Errorf("cleanup DEL of %s: %v", p.rt.ContainerID, err)
		}
		_ = n.cni.DelNetworkList(ctx, n.lo, lo)
	})
}

func (n *network) mustAdd(t testing.TB, p *pod) *current.Result {
	t.Helper()
	r, err := n.add(t, p)
	if err != nil {
		t.Fatalf("ADD %s/%s: %v\n%s", p.namespace, p.name, err, n.logTail())
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (n *network) del(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return n.cni.DelNetworkList(ctx, n.list, p.rt)
}

func (n *network) check(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return n.cni.CheckNetworkList(ctx, n.list, p.rt)
}

// logTail is the end of the plugin's log file, for failure messages.
func (n *network) logTail() string {
	b, _ := os.ReadFile(n.logFile)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return "detour-cni log:\n" + string(b)
}

// statePath is where detour-cni keeps the attachment's state.
func (n *network) statePath(p *pod) string {
	return filepath.Join(n.stateDir, n.name, p.rt.ContainerID+":"+p.rt.IfName+".json")
}

func (n *network) state(t testing.TB, p *pod) (map[string]any, bool) {
	t.Helper()
	b, err := os.ReadFile(n.statePath(p))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m, true
}

// cniCode returns the CNI error code of err, or 0.
func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// podIP is the pod's IPv4 address from the chain's result.
func podIP(t testing.TB, r *current.Result) netip.Addr {
	t.Helper()
	for _, ip := range r.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok {
			return a
		}
	}
	t.Fatalf("no IPv4 address in the result %v", r)
	return netip.Addr{}
}

// saveAll is every table of both iptables backends and both families, as the
// save tools print them, without comments and counters that change.
func saveAll(t testing.TB, netnsName string) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		args := []string{tool}
		if netnsName != "" {
			args = append([]string{"ip", "netns", "exec", netnsName}, args...)
		}
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(args, " "), err)
		}
		fmt.Fprintf(&b, "== %s\n", tool)
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			if strings.HasPrefix(l, ":") { // chain policy line: drop counters
				if i := strings.Index(l, " ["); i > 0 {
					l = l[:i]
				}
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// inNetNS runs fn on an OS thread that joined the namespace at path; the thread
// is discarded afterwards rather than switched back.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// serve listens on addr inside the namespace at path ("" = the test's host
// namespace) and answers every connection with one line: its name and the
// original destination the kernel recorded (SO_ORIGINAL_DST), "-" when there
// is none.
func serve(t testing.TB, path, addr, name string) {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}
	var err error
	if path == "" {
		err = listen()
	} else {
		err = inNetNS(path, listen)
	}
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.AcceptEach(ln, func(c net.Conn) {
		orig := "-"
		if dst, err := origdst.Get(c.(*net.TCPConn)); err == nil {
			orig = dst.String()
		}
		fmt.Fprintf(c, "%s %s\n", name, orig)
	})
}

// ask connects to addr from the namespace at path ("" = the host namespace)
// and returns the line the server answered.
func ask(path, addr string) (string, error) {
	var c net.Conn
	dial := func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}
	var err error
	if path == "" {
		err = dial()
	} else {
		err = inNetNS(path, dial)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}
