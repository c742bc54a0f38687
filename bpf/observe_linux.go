package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// Observe reads what of detour's is pinned under PinDir: every enrolled
// scope's entries and the pinned links. It never writes (a missing pin
// directory is an empty State).
func (l *Loader) Observe() (State, error) {
	st := State{Scopes: map[uint64]ScopeState{}, Links: map[string][]string{}, records: map[uint64]record{}, unenrolled: map[uint64]ScopeState{}}
	if _, err := os.Stat(l.mapDir()); errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	unlock, err := l.rlock()
	if err != nil {
		return st, err
	}
	defer unlock()
	if _, err := os.Stat(l.mapDir()); errors.Is(err, fs.ErrNotExist) {
		return st, nil // the last scope left meanwhile
	}
	if st.Links, err = l.observeLinks(); err != nil {
		return st, err
	}
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	s := &store{maps: map[string]*ebpf.Map{}}
	defer s.close()
	for _, name := range []string{"scopes", "configs", "cidrs4", "cidrs6", "ids", "ports", "dns_servers"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(l.mapDir(), name), ro)
		if errors.Is(err, fs.ErrNotExist) && len(st.Links) == 0 {
			// An install pins its maps one by one, under the lock this
			// holds now; one killed meanwhile left some, and no scope.
			st.leftover = fmt.Sprintf("some of detour's maps pinned under %s belong to no scope (an install was interrupted while it pinned them: %s is missing)", l.mapDir(), name)
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("load pinned map %s: %w", name, err)
		}
		s.maps[name] = m
	}
	s.scopes, s.configs = s.maps["scopes"], s.maps["configs"]
	s.cidrs4, s.cidrs6, s.ids, s.ports, s.dns = s.maps["cidrs4"], s.maps["cidrs6"], s.maps["ids"], s.maps["ports"], s.maps["dns_servers"]
	var (
		k  uint64
		id uint32
	)
	it := s.scopes.Iterate()
	for it.Next(&k, &id) {
		e, err := s.read(id)
		if err != nil {
			return st, err
		}
		st.Scopes[k] = ScopeState{Config: id, Lines: e.lines(), entries: e}
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("read scopes: %w", err)
	}
	if st.records, err = l.loadRecords(); err != nil {
		return st, err
	}
	inUse := map[uint32]bool{}
	for _, sc := range st.Scopes {
		inUse[sc.Config] = true
	}
	for k, r := range st.records {
		if _, ok := st.Scopes[k]; ok {
			continue
		}
		if inUse[r.Config] {
			// Another scope has the id now: its entries are not this one's.
			st.unenrolled[k] = ScopeState{Config: r.Config, entries: newEntries()}
			continue
		}
		e, err := s.read(r.Config)
		if err != nil {
			return st, err
		}
		st.unenrolled[k] = ScopeState{Config: r.Config, Lines: e.lines(), entries: e}
	}
	gone, err := l.goneCgroups()
	if err != nil {
		return st, err
	}
	st.goneIDs = gone
	for _, id := range gone {
		st.gone = append(st.gone, fmt.Sprintf("the scope of a cgroup that is gone (cgroup id %d: removed before `detour uninstall --cgroup`; its programs went with it, its entries and pins stayed)", id))
	}
	goneNs, err := l.goneNetns()
	if err != nil {
		return st, err
	}
	st.goneNetns = goneNs
	for _, cookie := range goneNs {
		cfg := ""
		if sc, ok := st.Scopes[cookie]; ok {
			cfg = fmt.Sprintf(", config %d", sc.Config)
		} else if r, ok := st.records[cookie]; ok {
			cfg = fmt.Sprintf(", config %d", r.Config)
		}
		st.gone = append(st.gone, fmt.Sprintf("the stale network-namespace scope of netns cookie %d%s (the namespace is gone: deleted without `detour uninstall`; its entries and pins stayed%s; `detour uninstall --stale`, or the next install or uninstall of any scope, removes it)", cookie, cfg, st.rootNote()))
	}
	if len(st.Scopes) == 0 && len(st.records) == 0 {
		// Enrolling is the last step of an install, under the lock this
		// holds, and the last scope's removal unpins everything: pins
		// without any scope are an install's that was interrupted.
		what := "detour's maps"
		if len(st.Links) > 0 {
			what = "detour's maps and program links (the programs attached, capturing nothing)"
		}
		st.leftover = fmt.Sprintf("%s pinned under %s belong to no scope (an install was interrupted before it enrolled one)", what, l.opts.pinDir())
	}
	return st, nil
}

