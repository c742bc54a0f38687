package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/golden"
)

func TestControlPlaneServesExampleMesh(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, done := startExampleMesh(ctx, t, nil)
	url := "http://" + a[1].String()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url + "/readyz")
		if err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		if err == nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never became ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get(url + "/debug/nodes")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`"nodeId": "app"`, `"nodeId": "backend-1"`, `"inMesh": true`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/debug/nodes lacks %s:\n%s", want, body)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("runControlPlane = %v", err)
	}
}

// startExampleMesh runs `control-plane` on examples/mesh.yaml on free
// loopback ports (opts, when given, changes the options first) until ctx
// ends, and returns its xDS and HTTP addresses once it listens, and its end.
func startExampleMesh(ctx context.Context, t *testing.T, opts func(*controlPlaneOptions)) ([2]net.Addr, <-chan error) {
	t.Helper()
	addrs := make(chan [2]net.Addr, 1)
	o := &controlPlaneOptions{
		config: "../../examples/mesh.yaml", source: sourceFile,
		xdsAddress: "127.0.0.1:0", httpAddress: "127.0.0.1:0",
		nackBackoff: time.Second, watchInterval: time.Second, logLevel: "info", logFormat: "text",
		listening: func(x, h net.Addr) { addrs <- [2]net.Addr{x, h} },
	}
	if opts != nil {
		opts(o)
	}
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- runControlPlane(ctx, o, streams{out: io.Discard, err: &syncWriter{w: &stderr}}) }()
	select {
	case a := <-addrs:
		return a, done
	case err := <-done:
		t.Fatalf("control plane stopped: %v", err)
		return [2]net.Addr{}, nil
	}
}

// TestControlPlaneAdaptiveMemoryLimit: --memory-limit adaptive (and the
// deprecated --adaptive-memory-limit) sets the Go runtime's memory limit
// while the control plane runs and restores it after. Not parallel: the limit
// is the process's.
func TestControlPlaneAdaptiveMemoryLimit(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	for _, set := range []func(*controlPlaneOptions){
		func(o *controlPlaneOptions) { o.memoryLimit = "adaptive" },
		func(o *controlPlaneOptions) { o.adaptiveMemory = true },
	} {
		before := debug.SetMemoryLimit(-1)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, done := startExampleMesh(ctx, t, set)
		if got := debug.SetMemoryLimit(-1); got == before || got == math.MaxInt64 {
			t.Errorf("with the adaptive memory limit the runtime's memory limit is %d (before: %d), want one set", got, before)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runControlPlane = %v", err)
		}
		if got := debug.SetMemoryLimit(-1); got != before {
			t.Errorf("after the control plane stopped the memory limit is %d, want %d as before", got, before)
		}
	}
}

