package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/detour-mesh/detour/redirect"
)

// handOvers records the calls a plugin without the eBPF backend hands over.
type handOvers struct {
	why   []string
	stdin [][]byte
	err   error
}

func (h *handOvers) handOver(why string, stdin []byte) error {
	h.why = append(h.why, why)
	h.stdin = append(h.stdin, stdin)
	if h.err != nil {
		return h.err
	}
	// The real one replaces the process; the test's returns as a failed
	// exec would, so the call must fail with code 50.
	return errors.New("exec detour-cni-ebpf: no such file or directory")
}

// TestHandOver: a plugin built without the eBPF backend (Options.HandOver
// set) hands exactly the calls that need that backend to HandOver, with the
// stdin the runtime wrote and the reason, before it changes anything; a
// failed hand-over is code 50 naming why. Every other call is served here.
func TestHandOver(t *testing.T) {
	t.Parallel()
	enabled := map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}
	pinned := t.TempDir()
	if err := os.Mkdir(filepath.Join(pinned, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	tests := []struct {
		name    string
		verb    string
		extra   map[string]any
		podAnn  map[string]string
		state   *State // saved before the call
		wantWhy string // "" = served here, not handed over
	}{
		{name: "ADD, plugin config backend ebpf", verb: "ADD", extra: map[string]any{"config": map[string]any{"backend": "ebpf"}, "ebpfPinDir": empty}, podAnn: enabled,
			wantWhy: "plugin config backend ebpf"},
		{name: "STATUS, plugin config backend ebpf", verb: "STATUS", extra: map[string]any{"config": map[string]any{"backend": "ebpf"}, "ebpfPinDir": empty},
			wantWhy: "plugin config backend ebpf"},
		{name: "ADD, the pod's annotation asks for ebpf", verb: "ADD", extra: map[string]any{"ebpfPinDir": empty},
			podAnn: map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled, "detour.io/backend": "ebpf"}, wantWhy: "pod plain/web asks for backend ebpf"},
		{name: "ADD of an nftables pod, maps pinned", verb: "ADD", extra: map[string]any{"config": map[string]any{"backend": "nftables"}, "ebpfPinDir": pinned}, podAnn: enabled,
			wantWhy: "the eBPF backend's maps are pinned at " + filepath.Join(pinned, "maps")},
		{name: "GC, maps pinned", verb: "GC", extra: map[string]any{"ebpfPinDir": pinned},
			wantWhy: "the eBPF backend's maps are pinned at " + filepath.Join(pinned, "maps")},
		{name: "CHECK of an ebpf attachment, nothing pinned", verb: "CHECK", extra: map[string]any{"ebpfPinDir": empty},
			state: &State{ContainerID: "c1", IfName: "eth0", Redirect: true, Config: &redirect.Config{Backend: redirect.BackendEBPF}}, wantWhy: "the attachment's backend is ebpf"},
		{name: "DEL of an enrolled attachment, nothing pinned", verb: "DEL", extra: map[string]any{"ebpfPinDir": empty},
			state: &State{ContainerID: "c1", IfName: "eth0", Redirect: true, NetnsCookie: 4097}, wantWhy: "the attachment's backend is ebpf"},
		{name: "GC of an enrolled attachment, nothing pinned", verb: "GC", extra: map[string]any{"ebpfPinDir": empty},
			state: &State{ContainerID: "stale", IfName: "eth0", Redirect: true, NetnsCookie: 4097}, wantWhy: "attachment stale has an eBPF enrolment"},
		{name: "ADD of an nftables pod, nothing pinned", verb: "ADD", extra: map[string]any{"config": map[string]any{"backend": "nftables"}, "ebpfPinDir": empty}, podAnn: enabled},
		{name: "DEL of an nftables attachment, nothing pinned", verb: "DEL", extra: map[string]any{"ebpfPinDir": empty},
			state: &State{ContainerID: "c1", IfName: "eth0", Redirect: true, Config: &redirect.Config{Backend: redirect.BackendNFTables}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, pod("plain", "web", tt.podAnn), namespace("plain", nil))
			h := &handOvers{}
			e.p.o.HandOver = h.handOver
			store := newStateStore(e.stateDir, "k8s-pod-network")
			if tt.state != nil {
				if err := store.save(*tt.state); err != nil {
					t.Fatal(err)
				}
				old := e.now.AddDate(0, 0, -1)
				if err := os.Chtimes(store.path(tt.state.ContainerID, "eth0"), old, old); err != nil {
					t.Fatal(err)
				}
			}
			conf := e.conf("1.1.0", "", tt.extra)
			args := e.args("c1", podArgs("plain", "web"), conf)
			var err error
			switch tt.verb {
			case "ADD":
				err = e.p.Add(args)
			case "CHECK":
				err = e.p.Check(args)
			case "DEL":
				err = e.p.Del(args)
			case "STATUS":
				err = e.p.Status(&skel.CmdArgs{StdinData: conf})
			case "GC":
				err = e.p.GC(&skel.CmdArgs{StdinData: conf})
			}
			if tt.wantWhy == "" {
				if len(h.why) != 0 {
					t.Errorf("handed over (%q); want it served here", h.why)
				}
				if tt.verb != "STATUS" && err != nil {
					t.Errorf("%s: %v", tt.verb, err)
				}
				return
			}
			if len(h.why) != 1 || h.why[0] != tt.wantWhy {
				t.Fatalf("hand-overs %q, want one: %q", h.why, tt.wantWhy)
			}
			if string(h.stdin[0]) != string(conf) {
				t.Errorf("handed over stdin %q, want the plugin config as written %q", h.stdin[0], conf)
			}
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, tt.wantWhy) {
				t.Errorf("failed hand-over: %v, want code %d naming %q", err, types.ErrPluginNotAvailable, tt.wantWhy)
			}
			if calls := e.net.Calls(); len(calls) != 0 {
				t.Errorf("the namespace was touched before the hand-over: %q", calls)
			}
			if tt.verb == "ADD" {
				if _, ok := e.state("c1"); ok {
					t.Error("a handed-over ADD recorded state")
				}
			}
			if tt.state != nil {
				if _, err := store.load(tt.state.ContainerID, "eth0"); err != nil {
					t.Errorf("a failed hand-over dropped the attachment's state: %v", err)
				}
			}
			if e.stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing (skel prints the error)", e.stdout.String())
			}
		})
	}
}
