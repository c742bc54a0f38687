//go:build linux

package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/detour-mesh/detour/bpf"
	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

// TestEBPFUpgrade: programs attached by another build of detour (the
// builds map made to say so, as an older binary's install leaves it) are
// drift for `detour check` (exit 3, naming both builds) and named by
// `detour status`; `detour install` replaces them in place (exit 0, a
// change; the same links run new programs) and redirection works before
// and after; then a map pinned with another layout makes `detour install`
// exit 1 saying what to do, with the links' programs unchanged.
func TestEBPFUpgrade(t *testing.T) {
	privtest.Require(t, "ip", "setpriv", "nft")
	p := newPod(t, variant{family: lab.IPv4, backend: ebpfBackend, mode: "redirect"})
	env := p.env
	p.startProxies()
	args := p.withFlags("install", "--inbound=false")
	check := append([]string{"check"}, args[1:]...)
	if r := p.detourCmd(env, args...); r.code != 0 {
		t.Fatalf("install:\n%s", r)
	}
	t.Cleanup(func() {
		if r := p.detourCmd(env, "uninstall"); r.code != 0 {
			t.Errorf("uninstall:\n%s", r)
		}
	})
	dirs, _ := filepath.Glob(filepath.Join(pinDir(env), "links", "netns@*"))
	if len(dirs) != 1 {
		t.Fatalf("link directories of the network-namespace scope: %q, want one", dirs)
	}
	programs := func() map[string][2]uint32 {
		t.Helper()
		out := map[string][2]uint32{}
		pins, err := os.ReadDir(dirs[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, pin := range pins {
			lk, err := link.LoadPinnedLink(filepath.Join(dirs[0], pin.Name()), nil)
			if err != nil {
				t.Fatal(err)
			}
			info, err := lk.Info()
			lk.Close()
			if err != nil {
				t.Fatal(err)
			}
			out[pin.Name()] = [2]uint32{uint32(info.ID), uint32(info.Program)}
		}
		return out
	}
	builds, err := ebpf.LoadPinnedMap(filepath.Join(pinDir(env), "maps", "builds"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer builds.Close()
	var key [48]byte
	copy(key[:], filepath.Base(dirs[0]))
	fake := sha256.Sum256([]byte("an older detour"))
	if err := builds.Put(key, fake); err != nil {
		t.Fatal(err)
	}
	p.outbound("O1 under the older build's programs", p.app(0, p.remoteDest()), srvOutbound)
	r := p.detourCmd(env, check...)
	if r.code != 3 || !strings.Contains(r.stdout, "+programs build "+bpf.BuildName()) || !strings.Contains(r.stdout, "-programs build "+hex.EncodeToString(fake[:6])) {
		t.Errorf("check over another build's programs: want exit 3 naming this build %s and the attached one:\n%s", bpf.BuildName(), r)
	}
	if r := p.detourCmd(env, "status"); r.code != 0 || !strings.Contains(r.stdout, "another build of detour") {
		t.Errorf("status over another build's programs: want it named:\n%s", r)
	}
	before := programs()
	if r := p.detourCmd(env, args...); r.code != 0 || strings.Contains(r.stdout, "no changes") {
		t.Fatalf("install over another build's programs: want exit 0 and a change:\n%s", r)
	}
	after := programs()
	for name, b := range before {
		if a := after[name]; a[0] != b[0] || a[1] == b[1] {
			t.Errorf("%s: link %d program %d after the upgrade, was link %d program %d; want the same link with a new program", name, a[0], a[1], b[0], b[1])
		}
	}
	if r := p.detourCmd(env, check...); r.code != 0 {
		t.Errorf("check after the upgrade: want exit 0:\n%s", r)
	}
	p.outbound("O1 after the upgrade", p.app(1, p.remoteDest()), srvOutbound)

	// A map of another layout: exit 1, nothing changed.
	pin := filepath.Join(pinDir(env), "maps", "dns_servers")
	real, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	info, err := real.Info()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	other, err := ebpf.NewMap(&ebpf.MapSpec{Type: info.Type, KeySize: info.KeySize, ValueSize: info.ValueSize, MaxEntries: info.MaxEntries * 2, Flags: info.Flags})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Pin(pin); err != nil {
		t.Fatal(err)
	}
	other.Close()
	if err := builds.Put(key, fake); err != nil {
		t.Fatal(err)
	}
	before = programs()
	if r := p.detourCmd(env, args...); r.code != 1 || !strings.Contains(r.stderr, "dns_servers") || !strings.Contains(r.stderr, "uninstall every eBPF scope") {
		t.Errorf("install over a map of another layout: want exit 1 naming the map and what to do:\n%s", r)
	}
	if after := programs(); len(after) != len(before) {
		t.Errorf("links after the failed install: %v, was %v", after, before)
	} else {
		for name, b := range before {
			if after[name] != b {
				t.Errorf("%s: link %v after the failed install, was %v", name, after[name], b)
			}
		}
	}
	p.outbound("O1 after the failed install", p.app(2, p.remoteDest()), srvOutbound)

	// Meanwhile, in another namespace, a netfilter install (a user who
	// upgraded detour over an older one's eBPF scopes) goes on with one
	// warning; an eBPF install there fails (exit 1) and enrolls nothing.
	q := newPod(t, variant{family: lab.IPv4, backend: nftNative, mode: "redirect"})
	q.startProxies()
	pins := pinsLeft(t, env)
	for _, be := range []string{nftNative, nft} {
		r := q.detourCmd(env, append(append([]string{"install"}, q.flagsWith(be)...), "--inbound=false")...)
		if r.code != 0 || strings.Count(r.stderr, "level=WARN") != 1 || !strings.Contains(r.stderr, "stale scopes of a backend cannot be read") || !strings.Contains(r.stderr, "dns_servers") {
			t.Errorf("install with %s beside eBPF maps of another layout: want exit 0 and one warning naming the map:\n%s", be, r)
		}
		q.outbound("O1 with "+be+" beside eBPF maps of another layout", q.app(0, q.remoteDest()), srvOutbound)
		if r := q.detourCmd(env, "uninstall"); r.code != 0 || !strings.Contains(r.stdout, "detour removed ("+be) {
			t.Errorf("uninstall of %s beside eBPF maps of another layout:\n%s", be, r)
		}
	}
	r = q.detourCmd(env, append(append([]string{"install"}, q.flagsWith(ebpfBackend)...), "--inbound=false")...)
	if r.code != 1 || !strings.Contains(r.stderr, "dns_servers") {
		t.Errorf("install with ebpf in another namespace over a map of another layout: want exit 1 naming the map:\n%s", r)
	}
	if got := pinsLeft(t, env); !slices.Equal(got, pins) {
		t.Errorf("pins after the installs in another namespace: %q, was %q", got, pins)
	}
	if r := q.detourCmd(env, "status"); r.code != 0 || !strings.Contains(r.stdout, "not installed") {
		t.Errorf("status in the other namespace: want nothing installed:\n%s", r)
	}
	os.Remove(pin)
	if err := real.Pin(pin); err != nil {
		t.Fatal(err)
	}
}
