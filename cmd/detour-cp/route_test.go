package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/detour-mesh/detour/redirect"
)

// TestControlPlaneRoute: the JSON `detour explain --mesh` reads, for a service
// connection and an undeclared inbound port, and exit 2 on bad input.
func TestControlPlaneRoute(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		code    int
		cluster string
	}{
		{"service", []string{"--to", "198.51.100.80:80"}, 0, "outbound|80|backend"},
		{"passthrough", []string{"--to", "192.0.2.77:443"}, 0, "passthrough"},
		{"inbound undeclared port", []string{"--inbound", "--to", "[2001:db8:1::2]:9000"}, 0, "inbound-passthrough-ipv6"},
		{"bad destination", []string{"--to", "198.51.100.80"}, exitUsage, ""},
		{"unknown node", []string{"--to", "198.51.100.80:80", "--node-id", "nope"}, exitUsage, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"control-plane", "route", "--config", "../../examples/mesh.yaml", "--node-id", "app"}, tt.args...)
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, stderr.String())
			}
			if tt.code != 0 {
				return
			}
			var got struct {
				Cluster string `json:"cluster"`
			}
			if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || got.Cluster != tt.cluster {
				t.Errorf("cluster %q (%v), want %q:\n%s", got.Cluster, err, tt.cluster, stdout.String())
			}
		})
	}
}

// TestControlPlaneTransparentProxy: the workload's redirect config as the
// control plane resolves it (the mesh's, then the workload's own), in the
// document form `detour install --config` and `detour explain --mesh` read.
func TestControlPlaneTransparentProxy(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"control-plane", "transparent-proxy", "--config", "../../examples/mesh.yaml", "--node-id", "app"}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	got := redirect.Default()
	if err := got.Decode(stdout.Bytes()); err != nil {
		t.Fatalf("the output is not a config document: %v\n%s", err, stdout.String())
	}
	want := redirect.Default()
	if err := want.Decode([]byte("{proxy: {uid: 5678, inboundPort: 15006, outboundPort: 15001}, outbound: {excludePorts: [22]}, dns: {capture: all}}")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})); diff != "" {
		t.Errorf("app's transparentProxy (-want +got):\n%s", diff)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(context.Background(), []string{"control-plane", "transparent-proxy", "--config", "../../examples/mesh.yaml", "--node-id", "nope"}, strings.NewReader(""), &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), `--node-id "nope": no workload`) {
		t.Errorf("unknown node: exit %d, %s", code, stderr.String())
	}
}
