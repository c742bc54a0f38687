package xtables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Hook is where a packet enters the tables.
type Hook string

const (
	// Output: a locally opened connection (raw, mangle, nat OUTPUT).
	Output Hook = "OUTPUT"
	// Prerouting: a connection arriving from an interface (raw, mangle, nat
	// PREROUTING).
	Prerouting Hook = "PREROUTING"
)

// tableOrder is the order the kernel runs the tables of a hook in.
var tableOrder = []string{"raw", "mangle", "nat"}

// Loopback is the interface name of lo; Packet.In/Out use it.
const Loopback = "lo"

// Packet is the first packet of one new connection, as far as the rules read it.
type Packet struct {
	Hook  Hook
	Proto string // "tcp" or "udp"
	// Src and Dst are the addresses; an invalid Src means "not known" (a rule
	// matching on -s then cannot be decided).
	Src, Dst netip.Addr
	// SPort 0 means an ephemeral port not known in advance.
	SPort, DPort uint16
	// In and Out are the interfaces: Loopback, or "" for an interface other
	// than lo whose name is not known. In is unused at Output, Out at
	// Prerouting.
	In, Out string
	// UID and GID own the local socket (Output only); nil at Prerouting.
	UID, GID *uint32
	// DstLocal says the destination is one of the host's own addresses
	// (addrtype LOCAL).
	DstLocal bool
	// CTState is the conntrack state the rules see: "NEW" when empty.
	CTState string
	// TransparentSocket says a transparent socket already owns this flow
	// (-m socket --transparent); false for a new connection.
	TransparentSocket bool
	// Mark is the packet's mark and CTMark its connection's mark (both 0 for
	// a new connection of an application).
	Mark   uint32
	CTMark uint32
}

// Outcome is what the tables do with the packet.
type Outcome string

const (
	// Untouched: no rule changes where the packet goes.
	Untouched Outcome = "untouched"
	// Redirected: nat REDIRECT to Port on the host.
	Redirected Outcome = "redirect"
	// TProxied: mangle TPROXY to Port.
	TProxied Outcome = "tproxy"
	// DNATed: nat DNAT elsewhere (To).
	DNATed Outcome = "dnat"
	// Dropped: DROP or REJECT.
	Dropped Outcome = "drop"
	// Unknown: the evaluation cannot tell (Result.Unknown says why).
	Unknown Outcome = "unknown"
)

// Step is one rule the packet matched (or a chain's policy), in order.
type Step struct {
	Table string `json:"table"`
	Chain string `json:"chain"`
	Rule  string `json:"rule"` // as printed; "policy ACCEPT" for a policy
	Note  string `json:"note,omitempty"`
}

// Result is the evaluation of one packet.
type Result struct {
	Outcome Outcome
	Port    uint16 // Redirected, TProxied: the port
	To      string // DNATed: --to-destination
	// Decider is the rule that decided: the target that redirected, dropped or
	// diverted; for Untouched the last RETURN or ACCEPT that let the packet
	// leave a chain (nil when no rule matched at all).
	Decider *Rule
	// Unknown says, for Outcome Unknown, which rule and what could not be
	// decided: "rule X uses Y".
	Unknown string
	Trace   []Step
}

// tri is a three-valued match result.
type tri int

const (
	no tri = iota
	yes
	maybe
)

// maxDepth bounds jumps (iptables refuses loops; a hand-made file might not).
const maxDepth = 64

type evaluation struct {
	rs      *Ruleset
	p       Packet
	res     Result
	mark    uint32
	ctmark  uint32
	untrack bool
}

// Evaluate follows p through the tables of its hook in kernel order: raw,
// mangle, nat. A DROP, REDIRECT, TPROXY or DNAT ends the evaluation; ACCEPT
// ends only its table. A packet made untracked in raw skips nat.
func (rs *Ruleset) Evaluate(p Packet) Result {
	if p.CTState == "" {
		p.CTState = "NEW"
	}
	ev := &evaluation{rs: rs, p: p, mark: p.Mark, ctmark: p.CTMark}
	for _, t := range tableOrder {
		if t == "nat" && ev.untrack {
			ev.res.Trace = append(ev.res.Trace, Step{Table: "nat", Chain: string(p.Hook), Rule: "skipped", Note: "the packet is untracked (raw CT --notrack)"})
			continue
		}
		tab := rs.Tables[t]
		if tab == nil {
			continue
		}
		c := tab.Chains[string(p.Hook)]
		if c == nil {
			continue
		}
		v, done := ev.chain(tab, c, 0)
		if done {
			ev.res.Outcome = v
			return ev.res
		}
	}
	ev.res.Outcome = Untouched
	return ev.res
}

