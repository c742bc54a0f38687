package cni_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/origdst"
)

// TestInjectedPodNetwork plays the kubelet's part for the network of an
// injected pod: the pod, as the injector mutates it, goes through the real CNI
// chain; the rules detour-cni installs must be the ones the injected sidecar
// expects. A test proxy on the sidecar's outbound port relays each connection
// to its original destination, dialing as the sidecar's uid (from the
// injected container's securityContext): the app's connection arrives with
// its original destination, and the proxy's own connection is not captured
// again (it would loop). The kubelet's probe of the ready port reaches the
// sidecar directly.
func TestInjectedPodNetwork(t *testing.T) {
	h := setup(t)
	in, err := inject.New(inject.Options{Bootstrap: webhook.Bootstrap})
	if err != nil {
		t.Fatal(err)
	}
	meta := metav1.ObjectMeta{Name: "web", Annotations: map[string]string{"detour.io/exclude-outbound-ports": "5432"}}
	spec := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}}
	m, err := in.Plan(meta, spec)
	if err != nil {
		t.Fatal(err)
	}
	injected, err := m.Typed(corev1.PodTemplateSpec{ObjectMeta: meta, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	var proxy *corev1.Container
	for i, c := range injected.Spec.InitContainers {
		if c.Name == inject.ProxyName {
			proxy = &injected.Spec.InitContainers[i]
		}
	}
	if proxy == nil {
		t.Fatalf("no %s among the init containers %v", inject.ProxyName, injected.Spec.InitContainers)
	}
	uid := uint32(*proxy.SecurityContext.RunAsUser)
	outbound := m.Config.Proxy.OutboundPort
	ready := uint16(proxy.ReadinessProbe.HTTPGet.Port.IntValue())

	ns := h.newNamespace(t, map[string]string{"detour.io/inject": "enabled"})
	p := h.newPod(t, ns, injected.Annotations, created)
	ip := podIP(t, h.net.mustAdd(t, p))

	relay(t, p.netns, fmt.Sprintf("0.0.0.0:%d", outbound), uid)
	serve(t, p.netns, fmt.Sprintf("0.0.0.0:%d", m.Config.Proxy.InboundPort), "inbound-proxy")
	serve(t, p.netns, fmt.Sprintf("0.0.0.0:%d", ready), "envoy-ready")
	serve(t, "", gatewayIP+":9000", "remote")
	serve(t, "", gatewayIP+":5432", "database")

	for _, tc := range []struct{ name, from, to, want string }{
		{"the app's connection reaches the proxy with its original destination, and the proxy's own is not captured",
			p.netns, gatewayIP + ":9000", fmt.Sprintf("proxy got %s:9000, dialed it as uid %d: remote", gatewayIP, uid)},
		{"an excluded port of the pod's annotations is not captured", p.netns, gatewayIP + ":5432", "database"},
		{"the kubelet's probe reaches the ready port directly", "", fmt.Sprintf("%s:%d", ip, ready), "envoy-ready"},
		{"other inbound goes to the proxy", "", ip.String() + ":8080", "inbound-proxy " + ip.String() + ":8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ask(tc.from, tc.to)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("answer = %q, want it to start with %q", got, tc.want)
			}
		})
	}
	if err := h.net.check(p); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

// relay is a test proxy inside the namespace at path: for each connection it
// reads the original destination, dials it from a thread whose fsuid is uid
// (sockets take their owner from it, and the redirection matches owners), and
// answers "proxy got DST, dialed it as uid UID: <the upstream's line>".
func relay(t *testing.T, path, addr string, uid uint32) {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(path, func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.AcceptEach(ln, func(c net.Conn) {
		dst, err := origdst.Get(c.(*net.TCPConn))
		if err != nil {
			fmt.Fprintf(c, "proxy: no original destination: %v\n", err)
			return
		}
		up, err := dialAs(path, dst.String(), uid)
		if err != nil {
			fmt.Fprintf(c, "proxy got %s, dial as uid %d: %v\n", dst, uid, err)
			return
		}
		defer up.Close()
		_ = up.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(up).ReadString('\n')
		if err != nil {
			fmt.Fprintf(c, "proxy got %s, read upstream: %v\n", dst, err)
			return
		}
		fmt.Fprintf(c, "proxy got %s, dialed it as uid %d: %s", dst, uid, line)
	})
}

func dialAs(path, addr string, uid uint32) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	rc := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its credentials
		f, err := os.Open(path)
		if err != nil {
			rc <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			rc <- result{err: err}
			return
		}
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
		if got, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(got) != uid {
			rc <- result{err: fmt.Errorf("set fsuid %d: still %s", uid, strconv.Itoa(int(got)))}
			return
		}
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		rc <- result{c, err}
	}()
	r := <-rc
	return r.c, r.err
}
