package bpf

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// Config flags and trie sets; mirror of the #defines in detour.c.
const (
	flagOut4 uint32 = 1 << iota
	flagOut6
	flagIncludeCIDRs4
	flagIncludeCIDRs6
	flagIncludePorts
	flagProxyGID
	flagDNS4
	flagDNS6
	flagDNSAll
	flagAccel
)

const (
	setExemptUIDs    = 1
	setExemptGIDs    = 2
	setDNSExemptUIDs = 3
	setRuleUIDs      = 4
	setOutPorts      = 1
	setRulePorts     = 2
)

// MaxUIDPortRules bounds outbound.excludePortsForUIDs (tcp rules) per scope:
// the programs match a rule with one 64-bit mask. Every other list is bounded
// only by memory.
const MaxUIDPortRules = 64

// entries is what one scope's configuration puts in the maps: the rendering of
// a redirect.Capture for the programs. Pure; two equal captures give equal
// entries.
type entries struct {
	cfg    detourCfg
	cidrs4 map[detourCidr4Key]uint8
	cidrs6 map[detourCidr6Key]uint8
	ids    map[detourIdKey]uint64
	ports  map[detourPortKey]uint64
	dns    map[detourDnsKey]uint8
}

func newEntries() entries {
	return entries{
		cidrs4: map[detourCidr4Key]uint8{},
		cidrs6: map[detourCidr6Key]uint8{},
		ids:    map[detourIdKey]uint64{},
		ports:  map[detourPortKey]uint64{},
		dns:    map[detourDnsKey]uint8{},
	}
}

// render states c as map entries under config id. Only the parts of Capture
// that connect-time hooks can act on are rendered: outbound TCP and DNS.
// Inbound capture is not: connect hooks never see inbound connections.
func render(id uint32, c redirect.Capture) (entries, error) {
	e := newEntries()
	var (
		proxy    *redirect.ProxyCapture
		outbound *redirect.OutboundCapture
		dns      *redirect.DNSCaptureRules
	)
	for _, fc := range c.Families {
		p := fc.Proxy
		proxy = &p
		if o := fc.Outbound; o != nil {
			if outbound != nil && !sameOwnersAndPorts(*outbound, *o) {
				return entries{}, fmt.Errorf("render %s outbound capture: owner and port lists differ between families", fc.Family)
			}
			outbound = o
			if fc.Family == redirect.IPv4 {
				e.cfg.Flags |= flagOut4
				if len(o.IncludeCIDRs) > 0 {
					e.cfg.Flags |= flagIncludeCIDRs4
				}
			} else {
				e.cfg.Flags |= flagOut6
				if len(o.IncludeCIDRs) > 0 {
					e.cfg.Flags |= flagIncludeCIDRs6
				}
			}
			for _, p := range append(slices.Clone(o.IncludeCIDRs), o.ExcludeCIDRs...) {
				e.putPrefix(id, p)
			}
		}
		if d := fc.DNS; d != nil {
			dns = d
			if fc.Family == redirect.IPv4 {
				e.cfg.Flags |= flagDNS4
			} else {
				e.cfg.Flags |= flagDNS6
			}
			if d.All {
				e.cfg.Flags |= flagDNSAll
			}
			for _, a := range d.Servers {
				e.dns[detourDnsKey{Cfg: id, Addr: addr16(a)}] = 1
			}
		}
	}
	if proxy == nil {
		return e, nil
	}
	e.cfg.ProxyUid = proxy.UID
	if proxy.GID != nil {
		e.cfg.Flags |= flagProxyGID
		e.cfg.ProxyGid = *proxy.GID
	}
	if outbound != nil {
		o := outbound
		e.cfg.OutPort = o.Port
		e.putIDs(id, setExemptUIDs, o.ExemptUIDs)
		e.putIDs(id, setExemptGIDs, o.ExemptGIDs)
		if len(o.IncludePorts) > 0 {
			e.cfg.Flags |= flagIncludePorts
		}
		for _, r := range append(slices.Clone(o.IncludePorts), o.ExcludePorts...) {
			for _, b := range portBlocks(r) {
				e.ports[detourPortKey{Prefixlen: 48 + uint32(b.bits), Cfg: id, Set: setOutPorts, Port: be16(uint16(b.first))}] = 1
			}
		}
		if n := len(o.ExemptPortsForUIDs); n > MaxUIDPortRules {
			// Invalid input for this backend (the CLI's exit 2), not a failure.
			return entries{}, &redirect.FieldError{Field: "outbound.excludePortsForUIDs", Value: fmt.Sprintf("%d tcp rules", n),
				Reason: fmt.Sprintf("are more than the ebpf backend holds (%d: one bit of a 64-bit mask each); merge rules that share their uids or their ports", MaxUIDPortRules)}
		}
		var uidSets, portSets [][]block
		for _, r := range o.ExemptPortsForUIDs {
			var ub, pb []block
			for _, u := range r.UIDs {
				ub = append(ub, idBlocks(u)...)
			}
			for _, p := range r.Ports {
				pb = append(pb, portBlocks(p)...)
			}
			uidSets, portSets = append(uidSets, ub), append(portSets, pb)
		}
		for b, m := range masks(uidSets, 32) {
			e.ids[detourIdKey{Prefixlen: 64 + uint32(b.bits), Cfg: id, Set: setRuleUIDs, Id: be32(b.first)}] = m
		}
		for b, m := range masks(portSets, 16) {
			e.ports[detourPortKey{Prefixlen: 48 + uint32(b.bits), Cfg: id, Set: setRulePorts, Port: be16(uint16(b.first))}] = m
		}
	}
	if dns != nil {
		e.cfg.DnsPort = dns.Port
		if outbound == nil {
			e.putIDs(id, setExemptUIDs, dns.ExemptUIDs)
			e.putIDs(id, setExemptGIDs, dns.ExemptGIDs)
		}
		e.putIDs(id, setDNSExemptUIDs, dns.ExemptUIDsForDNS)
	}
	return e, nil
}