// verdict of one chain run: done means evaluation is over (res filled);
// otherwise the chain returned (or accepted, ending the table).
type chainEnd int

const (
	fellThrough chainEnd = iota
	returned
	accepted
)

// chain runs a built-in chain and applies its policy. It reports the final
// outcome and true when the evaluation is over.
func (ev *evaluation) chain(tab *Table, c *Chain, depth int) (Outcome, bool) {
	end, out, done := ev.run(tab, c, depth)
	if done {
		return out, true
	}
	if end == fellThrough || end == returned {
		if c.Policy == "DROP" {
			ev.res.Trace = append(ev.res.Trace, Step{Table: tab.Name, Chain: c.Name, Rule: "policy DROP"})
			ev.res.Decider = nil
			return Dropped, true
		}
	}
	return "", false
}

// run runs the rules of one chain.
func (ev *evaluation) run(tab *Table, c *Chain, depth int) (chainEnd, Outcome, bool) {
	if depth > maxDepth {
		ev.res.Unknown = fmt.Sprintf("chain %s nests deeper than %d jumps", c.Name, maxDepth)
		return 0, Unknown, true
	}
	for _, r := range c.Rules {
		m, why := ev.match(r)
		if m == no {
			continue
		}
		if m == maybe {
			if inert(r) {
				ev.res.Trace = append(ev.res.Trace, Step{Table: tab.Name, Chain: c.Name, Rule: r.Text, Note: "may match (" + why + "); its target changes nothing here"})
				continue
			}
			ev.res.Unknown = fmt.Sprintf("rule %q uses %s", r.Text, why)
			ev.res.Decider = r
			return 0, Unknown, true
		}
		step := Step{Table: tab.Name, Chain: c.Name, Rule: r.Text}
		switch r.Target {
		case "":
			ev.res.Trace = append(ev.res.Trace, step)
		case "RETURN":
			ev.res.Trace = append(ev.res.Trace, step)
			ev.res.Decider = r
			return returned, "", false
		case "ACCEPT":
			ev.res.Trace = append(ev.res.Trace, step)
			ev.res.Decider = r
			return accepted, "", false
		case "DROP", "REJECT":
			ev.res.Trace = append(ev.res.Trace, step)
			ev.res.Decider = r
			return 0, Dropped, true
		case "REDIRECT":
			port, err := firstPort(optArg(r.Args, "--to-ports"))
			ev.res.Trace = append(ev.res.Trace, step)
			ev.res.Decider = r
			if err != nil {
				ev.res.Unknown = fmt.Sprintf("rule %q: REDIRECT %v", r.Text, err)
				return 0, Unknown, true
			}
			ev.res.Port = port
			return 0, Redirected, true
		case "TPROXY":
			port, err := firstPort(optArg(r.Args, "--on-port"))
			ev.res.Trace = append(ev.res.Trace, step)
			ev.res.Decider = r
			if err != nil {
				ev.res.Unknown = fmt.Sprintf("rule %q: TPROXY %v", r.Text, err)
				return 0, Unknown, true
			}
			ev.res.Port = port
			return 0, TProxied, true
		case "DNAT":
			ev.res.Trace = append(ev.res.Trace, step)
			ev.res.Decider = r
			ev.res.To = optArg(r.Args, "--to-destination")
			return 0, DNATed, true
		case "MARK":
			if err := ev.setMark(r); err != nil {
				ev.res.Unknown = fmt.Sprintf("rule %q uses %v", r.Text, err)
				ev.res.Decider = r
				return 0, Unknown, true
			}
			ev.res.Trace = append(ev.res.Trace, step)
		case "CONNMARK":
			if err := ev.connmark(r); err != nil {
				ev.res.Unknown = fmt.Sprintf("rule %q uses %v", r.Text, err)
				ev.res.Decider = r
				return 0, Unknown, true
			}
			ev.res.Trace = append(ev.res.Trace, step)
		case "CT":
			if hasOpt(r.Args, "--notrack") {
				ev.untrack = true
			}
			ev.res.Trace = append(ev.res.Trace, step)
		case "NOTRACK":
			ev.untrack = true
			ev.res.Trace = append(ev.res.Trace, step)
		case "LOG", "NFLOG":
			ev.res.Trace = append(ev.res.Trace, step)
		default:
			next := tab.Chains[r.Target]
			if next == nil || next.Policy != "-" {
				ev.res.Unknown = fmt.Sprintf("rule %q uses target %s", r.Text, r.Target)
				ev.res.Decider = r
				return 0, Unknown, true
			}
			ev.res.Trace = append(ev.res.Trace, step)
			before := ev.res.Decider
			end, out, done := ev.run(tab, next, depth+1)
			if done {
				return 0, out, true
			}
			if end == accepted {
				return accepted, "", false
			}
			if end == fellThrough {
				// No rule of the called chain decided: the jump did nothing,
				// which is what decides when nothing later matches (raw
				// only tags conntrack zones: its jumps decide nothing).
				ev.res.Trace = append(ev.res.Trace, Step{Table: tab.Name, Chain: next.Name, Rule: "end of chain", Note: "no rule matched; back to " + c.Name})
				if ev.res.Decider == before && tab.Name != "raw" {
					ev.res.Decider = r
				}
			}
			if r.Goto {
				// -g: the called chain's end is this chain's end.
				return returned, "", false
			}
		}
	}
	return fellThrough, "", false
}

