//go:build linux

package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
)

// stmt is one match or statement of a rule: its nft text and the kernel
// expressions that carry it, each marshalled as one NFTA_LIST_ELEM payload.
type stmt interface {
	text() string
	exprs() ([][]byte, error)
}

const (
	reg    = unix.NFT_REG_1
	tcp    = unix.IPPROTO_TCP
	udp    = unix.IPPROTO_UDP
	family = byte(unix.NFPROTO_INET)

	ctInvalid     = expr.CtStateBitINVALID
	ctEstablished = expr.CtStateBitESTABLISHED
	ctRelated     = expr.CtStateBitRELATED
	ctNew         = expr.CtStateBitNEW

	ctDirOriginal = 0 // IP_CT_DIR_ORIGINAL
)

// lib marshals expressions of github.com/google/nftables.
func lib(es ...expr.Any) ([][]byte, error) {
	out := make([][]byte, 0, len(es))
	for _, e := range es {
		b, err := expr.Marshal(family, e)
		if err != nil {
			return nil, fmt.Errorf("marshal %T: %w", e, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func protoName(p uint8) string {
	if p == udp {
		return "udp"
	}
	return "tcp"
}

// l4 is `meta l4proto tcp|udp`.
type l4 uint8

func (s l4) text() string { return "meta l4proto " + protoName(uint8(s)) }
func (s l4) exprs() ([][]byte, error) {
	return lib(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{byte(s)}})
}

// nfproto is `meta nfproto ipv4|ipv6`, the family dispatch of base chains.
type nfprotoStmt struct{ fam redirect.Family }

func nfproto(f redirect.Family) stmt { return nfprotoStmt{f} }

func (s nfprotoStmt) text() string { return "meta nfproto " + string(s.fam) }
func (s nfprotoStmt) exprs() ([][]byte, error) {
	v := byte(unix.NFPROTO_IPV4)
	if s.fam == redirect.IPv6 {
		v = unix.NFPROTO_IPV6
	}
	return lib(&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{v}})
}

// metaCmp is `meta skuid N` / `meta skgid N`.
type metaCmp struct {
	key string
	val uint32
}

func metaKey(k string) expr.MetaKey {
	if k == "skgid" {
		return expr.MetaKeySKGID
	}
	return expr.MetaKeySKUID
}

func (s metaCmp) text() string { return "meta " + s.key + " " + strconv.FormatUint(uint64(s.val), 10) }
func (s metaCmp) exprs() ([][]byte, error) {
	return lib(&expr.Meta{Key: metaKey(s.key), Register: reg}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: native32(s.val)})
}

// metaLookup is `meta skuid @set`: the owner converted to big endian, since
// interval sets compare keys as bytes.
type metaLookup struct{ key, set string }

func (s metaLookup) text() string { return "meta " + s.key + " @" + s.set }
func (s metaLookup) exprs() ([][]byte, error) {
	return lib(&expr.Meta{Key: metaKey(s.key), Register: reg},
		&expr.Byteorder{SourceRegister: reg, DestRegister: reg, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Lookup{SourceRegister: reg, SetName: s.set})
}

// ifname is `oifname "lo"` / `iifname "lo"`.
type ifname struct{ dir, name string }

func (s ifname) text() string { return s.dir + " " + nftQuote(s.name) }
func (s ifname) exprs() ([][]byte, error) {
	k := expr.MetaKeyOIFNAME
	if s.dir == "iifname" {
		k = expr.MetaKeyIIFNAME
	}
	data := make([]byte, unix.IFNAMSIZ)
	copy(data, s.name)
	return lib(&expr.Meta{Key: k, Register: reg}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data})
}

// addrOffset is where saddr/daddr sit in the family's network header.
func addrOffset(f redirect.Family, field string) (off, n uint32) {
	switch {
	case f == redirect.IPv6 && field == "saddr":
		return 8, 16
	case f == redirect.IPv6:
		return 24, 16
	case field == "saddr":
		return 12, 4
	}
	return 16, 4
}

func famWord(f redirect.Family) string {
	if f == redirect.IPv6 {
		return "ip6"
	}
	return "ip"
}

// addrCmp is `ip daddr [!=] prefix`.
type addrCmp struct {
	field  string
	fam    redirect.Family
	neq    bool
	prefix netip.Prefix
}

func (s addrCmp) text() string {
	op := ""
	if s.neq {
		op = "!= "
	}
	p := s.prefix.String()
	if s.prefix.IsSingleIP() {
		p = s.prefix.Addr().String()
	}
	return famWord(s.fam) + " " + s.field + " " + op + p
}

func (s addrCmp) exprs() ([][]byte, error) {
	if s.prefix.Addr().Is6() != (s.fam == redirect.IPv6) {
		return nil, fmt.Errorf("%s is not an %s address", s.prefix, s.fam)
	}
	off, n := addrOffset(s.fam, s.field)
	op := expr.CmpOpEq
	if s.neq {
		op = expr.CmpOpNeq
	}
	es := []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	if !s.prefix.IsSingleIP() {
		mask := make([]byte, n)
		for bit := 0; bit < s.prefix.Bits(); bit++ {
			mask[bit/8] |= 0x80 >> (bit % 8)
		}
		es = append(es, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	es = append(es, &expr.Cmp{Op: op, Register: reg, Data: s.prefix.Masked().Addr().AsSlice()})
	return lib(es...)
}

// addrLookup is `ip daddr [!=] @set`.
type addrLookup struct {
	field string
	fam   redirect.Family
	neq   bool
	set   string
}

func (s addrLookup) text() string {
	op := ""
	if s.neq {
		op = "!= "
	}
	return famWord(s.fam) + " " + s.field + " " + op + "@" + s.set
}

func (s addrLookup) exprs() ([][]byte, error) {
	off, n := addrOffset(s.fam, s.field)
	return lib(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: reg, SetName: s.set, Invert: s.neq})
}

func portOffset(field string) uint32 {
	if field == "sport" {
		return 0
	}
	return 2
}

// portCmp is `tcp dport N` (after `meta l4proto tcp`).
type portCmp struct {
	proto uint8
	field string
	port  uint16
}

func (s portCmp) text() string {
	return protoName(s.proto) + " " + s.field + " " + strconv.Itoa(int(s.port))
}
func (s portCmp) exprs() ([][]byte, error) {
	return lib(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: portOffset(s.field), Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: be16(s.port)})
}

// portLookup is `tcp dport [!=] @set`.
type portLookup struct {
	proto uint8
	field string
	neq   bool
	set   string
}

func (s portLookup) text() string {
	op := ""
	if s.neq {
		op = "!= "
	}
	return protoName(s.proto) + " " + s.field + " " + op + "@" + s.set
}
func (s portLookup) exprs() ([][]byte, error) {
	return lib(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: portOffset(s.field), Len: 2},
		&expr.Lookup{SourceRegister: reg, SetName: s.set, Invert: s.neq})
}