// syncWriter lets the server's goroutines log into one buffer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestControlPlaneInvalidInputExitsTwo(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(bad, []byte("services: [{name: a, virtualIPs: [198.51.100.1], ports: [70000]}]"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, []byte("# nothing yet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"invalid mesh", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:0", "--http-address", "off"}, `services[0].ports[0]: "70000" is not a port`},
		{"no config", []string{"control-plane"}, "--config is required"},
		{"missing mesh file", []string{"control-plane", "--config", bad + ".missing", "--xds-address", "127.0.0.1:0", "--http-address", "off", "--settle", "0"}, `mesh file: "` + bad + `.missing" cannot be read: no such file or directory`},
		{"mesh file a directory", []string{"control-plane", "--config", filepath.Dir(bad), "--xds-address", "127.0.0.1:0", "--http-address", "off", "--settle", "0"}, "is not a regular file (a directory)"},
		{"resources missing mesh file", []string{"control-plane", "resources", "--config", bad + ".missing", "--node-id", "a"}, "cannot be read: no such file or directory"},
		{"bootstrap missing mesh file", []string{"bootstrap", "--node-id", "a", "--control-plane", "127.0.0.1:1", "--mesh", bad + ".missing"}, "cannot be read: no such file or directory"},
		{"unknown source", []string{"control-plane", "--source", "etcd"}, `--source "etcd" is not one of file, kubernetes`},
		{"negative settle", []string{"control-plane", "--config", bad, "--settle", "-1s"}, "--settle -1s must not be negative"},
		{"zero max mesh size", []string{"control-plane", "--config", bad, "--max-mesh-size", "0"}, "--max-mesh-size 0 must be positive"},
		{"dns flags with a file", []string{"control-plane", "--config", bad, "--dns-suffix", "svc.example"}, "--dns-suffix and --dns-upstream are for --source kubernetes"},
		{"bad dns upstream", []string{"control-plane", "--source", "kubernetes", "--dns-upstream", "ns1"}, `--dns-upstream "ns1" is not an IP address or address:port`},
		// A flag of the source not chosen would configure nothing, silently.
		{"kubeconfig with a mesh file", []string{"control-plane", "--config", bad, "--kubeconfig", "kubeconfig"}, "--kubeconfig: for --source kubernetes"},
		{"file source flags with kubernetes", []string{"control-plane", "--source", "kubernetes", "--settle", "5s", "--max-mesh-size", "100"}, "--settle, --max-mesh-size: for --source file (the mesh file); --source kubernetes reads the API"},
		{"nack backoff below the floor", []string{"control-plane", "--config", bad, "--nack-backoff", "1ns"}, "--nack-backoff 1ns is below 100ms"},
		{"watch interval below the floor", []string{"control-plane", "--config", bad, "--watch-interval", "1ms"}, "--watch-interval 1ms is below 10ms"},
		{"watch interval with kubernetes", []string{"control-plane", "--source", "kubernetes", "--watch-interval", "5s"}, "--watch-interval: for --source file"},
		{"client ca without tls", []string{"control-plane", "--config", bad, "--client-ca", "ca.pem"}, "--client-ca needs --tls-cert"},
		{"bad log level", []string{"control-plane", "--config", bad, "--log-level", "loud"}, `--log-level "loud"`},
		{"bad memory limit", []string{"control-plane", "--config", bad, "--memory-limit", "512MiB"}, `--memory-limit "512MiB" is not one of auto, adaptive, off`},
		{"deprecated adaptive flag against memory limit off", []string{"control-plane", "--config", bad, "--adaptive-memory-limit", "--memory-limit", "off"}, `--adaptive-memory-limit means --memory-limit adaptive; it contradicts --memory-limit off`},
		{"empty memory limit", []string{"control-plane", "--config", bad, "--memory-limit", ""}, `--memory-limit "" is empty`},
		// An empty value given on purpose (a script's unset variable) never
		// falls back to the default: --http-address "" served on 127.0.0.1:18001,
		// --namespace "" watched every namespace.
		{"empty xds address", []string{"control-plane", "--config", bad, "--xds-address", ""}, `--xds-address "" is empty; leave the flag out for its default (127.0.0.1:18000)`},
		// A required flag has no default to leave it out for.
		// Without --inject no webhook is served: its flags would configure
		// nothing, and the pods meant for it would start unmeshed.
		{"inject flags without --inject", []string{"control-plane", "--config", bad, "--inject-failure-policy", "Ignore", "--inject-url", "https://x:443"}, "--inject-failure-policy, --inject-url configure the injection webhook, which is served only with --inject"},
		{"bootstrap cert without key", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--tls-cert", "c.pem"}, `tls-key: "" is required with tls-cert "c.pem"`},
		{"bootstrap key without cert", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--tls-key", "k.pem"}, `tls-cert: "" is required with tls-key "k.pem"`},
		{"bootstrap empty node id", []string{"bootstrap", "--node-id", "", "--control-plane", "127.0.0.1:1"}, `--node-id "" is empty; give it a value`},
		{"empty http address", []string{"control-plane", "--config", bad, "--http-address", ""}, `--http-address "" is empty`},
		{"empty namespace", []string{"control-plane", "--source", "kubernetes", "--namespace", ""}, `--namespace "" is empty`},
		// The webhook injects pods of every opted-in namespace; a control plane
		// watching one namespace would never serve the others' sidecars, whose
		// pods then hang in their startup probe with their traffic captured.
		{"namespace with inject", []string{"control-plane", "--source", "kubernetes", "--namespace", "shop", "--inject", "--xds-address", "127.0.0.1:0", "--http-address", "off"}, `--namespace "shop" with --inject: the webhook injects the pods of every opted-in namespace, but this control plane serves only shop's`},
		// A listen address that cannot be one failed at listen (exit 1), and
		// ":" (a script's ":$PORT" with PORT unset) served on every address
		// at a random port.
		{"xds address without port", []string{"control-plane", "--config", bad, "--xds-address", ":", "--http-address", "off"}, `--xds-address ":" has no port`},
		{"xds address not host:port", []string{"control-plane", "--config", bad, "--xds-address", "off", "--http-address", "off"}, `--xds-address "off" is not host:port`},
		{"xds port too big", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:99999", "--http-address", "off"}, `--xds-address "127.0.0.1:99999": "99999" is not a port`},
		{"http address named port", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:0", "--http-address", "127.0.0.1:http"}, `--http-address "127.0.0.1:http": "http" is not a port`},
		{"http address without port", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:0", "--http-address", "127.0.0.1:"}, `--http-address "127.0.0.1:" has no port`},
		// Two listeners on one port failed at the second listen (exit 1), after
		// the first had started serving.
		{"xds and http on one address", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:18000", "--http-address", "127.0.0.1:18000"}, `--xds-address "127.0.0.1:18000" and --http-address "127.0.0.1:18000": both listen on port 18000`},
		{"http on the wildcard of xds's port", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:18000", "--http-address", ":18000"}, `--xds-address "127.0.0.1:18000" and --http-address ":18000": both listen on port 18000`},
		{"inject on http's port", []string{"control-plane", "--config", bad, "--xds-address", "127.0.0.1:0", "--http-address", "[::]:15014", "--inject", "--inject-address", "127.0.0.1:15014"}, `--http-address "[::]:15014" and --inject-address "127.0.0.1:15014": both listen on port 15014`},
		{"inject address without port", []string{"control-plane", "--source", "kubernetes", "--inject", "--inject-address", ":", "--xds-address", "127.0.0.1:0", "--http-address", "off"}, `--inject-address ":" has no port`},
		{"empty dns suffix", []string{"control-plane", "--source", "kubernetes", "--dns-suffix", ""}, `--dns-suffix "" is empty`},
		{"empty dns upstream", []string{"control-plane", "--source", "kubernetes", "--dns-upstream", ""}, `invalid argument "" for "--dns-upstream" flag: an empty value names nothing`},
		// A second, empty value used to add nothing, silently.
		{"second dns upstream empty", []string{"control-plane", "--source", "kubernetes", "--dns-upstream", "192.0.2.53", "--dns-upstream", ""}, `invalid argument "" for "--dns-upstream" flag: an empty value names nothing`},
		{"empty dns upstream item", []string{"control-plane", "--source", "kubernetes", "--dns-upstream", "192.0.2.53,"}, `invalid argument "192.0.2.53," for "--dns-upstream" flag: an empty item`},
		{"empty kubeconfig", []string{"control-plane", "--source", "kubernetes", "--kubeconfig", ""}, `--kubeconfig "" is empty`},
		{"empty inject url", []string{"control-plane", "--source", "kubernetes", "--inject", "--inject-url", ""}, `--inject-url "" is empty`},
		{"bootstrap empty config file", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--config", empty}, `--config "` + empty + `" is empty`},
		{"kubernetes empty base config", []string{"control-plane", "--source", "kubernetes", "--base-config", empty, "--xds-address", "127.0.0.1:0", "--http-address", "off"}, `--base-config "` + empty + `" is empty`},
		{"bootstrap empty mesh", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--mesh", ""}, `--mesh "" is empty`},
		{"bootstrap empty admin address", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--admin-address", ""}, `--admin-address "" is empty`},
		// Envoy's admin interface has no authentication: on 0.0.0.0 anyone
		// on the network could quit the proxy or dump its secrets (accepted
		// silently before).
		{"bootstrap admin on every address", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--admin-address", "0.0.0.0:15000"}, `--admin-address "0.0.0.0:15000" is not a loopback address`},
		{"bootstrap admin on every v6 address", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--admin-address", "[::]:15000"}, `--admin-address "[::]:15000" is not a loopback address`},
		{"bootstrap admin on a host address", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--admin-address", "192.0.2.10:15000"}, "give --expose-admin to listen there anyway"},
		{"bootstrap empty ca", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--ca", ""}, `--ca "" is empty`},
		{"bootstrap empty cluster", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--cluster", ""}, `--cluster "" is empty`},
		{"bootstrap empty preset", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--preset", ""}, `--preset "" is empty`},
		{"bootstrap blank node id", []string{"bootstrap", "--node-id", " app", "--control-plane", "127.0.0.1:1"}, `--node-id " app" is not a node id (non-empty, no surrounding spaces)`},
		// A quoting slip names a node.cluster no one else spells that way.
		{"bootstrap padded cluster", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--cluster", " x"}, `cluster: " x" is not a cluster name (no surrounding spaces, no control characters)`},
		{"bootstrap cluster with a newline", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--cluster", "x\ny"}, `cluster: "x\ny" is not a cluster name`},
		// No certificate could match it: every connection would fail the
		// identity check, in the proxy's log only.
		{"bootstrap server name not a name", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--ca", "ca.pem", "--server-name", "bad_name!"}, `server-name: "bad_name!" is neither an IP address nor a DNS name`},
		{"bootstrap padded server name", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--ca", "ca.pem", "--server-name", "cp.example "}, `server-name: "cp.example " is neither an IP address nor a DNS name`},
		{"bootstrap server name without ca", []string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:1", "--server-name", "cp.example"}, "--server-name needs --ca"},
		{"resources unknown node", []string{"control-plane", "resources", "--config", "../../examples/mesh.yaml", "--node-id", "nope"}, `--node-id "nope": no workload`},
		{"bootstrap without node", []string{"bootstrap", "--control-plane", "127.0.0.1:18000"}, "--node-id and --control-plane are required"},
		{"bootstrap bad address", []string{"bootstrap", "--node-id", "a", "--control-plane", "nowhere"}, `control-plane: "nowhere" is not host:port`},
		{"bootstrap bad config", []string{"bootstrap", "--node-id", "a", "--control-plane", "127.0.0.1:1", "--preset", "linkerd"}, `preset: "linkerd" is not one of istio, kuma`},
		{"bootstrap mesh and preset", []string{"bootstrap", "--node-id", "a", "--control-plane", "127.0.0.1:1", "--mesh", "../../examples/mesh.yaml", "--preset", "istio"}, "do not combine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, exitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.want)
			}
		})
	}
}

func TestBootstrapGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
	}{
		{"mesh-workload", []string{"--node-id", "app", "--control-plane", "127.0.0.1:18000", "--mesh", "../../examples/mesh.yaml"}},
		{"delta-istio-mtls", []string{"--node-id", "web-1", "--control-plane", "detour.mesh.svc:18000", "--delta", "--preset", "istio",
			"--ca", "/etc/detour/ca.pem", "--tls-cert", "/etc/detour/web-1.pem", "--tls-key", "/etc/detour/web-1-key.pem"}},
		// DNS capture is served (a DNS listener over LDS): the bootstrap is
		// made as for any other config.
		{"dns-capture", []string{"--node-id", "app", "--control-plane", "127.0.0.1:18000", "--config", "testdata/dns-capture.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), append([]string{"bootstrap"}, tt.args...), strings.NewReader(""), &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			golden.Check(t, golden.Path(t, tt.name), stdout.Bytes())
		})
	}
}

// TestBootstrapAdminAddress: a loopback --admin-address is taken silently;
// a non-loopback one only with --expose-admin, and then with a warning on
// stderr naming the flag and the value, and the bootstrap's admin listener
// is where the user said.
func TestBootstrapAdminAddress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantAddr string // in the bootstrap's admin listener
		warn     bool
	}{
		{"loopback v4", []string{"--admin-address", "127.0.0.2:15000"}, "address: 127.0.0.2", false},
		{"loopback v6", []string{"--admin-address", "[::1]:15000"}, "address: ::1", false},
		{"mapped loopback", []string{"--admin-address", "[::ffff:127.0.0.1]:15000"}, "address: ::ffff:127.0.0.1", false},
		{"exposed on purpose", []string{"--admin-address", "0.0.0.0:15000", "--expose-admin"}, "address: 0.0.0.0", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			args := append([]string{"bootstrap", "--node-id", "app", "--control-plane", "127.0.0.1:18000"}, tt.args...)
			if code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			admin, _, _ := strings.Cut(stdout.String(), "dynamicResources")
			if !strings.Contains(admin, tt.wantAddr) || !strings.Contains(admin, "portValue: 15000") {
				t.Errorf("bootstrap's admin listener is not on %s port 15000:\n%s", tt.wantAddr, stdout.String())
			}
			warned := strings.Contains(stderr.String(), "warning: --admin-address "+strconv.Quote(tt.args[1]))
			if warned != tt.warn {
				t.Errorf("warning on stderr = %v, want %v; stderr:\n%s", warned, tt.warn, stderr.String())
			}
		})
	}
}

// TestControlPlaneListensWhereItSays: --xds-address 0.0.0.0:P listens on
// IPv4 only, as 0.0.0.0 means to operators, and the log says 0.0.0.0:P and
// the family; [::]:P listens on both families and the log says so. Before
// 2026-12-05, 0.0.0.0 took IPv6 too (Go's dual-stack wildcard) and the log
// said [::]:P.
func TestControlPlaneListensWhereItSays(t *testing.T) {
	t.Parallel()
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	sw := &syncWriter{w: &stderr}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"control-plane", "--config", "../../examples/mesh.yaml", "--xds-address", "0.0.0.0:0", "--http-address", "[::]:0", "--log-format", "json"},
			strings.NewReader(""), io.Discard, sw)
	}()
	var rec struct {
		XDS          string `json:"xds"`
		XDSFamilies  string `json:"xds_families"`
		HTTP         string `json:"http"`
		HTTPFamilies string `json:"http_families"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for rec.XDS == "" {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no \"control plane listening\" line:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
		sw.mu.Lock()
		for _, line := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(line, `"msg":"control plane listening"`) {
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("%v: %s", err, line)
				}
			}
		}
		sw.mu.Unlock()
	}
	_, xdsPort, _ := net.SplitHostPort(rec.XDS)
	_, httpPort, _ := net.SplitHostPort(rec.HTTP)
	if !strings.HasPrefix(rec.XDS, "0.0.0.0:") || rec.XDSFamilies != "ipv4" || !strings.HasPrefix(rec.HTTP, "[::]:") || rec.HTTPFamilies != "ipv4,ipv6" {
		t.Errorf("logged xds %s (%s), http %s (%s); want 0.0.0.0:P (ipv4) and [::]:P (ipv4,ipv6)", rec.XDS, rec.XDSFamilies, rec.HTTP, rec.HTTPFamilies)
	}
	for _, c := range []struct {
		host, port string
		want       bool
	}{{"127.0.0.1", xdsPort, true}, {"::1", xdsPort, false}, {"127.0.0.1", httpPort, true}, {"::1", httpPort, true}} {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(c.host, c.port), 2*time.Second)
		if err == nil {
			conn.Close()
		}
		if (err == nil) != c.want {
			t.Errorf("dial %s port %s: %v; want reachable %v", c.host, c.port, err, c.want)
		}
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit %d after cancel:\n%s", code, stderr.String())
	}
}
