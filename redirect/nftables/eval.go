//go:build linux

package nftables

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// packet is what the table's rules look at for one new connection.
type packet struct {
	fam          redirect.Family
	proto        uint8
	src, dst     netip.Addr
	sport, dport uint16
	uid, gid     uint32
	oif, iif     string
	local        bool   // fib daddr type local
	ctstate      uint32 // ctNew for a new connection
	transparent  bool   // a transparent socket holds it
}

// outcome is what the table does with a packet: the proxy port it is sent to
// (0: left alone), the deciding rule, what it does (redirect.KernelVerdict's
// Action) and the rules before it. A connection left alone by a return,
// accept or drop has that rule as its deciding one; rule is empty only when
// it falls off the end of detour's chains.
type outcome struct {
	captured bool
	port     uint16
	rule     string
	action   string
	path     []string
}

// evaluator runs a ruleset's chains on a packet, as the kernel would for the
// first packet of a connection. It reads only the ruleset: it is how Explain
// says what an observed table does, and how the tests check every rendering
// against Capture.Decide.
type evaluator struct {
	sets   map[string]*Set
	chains map[string]*Chain
	out    outcome
	depth  int
	// last is the kind of the last verdict rule appended to out.path.
	last string
}

func newEvaluator(rs *Ruleset) *evaluator {
	e := &evaluator{sets: map[string]*Set{}, chains: map[string]*Chain{}}
	for _, s := range rs.Sets {
		e.sets[s.Name] = s
	}
	for _, c := range rs.Chains {
		e.chains[c.Name] = c
	}
	return e
}