// inert reports whether a rule's target cannot change where the packet goes,
// so a rule that may or may not match does not matter.
func inert(r *Rule) bool {
	switch r.Target {
	case "LOG", "NFLOG", "":
		return true
	case "CT":
		return !hasOpt(r.Args, "--notrack")
	}
	return false
}

func (ev *evaluation) setMark(r *Rule) error {
	for _, o := range r.Args {
		switch o.Name {
		case "--set-xmark", "--set-mark":
			if len(o.Args) != 1 {
				return fmt.Errorf("MARK %s without a value", o.Name)
			}
			v, m, err := valueMask(o.Args[0])
			if err != nil {
				return fmt.Errorf("MARK %s %v", o.Name, err)
			}
			if o.Name == "--set-xmark" {
				ev.mark = (ev.mark &^ m) ^ v
			} else {
				ev.mark = (ev.mark &^ m) | v
			}
			return nil
		}
	}
	return fmt.Errorf("MARK without --set-xmark")
}

// connmark follows a CONNMARK target: --set-xmark/--set-mark change the
// connection's mark, --save-mark copies the packet's mark into it and
// --restore-mark the other way (under --nfmask and --ctmask, both all-ones by
// default; iptables-save prints them).
func (ev *evaluation) connmark(r *Rule) error {
	nfmask, ctmask := ^uint32(0), ^uint32(0)
	for _, o := range r.Args {
		var err error
		switch o.Name {
		case "--nfmask":
			nfmask, err = parseUint32(optArg(r.Args, o.Name))
		case "--ctmask":
			ctmask, err = parseUint32(optArg(r.Args, o.Name))
		}
		if err != nil {
			return fmt.Errorf("CONNMARK %s %v", o.Name, err)
		}
	}
	for _, o := range r.Args {
		switch o.Name {
		case "--set-xmark", "--set-mark":
			if len(o.Args) != 1 {
				return fmt.Errorf("CONNMARK %s without a value", o.Name)
			}
			v, m, err := valueMask(o.Args[0])
			if err != nil {
				return fmt.Errorf("CONNMARK %s %v", o.Name, err)
			}
			if o.Name == "--set-xmark" {
				ev.ctmark = (ev.ctmark &^ m) ^ v
			} else {
				ev.ctmark = (ev.ctmark &^ m) | v
			}
			return nil
		case "--save-mark":
			ev.ctmark = (ev.ctmark &^ ctmask) ^ (ev.mark & nfmask)
			return nil
		case "--restore-mark":
			ev.mark = (ev.mark &^ nfmask) ^ (ev.ctmark & ctmask)
			return nil
		}
	}
	return fmt.Errorf("CONNMARK without --set-xmark, --save-mark or --restore-mark")
}

func parseUint32(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	return uint32(v), err
}

func optArg(os []Option, name string) string {
	for _, o := range os {
		if o.Name == name && len(o.Args) > 0 {
			return o.Args[0]
		}
	}
	return ""
}

func hasOpt(os []Option, name string) bool {
	for _, o := range os {
		if o.Name == name {
			return true
		}
	}
	return false
}

// firstPort reads "15001" or "15001-15002" (the first port is the one used
// for a single connection).
func firstPort(s string) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("without a port")
	}
	s, _, _ = strings.Cut(s, "-")
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q", s)
	}
	return uint16(n), nil
}