// fibLocal is `fib daddr type local`: only packets addressed to the
// namespace itself, never what it forwards.
type fibLocal struct{}

func (fibLocal) text() string { return "fib daddr type local" }
func (fibLocal) exprs() ([][]byte, error) {
	return lib(&expr.Fib{Register: reg, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: native32(unix.RTN_LOCAL)})
}

// ctState is `ct state a,b`.
type ctState struct{ bits uint32 }

func (s ctState) text() string {
	var names []string
	for _, n := range []struct {
		bit  uint32
		name string
	}{{ctInvalid, "invalid"}, {ctEstablished, "established"}, {ctRelated, "related"}, {ctNew, "new"}} {
		if s.bits&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	out := "ct state "
	for i, n := range names {
		if i > 0 {
			out += ","
		}
		out += n
	}
	return out
}
func (s ctState) exprs() ([][]byte, error) {
	return lib(&expr.Ct{Key: expr.CtKeySTATE, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(s.bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: native32(0)})
}

// socketTransparent is `socket transparent 1`: a packet of a connection the
// proxy's transparent socket holds.
type socketTransparent struct{}

func (socketTransparent) text() string { return "socket transparent 1" }
func (socketTransparent) exprs() ([][]byte, error) {
	return lib(&expr.Socket{Key: expr.SocketKeyTransparent, Register: reg},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{1}})
}

// tcpNotSyn is `tcp flags & (fin | syn | rst | ack) != syn`: any TCP packet
// but the first of a connection (iptables' `! --syn`).
type tcpNotSyn struct{}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func (tcpNotSyn) text() string { return "tcp flags & (fin | syn | rst | ack) != syn" }
func (tcpNotSyn) exprs() ([][]byte, error) {
	return lib(&expr.Payload{Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1, DestRegister: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 1, Mask: []byte{tcpFIN | tcpSYN | tcpRST | tcpACK}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: []byte{tcpSYN}})
}

// markOr is `meta mark set meta mark | bits`.
type markOr struct{ bits uint32 }

func (s markOr) text() string { return fmt.Sprintf("meta mark set meta mark | %#08x", s.bits) }
func (s markOr) exprs() ([][]byte, error) {
	return lib(&expr.Meta{Key: expr.MetaKeyMARK, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(^s.bits), Xor: native32(s.bits)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg})
}

// markMatch is `meta mark & bits == bits` or, with ct, `ct mark & bits ==
// bits`: the packet (or its connection) carries the bits.
type markMatch struct {
	ct   bool
	bits uint32
}

func (s markMatch) text() string {
	k := "meta"
	if s.ct {
		k = "ct"
	}
	return fmt.Sprintf("%s mark & %#08x == %#08x", k, s.bits, s.bits)
}
func (s markMatch) exprs() ([][]byte, error) {
	var load expr.Any = &expr.Meta{Key: expr.MetaKeyMARK, Register: reg}
	if s.ct {
		load = &expr.Ct{Key: expr.CtKeyMARK, Register: reg}
	}
	return lib(load,
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(s.bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: native32(s.bits)})
}

// ctMarkOr is `ct mark set ct mark | bits`: the connection keeps the bits.
type ctMarkOr struct{ bits uint32 }

func (s ctMarkOr) text() string { return fmt.Sprintf("ct mark set ct mark | %#08x", s.bits) }
func (s ctMarkOr) exprs() ([][]byte, error) {
	return lib(&expr.Ct{Key: expr.CtKeyMARK, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(^s.bits), Xor: native32(s.bits)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg})
}

// limit is the rate limit of log rules: 10/second, burst 5 (as iptables' -m limit).
type limit struct{}

func (limit) text() string {
	return fmt.Sprintf("limit rate %d/second burst %d packets", logRate, logBurst)
}
func (limit) exprs() ([][]byte, error) {
	return lib(&expr.Limit{Type: expr.LimitTypePkts, Rate: logRate, Unit: expr.LimitTimeSecond, Burst: logBurst})
}

// logStmt is `log [prefix "p"]`.
type logStmt struct{ prefix string }

func (s logStmt) text() string {
	if s.prefix == "" {
		return "log"
	}
	return "log prefix " + nftQuote(s.prefix)
}
func (s logStmt) exprs() ([][]byte, error) {
	if s.prefix == "" {
		return lib(&expr.Log{})
	}
	return lib(&expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte(s.prefix)})
}