// conn evaluates one connection as redirect.Decide describes it.
func (e *evaluator) conn(c redirect.Conn) outcome {
	dst, src := c.Dst.Unmap().WithZone(""), c.Src.Unmap().WithZone("")
	p := &packet{proto: tcp, dst: dst, src: src, dport: c.Port, sport: 40000, uid: c.UID, gid: c.GID, ctstate: ctNew}
	if c.Protocol == redirect.UDP {
		p.proto = udp
	}
	p.fam = redirect.IPv4
	if dst.Is6() {
		p.fam = redirect.IPv6
	}
	if c.Direction == redirect.DirInbound {
		if src.Is6() {
			p.fam = redirect.IPv6
		} else {
			p.fam = redirect.IPv4
		}
		// Only connections to the workload's own addresses are local;
		// without a destination the connection is taken to be to it.
		p.iif, p.local = "eth0", c.ToSelf || !p.dst.IsValid() || p.dst.IsLoopback()
		if !p.dst.IsValid() || p.dst.Is6() != src.Is6() {
			p.dst = src // any local address of the family: rules never look at it
		}
		e.hooks(p, "mangle_prerouting", "nat_prerouting")
		return e.decided()
	}
	p.oif = "eth0"
	if dst.IsUnspecified() { // connect() to the unspecified address dials loopback
		p.dst = netip.IPv6Loopback()
		if dst.Is4() {
			p.dst = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	if p.dst.IsLoopback() || c.ToSelf {
		p.oif = "lo"
	}
	if !p.src.IsValid() {
		p.src = p.dst // over lo the kernel picks the destination's own address
	}
	e.hooks(p, "raw_output", "mangle_output", "nat_output")
	return e.decided()
}

// decided is the outcome with a connection left alone by a return, accept or
// drop quoting that rule as the deciding one (it is the last on the path).
func (e *evaluator) decided() outcome {
	out := e.out
	if !out.captured && len(out.path) > 0 && e.last != "jump" {
		out.rule, out.action = out.path[len(out.path)-1], e.last
		out.path = out.path[:len(out.path)-1]
	}
	return out
}

// hooks runs base chains in hook order until one decides.
func (e *evaluator) hooks(p *packet, names ...string) {
	for _, n := range names {
		if ch, ok := e.chains[n]; ok {
			if v := e.run(ch, p); v == "accept" || v == "drop" || e.out.captured {
				return
			}
		}
	}
}

// run evaluates a chain: the verdict that ends it ("return" when it falls
// off its end).
func (e *evaluator) run(ch *Chain, p *packet) string {
	e.depth++
	defer func() { e.depth-- }()
	if e.depth > 16 {
		return "drop"
	}
rules:
	for _, r := range ch.Rules {
		line := ch.Name + " " + r.Text()
		for _, s := range r.stmts {
			switch s := s.(type) {
			case verdict:
				e.out.path = append(e.out.path, line)
				e.last = s.kind
				if s.kind != "jump" {
					return s.kind
				}
				next, ok := e.chains[s.chain]
				if !ok {
					return "drop"
				}
				if v := e.run(next, p); v != "return" {
					return v
				}
				continue rules
			case redirectTo:
				e.out = outcome{captured: true, port: s.port, rule: line, action: "redirect", path: e.out.path}
				return "accept"
			case tproxyTo:
				if s.fam != p.fam {
					continue rules
				}
				e.out = outcome{captured: true, port: s.port, rule: line, action: "tproxy", path: e.out.path}
				return "accept"
			default:
				if !e.match(s, p) {
					continue rules
				}
			}
		}
	}
	return "return"
}

func (e *evaluator) inSet(name string, key []byte) bool {
	s, ok := e.sets[name]
	if !ok {
		return false
	}
	for _, r := range s.Elems {
		if len(key) == len(r.first) && bytes.Compare(key, r.first) >= 0 && bytes.Compare(key, r.last) <= 0 {
			return true
		}
	}
	return false
}

func (p *packet) addr(field string) netip.Addr {
	if field == "saddr" {
		return p.src
	}
	return p.dst
}

func (e *evaluator) match(s stmt, p *packet) bool {
	switch s := s.(type) {
	case l4:
		return p.proto == uint8(s)
	case nfprotoStmt:
		return p.fam == s.fam
	case metaCmp:
		if s.key == "skgid" {
			return p.gid == s.val
		}
		return p.uid == s.val
	case metaLookup:
		v := p.uid
		if s.key == "skgid" {
			v = p.gid
		}
		return e.inSet(s.set, be32(v))
	case ifname:
		if s.dir == "iifname" {
			return p.iif == s.name
		}
		return p.oif == s.name
	case addrCmp:
		a := p.addr(s.field)
		return p.fam == s.fam && a.IsValid() && s.prefix.Contains(a) != s.neq
	case addrLookup:
		a := p.addr(s.field)
		return p.fam == s.fam && a.IsValid() && e.inSet(s.set, a.AsSlice()) != s.neq
	case portCmp:
		return p.proto == s.proto && p.port(s.field) == s.port
	case portLookup:
		return p.proto == s.proto && e.inSet(s.set, be16(p.port(s.field))) != s.neq
	case fibLocal:
		return p.local
	case ctState:
		return p.ctstate&s.bits != 0
	case socketTransparent:
		return p.transparent
	case tcpNotSyn:
		// The modeled packet is the first of its connection: a SYN.
		return false
	case markMatch:
		// The modeled connections are opened by the app or arrive from the
		// network: neither the packet nor its connection has a mark.
		return false
	case markOr, ctMarkOr, limit, logStmt, ctZone:
		return true
	}
	panic(fmt.Sprintf("evaluator: no case for %T", s))
}

func (p *packet) port(field string) uint16 {
	if field == "sport" {
		return p.sport
	}
	return p.dport
}

// explain says what the observed table does with one connection: whether it
// is sent to a proxy port, the deciding rule and the rules before it. It
// refuses when part of the table is not as detour made it (the answer could
// be wrong).
func (o *Observed) explain(c redirect.Conn) (outcome, error) {
	if o.Empty() {
		return outcome{}, nil
	}
	o.parseRules()
	if len(o.problems) > 0 {
		return outcome{}, fmt.Errorf("detour's nftables table holds what detour did not make, so no answer is given: %s", strings.Join(o.problems, "; "))
	}
	return newEvaluator(&o.rs).conn(c), nil
}
