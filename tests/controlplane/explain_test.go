//go:build linux

package cpe2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExplainMeshConfig: `detour explain --mesh FILE --node-id ID` answers
// what is captured from that workload's transparentProxy — the mesh's
// defaults, then the workload's own, as its listeners are made — not from
// explain's built-in defaults; a setting's own flag or DETOUR_* variable
// still overrides that setting, and a --config or --preset beside --mesh is
// refused. It asks the configuration only (--config-only): no root needed.
func TestExplainMeshConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(mesh, []byte(`
transparentProxy: {proxy: {uid: 1337}}
services:
  - {name: db, virtualIPs: [198.51.100.81], ports: [5432], endpoints: [192.0.2.11]}
workloads:
  - nodeId: app
    addresses: [203.0.113.2]
    reach: ["*"]
    transparentProxy:
      ipFamilies: ipv4
      proxy: {outboundPort: 16001}
      outbound: {excludePorts: [22]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte("outbound: {excludePorts: [80]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		Captured bool   `json:"captured"`
		Port     uint16 `json:"port"`
		Config   struct {
			Reason struct {
				Field string `json:"field"`
			} `json:"reason"`
		} `json:"config"`
		Envoy *struct {
			Listener string `json:"listener"`
			Cluster  string `json:"cluster"`
		} `json:"envoy"`
		Notes []string `json:"notes"`
	}
	for _, tc := range []struct {
		name     string
		args     []string
		env      []string
		captured bool
		port     uint16
		field    string
		cluster  string // the Envoy side, when captured
		override string // named in the notes
	}{
		{"workload's outbound port", []string{"--to", "198.51.100.81:5432", "--uid", "1000"}, nil, true, 16001, "outbound.enabled", "outbound|5432|db", ""},
		{"workload's excluded port", []string{"--to", "192.0.2.1:22", "--uid", "1000"}, nil, false, 0, "outbound.excludePorts", "", ""},
		{"mesh's proxy uid", []string{"--to", "192.0.2.1:80", "--uid", "1337"}, nil, false, 0, "proxy.uid", "", ""},
		{"flag over the workload's", []string{"--to", "192.0.2.1:22", "--uid", "1000", "--exclude-outbound-ports", "5432"}, nil, true, 16001, "outbound.enabled", "passthrough", "--exclude-outbound-ports"},
		{"environment over the workload's", []string{"--to", "192.0.2.1:80", "--uid", "1000"}, []string{"DETOUR_OUTBOUND_PORT=17001"}, true, 17001, "outbound.enabled", "", "DETOUR_OUTBOUND_PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"explain", "--config-only", "--mesh", mesh, "--node-id", "app", "-o", "json"}, tc.args...)
			stdout, stderr, code := runDetour(t, tc.env, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var a answer
			if err := json.Unmarshal(stdout, &a); err != nil {
				t.Fatalf("%v:\n%s", err, stdout)
			}
			if a.Captured != tc.captured || a.Port != tc.port || a.Config.Reason.Field != tc.field {
				t.Errorf("captured %v port %d by %s, want %v %d by %s:\n%s", a.Captured, a.Port, a.Config.Reason.Field, tc.captured, tc.port, tc.field, stdout)
			}
			switch {
			case tc.cluster != "" && (a.Envoy == nil || a.Envoy.Cluster != tc.cluster):
				t.Errorf("envoy %+v, want cluster %s", a.Envoy, tc.cluster)
			case tc.cluster == "" && tc.override == "" && a.Envoy != nil:
				t.Errorf("envoy %+v for a connection the proxy never sees", a.Envoy)
			}
			notes := strings.Join(a.Notes, "\n")
			if !strings.Contains(notes, "workload app's transparentProxy in "+mesh) || !strings.Contains(notes, tc.override) {
				t.Errorf("notes %q: want the workload's transparentProxy named, and %q", notes, tc.override)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"config file", []string{"--config", cfgFile}, nil, "--config: cannot be combined with --mesh"},
		{"preset", []string{"--preset", "istio"}, nil, "--preset: cannot be combined with --mesh"},
		{"preset from the environment", nil, []string{"DETOUR_PRESET=istio"}, "DETOUR_PRESET: cannot be combined with --mesh"},
		{"unknown node", []string{"--node-id", "web"}, nil, `--node-id "web": no workload`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"explain", "--config-only", "--mesh", mesh, "--node-id", "app", "--to", "192.0.2.1:80"}, tc.args...)
			stdout, stderr, code := runDetour(t, tc.env, args...)
			if code != 2 || !strings.Contains(stderr, tc.want) || len(stdout) != 0 {
				t.Errorf("exit %d, stderr %q, stdout %q; want exit 2 naming %q and nothing on stdout", code, stderr, stdout, tc.want)
			}
		})
	}
}

// runDetour runs the detour binary TestMain built (detour-cp beside it) with
// env added to the test's environment.
func runDetour(t *testing.T, env []string, args ...string) (stdout []byte, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(detourBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.Bytes(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), errb.String(), 0
}
