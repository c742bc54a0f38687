package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/detour-mesh/detour/internal/privtest"
)

var enabled = map[string]string{"detour.io/redirect": "enabled"}

// startServers runs, inside the pod, an outbound and an inbound "proxy" on the
// default ports and two apps; and in the host namespace a "remote" server on
// the bridge's address.
func startServers(t *testing.T, p *pod) {
	t.Helper()
	serve(t, p.netns, "0.0.0.0:15001", "outbound-proxy")
	serve(t, p.netns, "0.0.0.0:15006", "inbound-proxy")
	serve(t, p.netns, "0.0.0.0:8080", "app8080")
	serve(t, p.netns, "0.0.0.0:8081", "app8081")
	serve(t, "", gatewayIP+":9000", "remote")
}

// detourRules returns the pod's rules that belong to detour (chains DETOUR_*
// and rules jumping to them), across both backends and families.
func detourRules(t testing.TB, p *pod) []string {
	t.Helper()
	var rules []string
	for _, l := range strings.Split(saveAll(t, p.netnsName), "\n") {
		if strings.Contains(l, "DETOUR") {
			rules = append(rules, l)
		}
	}
	return rules
}

func TestAnnotatedPodIsRedirected(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	p := h.newPod(t, ns, map[string]string{
		"detour.io/redirect":              "enabled",
		"detour.io/exclude-inbound-ports": "8081",
	}, created)
	hostBefore := saveAll(t, "")

	res := h.net.mustAdd(t, p)
	ip := podIP(t, res)
	startServers(t, p)

	tests := []struct {
		name, from, to, want string
	}{
		{"outbound to the gateway goes to the proxy", p.netns, gatewayIP + ":9000", "outbound-proxy " + gatewayIP + ":9000"},
		{"outbound to a remote address goes to the proxy", p.netns, remoteAddr, "outbound-proxy " + remoteAddr},
		{"inbound goes to the proxy", "", ip.String() + ":8080", "inbound-proxy " + ip.String() + ":8080"},
		{"excluded inbound port reaches the app", "", ip.String() + ":8081", "app8081 " + ip.String() + ":8081"},
		{"app to localhost is not captured", p.netns, "127.0.0.1:8080", "app8080 127.0.0.1:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ask(tt.from, tt.to)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("answer = %q, want %q", got, tt.want)
			}
		})
	}
	if len(detourRules(t, p)) == 0 {
		t.Error("no DETOUR rules in the pod namespace")
	}
	if after := saveAll(t, ""); after != hostBefore {
		t.Errorf("the host namespace's rules changed:\nbefore:\n%s\nafter:\n%s", hostBefore, after)
	}
	st, ok := h.net.state(t, p)
	if !ok || st["redirect"] != true || !strings.Contains(fmt.Sprint(st["reason"]), "pod annotation") {
		t.Errorf("state = %v", st)
	}
	if err := h.net.check(p); err != nil {
		t.Errorf("CHECK right after ADD: %v", err)
	}
	// Each log line is a JSON object with each key once (the engine's
	// "installed" line named the namespace beside the plugin's own netns).
	installed := false
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, h.net.logFile)), "\n") {
		if n := strings.Count(line, `"netns":`); n > 1 {
			t.Errorf("log line with netns %d times: %s", n, line)
		}
		installed = installed || strings.Contains(line, `"msg":"installed"`) && strings.Contains(line, `"netns":`)
	}
	if !installed {
		t.Errorf("no log line says installed with the netns:\n%s", readFile(t, h.net.logFile))
	}
}

func TestPlainPodIsNotRedirected(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	p := h.newPod(t, ns, nil, created)
	res := h.net.mustAdd(t, p)
	ip := podIP(t, res)
	startServers(t, p)

	for _, tt := range []struct{ from, to, want string }{
		{p.netns, gatewayIP + ":9000", "remote "},
		{"", ip.String() + ":8080", "app8080 "},
	} {
		got, err := ask(tt.from, tt.to)
		if err != nil {
			t.Fatalf("%s: %v", tt.to, err)
		}
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s answered %q, want %q…", tt.to, got, tt.want)
		}
	}
	if r := detourRules(t, p); len(r) != 0 {
		t.Errorf("a plain pod got DETOUR rules:\n%s", strings.Join(r, "\n"))
	}
	st, ok := h.net.state(t, p)
	if !ok || st["redirect"] != false || !strings.Contains(fmt.Sprint(st["reason"]), "not enabled") {
		t.Errorf("state = %v", st)
	}
	if err := h.net.check(p); err != nil {
		t.Errorf("CHECK of a plain pod: %v", err)
	}
}

