package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
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