// redirectTo is `redirect to :port`.
type redirectTo struct{ port uint16 }

func (s redirectTo) text() string { return "redirect to :" + strconv.Itoa(int(s.port)) }
func (s redirectTo) exprs() ([][]byte, error) {
	return lib(&expr.Immediate{Register: reg, Data: be16(s.port)}, &expr.Redir{RegisterProtoMin: reg})
}

// tproxyTo is `tproxy ip to :port`. In an inet table the expression must
// carry the IPv4 or IPv6 family (an inet-family tproxy is refused).
type tproxyTo struct {
	fam  redirect.Family
	port uint16
}

func (s tproxyTo) text() string {
	return "tproxy " + famWord(s.fam) + " to :" + strconv.Itoa(int(s.port))
}
func (s tproxyTo) exprs() ([][]byte, error) {
	f := byte(unix.NFPROTO_IPV4)
	if s.fam == redirect.IPv6 {
		f = unix.NFPROTO_IPV6
	}
	return lib(&expr.Immediate{Register: reg, Data: be16(s.port)}, &expr.TProxy{Family: f, TableFamily: family, RegPort: reg})
}

// ctZone is `ct zone set N` or, with original, `ct original zone set N`. The
// library's ct expression cannot carry a direction for the zone key (and
// encodes directions as 32 bits where the kernel reads 8), so the expression
// is marshalled here.
type ctZone struct {
	zone     uint16
	original bool
}

func (s ctZone) text() string {
	if s.original {
		return fmt.Sprintf("ct original zone set %d", s.zone)
	}
	return fmt.Sprintf("ct zone set %d", s.zone)
}

func (s ctZone) exprs() ([][]byte, error) {
	imm, err := lib(&expr.Immediate{Register: reg, Data: binary.NativeEndian.AppendUint16(nil, s.zone)})
	if err != nil {
		return nil, err
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_CT_KEY, Data: binary.BigEndian.AppendUint32(nil, unix.NFT_CT_ZONE)},
		{Type: unix.NFTA_CT_SREG, Data: binary.BigEndian.AppendUint32(nil, reg)},
	}
	if s.original {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_CT_DIRECTION, Data: []byte{ctDirOriginal}})
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	ct, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_EXPR_NAME, Data: []byte("ct\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data},
	})
	if err != nil {
		return nil, err
	}
	return append(imm, ct), nil
}

// verdict is return, accept, drop or jump CHAIN.
type verdict struct{ kind, chain string }

func (s verdict) text() string {
	if s.kind == "jump" {
		return "jump " + s.chain
	}
	return s.kind
}
func (s verdict) exprs() ([][]byte, error) {
	v := &expr.Verdict{}
	switch s.kind {
	case "return":
		v.Kind = expr.VerdictReturn
	case "accept":
		v.Kind = expr.VerdictAccept
	case "drop":
		v.Kind = expr.VerdictDrop
	case "jump":
		v.Kind, v.Chain = expr.VerdictJump, s.chain
	default:
		return nil, fmt.Errorf("unknown verdict %q", s.kind)
	}
	return lib(v)
}

// nftQuote is s as an nft string: between double quotes, with no escapes
// (nft reads a backslash as itself and cannot carry a double quote, which
// checkLogPrefix refuses).
func nftQuote(s string) string { return `"` + s + `"` }
