//go:build linux

package nftables

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// setKind is what a set holds. Every set is an interval set with big-endian
// keys (uids and gids are converted with a byteorder expression before the
// lookup, since the kernel compares interval keys as bytes).
type setKind int

const (
	kindIPv4 setKind = iota
	kindIPv6
	kindPort
	kindUID
	kindGID
)

func (k setKind) width() int {
	switch k {
	case kindIPv4, kindUID, kindGID:
		return 4
	case kindIPv6:
		return 16
	}
	return 2
}

func (k setKind) typeName() string {
	return [...]string{"ipv4_addr", "ipv6_addr", "inet_service", "uid", "gid"}[k]
}

// Set is a named interval set of the table.
type Set struct {
	Name   string
	Family redirect.Family
	Kind   setKind
	Elems  []keyRange // sorted, disjoint, not adjacent
}

// keyRange is an inclusive range of big-endian keys of the set's width.
type keyRange struct{ first, last []byte }

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func idRanges(rs []redirect.IDRange) []keyRange {
	out := make([]keyRange, len(rs))
	for i, r := range rs {
		out[i] = keyRange{be32(r.First), be32(r.Last)}
	}
	return out
}

func portRanges(rs []redirect.PortRange) []keyRange {
	out := make([]keyRange, len(rs))
	for i, r := range rs {
		out[i] = keyRange{be16(r.First), be16(r.Last)}
	}
	return out
}

func prefixRange(p netip.Prefix) keyRange {
	p = p.Masked()
	first := p.Addr().AsSlice()
	last := slices.Clone(first)
	for bit := p.Bits(); bit < len(last)*8; bit++ {
		last[bit/8] |= 0x80 >> (bit % 8)
	}
	return keyRange{first, last}
}

func prefixRanges(ps []netip.Prefix) []keyRange {
	out := make([]keyRange, len(ps))
	for i, p := range ps {
		out[i] = prefixRange(p)
	}
	return out
}

// next returns k+1 and whether it overflowed.
func next(k []byte) ([]byte, bool) {
	n := slices.Clone(k)
	for i := len(n) - 1; i >= 0; i-- {
		n[i]++
		if n[i] != 0 {
			return n, false
		}
	}
	return n, true
}

// mergeRanges sorts the ranges and merges overlapping and adjacent ones: the
// kernel refuses overlapping intervals, and a merged list is the canonical
// form observation compares against.
func mergeRanges(k setKind, in []keyRange) []keyRange {
	rs := slices.Clone(in)
	slices.SortFunc(rs, func(a, b keyRange) int {
		if c := bytes.Compare(a.first, b.first); c != 0 {
			return c
		}
		return bytes.Compare(a.last, b.last)
	})
	var out []keyRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			prev := &out[n-1]
			after, overflow := next(prev.last)
			if overflow || bytes.Compare(r.first, after) <= 0 {
				if bytes.Compare(r.last, prev.last) > 0 {
					prev.last = r.last
				}
				continue
			}
		}
		out = append(out, keyRange{slices.Clone(r.first), slices.Clone(r.last)})
	}
	return out
}

// elemText renders a range as nft reads it: an address prefix where the range
// is one, "a-b" otherwise.
func (k setKind) elemText(r keyRange) string {
	switch k {
	case kindIPv4, kindIPv6:
		a, _ := netip.AddrFromSlice(r.first)
		z, _ := netip.AddrFromSlice(r.last)
		for bits := 0; bits <= a.BitLen(); bits++ {
			p := netip.PrefixFrom(a, bits)
			if p.Masked().Addr() != a {
				continue
			}
			if pr := prefixRange(p); bytes.Equal(pr.last, r.last) {
				if bits == a.BitLen() {
					return a.String()
				}
				return p.String()
			}
		}
		return a.String() + "-" + z.String()
	}
	v := func(b []byte) string {
		if len(b) == 2 {
			return strconv.Itoa(int(binary.BigEndian.Uint16(b)))
		}
		return strconv.FormatUint(uint64(binary.BigEndian.Uint32(b)), 10)
	}
	if bytes.Equal(r.first, r.last) {
		return v(r.first)
	}
	return v(r.first) + "-" + v(r.last)
}

// lines are the set's declaration and its elements, one a line.
func (s *Set) lines(table string) []string {
	out := []string{fmt.Sprintf("add set inet %s %s { type %s; flags interval; }", table, s.Name, s.Kind.typeName())}
	for _, e := range s.Elems {
		out = append(out, fmt.Sprintf("add element inet %s %s { %s }", table, s.Name, s.Kind.elemText(e)))
	}
	return out
}

// elementsText is the set's elements as one comma-separated list.
func (s *Set) elementsText() string {
	parts := make([]string, len(s.Elems))
	for i, e := range s.Elems {
		parts[i] = s.Kind.elemText(e)
	}
	return strings.Join(parts, ", ")
}
