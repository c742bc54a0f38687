package bpf

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// The records map is detour's own note of what it wrote for each scope: the
// config id it enrolled the scope with and a digest of the scope's entries.
// The programs never read it (it is not in detour.c); Observe compares the
// maps with it, so `status` can say that an entry was edited or deleted by
// hand without being given the configuration, and an install restores an
// enrolment someone deleted or pointed elsewhere under the id the programs
// of a cgroup scope carry.
const recordsMap = "records"

func recordSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       recordsMap, // the pin's name too
		Type:       ebpf.Hash,
		KeySize:    8,
		ValueSize:  40,
		MaxEntries: 1 << 16, // as many as scopes
		Pinning:    ebpf.PinByName,
	}
}

func digest(lines []string) [32]byte { return sha256.Sum256([]byte(strings.Join(lines, "\n"))) }

// openRecords opens the pinned records map, creating and pinning it when
// missing (an install by a detour that kept none).
func (l *Loader) openRecords() (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(recordSpec(), ebpf.MapOptions{PinPath: l.mapDir()})
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", recordsMap, err)
	}
	return m, nil
}

// loadRecords reads every record (none when the map is not pinned).
func (l *Loader) loadRecords() (map[uint64]record, error) {
	out := map[uint64]record{}
	m, err := ebpf.LoadPinnedMap(filepath.Join(l.mapDir(), recordsMap), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pinned map %s: %w", recordsMap, err)
	}
	defer m.Close()
	if err := collect(m, out, func(uint64) bool { return true }); err != nil {
		return nil, err
	}
	return out, nil
}

// record returns the scope's record.
func (st *store) record(key uint64) (record, bool, error) {
	var r record
	err := st.records.Lookup(key, &r)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("read map %s: %w", recordsMap, err)
	}
	return r, true, nil
}

// configUsed reports whether a scope other than key is enrolled with id.
func (st *store) configUsed(id uint32, key uint64) (bool, error) {
	var (
		k uint64
		v uint32
	)
	it := st.scopes.Iterate()
	for it.Next(&k, &v) {
		if v == id && k != key {
			return true, nil
		}
	}
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("read scopes: %w", err)
	}
	return false, nil
}

// drift describes how the maps differ from the scope's record (what detour
// wrote), in lines for `status`; none when they agree or there is no record.
func (st State) drift(key uint64, links []string) []string {
	rec, ok := st.records[key]
	if !ok {
		return nil
	}
	var out []string
	sc, enrolled := st.Scopes[key]
	switch {
	case !enrolled:
		out = append(out, fmt.Sprintf("the scopes map has no entry for this scope (detour enrolled it with config %d)", rec.Config))
	case sc.Config != rec.Config:
		out = append(out, fmt.Sprintf("the scopes map points this scope at config %d, detour enrolled it with config %d", sc.Config, rec.Config))
	case digest(sc.Lines) != rec.Digest:
		out = append(out, fmt.Sprintf("the entries of config %d differ from what detour wrote", rec.Config))
	}
	var missing []string
	for _, a := range attachments {
		if !slices.Contains(links, a.prog) {
			missing = append(missing, strings.TrimPrefix(a.prog, "detour_"))
		}
	}
	if len(missing) > 0 {
		out = append(out, "programs not attached: "+strings.Join(missing, ", "))
	}
	return out
}

// enrolmentLine is the line Lines shows for a recorded scope whose
// enrolment is missing or points elsewhere: a line the plan never has, so
// `check` reports it as drift.
func enrolmentLine(sc ScopeState, enrolled bool, rec record) string {
	if !enrolled {
		return fmt.Sprintf("scopes: no entry for this scope (enrolled with config %d)", rec.Config)
	}
	return fmt.Sprintf("scopes: this scope points at config %d (enrolled with config %d)", sc.Config, rec.Config)
}