// renderWith is render plus the scope's settings: acceleration is a flag of
// the config, set only where outbound TCP is captured (nothing else is
// accelerated).
func renderWith(id uint32, c redirect.Capture, s Settings) (entries, error) {
	e, err := render(id, c)
	if err != nil {
		return e, err
	}
	if s.Accelerate && e.cfg.Flags&(flagOut4|flagOut6) != 0 {
		e.cfg.Flags |= flagAccel
	}
	return e, nil
}

// sameOwnersAndPorts: the programs keep one owner and port list per scope, as
// Capture does (only the CIDRs are per family).
func sameOwnersAndPorts(a, b redirect.OutboundCapture) bool {
	a.IncludeCIDRs, a.ExcludeCIDRs, b.IncludeCIDRs, b.ExcludeCIDRs = nil, nil, nil, nil
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func (e entries) putPrefix(id uint32, p netip.Prefix) {
	p = p.Masked()
	if p.Addr().Is4() {
		a := p.Addr().As4()
		e.cidrs4[detourCidr4Key{Prefixlen: 32 + uint32(p.Bits()), Cfg: id, Addr: binary.NativeEndian.Uint32(a[:])}] = 1
		return
	}
	e.cidrs6[detourCidr6Key{Prefixlen: 32 + uint32(p.Bits()), Cfg: id, Addr: addr16(p.Addr())}] = 1
}

func (e entries) putIDs(id, set uint32, rs []redirect.IDRange) {
	for _, r := range rs {
		for _, b := range idBlocks(r) {
			e.ids[detourIdKey{Prefixlen: 64 + uint32(b.bits), Cfg: id, Set: set, Id: be32(b.first)}] = 1
		}
	}
}

// addr16 is a as the programs hold it: 16 bytes, IPv4 as ::ffff:a.b.c.d, each
// word in network byte order.
func addr16(a netip.Addr) [4]uint32 {
	b := netip.AddrFrom16(a.As16()).As16()
	if a.Is4() {
		b = netip.AddrFrom16(netip.AddrFrom4(a.As4()).As16()).As16()
	}
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func be32(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

func be16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// block is an aligned range: the values whose top bits equal first's top bits.
type block struct {
	first uint32
	bits  int // prefix length within the width
	width int // 16 for ports, 32 for ids
}

func (b block) last() uint32 {
	span := uint64(1) << (b.width - b.bits)
	return uint32(uint64(b.first) + span - 1)
}

func (b block) String() string {
	if b.bits == b.width {
		return fmt.Sprint(b.first)
	}
	return fmt.Sprintf("%d-%d", b.first, b.last())
}

func (b block) contains(o block) bool {
	return b.bits <= o.bits && b.first <= o.first && o.last() <= b.last()
}

// blocks splits [first, last] into the fewest aligned blocks (at most 2×width).
func blocks(first, last uint64, width int) []block {
	var out []block
	for first <= last {
		size := 0
		if first == 0 {
			size = width
		} else {
			size = bits.TrailingZeros64(first)
		}
		for size > 0 && first+(uint64(1)<<size)-1 > last {
			size--
		}
		out = append(out, block{first: uint32(first), bits: width - size, width: width})
		first += uint64(1) << size
	}
	return out
}

func portBlocks(r redirect.PortRange) []block {
	return blocks(uint64(r.First), uint64(r.Last), 16)
}

func idBlocks(r redirect.IDRange) []block {
	return blocks(uint64(r.First), uint64(r.Last), 32)
}

// masks gives each block of the rule sets the bitmask of the rules whose
// blocks contain it: a trie answers with the longest matching block only, so
// that block must carry every rule that covers it.
func masks(sets [][]block, width int) map[block]uint64 {
	out := map[block]uint64{}
	for _, set := range sets {
		for _, b := range set {
			var m uint64
			for j, other := range sets {
				for _, o := range other {
					if o.contains(b) {
						m |= 1 << j
						break
					}
				}
			}
			out[b] |= m
		}
	}
	return out
}

// lines is the text form of entries: what `detour plan` prints and what Observe
// reads back, sorted.
func (e entries) lines() []string {
	var out []string
	c := e.cfg
	gid := "-"
	if c.Flags&flagProxyGID != 0 {
		gid = fmt.Sprint(c.ProxyGid)
	}
	out = append(out, fmt.Sprintf("config flags=%s proxy_uid=%d proxy_gid=%s outbound_port=%d dns_port=%d",
		flagNames(c.Flags), c.ProxyUid, gid, c.OutPort, c.DnsPort))
	for k := range e.cidrs4 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], k.Addr)
		out = append(out, fmt.Sprintf("cidrs4 %s", netip.PrefixFrom(netip.AddrFrom4(b), int(k.Prefixlen)-32)))
	}
	for k := range e.cidrs6 {
		out = append(out, fmt.Sprintf("cidrs6 %s", netip.PrefixFrom(fromAddr16(k.Addr), int(k.Prefixlen)-32)))
	}
	for k, v := range e.ids {
		b := block{first: be32(k.Id), bits: int(k.Prefixlen) - 64, width: 32}
		line := fmt.Sprintf("ids %s %s", idSetName(k.Set), b)
		if k.Set == setRuleUIDs {
			line += fmt.Sprintf(" rules=%#x", v)
		}
		out = append(out, line)
	}
	for k, v := range e.ports {
		b := block{first: uint32(be16(k.Port)), bits: int(k.Prefixlen) - 48, width: 16}
		line := fmt.Sprintf("ports %s %s", portSetName(k.Set), b)
		if k.Set == setRulePorts {
			line += fmt.Sprintf(" rules=%#x", v)
		}
		out = append(out, line)
	}
	for k := range e.dns {
		out = append(out, fmt.Sprintf("dns_servers %s", fromAddr16(k.Addr).Unmap()))
	}
	slices.Sort(out[1:])
	return out
}

func fromAddr16(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, v := range w {
		binary.NativeEndian.PutUint32(b[4*i:], v)
	}
	return netip.AddrFrom16(b)
}

func flagNames(f uint32) string {
	names := []string{"out4", "out6", "include_cidrs4", "include_cidrs6", "include_ports", "proxy_gid", "dns4", "dns6", "dns_all", "accelerate"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

func idSetName(s uint32) string {
	switch s {
	case setExemptUIDs:
		return "exempt_uid"
	case setExemptGIDs:
		return "exempt_gid"
	case setDNSExemptUIDs:
		return "dns_exempt_uid"
	case setRuleUIDs:
		return "rule_uid"
	}
	return fmt.Sprintf("set%d", s)
}

func portSetName(s uint16) string {
	switch s {
	case setOutPorts:
		return "outbound"
	case setRulePorts:
		return "rule_port"
	}
	return fmt.Sprintf("set%d", s)
}