// observeLinks reads the pinned links' names by link directory. A cgroup
// link detached by hand (`bpftool link detach`: pinned, reading cgroup id 0,
// its cgroup still there) is not counted: its program is not attached.
func (l *Loader) observeLinks() (map[string][]string, error) {
	out := map[string][]string{}
	dirs, _ := filepath.Glob(filepath.Join(l.opts.pinDir(), "links", "*"))
	for _, d := range dirs {
		pins, err := os.ReadDir(d)
		if err != nil {
			return out, fmt.Errorf("read links: %w", err)
		}
		var cg uint64
		if kind, id, ok := strings.Cut(filepath.Base(d), "@"); ok && (kind == kindCgroup || kind == kindNetns) {
			cg, _ = strconv.ParseUint(id, 10, 64)
		}
		for _, p := range pins {
			if cg != 0 && l.detachedByHand(filepath.Join(d, p.Name()), cg) {
				continue
			}
			out[filepath.Base(d)] = append(out[filepath.Base(d)], p.Name())
		}
	}
	return out, nil
}

// Key is the scope's key in the scopes map and its link directory's name,
// as Observe reports them.
func (l *Loader) Key(s Scope) (key uint64, links string, err error) {
	r, err := l.resolve(s)
	if err != nil {
		return 0, "", err
	}
	return r.key, filepath.Base(l.linkDir(r)), nil
}

// Lines is scope s's share of st in the text form of Lines(Capture): its
// programs and its map entries; nil when s is not enrolled.
func (l *Loader) Lines(st State, s Scope) ([]string, error) {
	key, dir, err := l.Key(s)
	if err != nil {
		return nil, err
	}
	sc, enrolled := st.Scopes[key]
	rec, recorded := st.records[key]
	if !enrolled && !recorded {
		return nil, nil
	}
	if !enrolled {
		sc = st.unenrolled[key]
	}
	var out []string
	for _, a := range attachments {
		if slices.Contains(st.Links[dir], a.prog) {
			out = append(out, programLine(a.prog, a.attach))
		}
	}
	if sc.entries.cfg.Flags&flagAccel != 0 && slices.Contains(st.Links[accelDir], accelProg) {
		out = append(out, accelLine)
	}
	if recorded && (!enrolled || sc.Config != rec.Config) {
		out = append(out, enrolmentLine(sc, enrolled, rec))
	}
	return append(out, sc.Lines...), nil
}

// Drift says how scope s's maps and programs differ from what detour wrote
// at its last install (its record), for `status`, which has no configuration
// to compare with: an enrolment deleted or pointed elsewhere, entries edited
// or deleted, programs detached. None when they agree, and for a scope
// installed by a detour that kept no record.
func (l *Loader) Drift(st State, s Scope) ([]string, error) {
	key, dir, err := l.Key(s)
	if err != nil {
		return nil, err
	}
	return st.drift(key, st.Links[dir]), nil
}

// liveCgroupScopes counts the cgroup scopes enrolled or recorded whose
// cgroup still exists.
func (s State) liveCgroupScopes() int {
	n := 0
	seen := map[uint64]bool{}
	count := func(k uint64) {
		if k&cgroupKeyBit == 0 || seen[k] || slices.Contains(s.goneIDs, k&^cgroupKeyBit) {
			return
		}
		seen[k] = true
		n++
	}
	for k := range s.Scopes {
		count(k)
	}
	for k := range s.records {
		count(k)
	}
	return n
}

// rootNote says, for a stale network-namespace scope, whether the programs
// on the cgroup root are still there for it alone.
func (s State) rootNote() string {
	for k := range s.Scopes {
		if k&cgroupKeyBit == 0 && !slices.Contains(s.goneNetns, k) {
			return ""
		}
	}
	for k := range s.records {
		if k&cgroupKeyBit == 0 && !slices.Contains(s.goneNetns, k) {
			return ""
		}
	}
	for dir := range s.Links {
		if strings.HasPrefix(dir, kindNetns+"@") {
			return ", and the programs stay attached to the cgroup root for it"
		}
	}
	return ""
}