func TestNamespaceLabelOptsIn(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, enabled)
	meshed := h.newPod(t, ns, nil, created)
	optedOut := h.newPod(t, ns, map[string]string{"detour.io/redirect": "disabled"}, created)
	h.net.mustAdd(t, meshed)
	h.net.mustAdd(t, optedOut)
	if len(detourRules(t, meshed)) == 0 {
		t.Error("a pod in a labelled namespace got no DETOUR rules")
	}
	if r := detourRules(t, optedOut); len(r) != 0 {
		t.Errorf("a pod annotated disabled got DETOUR rules:\n%s", strings.Join(r, "\n"))
	}
}

func TestExcludedNamespaceAndHostNetwork(t *testing.T) {
	h := setup(t)
	// kube-system is in the conflist's excludeNamespaces; its pod exists and
	// opts in, and is still skipped.
	sys := h.newPod(t, "kube-system", enabled, created)
	h.net.mustAdd(t, sys)
	if r := detourRules(t, sys); len(r) != 0 {
		t.Errorf("a pod of an excluded namespace got DETOUR rules:\n%s", strings.Join(r, "\n"))
	}
	st, _ := h.net.state(t, sys)
	if !strings.Contains(fmt.Sprint(st["reason"]), "excluded") {
		t.Errorf("state = %v", st)
	}

	// A host-network pod in a labelled namespace (runtimes do not normally
	// run CNI for them, but if one does, its namespace is the node's).
	ns := h.newNamespace(t, enabled)
	hn := h.newPod(t, ns, enabled, hostNetwork)
	h.net.mustAdd(t, hn)
	if r := detourRules(t, hn); len(r) != 0 {
		t.Errorf("a host-network pod got DETOUR rules:\n%s", strings.Join(r, "\n"))
	}
	st, _ = h.net.state(t, hn)
	if !strings.Contains(fmt.Sprint(st["reason"]), "host network") {
		t.Errorf("state = %v", st)
	}
}

func TestUnknownPodFailsClosed(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, enabled)
	p := h.newPod(t, ns, nil, notCreated) // never created in the API
	_, err := h.net.add(t, p)
	if cniCode(err) != 100 || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("ADD of an unknown pod: %v (code %d), want code 100 naming the pod", err, cniCode(err))
	}
	if _, ok := h.net.state(t, p); ok {
		t.Error("state recorded for a failed ADD")
	}
	// The runtime cleans a failed ADD up with DEL, which must succeed.
	if err := h.net.del(p); err != nil {
		t.Errorf("DEL after the failed ADD: %v", err)
	}
}

func TestUnreachableAPIFailsClosed(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	p := h.newPod(t, ns, enabled, created)
	// A kubeconfig whose server refuses connections: the plugin retries, then
	// fails with "try again later".
	u, err := url.Parse(h.env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	dead := strings.ReplaceAll(string(h.env.KubeConfig), u.Host, "127.0.0.1:1")
	if dead == string(h.env.KubeConfig) {
		t.Fatalf("cannot find the server %s in the kubeconfig", u.Host)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(dead), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := h.newNetwork("dt-dead-api", "1.1.0", map[string]any{"kubeconfig": path})
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.add(t, p)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "after 5 attempts") {
		t.Fatalf("ADD with the API down: %v (code %d), want code 11 after 5 attempts", err, cniCode(err))
	}
	if r := detourRules(t, p); len(r) != 0 {
		t.Errorf("rules installed although the API was down:\n%s", strings.Join(r, "\n"))
	}
	if !strings.Contains(n.logTail(), `"msg":"kubernetes api request failed, retrying"`) {
		t.Errorf("no retry in the log\n%s", n.logTail())
	}
}

func TestBadAnnotationFailsAdd(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	p := h.newPod(t, ns, map[string]string{"detour.io/redirect": "enabled", "detour.io/exclude-outbound-ports": "80,70000"}, created)
	_, err := h.net.add(t, p)
	if cniCode(err) != 101 || !strings.Contains(err.Error(), "detour.io/exclude-outbound-ports") || !strings.Contains(err.Error(), "70000") {
		t.Fatalf("ADD with a bad annotation: %v (code %d), want code 101 naming the annotation and value", err, cniCode(err))
	}
	if r := detourRules(t, p); len(r) != 0 {
		t.Errorf("rules installed for a bad annotation:\n%s", strings.Join(r, "\n"))
	}
}

// TestUnknownPluginConfigKeyFailsAdd: a misspelt key in detour-cni's entry
// ("backnd" for the config document's backend) fails the ADD through the
// runtime with code 7 naming it, instead of installing with the default
// backend; the runtime's DEL after the failed ADD succeeds.
func TestUnknownPluginConfigKeyFailsAdd(t *testing.T) {
	h := setup(t)
	n, err := h.newNetwork("dt-typo", "1.1.0", map[string]any{"backnd": "ebpf"})
	if err != nil {
		t.Fatal(err)
	}
	ns := h.newNamespace(t, nil)
	p := h.newPod(t, ns, enabled, created)
	_, err = n.add(t, p)
	if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `plugin config key "backnd" (did you mean the config document's backend?`) {
		t.Fatalf("ADD with a misspelt key: %v (code %d), want code 7 naming the key", err, cniCode(err))
	}
	if r := detourRules(t, p); len(r) != 0 {
		t.Errorf("rules installed although the plugin config was refused:\n%s", strings.Join(r, "\n"))
	}
	if _, ok := n.state(t, p); ok {
		t.Error("state recorded for a refused ADD")
	}
	if err := n.del(p); err != nil {
		t.Errorf("DEL after the refused ADD: %v", err)
	}
}