func valueMask(s string) (v, m uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v64, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("value %q", s)
	}
	m64 := uint64(0xffffffff)
	if hasMask {
		if m64, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("mask %q", s)
		}
	}
	return uint32(v64), uint32(m64), nil
}

// match decides all of a rule's conditions: no as soon as one is known not to
// hold; maybe (with the first undecidable condition) when none fails but one
// cannot be decided.
func (ev *evaluation) match(r *Rule) (tri, string) {
	res, why := yes, ""
	for _, m := range r.Matches {
		t, w := ev.cond(m)
		if t == no {
			return no, ""
		}
		if t == maybe && res == yes {
			res, why = maybe, w
		}
	}
	return res, why
}

func neg(t tri, negated bool) tri {
	if !negated || t == maybe {
		return t
	}
	if t == yes {
		return no
	}
	return yes
}

func boolTri(b bool) tri {
	if b {
		return yes
	}
	return no
}

// cond decides one condition; for maybe, it says what it could not decide.
func (ev *evaluation) cond(m Match) (tri, string) {
	o, p := m.Option, ev.p
	arg := ""
	if len(o.Args) > 0 {
		arg = o.Args[0]
	}
	switch m.Module {
	case "":
		switch o.Name {
		case "-p":
			return neg(protoMatch(arg, p.Proto), o.Negated), ""
		case "-s", "-d":
			a := p.Src
			if o.Name == "-d" {
				a = p.Dst
			}
			pre, err := prefix(arg)
			if err != nil {
				return maybe, fmt.Sprintf("%s %s, which is not an address", o.Name, arg)
			}
			if !a.IsValid() {
				return maybe, fmt.Sprintf("%s %s, and the packet's %s address is not known", o.Name, arg, map[string]string{"-s": "source", "-d": "destination"}[o.Name])
			}
			return neg(boolTri(pre.Contains(a.Unmap())), o.Negated), ""
		case "-i", "-o":
			iface := p.In
			if o.Name == "-o" {
				iface = p.Out
			}
			if (o.Name == "-i" && p.Hook == Output) || (o.Name == "-o" && p.Hook == Prerouting) {
				return neg(no, o.Negated), "" // no such interface at this hook
			}
			return neg(ifaceMatch(arg, iface), o.Negated), o.String() + " (the interface name is not known)"
		}
		return maybe, o.String()
	case "tcp", "udp":
		if m.Module != p.Proto {
			return no, ""
		}
		switch o.Name {
		case "--dport", "--destination-port":
			return neg(portsMatch(arg, ":", p.DPort), o.Negated), ""
		case "--sport", "--source-port":
			if p.SPort == 0 {
				return maybe, m.String() + " (the source port is not known in advance)"
			}
			return neg(portsMatch(arg, ":", p.SPort), o.Negated), ""
		case "--syn":
			return neg(boolTri(p.Proto == "tcp" && p.CTState == "NEW"), o.Negated), ""
		case "--tcp-flags":
			if len(o.Args) != 2 {
				return maybe, o.String()
			}
			mask, ok1 := tcpFlags(o.Args[0])
			set, ok2 := tcpFlags(o.Args[1])
			if !ok1 || !ok2 {
				return maybe, o.String()
			}
			return neg(boolTri(packetTCPFlags(p)&mask == set), o.Negated), ""
		}
	case "multiport":
		switch o.Name {
		case "--dports", "--destination-ports":
			return neg(listMatch(arg, p.DPort), o.Negated), ""
		case "--sports", "--source-ports", "--ports":
			if p.SPort == 0 {
				return maybe, m.String() + " (the source port is not known in advance)"
			}
			t := listMatch(arg, p.SPort)
			if o.Name == "--ports" && t == no {
				t = listMatch(arg, p.DPort)
			}
			return neg(t, o.Negated), ""
		}
	case "owner":
		switch o.Name {
		case "--uid-owner", "--gid-owner":
			id := p.UID
			if o.Name == "--gid-owner" {
				id = p.GID
			}
			if id == nil {
				return no, "" // no local socket: owner never matches, negated or not
			}
			t, err := idMatch(arg, *id)
			if err != nil {
				return maybe, m.String() + " (" + err.Error() + ")"
			}
			return neg(t, o.Negated), ""
		case "--socket-exists":
			return neg(boolTri(p.UID != nil), o.Negated), ""
		}
	case "addrtype":
		if o.Name == "--dst-type" {
			types := strings.Split(arg, ",")
			local := false
			for _, t := range types {
				if t == "LOCAL" {
					local = true
				}
			}
			if local && p.DstLocal {
				return neg(yes, o.Negated), ""
			}
			if len(types) == 1 && local {
				return neg(no, o.Negated), ""
			}
		}
	case "conntrack", "state":
		if o.Name == "--ctstate" || o.Name == "--state" {
			for _, s := range strings.Split(arg, ",") {
				if s == p.CTState {
					return neg(yes, o.Negated), ""
				}
			}
			return neg(no, o.Negated), ""
		}
	case "socket":
		if o.Name == "--transparent" {
			return neg(boolTri(p.TransparentSocket), o.Negated), ""
		}
	case "mark":
		if o.Name == "--mark" {
			v, mask, err := valueMask(arg)
			if err == nil {
				return neg(boolTri(ev.mark&mask == v), o.Negated), ""
			}
		}
	case "connmark":
		if o.Name == "--mark" {
			v, mask, err := valueMask(arg)
			if err == nil {
				return neg(boolTri(ev.ctmark&mask == v), o.Negated), ""
			}
		}
	case "comment":
		return yes, ""
	case "limit":
		return maybe, m.String() + " (a rate limit)"
	}
	return maybe, m.String()
}

