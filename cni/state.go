package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/detour-mesh/detour/internal/atomicfile"
	"github.com/detour-mesh/detour/redirect"
)

// State is what ADD records about one attachment, so CHECK knows what to
// verify, DEL knows whether there is anything to remove, and GC can drop the
// records of attachments that are gone. It lives in one JSON file:
//
//	<stateDir>/<network name>/<container id>:<ifname>.json
//
// (':' appears in neither a container id nor an interface name, so the name
// cannot be ambiguous).
type State struct {
	ContainerID string  `json:"containerID"`
	IfName      string  `json:"ifName"`
	Netns       string  `json:"netns"`
	Pod         *PodRef `json:"pod,omitempty"`
	// Redirect says whether ADD installed redirection; Reason says why (or
	// why not).
	Redirect bool   `json:"redirect"`
	Reason   string `json:"reason"`
	// Config is what ADD installed (when Redirect).
	Config *redirect.Config `json:"config,omitempty"`
	// NetnsCookie is the cookie of the pod's network namespace when the
	// config's backend is ebpf: the pod is enrolled by it in maps that live
	// on the node, so DEL and GC can remove the enrolment after the
	// namespace is gone.
	NetnsCookie uint64 `json:"netnsCookie,omitempty"`
	// PassthroughRoute says ADD made the IPv6 inbound passthrough source
	// local with a route on lo rather than an address (plugin config key
	// passthroughOnLo): CHECK verifies what ADD made. Files of an older
	// detour-cni, which put the address, leave it false.
	PassthroughRoute bool      `json:"passthroughRoute,omitempty"`
	Added            time.Time `json:"added"`
}

// stateStore reads and writes State files of one network.
type stateStore struct {
	dir string // <stateDir>/<network>
}

func newStateStore(stateDir, network string) stateStore {
	return stateStore{dir: filepath.Join(stateDir, network)}
}

func stateName(containerID, ifName string) string {
	return containerID + ":" + ifName + ".json"
}

func (s stateStore) path(containerID, ifName string) string {
	return filepath.Join(s.dir, stateName(containerID, ifName))
}

// save writes st atomically (temporary file, rename), without fsync: the
// attachment it records lives in a network namespace, which a power loss
// takes away too; after one, the runtime's DEL of the old sandbox finds its
// namespace gone (and treats an unreadable state as "uninstall anyway") and
// GC drops what is left. A sync costs every ADD milliseconds on a busy disk.
func (s stateStore) save(st State) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := st.marshal()
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	final := s.path(st.ContainerID, st.IfName)
	if err := atomicfile.WriteVolatile(final, b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// marshal is json.MarshalIndent(st, "", "  ") and a newline, byte for byte
// (TestStateMarshal), written without reflection: encoding/json's first
// encode of State and redirect.Config builds their field tables by
// reflection, which costs every ADD page faults. load reads it with
// encoding/json (CHECK and DEL, and files earlier versions wrote).
func (st State) marshal() ([]byte, error) {
	b := make([]byte, 0, 2048)
	b = append(b, `{"containerID":`...)
	b = redirect.AppendJSONString(b, st.ContainerID)
	b = append(b, `,"ifName":`...)
	b = redirect.AppendJSONString(b, st.IfName)
	b = append(b, `,"netns":`...)
	b = redirect.AppendJSONString(b, st.Netns)
	if st.Pod != nil {
		b = append(b, `,"pod":{"namespace":`...)
		b = redirect.AppendJSONString(b, st.Pod.Namespace)
		b = append(b, `,"name":`...)
		b = redirect.AppendJSONString(b, st.Pod.Name)
		if st.Pod.UID != "" {
			b = append(b, `,"uid":`...)
			b = redirect.AppendJSONString(b, st.Pod.UID)
		}
		b = append(b, '}')
	}
	b = append(b, `,"redirect":`...)
	b = strconv.AppendBool(b, st.Redirect)
	b = append(b, `,"reason":`...)
	b = redirect.AppendJSONString(b, st.Reason)
	if st.Config != nil {
		b = append(b, `,"config":`...)
		b = st.Config.AppendJSON(b)
	}
	if st.NetnsCookie != 0 {
		b = append(b, `,"netnsCookie":`...)
		b = strconv.AppendUint(b, st.NetnsCookie, 10)
	}
	if st.PassthroughRoute {
		b = append(b, `,"passthroughRoute":true`...)
	}
	added, err := st.Added.MarshalJSON()
	if err != nil {
		return nil, err
	}
	b = append(append(append(b, `,"added":`...), added...), '}')
	var out bytes.Buffer
	out.Grow(2 * len(b))
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// load returns the attachment's state; fs.ErrNotExist when ADD recorded none.
func (s stateStore) load(containerID, ifName string) (State, error) {
	p := s.path(containerID, ifName)
	b, err := os.ReadFile(p)
	if err != nil {
		return State{}, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("decode state %s: %w", p, err)
	}
	return st, nil
}

// remove deletes the attachment's state; a missing file is not an error.
func (s stateStore) remove(containerID, ifName string) error {
	if err := os.Remove(s.path(containerID, ifName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// gc removes the state of every attachment not in valid, except files changed
// within grace (an ADD may be running while the runtime computed valid). It
// returns the attachments it dropped, "containerID:ifname". release, when set,
// is called with each stale state that decodes before its file goes; when it
// fails the file stays, so the next GC retries.
func (s stateStore) gc(valid []types.GCAttachment, grace time.Duration, now time.Time, release func(State) error) ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list state dir: %w", err)
	}
	keep := make(map[string]bool, len(valid))
	for _, a := range valid {
		keep[stateName(a.ContainerID, a.IfName)] = true
	}
	var out []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		isState := strings.HasSuffix(name, ".json") && strings.Contains(name, ":")
		isTemp := strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") // atomicfile's leftovers
		if e.IsDir() || (!isState && !isTemp) || keep[name] {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if now.Sub(info.ModTime()) < grace {
			continue
		}
		if isState && release != nil {
			var st State
			if b, err := os.ReadFile(filepath.Join(s.dir, name)); err == nil && json.Unmarshal(b, &st) == nil {
				if err := release(st); err != nil {
					errs = append(errs, err)
					continue
				}
			}
		}
		if err := os.Remove(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove state: %w", err))
			continue
		}
		if isState {
			out = append(out, strings.TrimSuffix(name, ".json"))
		}
	}
	return out, errors.Join(errs...)
}
