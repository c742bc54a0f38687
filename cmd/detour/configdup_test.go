package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigDuplicateKeyExit2: a key given twice in one mapping of a
// --config document is named by its full path and line, and install exits 2
// before it touches anything (no root needed: it never gets that far).
func TestConfigDuplicateKeyExit2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct{ name, doc, want string }{
		{"yaml", "outbound:\n  excludePorts: [80]\n  excludePorts: [90]\n", `outbound.excludePorts (line 3) appears twice in the same mapping; give each key once`},
		{"json", "{\"inbound\": {\"excludePorts\": [22],\n  \"excludePorts\": [23]}}\n", `inbound.excludePorts (line 2) appears twice in the same mapping`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(dir, tt.name+".conf")
			if err := os.WriteFile(file, []byte(tt.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCLI(t, "install", "--config", file)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d; stderr: %s", code, exitUsage, stderr)
			}
			if want := "config file " + file + ": " + tt.want; !strings.Contains(stderr, want) {
				t.Errorf("stderr %q does not contain %q", stderr, want)
			}
		})
	}
}