func TestCheckCatchesDrift(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	p := h.newPod(t, ns, enabled, created)
	h.net.mustAdd(t, p)
	if err := h.net.check(p); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	// Someone deletes one of our rules (in the backend that holds them).
	rule, save := "", ""
	for _, tool := range []string{"iptables-nft", "iptables-legacy"} {
		out := privtest.Run(t, "ip", "netns", "exec", p.netnsName, tool+"-save", "-t", "nat")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A DETOUR_") {
				rule, save = l, tool
				break
			}
		}
		if rule != "" {
			break
		}
	}
	if rule == "" {
		t.Fatal("no DETOUR rule in the pod's nat table")
	}
	// The save line is shell-quoted (comments may hold spaces).
	privtest.Run(t, "ip", "netns", "exec", p.netnsName, "sh", "-c", save+" -t nat -D "+strings.TrimPrefix(rule, "-A "))
	err := h.net.check(p)
	if cniCode(err) != 103 {
		t.Fatalf("CHECK after deleting %q: %v (code %d), want code 103", rule, err, cniCode(err))
	}
}

func TestDelTwiceAndWithNetnsGone(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)

	p := h.newPod(t, ns, enabled, created)
	h.net.mustAdd(t, p)
	for i := range 2 {
		if err := h.net.del(p); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
		if r := detourRules(t, p); len(r) != 0 {
			t.Fatalf("rules left after DEL #%d:\n%s", i+1, strings.Join(r, "\n"))
		}
		if _, ok := h.net.state(t, p); ok {
			t.Fatalf("state left after DEL #%d", i+1)
		}
	}

	gone := h.newPod(t, ns, enabled, created)
	h.net.mustAdd(t, gone)
	privtest.Run(t, "ip", "netns", "delete", gone.netnsName)
	for i := range 2 {
		if err := h.net.del(gone); err != nil {
			t.Fatalf("DEL #%d with the netns gone: %v", i+1, err)
		}
	}
	if _, ok := h.net.state(t, gone); ok {
		t.Error("state left after DEL with the netns gone")
	}
	// The runtime may also pass no netns at all.
	rt := *gone.rt
	rt.NetNS = ""
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.net.cni.DelNetworkList(ctx, h.net.list, &rt); err != nil {
		t.Errorf("DEL without CNI_NETNS: %v", err)
	}
}

