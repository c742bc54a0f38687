//go:build linux

package nftables

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	nft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rule userdata: two TLVs (type, length, value) of types nft ignores — the
// rule's text and a fingerprint of its expressions. Observation shows the
// text of a rule whose expressions still have the fingerprint, so the
// expressions the library cannot decode (directional ct zones) are compared
// too, as bytes.
const (
	udText        = 0xd0
	udFingerprint = 0xd1
)

const (
	msgNewRule    = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE)
	elemsPerChunk = 1024 // set elements per netlink message
)

// message is one netlink message of a batch and what it does, for errors.
type message struct {
	msg  netlink.Message
	what string
}

// ruleExprs marshals a rule's expressions (NFTA_LIST_ELEM payloads).
func (r Rule) ruleExprs() ([][]byte, error) {
	var out [][]byte
	for _, s := range r.stmts {
		es, err := s.exprs()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.text(), err)
		}
		out = append(out, es...)
	}
	return out, nil
}

// fingerprint hashes a rule's expressions in their normalized form.
func fingerprint(exprs [][]byte) ([]byte, error) {
	h := sha256.New()
	var n []byte
	for _, e := range exprs {
		var err error
		if n, err = appendNormalizedExpr(n[:0], e); err != nil {
			return nil, err
		}
		h.Write(binary.BigEndian.AppendUint32(make([]byte, 0, 4), uint32(len(n))))
		h.Write(n)
	}
	return h.Sum(nil)[:16], nil
}

// kernelDefaults are attributes that the kernel adds to what it dumps, or
// that only the request carries, which say nothing about what the rule does
// when they hold these values. They are dropped from both sides before
// fingerprinting.
var kernelDefaults = map[string]map[uint16][]byte{
	"lookup":  {unix.NFTA_LOOKUP_SET_ID: nil, unix.NFTA_LOOKUP_FLAGS: {0, 0, 0, 0}},
	"ct":      {unix.NFTA_CT_DIRECTION: {2}}, // IP_CT_DIR_MAX: no direction
	"bitwise": {6 /* NFTA_BITWISE_OP */ : {0, 0, 0, 0}},
	"socket":  {3 /* NFTA_SOCKET_LEVEL */ : {0, 0, 0, 0}},
	"log":     {unix.NFTA_LOG_LEVEL: {0, 0, 0, 4}}, // LOGLEVEL_WARNING, nft's default
	// The kernel fills the range's end and its flag from the start register.
	"redir": {unix.NFTA_REDIR_REG_PROTO_MAX: {0, 0, 0, reg}, unix.NFTA_REDIR_FLAGS: {0, 0, 0, 2}},
}

// nestedData are the attributes that hold nested NFTA_DATA_* attributes,
// whose NLA_F_NESTED flags the library sets and the kernel's dump does not.
var nestedData = map[string][]uint16{
	"immediate": {unix.NFTA_IMMEDIATE_DATA},
	"cmp":       {unix.NFTA_CMP_DATA},
	"bitwise":   {unix.NFTA_BITWISE_MASK, unix.NFTA_BITWISE_XOR},
}

const attrFlags = unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER

// stripNested is b with the NLA_F_NESTED and NLA_F_NET_BYTEORDER flags of
// its attributes cleared, and of theirs, depth levels down (a copy; b when it
// does not decode).
func stripNested(b []byte, depth int) []byte {
	out := slices.Clone(b)
	if !clearFlags(out, depth) {
		return b
	}
	return out
}

// clearFlags clears the type flags of the attributes in b, in place, depth
// levels down; false when b does not decode.
func clearFlags(b []byte, depth int) bool {
	for it := (attrs{b: b}); ; {
		typ, data, ok := it.next()
		if !ok {
			return it.err == nil
		}
		if typ&unix.NLA_F_NESTED != 0 && depth > 1 && !clearFlags(data, depth-1) {
			return false
		}
		binary.NativeEndian.PutUint16(b[it.at+2:], typ&^attrFlags)
	}
}

// normalizeExpr is an expression's name and its data attributes, sorted by
// type, without kernel defaults: name NUL, then per attribute its type
// (2 bytes) and length (4 bytes), big-endian, and its payload.
func normalizeExpr(b []byte) ([]byte, error) { return appendNormalizedExpr(nil, b) }

