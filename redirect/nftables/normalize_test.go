//go:build linux

package nftables

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestNormalizeExprUnchanged checks that the in-place attribute reading of
// normalizeExpr gives, byte for byte, what the first version (kept below,
// decoding with mdlayher/netlink) gave, for every expression of every shared
// configuration, as the library encodes it (nested flags set) and as the
// kernel dumps it (flags cleared): the fingerprints stored in the userdata of
// rules installed by an earlier detour must still match, or a re-run after an
// upgrade would see its own table as changed.
func TestNormalizeExprUnchanged(t *testing.T) {
	t.Parallel()
	n := 0
	for _, tc := range planCases() {
		rs, err := Render(mustCapture(t, tc))
		if err != nil {
			t.Fatalf("%s: Render: %v", tc.Name, err)
		}
		for _, ch := range rs.Chains {
			for _, r := range ch.Rules {
				exprs, err := r.ruleExprs()
				if err != nil {
					t.Fatalf("%s: %v", tc.Name, err)
				}
				for _, e := range exprs {
					for _, form := range [][]byte{e, stripNestedV1(e, 4)} {
						want, werr := normalizeExprV1(form)
						got, gerr := normalizeExpr(form)
						if !bytes.Equal(got, want) || (werr == nil) != (gerr == nil) {
							t.Fatalf("%s: rule %q: normalizeExpr = %x, %v; the first version gave %x, %v", tc.Name, r.Text(), got, gerr, want, werr)
						}
						n++
					}
				}
				fp, err := fingerprint(exprs)
				if err != nil {
					t.Fatal(err)
				}
				h := fingerprintV1(t, exprs)
				if !bytes.Equal(fp, h) {
					t.Fatalf("%s: rule %q: fingerprint %x, the first version %x", tc.Name, r.Text(), fp, h)
				}
			}
		}
	}
	if n < 100 {
		t.Fatalf("only %d expressions compared", n)
	}
}

func TestAttrsRefusesBrokenInput(t *testing.T) {
	t.Parallel()
	for _, b := range [][]byte{{1, 0}, {9, 0, 1, 0, 0, 0, 0, 0}, {3, 0, 1, 0}} {
		if _, err := normalizeExpr(b); err == nil {
			t.Errorf("normalizeExpr(%v) = nil error", b)
		}
		if _, err := netlink.UnmarshalAttributes(b); err == nil {
			t.Errorf("the reference decoder accepts %v", b)
		}
	}
}

func fingerprintV1(t *testing.T, exprs [][]byte) []byte {
	t.Helper()
	h := sha256.New()
	for _, e := range exprs {
		n, err := normalizeExprV1(e)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(n))))
		h.Write(n)
	}
	return h.Sum(nil)[:16]
}

// The first version of stripNested and normalizeExpr, as the reference.

// stripNested re-encodes nested attributes without their NLA_F_NESTED flags,
// depth levels down.
func stripNestedV1(b []byte, depth int) []byte {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return b
	}
	for i := range attrs {
		if attrs[i].Type&unix.NLA_F_NESTED != 0 && depth > 1 {
			attrs[i].Data = stripNestedV1(attrs[i].Data, depth-1)
		}
		attrs[i].Type &^= unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER
	}
	out, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return b
	}
	return out
}

// normalizeExpr is an expression's name and its data attributes, sorted by
// type, without kernel defaults.
func normalizeExprV1(b []byte) ([]byte, error) {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return nil, err
	}
	var name string
	var data []byte
	for _, a := range attrs {
		switch a.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case unix.NFTA_EXPR_NAME:
			name = string(trimNUL(a.Data))
		case unix.NFTA_EXPR_DATA:
			data = a.Data
		}
	}
	inner, err := netlink.UnmarshalAttributes(data)
	if err != nil {
		return nil, fmt.Errorf("expression %s: %w", name, err)
	}
	var kept []netlink.Attribute
	for _, a := range inner {
		t := a.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if def, ok := kernelDefaults[name][t]; ok && (def == nil || slices.Equal(def, a.Data)) {
			continue
		}
		v := a.Data
		if slices.Contains(nestedData[name], t) {
			v = stripNestedV1(v, 2)
		}
		kept = append(kept, netlink.Attribute{Type: t, Data: v})
	}
	slices.SortStableFunc(kept, func(x, y netlink.Attribute) int { return int(x.Type) - int(y.Type) })
	out := []byte(name + "\x00")
	for _, a := range kept {
		out = binary.BigEndian.AppendUint16(out, a.Type)
		out = binary.BigEndian.AppendUint32(out, uint32(len(a.Data)))
		out = append(out, a.Data...)
	}
	return out, nil
}