func TestStatus(t *testing.T) {
	h := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.net.cni.GetStatusNetworkList(ctx, h.net.list); err != nil {
		t.Fatalf("STATUS of a ready plugin: %v", err)
	}

	missing, err := h.newNetwork("dt-status", "1.1.0", map[string]any{"kubeconfig": filepath.Join(t.TempDir(), "not-yet-written")})
	if err != nil {
		t.Fatal(err)
	}
	err = missing.cni.GetStatusNetworkList(ctx, missing.list)
	if cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "not-yet-written") {
		t.Errorf("STATUS without a kubeconfig: %v (code %d), want code 50 naming it", err, cniCode(err))
	}

	// The iptables tools missing from the plugin's PATH: auto (the default)
	// then installs with nftables, which needs no tool, so the node is ready
	// where the kernel's nf_tables answers (it does here); a config naming an
	// iptables backend is not.
	empty := t.TempDir()
	noTools := h.runtime(filepath.Join(t.TempDir(), "cache"), []string{"PATH=" + empty})
	if err := noTools.GetStatusNetworkList(ctx, h.net.list); err != nil {
		t.Errorf("STATUS of backend auto without iptables on PATH: %v, want ready (nftables)", err)
	}
	iptablesOnly, err := h.newNetwork("dt-status-iptables", "1.1.0", map[string]any{"config": map[string]any{"backend": "iptables-nft"}})
	if err != nil {
		t.Fatal(err)
	}
	err = noTools.GetStatusNetworkList(ctx, iptablesOnly.list)
	if cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "iptables-nft-restore") {
		t.Errorf("STATUS of backend iptables-nft without iptables on PATH: %v (code %d), want code 50 naming the tool", err, cniCode(err))
	}

	// The plugin binary itself missing: the runtime cannot run STATUS at all.
	noPlugin := libcni.NewCNIConfigWithCacheDir([]string{h.pluginsBin}, filepath.Join(t.TempDir(), "cache"), nil)
	if err := noPlugin.GetStatusNetworkList(ctx, h.net.list); err == nil || !strings.Contains(err.Error(), "detour-cni") {
		t.Errorf("STATUS without the detour-cni binary: %v, want an error naming it", err)
	}
}

func TestGC(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	live := h.newPod(t, ns, enabled, created)
	h.net.mustAdd(t, live)

	// Two attachments the runtime forgot (added through another libcni cache,
	// so GC's synthesized DELs do not reach them): one old, one just added.
	other := &network{name: h.net.name, list: h.net.list, lo: h.net.lo, stateDir: h.net.stateDir, logFile: h.net.logFile,
		cni: h.runtime(filepath.Join(t.TempDir(), "cache"), nil)}
	stale := h.newPod(t, ns, nil, created)
	fresh := h.newPod(t, ns, nil, created)
	other.mustAdd(t, stale)
	other.mustAdd(t, fresh)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(h.net.statePath(stale), old, old); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	valid := []types.GCAttachment{{ContainerID: live.rt.ContainerID, IfName: "eth0"}}
	if err := h.net.cni.GCNetworkList(ctx, h.net.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, ok := h.net.state(t, stale); ok {
		t.Error("GC kept the state of a stale attachment")
	}
	if _, ok := h.net.state(t, fresh); !ok {
		t.Error("GC dropped the state of an attachment younger than its grace period")
	}
	if _, ok := h.net.state(t, live); !ok {
		t.Error("GC dropped the state of a valid attachment")
	}
	if err := h.net.check(live); err != nil {
		t.Errorf("CHECK of the valid attachment after GC: %v", err)
	}
}

func TestConfigVersions(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, nil)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		for _, meshed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/meshed=%v", v, meshed), func(t *testing.T) {
				n, err := h.newNetwork("dt-v"+strings.ReplaceAll(v, ".", ""), v, nil)
				if err != nil {
					t.Fatal(err)
				}
				var ann map[string]string
				if meshed {
					ann = enabled
				}
				p := h.newPod(t, ns, ann, created)
				r, err := n.add(t, p)
				if err != nil {
					t.Fatalf("ADD: %v\n%s", err, n.logTail())
				}
				// The chain's result is the bridge's, passed through detour-cni in
				// the config's version.
				var raw map[string]any
				b, _ := json.Marshal(r)
				_ = json.Unmarshal(b, &raw)
				if raw["cniVersion"] != v {
					t.Errorf("result cniVersion = %v, want %s", raw["cniVersion"], v)
				}
				res, err := current.NewResultFromResult(r)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.IPs) != 1 || len(res.Interfaces) != 3 || res.Interfaces[2].Sandbox != p.netns {
					t.Errorf("result lost the bridge's content: %s", b)
				}
				if meshed != (len(detourRules(t, p)) > 0) {
					t.Errorf("meshed = %v but DETOUR rules: %v", meshed, detourRules(t, p))
				}
				if v != "0.3.1" {
					if err := n.check(p); err != nil {
						t.Errorf("CHECK: %v", err)
					}
				}
			})
		}
	}
}