// appendNormalizedExpr appends normalizeExpr(b) to out; it reads the
// attributes in place, without decoding them into copies.
func appendNormalizedExpr(out, b []byte) ([]byte, error) {
	var name string
	var data []byte
	it := attrs{b: b}
	for {
		typ, v, ok := it.next()
		if !ok {
			break
		}
		switch typ &^ attrFlags {
		case unix.NFTA_EXPR_NAME:
			name = string(trimNUL(v))
		case unix.NFTA_EXPR_DATA:
			data = v
		}
	}
	if it.err != nil {
		return nil, it.err
	}
	type attr struct {
		typ uint16
		v   []byte
	}
	var buf [8]attr
	kept := buf[:0]
	defaults, nested := kernelDefaults[name], nestedData[name]
	in := attrs{b: data}
	for {
		typ, v, ok := in.next()
		if !ok {
			break
		}
		t := typ &^ attrFlags
		if def, ok := defaults[t]; ok && (def == nil || slices.Equal(def, v)) {
			continue
		}
		if slices.Contains(nested, t) {
			v = stripNested(v, 2)
		}
		kept = append(kept, attr{t, v})
	}
	if in.err != nil {
		return nil, fmt.Errorf("expression %s: %w", name, in.err)
	}
	slices.SortStableFunc(kept, func(x, y attr) int { return int(x.typ) - int(y.typ) })
	out = append(append(out, name...), 0)
	for _, a := range kept {
		out = binary.BigEndian.AppendUint16(out, a.typ)
		out = binary.BigEndian.AppendUint32(out, uint32(len(a.v)))
		out = append(out, a.v...)
	}
	return out, nil
}

// attrs iterates over the netlink attributes in b without copying them; it
// reads them as mdlayher/netlink's UnmarshalAttributes does (attributes of
// length 0 are skipped, a length past the end is an error).
type attrs struct {
	b   []byte
	i   int   // where the next attribute starts
	at  int   // where the one next returned last starts
	err error // why decoding stopped early
}

var errAttr = errors.New("invalid netlink attribute")

// next returns the type (flags included) and payload of the next attribute;
// ok false at the end or on an error (then err is set).
func (a *attrs) next() (typ uint16, data []byte, ok bool) {
	for a.err == nil && a.i < len(a.b) {
		rest := a.b[a.i:]
		if len(rest) < unix.SizeofNlAttr {
			a.err = errAttr
			break
		}
		l := int(binary.NativeEndian.Uint16(rest))
		typ = binary.NativeEndian.Uint16(rest[2:])
		a.at = a.i
		switch {
		case l > len(rest), l > 0 && l < unix.SizeofNlAttr:
			a.err = errAttr
			return 0, nil, false
		case l == 0:
			a.i += unix.SizeofNlAttr
			continue
		}
		a.i += (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		return typ, rest[unix.SizeofNlAttr:l:l], true
	}
	return 0, nil, false
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

func appendUD(b []byte, typ byte, v []byte) []byte {
	return append(append(b, typ, byte(len(v))), v...)
}

func parseUD(b []byte) map[byte][]byte {
	out := map[byte][]byte{}
	for len(b) >= 2 {
		t, n := b[0], int(b[1])
		if len(b) < 2+n {
			break
		}
		out[t] = b[2 : 2+n]
		b = b[2+n:]
	}
	return out
}

// ruleMessages are the NEWRULE messages of every rule, in chain order. They
// are made here rather than by the library's Conn.AddRule because one
// expression (the directional ct zone) is beyond its encoder.
func (rs *Ruleset) ruleMessages() ([]message, error) {
	var out []message
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			exprs, err := r.ruleExprs()
			if err != nil {
				return nil, fmt.Errorf("rule in chain %s: %w", ch.Name, err)
			}
			fp, err := fingerprint(exprs)
			if err != nil {
				return nil, fmt.Errorf("rule in chain %s: %w", ch.Name, err)
			}
			list := make([]netlink.Attribute, len(exprs))
			for i, e := range exprs {
				list[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: e}
			}
			le, err := netlink.MarshalAttributes(list)
			if err != nil {
				return nil, err
			}
			ud := appendUD(appendUD(nil, udText, []byte(r.Text())), udFingerprint, fp)
			data, err := netlink.MarshalAttributes([]netlink.Attribute{
				{Type: unix.NFTA_RULE_TABLE, Data: []byte(rs.name() + "\x00")},
				{Type: unix.NFTA_RULE_CHAIN, Data: []byte(ch.Name + "\x00")},
				{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: le},
				{Type: unix.NFTA_RULE_USERDATA, Data: ud},
			})
			if err != nil {
				return nil, err
			}
			out = append(out, message{
				msg: netlink.Message{
					Header: netlink.Header{Type: msgNewRule, Flags: netlink.Request | netlink.Acknowledge | netlink.Create | unix.NLM_F_APPEND},
					Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, data...),
				},
				what: "add rule inet " + rs.name() + " " + ch.Name + " " + r.Text(),
			})
		}
	}
	return out, nil
}

