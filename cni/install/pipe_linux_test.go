package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestConfigFromPipe: `detour cni install --config <(render-config)` hands the
// installer a pipe (/dev/fd/63). Validate, Install and every repair of Run
// need the document; a pipe yields it once. It used to be read again after
// the first look and reported empty (exit 2), and a named FIFO's second open would
// wait for a writer forever.
func TestConfigFromPipe(t *testing.T) {
	t.Parallel()
	const doc = "mode: tproxy\noutbound:\n  excludePorts: [5432]\n"
	tests := []struct {
		name string
		// open returns the path the installer is given, with the document
		// written to it once.
		open func(t *testing.T, dir string) string
	}{
		{"process substitution", func(t *testing.T, dir string) string {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			if _, err := w.WriteString(doc); err != nil {
				t.Fatal(err)
			}
			w.Close()
			// What bash passes for <(…): the pipe's read end, by path.
			return fmt.Sprintf("/proc/self/fd/%d", r.Fd())
		}},
		{"named fifo", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "config.fifo")
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			go func() {
				// One writer, once, as a shell's `render > fifo`.
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err != nil {
					return
				}
				f.WriteString(doc)
				f.Close()
			}()
			t.Cleanup(func() {
				// Unblock an open still waiting for a writer.
				if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			})
			return p
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			primary := n.primary(t, "10-calico.conflist")
			o := n.options()
			o.ConfigFile = tc.open(t, n.root)
			in := New(o)
			done := make(chan error, 1)
			go func() {
				for i := range 2 { // the first install and a repair
					if _, err := in.Install(context.Background()); err != nil {
						done <- fmt.Errorf("Install %d: %w", i+1, err)
						return
					}
				}
				done <- nil
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the installer still waits on the config file after 10s (read it again?)")
			}
			var list struct {
				Plugins []struct {
					Type   string          `json:"type"`
					Config json.RawMessage `json:"config"`
				} `json:"plugins"`
			}
			if err := json.Unmarshal(readFile(t, primary), &list); err != nil {
				t.Fatal(err)
			}
			last := list.Plugins[len(list.Plugins)-1]
			var got any
			if err := json.Unmarshal(last.Config, &got); err != nil {
				t.Fatalf("entry config %s: %v", last.Config, err)
			}
			want := map[string]any{"mode": "tproxy", "outbound": map[string]any{"excludePorts": []any{5432.0}}}
			if last.Type != PluginType || !cmp.Equal(got, any(want)) {
				t.Errorf("entry %s with config %s, want detour-cni with %v", last.Type, last.Config, want)
			}
		})
	}
}