// tcpFlags parses iptables' flag list: "FIN,SYN,RST,ACK", "ALL", "NONE".
func tcpFlags(list string) (uint8, bool) {
	bits := map[string]uint8{"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40, "CWR": 0x80, "ALL": 0xff, "NONE": 0}
	var out uint8
	for _, f := range strings.Split(list, ",") {
		b, ok := bits[f]
		if !ok {
			return 0, false
		}
		out |= b
	}
	return out, true
}

// packetTCPFlags are the flags of the modeled packet: a new connection's is its
// SYN, any other an ACK.
func packetTCPFlags(p Packet) uint8 {
	if p.CTState == "" || p.CTState == "NEW" {
		return 0x02
	}
	return 0x10
}

func protoMatch(want, proto string) tri {
	switch strings.ToLower(want) {
	case "all", "0":
		return yes
	case "tcp", "6":
		return boolTri(proto == "tcp")
	case "udp", "17":
		return boolTri(proto == "udp")
	}
	return no // another protocol: neither tcp nor udp
}

func ifaceMatch(want, iface string) tri {
	if strings.HasSuffix(want, "+") {
		if iface != "" {
			return boolTri(strings.HasPrefix(iface, strings.TrimSuffix(want, "+")))
		}
		return maybe
	}
	if want == Loopback {
		return boolTri(iface == Loopback)
	}
	if iface == Loopback {
		return no
	}
	return maybe // another interface, whose name the packet does not say
}

func prefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err == nil {
			return p.Masked(), nil
		}
		// iptables-save may print a non-contiguous mask as a dotted quad.
		a, m, _ := strings.Cut(s, "/")
		addr, err1 := netip.ParseAddr(a)
		mask, err2 := netip.ParseAddr(m)
		if err1 != nil || err2 != nil || !mask.Is4() {
			return netip.Prefix{}, err
		}
		mb := mask.As4()
		bits := 0
		for _, b := range mb {
			for i := 7; i >= 0; i-- {
				if b&(1<<i) != 0 {
					bits++
				}
			}
		}
		return netip.PrefixFrom(addr, bits).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// portsMatch reads "80" or "80:90" (sep ":").
func portsMatch(s, sep string, port uint16) tri {
	lo, hi, ok := strings.Cut(s, sep)
	a, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return maybe
	}
	b := a
	if ok {
		if b, err = strconv.ParseUint(hi, 10, 16); err != nil {
			return maybe
		}
	}
	return boolTri(uint64(port) >= a && uint64(port) <= b)
}

func listMatch(s string, port uint16) tri {
	for _, e := range strings.Split(s, ",") {
		switch portsMatch(e, ":", port) {
		case yes:
			return yes
		case maybe:
			return maybe
		}
	}
	return no
}

// idMatch reads "5678" or "106-108".
func idMatch(s string, id uint32) (tri, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err := strconv.ParseUint(lo, 10, 32)
	if err != nil {
		return maybe, fmt.Errorf("%q is not a numeric id", s)
	}
	b := a
	if ok {
		if b, err = strconv.ParseUint(hi, 10, 32); err != nil {
			return maybe, fmt.Errorf("%q is not a numeric id range", s)
		}
	}
	return boolTri(uint64(id) >= a && uint64(id) <= b), nil
}
