package bpf

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// An upgrade of detour must replace the programs it attached before: their
// links stay pinned across installs, and a pinned link keeps the program it
// was made with. So detour notes beside the pins which build of the programs
// each attach point runs (the builds map: link directory → a SHA-256 of the
// embedded object), and an install whose own build differs loads its
// programs over the pinned maps and swaps each pinned link's program in place
// (BPF_LINK_UPDATE: the hook never runs without a program of detour's, the
// maps and their entries stay). A link directory without a note was attached
// by a detour from before the notes: another build.
const buildsMap = "builds"

// buildKey is a link directory's name ("netns@<id>", "cgroup@<id>",
// "sk_msg"), zero-padded.
type buildKey [48]byte

func buildKeyOf(dir string) buildKey {
	var k buildKey
	copy(k[:], filepath.Base(dir))
	return k
}

func buildsSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       buildsMap, // the pin's name too
		Type:       ebpf.Hash,
		KeySize:    uint32(len(buildKey{})),
		ValueSize:  sha256.Size,
		MaxEntries: 1 << 16, // as many as attach points
		Pinning:    ebpf.PinByName,
	}
}

// unknownBuild is what an attach point without a note runs.
const unknownBuild = "unknown (attached by a detour that recorded no build)"

// openBuilds opens the pinned builds map, creating and pinning it when
// missing.
func (l *Loader) openBuilds() (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(buildsSpec(), ebpf.MapOptions{PinPath: l.mapDir()})
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", buildsMap, err)
	}
	return m, nil
}

// buildOf reads the build noted for a link directory; ok is false when none
// is noted.
func (st *store) buildOf(dir string) (b [sha256.Size]byte, ok bool, err error) {
	err = st.builds.Lookup(buildKeyOf(dir), &b)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return b, false, nil
	}
	if err != nil {
		return b, false, fmt.Errorf("read map %s: %w", buildsMap, err)
	}
	return b, true, nil
}

func (st *store) noteBuild(dir string) error {
	b := thisBuild()
	if err := st.builds.Put(buildKeyOf(dir), b); err != nil {
		return fmt.Errorf("write map %s: %w", buildsMap, err)
	}
	return nil
}

// forgetBuild deletes the note of a link directory detach removed (pinDir
// is the directory above links/). No map pinned: nothing to forget.
func forgetBuild(pinDir, dir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", buildsMap), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned map %s: %w", buildsMap, err)
	}
	defer m.Close()
	if err := m.Delete(buildKeyOf(dir)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from map %s: %w", buildsMap, err)
	}
	return nil
}

// loadBuilds reads every note by link directory name, as buildName shows it
// (none when the map is not pinned).
func (l *Loader) loadBuilds() (map[string]string, error) {
	out := map[string]string{}
	m, err := ebpf.LoadPinnedMap(filepath.Join(l.mapDir(), buildsMap), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pinned map %s: %w", buildsMap, err)
	}
	defer m.Close()
	var (
		k buildKey
		v [sha256.Size]byte
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		name := k[:]
		for len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1]
		}
		out[string(name)] = buildName(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read map %s: %w", buildsMap, err)
	}
	return out, nil
}

// stale reports whether the programs pinned in dir are of another build
// than this binary's (no note counts as another), and names theirs.
func (st *store) stale(dir string) (bool, string, error) {
	b, ok, err := st.buildOf(dir)
	if err != nil {
		return false, "", err
	}
	if !ok {
		return true, unknownBuild, nil
	}
	return b != thisBuild(), buildName(b), nil
}

// replace swaps the program of every link pinned in dir for coll's program
// of the same name (BPF_LINK_UPDATE: the link and its id stay, the hook is
// never without a program). It reports whether it replaced any.
func replace(dir string, coll *ebpf.Collection) (bool, error) {
	pins, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("read links: %w", err)
	}
	done := false
	for _, name := range orderedPins(pins) {
		prog := coll.Programs[name]
		if prog == nil {
			continue // not a program of this build's: left as it is
		}
		lk, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if err != nil {
			return done, fmt.Errorf("load link %s: %w", name, err)
		}
		err = lk.Update(prog)
		lk.Close()
		if err != nil {
			return done, fmt.Errorf("replace the program of link %s: %w", name, err)
		}
		done = true
	}
	return done, nil
}

// orderedPins is the pins' names in attach order (getsockopt and sockops
// first, connect last: a connection the new connect programs redirect is
// answered by the new getsockopt), then any other.
func orderedPins(pins []os.DirEntry) []string {
	have := map[string]bool{}
	for _, p := range pins {
		have[p.Name()] = true
	}
	var out []string
	for _, a := range attachments {
		if have[a.prog] {
			out = append(out, a.prog)
			delete(have, a.prog)
		}
	}
	for _, p := range pins {
		if have[p.Name()] {
			out = append(out, p.Name())
		}
	}
	return out
}