func TestParallelAdds(t *testing.T) {
	h := setup(t)
	ns := h.newNamespace(t, enabled)
	const pods = 50
	ps := make([]*pod, pods)
	for i := range ps {
		ps[i] = h.newPod(t, ns, nil, created)
	}
	var wg sync.WaitGroup
	errs := make([]error, pods)
	start := time.Now()
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.net.add(t, p)
		}()
	}
	wg.Wait()
	t.Logf("%d parallel ADDs (bridge + detour-cni) took %v", pods, time.Since(start))
	for i, err := range errs {
		if err != nil {
			t.Errorf("pod %d: %v", i, err)
		}
	}
	if t.Failed() {
		t.Fatal(h.net.logTail())
	}
	for i, p := range ps {
		if len(detourRules(t, p)) == 0 {
			t.Errorf("pod %d has no DETOUR rules", i)
		}
		if st, ok := h.net.state(t, p); !ok || st["redirect"] != true {
			t.Errorf("pod %d state = %v", i, st)
		}
	}
	// And all of them go away in parallel too.
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.net.del(p)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL pod %d: %v", i, err)
		}
	}
}

func TestVersionReport(t *testing.T) {
	h := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := h.net.cni.GetVersionInfo(ctx, "detour-cni")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	if got := info.SupportedVersions(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("supported versions = %v, want %v", got, want)
	}
}

// podAnnotationsCap is the capability detour cni install declares in the
// plugin's conflist entry: the runtime then passes the pod's annotations.
const podAnnotationsCap = "io.kubernetes.cri.pod-annotations"

// fromKubelet is what containerd and CRI-O pass under podAnnotationsCap: the
// pod's annotations plus those kubelet adds to every pod.
func fromKubelet(annotations map[string]string) map[string]any {
	m := map[string]string{"kubernetes.io/config.seen": time.Now().UTC().Format(time.RFC3339Nano), "kubernetes.io/config.source": "api"}
	for k, v := range annotations {
		m[k] = v
	}
	return map[string]any{podAnnotationsCap: m}
}

// TestPodAnnotationsFromRuntime: with the capability in the conflist entry and
// the runtime passing the pod's annotations, an opted-in pod is redirected
// without the API — the plugin's kubeconfig does not even exist — while a pod
// whose annotations do not say still needs its namespace's label, so its ADD
// fails closed.
func TestPodAnnotationsFromRuntime(t *testing.T) {
	h := setup(t)
	n, err := h.newNetwork("dt-runtime", "1.1.0", map[string]any{
		"kubeconfig":   filepath.Join(t.TempDir(), "no-kubeconfig"),
		"capabilities": map[string]bool{podAnnotationsCap: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := h.newNamespace(t, nil)
	ann := map[string]string{"detour.io/redirect": "enabled", "detour.io/exclude-inbound-ports": "8081"}
	p := h.newPod(t, ns, ann, created)
	p.rt.CapabilityArgs = fromKubelet(ann)
	res := n.mustAdd(t, p)
	ip := podIP(t, res)
	startServers(t, p)
	for _, tt := range []struct{ from, to, want string }{
		{p.netns, remoteAddr, "outbound-proxy " + remoteAddr},
		{"", ip.String() + ":8080", "inbound-proxy " + ip.String() + ":8080"},
		{"", ip.String() + ":8081", "app8081 " + ip.String() + ":8081"},
	} {
		got, err := ask(tt.from, tt.to)
		if err != nil {
			t.Fatalf("%s: %v", tt.to, err)
		}
		if got != tt.want {
			t.Errorf("%s answered %q, want %q", tt.to, got, tt.want)
		}
	}
	st, ok := n.state(t, p)
	if !ok || st["redirect"] != true || !strings.Contains(fmt.Sprint(st["reason"]), "pod annotation") {
		t.Errorf("state = %v", st)
	}
	if log := n.logTail(); !strings.Contains(log, `"annotations_from":"runtime"`) {
		t.Errorf("the log does not say the annotations came from the runtime:\n%s", log)
	}
	if err := n.check(p); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	plain := h.newPod(t, ns, nil, created)
	plain.rt.CapabilityArgs = fromKubelet(nil)
	_, err = n.add(t, plain)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "read namespace "+ns) {
		t.Fatalf("ADD of a pod whose annotations do not say, without the API: %v (code %d), want code 11 naming the namespace read", err, cniCode(err))
	}
	if r := detourRules(t, plain); len(r) != 0 {
		t.Errorf("rules installed for a pod that did not opt in:\n%s", strings.Join(r, "\n"))
	}
}
