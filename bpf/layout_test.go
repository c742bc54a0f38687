package bpf

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/google/go-cmp/cmp"
)

// TestMapLayouts: two builds of detour share the pinned maps during and
// after an upgrade, and an install checks only each map's type, sizes,
// max_entries and flags (ErrIncompatibleMaps), not what the bytes mean
// (docs/ebpf.md, "What two builds share"). This golden file names every
// map of bpf/detour.c with its key and value field by field (the builds and
// records maps are Go's), so that a change of bpf/detour.c that
// moves or renames a field inside a value of the same size cannot pass
// unnoticed. When it fails: if an existing key or value now means something
// else, also change what the install checks (the map's name, max_entries
// or a value size), so that an install over an older build's maps refuses
// instead of sharing them; then UPDATE_GOLDEN=1 go test ./bpf/.
func TestMapLayouts(t *testing.T) {
	spec, err := loadDetour()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(spec.Maps)) {
		if strings.HasPrefix(name, ".") {
			continue // .rodata and the like: per program load, not pinned
		}
		m := spec.Maps[name]
		fmt.Fprintf(&b, "%s %s max_entries=%d flags=%#x\n", name, m.Type, m.MaxEntries, m.Flags)
		fmt.Fprintf(&b, "\tkey   %d %s\n", m.KeySize, layout(m.Key))
		fmt.Fprintf(&b, "\tvalue %d %s\n", m.ValueSize, layout(m.Value))
	}
	golden := filepath.Join("testdata", t.Name(), "maps.golden")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("the maps' layouts changed (-golden +detour.c): if an existing key or value now means something else, change the map's name, max_entries or a value size too, so an install over an older build's maps refuses; then UPDATE_GOLDEN=1 go test ./bpf/\n%s", diff)
	}
}

// layout describes a BTF type by its fields' names, offsets and sizes.
func layout(t btf.Type) string {
	if t == nil {
		return "(no BTF)"
	}
	switch v := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		sign := "u"
		if v.Encoding&btf.Signed != 0 {
			sign = "s"
		}
		return fmt.Sprintf("%s%d", sign, v.Size*8)
	case *btf.Enum:
		return fmt.Sprintf("enum%d", v.Size*8)
	case *btf.Array:
		return fmt.Sprintf("[%d]%s", v.Nelems, layout(v.Type))
	case *btf.Struct:
		return "struct {" + members(v.Members) + "}"
	case *btf.Union:
		return "union {" + members(v.Members) + "}"
	case *btf.Pointer:
		return "pointer"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func members(ms []btf.Member) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		bits := ""
		if m.BitfieldSize > 0 {
			bits = fmt.Sprintf(":%d", m.BitfieldSize)
		}
		parts[i] = fmt.Sprintf("%s@%d%s %s", m.Name, m.Offset/8, bits, layout(m.Type))
	}
	return strings.Join(parts, "; ")
}
