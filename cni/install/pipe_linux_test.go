package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// TestFIFOInConfDir: a FIFO among the network configurations (or where the
// token is) blocked Install, Ready and Uninstall in open(2) for good, so the
// DaemonSet's pod never became ready nor exited. They fail, naming it.
func TestFIFOInConfDir(t *testing.T) {
	t.Parallel()
	for _, where := range []string{"primary", "token"} {
		t.Run(where, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.primary(t, "10-calico.conflist")
			fifo := filepath.Join(n.conf, "05-stuck.conflist")
			o := n.options()
			if where == "token" {
				fifo = filepath.Join(n.root, "sa/fifo-token")
				o.TokenFile = fifo
			}
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				// Unblock an open still waiting for a writer.
				if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			})
			in := New(o)
			calls := []struct {
				name string
				call func() error
			}{
				{"Install", func() error { _, err := in.Install(context.Background()); return err }},
			}
			if where == "primary" {
				calls = append(calls, []struct {
					name string
					call func() error
				}{
					{"Ready", in.Ready},
					{"Uninstall", func() error { _, err := in.Uninstall(context.Background()); return err }},
				}...)
			}
			for _, c := range calls {
				done := make(chan error, 1)
				go func() { done <- c.call() }()
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "not a regular file") {
						t.Errorf("%s = %v, want an error naming %s as not a regular file", c.name, err, fifo)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s still waits on the FIFO after 10s", c.name)
				}
			}
		})
	}
}
