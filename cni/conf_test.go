package cni

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/detour-mesh/detour/redirect"
)

func TestParseConfRefusesUnknownKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keys string // added to a valid config
		want []string
	}{
		{name: "misspelt detour key", keys: `"kubeconfg":"/etc/kc"`, want: []string{`plugin config key "kubeconfg" (did you mean kubeconfig?) is unknown`}},
		{name: "misspelt config setting", keys: `"backnd":"ebpf"`, want: []string{`"backnd" (did you mean the config document's backend? write "config": {"backend": ...})`}},
		{name: "config setting at the top level", keys: `"backend":"ebpf"`, want: []string{`"backend" (a setting of the config document: write "config": {"backend": ...})`}},
		{name: "another case", keys: `"LogLevel":"debug"`, want: []string{`"LogLevel" (keys are case-sensitive: logLevel)`}},
		{name: "spec key in another case", keys: `"IPAM":{}`, want: []string{`"IPAM" (keys are case-sensitive: ipam)`}},
		{name: "nothing close", keys: `"zzzzzzzzzz":1`, want: []string{`plugin config key "zzzzzzzzzz" is unknown: detour-cni reads kubeconfig, logFile`}},
		{name: "several, sorted", keys: `"stateDirectory":"/x","excludeNamespace":["a"]`, want: []string{`plugin config keys "excludeNamespace" (did you mean excludeNamespaces?), "stateDirectory"`, "are unknown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"detour-cni",` + tt.keys + `}`))
			if ErrorCode(err) != types.ErrInvalidNetworkConfig {
				t.Fatalf("err = %v (code %d), want code %d", err, ErrorCode(err), types.ErrInvalidNetworkConfig)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

// TestParseConfAcceptsSpecKeys: every key the CNI specification defines or
// reserves, as runtimes and other plugins' configs carry them, is accepted
// and changes nothing detour-cni reads.
func TestParseConfAcceptsSpecKeys(t *testing.T) {
	t.Parallel()
	const plain = `{"cniVersion":"1.1.0","name":"n","type":"detour-cni","kubeconfig":"/etc/kc"}`
	want, err := ParseConf([]byte(plain))
	if err != nil {
		t.Fatal(err)
	}
	extra := map[string]string{
		"capabilities":              `{"io.kubernetes.cri.pod-annotations":true,"portMappings":true}`,
		"runtimeConfig":             `{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{"ingressRate":1}}`,
		"args":                      `{"cni":{"ips":["198.51.100.7"]}}`,
		"prevResult":                `null`,
		"ipMasq":                    `true`,
		"ipam":                      `{"type":"host-local","subnet":"198.51.100.0/24"}`,
		"dns":                       `{"nameservers":["192.0.2.53"],"search":["svc"]}`,
		"cni.dev/valid-attachments": `[]`,
		"cni.dev/attachments":       `[{"containerID":"c1","ifname":"eth0"}]`,
		"cni.dev/some-future-key":   `{"x":1}`,
	}
	for _, k := range SpecKeys {
		if _, ok := extra[k]; !ok && !strings.Contains(plain, `"`+k+`"`) {
			t.Errorf("spec key %s is not covered here", k)
		}
	}
	for k, v := range extra {
		t.Run(k, func(t *testing.T) {
			t.Parallel()
			doc := strings.TrimSuffix(plain, "}") + `,"` + k + `":` + v + `}`
			got, err := ParseConf([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v", doc, err)
			}
			if d := cmp.Diff(want, got, cmpopts.IgnoreUnexported(Conf{}), cmpopts.EquateEmpty()); d != "" {
				t.Errorf("%s changes what the plugin reads (-want +got):\n%s", k, d)
			}
		})
	}
}

func TestParseConfValueTypes(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, conf, want string }{
		{name: "number for a string", conf: `{"cniVersion":"1.1.0","kubeconfig":5}`, want: "decode plugin config: key kubeconfig: 5 is not a string"},
		{name: "string for a list", conf: `{"cniVersion":"1.1.0","excludeNamespaces":"kube-system"}`, want: `decode plugin config: key excludeNamespaces: "kube-system" is not a list of strings`},
		{name: "annotations not strings", conf: `{"cniVersion":"1.1.0","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":1}}}`, want: "key runtimeConfig.io.kubernetes.cri.pod-annotations: {\"a\":1} is not an object of strings"},
		{name: "runtimeConfig not an object", conf: `{"cniVersion":"1.1.0","runtimeConfig":[]}`, want: "key runtimeConfig: [] is not an object"},
		{name: "not an object", conf: `["cniVersion"]`, want: "decode plugin config"},
		{name: "null", conf: `null`, want: "decode plugin config: null is not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseConf([]byte(tt.conf))
			if ErrorCode(err) != types.ErrDecodingFailure || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Fatalf("err = %v (code %d), want code %d containing %q", err, ErrorCode(err), types.ErrDecodingFailure, tt.want)
			}
		})
	}
}

// TestUnknownKeysPerVerb: ADD, CHECK and STATUS refuse a plugin config with
// an unknown key before anything is changed; DEL and GC remove what ADD made
// all the same (a pod's teardown must not get stuck on a typo) and log it.
func TestUnknownKeysPerVerb(t *testing.T) {
	t.Parallel()
	e := newEnv(t, pod("plain", "web", map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}))
	good := e.conf("1.1.0", prevResults["1.1.0"], nil)
	bad := e.conf("1.1.0", prevResults["1.1.0"], map[string]any{"backnd": "ebpf"})
	const want = `plugin config key "backnd"`

	err := e.p.Add(e.args("c1", podArgs("plain", "web"), bad))
	if ErrorCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(fmt.Sprint(err), want) {
		t.Fatalf("ADD: %v (code %d), want code %d naming the key", err, ErrorCode(err), types.ErrInvalidNetworkConfig)
	}
	if _, ok := e.state("c1"); ok || len(e.net.Calls()) != 0 || len(e.kube.Actions()) != 0 || e.stdout.Len() != 0 {
		t.Fatalf("a refused ADD did something: state %v, engine %v, api %v, stdout %q", ok, e.net.Calls(), e.kube.Actions(), e.stdout.String())
	}

	if err := e.p.Add(e.args("c1", podArgs("plain", "web"), good)); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Check(e.args("c1", podArgs("plain", "web"), bad)); ErrorCode(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("CHECK: %v (code %d), want code %d", err, ErrorCode(err), types.ErrInvalidNetworkConfig)
	}
	if err := e.p.Status(e.args("", "", bad)); ErrorCode(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("STATUS: %v (code %d), want code %d", err, ErrorCode(err), types.ErrInvalidNetworkConfig)
	}

	e.stderr.Reset()
	if err := e.p.Del(e.args("c1", podArgs("plain", "web"), bad)); err != nil {
		t.Fatalf("DEL with an unknown key: %v, want it to go on", err)
	}
	if _, ok := e.state("c1"); ok || !slices.Contains(e.net.Calls(), "uninstall "+testNetns) {
		t.Errorf("DEL left state %v or did not uninstall (%v)", ok, e.net.Calls())
	}
	if !strings.Contains(e.stderr.String(), "unknown keys") || !strings.Contains(e.stderr.String(), "backnd") {
		t.Errorf("DEL logged %q, want a warning naming the key", e.stderr.String())
	}

	gc := e.conf("1.1.0", "", map[string]any{"backnd": "ebpf", "cni.dev/valid-attachments": []any{}})
	if err := e.p.GC(e.args("", "", gc)); err != nil {
		t.Errorf("GC with an unknown key: %v, want it to go on", err)
	}
}

// oldConf is the plugin config as ParseConf read it before it read keys one
// by one (a tagged struct, encoding/json's case-insensitive matching, unknown
// keys ignored): FuzzParseConf checks that what both accept reads the same.
type oldConf struct {
	CNIVersion        string          `json:"cniVersion"`
	Name              string          `json:"name"`
	Type              string          `json:"type"`
	Kubeconfig        string          `json:"kubeconfig,omitempty"`
	LogFile           string          `json:"logFile,omitempty"`
	LogLevel          string          `json:"logLevel,omitempty"`
	ExcludeNamespaces []string        `json:"excludeNamespaces,omitempty"`
	StateDir          string          `json:"stateDir,omitempty"`
	Preset            string          `json:"preset,omitempty"`
	Config            json.RawMessage `json:"config,omitempty"`
	EBPFPinDir        string          `json:"ebpfPinDir,omitempty"`
	EBPFCgroupRoot    string          `json:"ebpfCgroupRoot,omitempty"`
	PassthroughOnLo   string          `json:"passthroughOnLo,omitempty"`
	RuntimeConfig     struct {
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	PrevResult       json.RawMessage      `json:"prevResult,omitempty"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

// FuzzParseConf: a config ParseConf accepts decodes exactly as the tagged
// struct did, and one the struct could not decode ParseConf refuses too.
func FuzzParseConf(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"detour-cni","kubeconfig":"/etc/kc","logFile":"/var/log/d.log","logLevel":"debug","excludeNamespaces":["kube-system","x"],"stateDir":"/s","preset":"istio","config":{"backend":"nftables"},"ebpfPinDir":"/sys/fs/bpf/d","ebpfCgroupRoot":"/sys/fs/cgroup/x","passthroughOnLo":"address"}`,
		`{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"detour.io/redirect":"enabled"},"portMappings":[]},"prevResult":{"cniVersion":"1.1.0","ips":[]}}`,
		`{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}],"config":"backend: iptables\n"}`,
		`{"cniVersion":"1.0.0","name":"n","kubeconfig":null,"excludeNamespaces":null,"config":null,"prevResult":null,"runtimeConfig":null}`,
		`{"cniVersion":"1.0.0","name":"n","kubeconfig":"a","kubeconfig":"b"}`,
		`{"cniVersion":"1.0.0","name":"\u00e9\ud83d\ude00","logFile":"\/x"}`,
		`{"cniVersion":"1.0.0","excludeNamespaces":[1]}`,
		`{"cniVersion":1}`,
		`[]`, `null`, `{`, `{"a":}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		got, err := ParseConf(doc)
		var old oldConf
		oldErr := json.Unmarshal(doc, &old)
		if err != nil {
			return // stricter is allowed: unknown keys, other cases, null
		}
		if foldedCapability(doc) {
			// The struct matched runtimeConfig's keys case-insensitively
			// too; ParseConf reads the capability's exact key only.
			return
		}
		if oldErr != nil {
			t.Fatalf("ParseConf accepts what the struct could not decode (%v):\n%s", oldErr, doc)
		}
		if string(old.Config) == "null" {
			old.Config = nil
		}
		if string(got.Config) == "null" {
			got.Config = nil
		}
		if string(old.PrevResult) == "null" {
			old.PrevResult = nil
		}
		if old.Kubeconfig == "" {
			old.Kubeconfig = DefaultKubeconfig
		}
		if old.StateDir == "" {
			old.StateDir = DefaultStateDir
		}
		if old.PassthroughOnLo == "" {
			old.PassthroughOnLo = PassthroughRoute
			if old.Preset == "istio" || old.Preset == "kuma" {
				old.PassthroughOnLo = PassthroughAddress
			}
		}
		want := Conf{
			CNIVersion: old.CNIVersion, Name: old.Name, Type: old.Type, Kubeconfig: old.Kubeconfig, LogFile: old.LogFile, LogLevel: old.LogLevel,
			ExcludeNamespaces: old.ExcludeNamespaces, StateDir: old.StateDir, Preset: old.Preset, Config: old.Config, EBPFPinDir: old.EBPFPinDir,
			EBPFCgroupRoot: old.EBPFCgroupRoot, PassthroughOnLo: old.PassthroughOnLo, PrevResult: old.PrevResult, ValidAttachments: old.ValidAttachments,
		}
		want.RuntimeConfig.PodAnnotations = old.RuntimeConfig.PodAnnotations
		if d := cmp.Diff(want, *got, cmpopts.IgnoreUnexported(Conf{}), cmpopts.EquateEmpty()); d != "" {
			t.Fatalf("ParseConf reads differently from the struct (-struct +ParseConf):\n%s\n%s", d, doc)
		}
	})
}

// foldedCapability says whether doc's runtimeConfig has a key that differs
// from CapabilityPodAnnotations in case only.
func foldedCapability(doc []byte) bool {
	var top map[string]json.RawMessage
	var rc map[string]json.RawMessage
	if json.Unmarshal(doc, &top) != nil || json.Unmarshal(top["runtimeConfig"], &rc) != nil {
		return false
	}
	for k := range rc {
		if k != CapabilityPodAnnotations && strings.EqualFold(k, CapabilityPodAnnotations) {
			return true
		}
	}
	return false
}
