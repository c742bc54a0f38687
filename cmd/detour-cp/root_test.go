package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestGroupCommandsRefuseUnknownSubcommands: a command that only groups
// others (cni, completion) exits 2 naming an argument that is none of them,
// and shows its help (exit 0) without one. cobra showed the help and exited 0
// either way, so a script's `detour cni instal` looked like success.
func TestGroupCommandsRefuseUnknownSubcommands(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string // in stderr for exit 2, in stdout for exit 0
	}{
		{"cni, unknown", []string{"cni", "instal"}, exitUsage, `unknown command "instal" for "detour-cp cni"`},
		{"completion, unknown", []string{"completion", "nope"}, exitUsage, `unknown command "nope" for "detour-cp completion"`},
		{"cni alone", []string{"cni"}, 0, "Available Commands:"},
		{"completion alone", []string{"completion"}, 0, "Available Commands:"},
		{"completion bash", []string{"completion", "bash"}, 0, "bash completion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			got := stdout.String()
			if tt.wantCode != 0 {
				got = stderr.String()
			}
			if code != tt.wantCode || !strings.Contains(got, tt.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, stdout.String(), stderr.String(), tt.wantCode, tt.want)
			}
		})
	}
}