// libMessages runs build against a google/nftables Conn whose "socket"
// records what it would send: the library encodes the table, chains, sets
// and elements, and the batch is sent by Apply with the rules added.
func libMessages(build func(c *nft.Conn) error) ([]netlink.Message, error) {
	var got []netlink.Message
	ack := []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 20)}}
	c, err := nft.New(nft.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if req == nil {
			return ack, nil
		}
		got = append(got, req...)
		return nil, nil
	}))
	if err != nil {
		return nil, err
	}
	if err := build(c); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	if len(got) < 2 {
		return nil, nil
	}
	return got[1 : len(got)-1], nil // without the library's batch begin and end
}

func table(name string) *nft.Table { return &nft.Table{Name: name, Family: nft.TableFamilyINet} }

func (s *Set) libSet(t *nft.Table, id uint32) *nft.Set {
	kt := map[setKind]nft.SetDatatype{kindIPv4: nft.TypeIPAddr, kindIPv6: nft.TypeIP6Addr, kindPort: nft.TypeInetService, kindUID: nft.TypeUID, kindGID: nft.TypeGID}[s.Kind]
	return &nft.Set{Table: t, ID: id, Name: s.Name, Interval: true, KeyType: kt}
}

func (s *Set) libElements() []nft.SetElement {
	var out []nft.SetElement
	for _, e := range s.Elems {
		out = append(out, nft.SetElement{Key: e.first})
		if end, overflow := next(e.last); !overflow {
			out = append(out, nft.SetElement{Key: end, IntervalEnd: true})
		}
	}
	return out
}

var hookNums = map[string]nft.ChainHook{"prerouting": *nft.ChainHookPrerouting, "output": *nft.ChainHookOutput}

// batch is the whole transaction that makes the namespace hold rs: with
// replace, detour's table is deleted first (in the same batch, so there is
// no moment without it), created again and filled.
func (rs *Ruleset) batch(replace bool) ([]message, error) {
	rules, err := rs.ruleMessages()
	if err != nil {
		return nil, err
	}
	var whats []string
	lm, err := libMessages(func(c *nft.Conn) error {
		name := rs.name()
		t := table(name)
		if replace {
			c.AddTable(t)
			c.DelTable(t)
			whats = append(whats, "add table inet "+name, "delete table inet "+name)
		}
		if rs.Empty() {
			return nil
		}
		c.AddTable(t)
		whats = append(whats, "add table inet "+name)
		for i, s := range rs.Sets {
			ls := s.libSet(t, uint32(i+1)) // IDs set here: the library's own counter is shared by every Conn
			if err := c.AddSet(ls, nil); err != nil {
				return fmt.Errorf("set %s: %w", s.Name, err)
			}
			whats = append(whats, fmt.Sprintf("add set inet %s %s", name, s.Name))
			elems := s.libElements()
			for len(elems) > 0 {
				n := min(len(elems), elemsPerChunk)
				if err := c.SetAddElements(ls, elems[:n]); err != nil {
					return fmt.Errorf("elements of set %s: %w", s.Name, err)
				}
				whats = append(whats, fmt.Sprintf("add element inet %s %s (%d keys)", name, s.Name, n))
				elems = elems[n:]
			}
		}
		for _, ch := range rs.Chains {
			lc := &nft.Chain{Name: ch.Name, Table: t}
			if h := ch.Hook; h != nil {
				num, prio := hookNums[h.Hook], nft.ChainPriority(h.Priority)
				policy := nft.ChainPolicyAccept
				lc.Hooknum, lc.Priority, lc.Type, lc.Policy = &num, &prio, nft.ChainType(h.Type), &policy
			}
			c.AddChain(lc)
			whats = append(whats, ch.decl(name))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	if len(lm) != len(whats) {
		return nil, fmt.Errorf("encode: the library made %d messages for %d operations", len(lm), len(whats))
	}
	out := make([]message, 0, len(lm)+len(rules))
	for i, m := range lm {
		out = append(out, message{msg: m, what: whats[i]})
	}
	return append(out, rules...), nil
}
