package iptables

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// This file evaluates detour's own rendered iptables rules without a kernel:
// a packet walks the built-in chains of raw, mangle and nat, our hooks and our
// chains, with the matches and targets detour renders (an unknown token fails
// the test, so the evaluator cannot silently skip a rule). It is a witness
// for Capture.Decide independent of Decide's code: TestDecideMatchesRendering
// compares them on thousands of generated (config, connection) pairs.
// TestDecisionMatchesPackets does the same on real packets, sampled.

// packet is the first packet of a connection as the rules see it.
type packet struct {
	proto          string // "tcp" or "udp"
	src, dst       netip.Addr
	sport, dport   uint16
	in, out        string // interfaces; "" where the hook has none
	local          bool   // locally generated: owner matches apply
	uid, gid       uint32
	dstLocal       bool   // addrtype LOCAL
	ctstate        string // NEW for every generated connection
	transparentSck bool   // a transparent socket holds it (never for NEW)
}

// outcome is where the rules send the packet.
type outcome struct {
	to   string // "redirect", "tproxy", "drop" or "" (left alone)
	port uint16
	rule string // the deciding rule
}

type evaluator struct {
	t  *testing.T
	fr FamilyRules
}

// hook walks one built-in chain of one table: our hooks in it, in order.
func (ev *evaluator) hook(table, builtin string, pk packet) (outcome, bool) {
	for _, tb := range ev.fr.Tables {
		if tb.Name != table {
			continue
		}
		var rules []Rule
		for _, h := range tb.Hooks {
			if h.Chain == builtin {
				rules = append(rules, h)
			}
		}
		return ev.walk(tb, rules, pk, 0)
	}
	return outcome{}, false
}

func (ev *evaluator) chain(tb Table, name string) []Rule {
	for _, c := range tb.Chains {
		if c.Name == name {
			return c.Rules
		}
	}
	ev.t.Fatalf("jump to chain %s that table %s does not declare", name, tb.Name)
	return nil
}

// walk evaluates rules in order; decided is false when the chain ends or
// RETURNs without a terminating target.
func (ev *evaluator) walk(tb Table, rules []Rule, pk packet, depth int) (outcome, bool) {
	if depth > 10 {
		ev.t.Fatal("chain loop")
	}
	for _, r := range rules {
		target, opts, ok := ev.match(r, pk)
		if !ok {
			continue
		}
		quoted := "-t " + tb.Name + " -A " + r.Chain + " " + r.Spec
		switch target {
		case "RETURN":
			return outcome{}, false
		case "ACCEPT":
			return outcome{rule: quoted}, true
		case "DROP":
			return outcome{to: "drop", rule: quoted}, true
		case "REDIRECT":
			return outcome{to: "redirect", port: ev.port(opts["--to-ports"]), rule: quoted}, true
		case "TPROXY":
			return outcome{to: "tproxy", port: ev.port(opts["--on-port"]), rule: quoted}, true
		case "LOG", "MARK", "CONNMARK", "CT":
			continue // non-terminating
		default:
			if !strings.HasPrefix(target, chainPrefix) {
				ev.t.Fatalf("rule %q: target %s unknown to the evaluator", r.Spec, target)
			}
			if o, decided := ev.walk(tb, ev.chain(tb, target), pk, depth+1); decided {
				return o, true
			}
		}
	}
	return outcome{}, false
}

func (ev *evaluator) port(s string) uint16 {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		ev.t.Fatalf("port %q: %v", s, err)
	}
	return uint16(n)
}

// match reports whether every match of the rule holds for pk, and returns its
// target and the target's options.
func (ev *evaluator) match(r Rule, pk packet) (target string, opts map[string]string, ok bool) {
	tok := specTokens(r.Spec)
	ok = true
	neg := false
	need := func(cond bool) {
		if cond == neg {
			ok = false
		}
		neg = false
	}
	for i := 0; i < len(tok); i++ {
		arg := func() string {
			i++
			if i >= len(tok) {
				ev.t.Fatalf("rule %q: %s without a value", r.Spec, tok[i-1])
			}
			return tok[i]
		}
		switch tok[i] {
		case "!":
			neg = true
		case "-p":
			need(pk.proto == arg())
		case "-s":
			need(netip.MustParsePrefix(arg()).Contains(pk.src))
		case "-d":
			need(netip.MustParsePrefix(arg()).Contains(pk.dst))
		case "-i":
			need(pk.in == arg())
		case "-o":
			need(pk.out == arg())
		case "-m":
			if m := arg(); !slices.Contains([]string{"tcp", "udp", "multiport", "owner", "addrtype", "conntrack", "socket", "comment", "limit", "mark", "connmark"}, m) {
				ev.t.Fatalf("rule %q: match module %s unknown to the evaluator", r.Spec, m)
			}
		case "--dport":
			need(pk.dport == ev.port(arg()))
		case "--sport":
			need(pk.sport == ev.port(arg()))
		case "--dports":
			need(inPortList(arg(), pk.dport))
		case "--uid-owner":
			need(pk.local && inIDRange(arg(), pk.uid))
		case "--gid-owner":
			need(pk.local && inIDRange(arg(), pk.gid))
		case "--dst-type":
			if arg() != "LOCAL" {
				ev.t.Fatalf("rule %q: dst-type other than LOCAL", r.Spec)
			}
			need(pk.dstLocal)
		case "--ctstate":
			need(slices.Contains(strings.Split(arg(), ","), pk.ctstate))
		case "--tcp-flags":
			// The packet is the first of a new connection: SYN alone.
			mask, set := arg(), arg()
			if mask != "FIN,SYN,RST,ACK" {
				ev.t.Fatalf("rule %q: tcp flags mask %s unknown to the evaluator", r.Spec, mask)
			}
			need(set == "SYN")
		case "--transparent":
			need(pk.transparentSck)
		case "--mark":
			// A new connection of an application: neither the packet nor
			// its connection carries a mark.
			v, _, _ := strings.Cut(arg(), "/")
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				ev.t.Fatalf("rule %q: mark %q", r.Spec, v)
			}
			need(n == 0)
		case "--comment", "--limit":
			arg()
		case "-j", "-g":
			target = arg()
			opts = map[string]string{}
			for i+1 < len(tok) {
				i++
				k := tok[i]
				if !strings.HasPrefix(k, "--") {
					ev.t.Fatalf("rule %q: target option %q", r.Spec, k)
				}
				if i+1 >= len(tok) || strings.HasPrefix(tok[i+1], "--") {
					opts[k] = "" // a flag such as --save-mark
					continue
				}
				i++
				opts[k] = tok[i]
			}
		default:
			ev.t.Fatalf("rule %q: token %q unknown to the evaluator", r.Spec, tok[i])
		}
	}
	return target, opts, ok
}

func inPortList(list string, p uint16) bool {
	for _, item := range strings.Split(list, ",") {
		first, last, _ := strings.Cut(item, ":")
		if last == "" {
			last = first
		}
		a, _ := strconv.Atoi(first)
		b, _ := strconv.Atoi(last)
		if int(p) >= a && int(p) <= b {
			return true
		}
	}
	return false
}

func inIDRange(r string, id uint32) bool {
	first, last, _ := strings.Cut(r, "-")
	if last == "" {
		last = first
	}
	a, _ := strconv.ParseUint(first, 10, 32)
	b, _ := strconv.ParseUint(last, 10, 32)
	return uint64(id) >= a && uint64(id) <= b
}

// locallyGenerated runs an outgoing packet through raw, mangle and nat OUTPUT.
func (ev *evaluator) locallyGenerated(pk packet) outcome {
	for _, table := range tableOrder {
		if o, decided := ev.hook(table, "OUTPUT", pk); decided && o.to != "" {
			return o
		}
	}
	return outcome{}
}

// arriving runs a received packet through raw, mangle and nat PREROUTING.
func (ev *evaluator) arriving(pk packet) outcome {
	for _, table := range tableOrder {
		if o, decided := ev.hook(table, "PREROUTING", pk); decided && o.to != "" {
			return o
		}
	}
	return outcome{}
}

// Addresses of the generated workload and its peers (TEST-NET only).
var (
	xPod4, xPod6   = netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8:1::10")
	xDsts          = mustAddrs("198.51.100.1", "198.51.100.7", "198.51.100.200", "203.0.113.9", "127.0.0.1", "127.0.0.53", "2001:db8:ff::1", "2001:db8:ff:1::7", "2001:db8:ff:2::9", "::1")
	xSrcs          = mustAddrs("198.51.100.9", "198.51.100.130", "192.0.2.1", "203.0.113.77", "2001:db8:ff::9", "2001:db8::1", "2001:db8:ff:1::9")
	xPorts         = []uint16{22, 53, 80, 81, 443, 8080, 8081, 9000, 9001, 15001, 15006, 15008, 15053}
	xOwners        = [][2]uint32{{1000, 1000}, {1001, 1000}, {1002, 2001}, {5678, 1000}, {1000, 2002}, {1003, 1003}, {0, 0}}
	xCIDRs         = []string{"198.51.100.0/25", "198.51.100.128/25", "198.51.100.7/32", "198.51.100.0/24", "203.0.113.0/24", "2001:db8:ff::/64", "2001:db8:ff:1::/64", "2001:db8:ff::/48", "2001:db8:ff:2::9/128"}
	xSrcCIDRs      = []string{"198.51.100.0/25", "198.51.100.128/25", "192.0.2.1/32", "2001:db8:ff::/64", "2001:db8::1/128", "2001:db8:ff::/48"}
	xNameservers   = mustAddrs("127.0.0.53", "198.51.100.1", "2001:db8:ff::1")
	xPassthroughs6 = []string{"::6", "::7"}
)

func mustAddrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func xPick[T any](rnd *rand.Rand, items []T) T { return items[rnd.IntN(len(items))] }

// xSome is a random non-empty subset joined with commas, or "" with
// probability 1-p.
func xSome[T any](rnd *rand.Rand, p float64, items []T) string {
	if rnd.Float64() >= p {
		return ""
	}
	var out []string
	for _, it := range items {
		if rnd.IntN(3) == 0 {
			out = append(out, fmt.Sprint(it))
		}
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprint(xPick(rnd, items)))
	}
	return strings.Join(out, ",")
}

func xConfig(t *testing.T, rnd *rand.Rand) redirect.Config {
	t.Helper()
	ports := []string{"53", "80", "81", "443", "8080", "8081", "9000-9001", "15001", "15008"}
	sets := []string{
		"mode=" + xPick(rnd, []string{"redirect", "tproxy"}),
		"ipFamilies=" + xPick(rnd, []string{"auto", "ipv4", "ipv6", "dual"}),
		"outbound.includePorts=" + xSome(rnd, 0.3, ports),
		"outbound.excludePorts=" + xSome(rnd, 0.5, ports),
		"outbound.includeCIDRs=" + xSome(rnd, 0.3, xCIDRs),
		"outbound.excludeCIDRs=" + xSome(rnd, 0.5, xCIDRs),
		"outbound.excludeUIDs=" + xSome(rnd, 0.5, []string{"1001", "1002-1003", "0"}),
		"outbound.excludeGIDs=" + xSome(rnd, 0.3, []string{"2001", "1003"}),
		"inbound.includePorts=" + xSome(rnd, 0.3, ports),
		"inbound.excludePorts=" + xSome(rnd, 0.5, ports),
		"inbound.excludeSourceCIDRs=" + xSome(rnd, 0.5, xSrcCIDRs),
		"dns.capture=" + xPick(rnd, []string{"off", "all", "resolvconf"}),
		"dns.conntrackZoneSplit=" + xPick(rnd, []string{"true", "false"}),
		"dropInvalidPackets=" + xPick(rnd, []string{"true", "false"}),
		"log.enabled=" + xPick(rnd, []string{"true", "false"}),
		"proxy.inboundPassthroughSource.ipv6=" + xPick(rnd, xPassthroughs6),
	}
	if rnd.IntN(3) == 0 {
		sets = append(sets, "outbound.excludePortsForUIDs="+xPick(rnd, []string{"tcp:80,9000-9001:1000", "tcp:443:1000-1001,udp:53:1000", "udp:53,5353:1002", "udp:443:1000"}))
	}
	if rnd.IntN(3) == 0 {
		sets = append(sets, "proxy.gid=2002")
	}
	switch rnd.IntN(8) {
	case 0:
		sets = append(sets, "outbound.enabled=false")
	case 1:
		sets = append(sets, "inbound.enabled=false")
	}
	return cfgWith(t, "", sets...)
}

// xConn draws one connection and the packet that opens it.
func xConn(rnd *rand.Rand, fc redirect.FamilyCapture) (redirect.Conn, packet) {
	v6 := fc.Family == redirect.IPv6
	pod := xPod4
	if v6 {
		pod = xPod6
	}
	family := func(as []netip.Addr) netip.Addr {
		for {
			if a := xPick(rnd, as); a.Is6() == v6 {
				return a
			}
		}
	}
	o := xPick(rnd, xOwners)
	port := xPick(rnd, xPorts)
	switch rnd.IntN(5) {
	case 0, 1: // outbound TCP
		dst := family(xDsts)
		out := "eth0"
		if dst.IsLoopback() {
			out = "lo"
		}
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: dst, Port: port, UID: o[0], GID: o[1]},
			packet{proto: "tcp", src: pod, dst: dst, sport: 40000, dport: port, out: out, local: true, uid: o[0], gid: o[1], dstLocal: dst.IsLoopback(), ctstate: "NEW"}
	case 2: // the workload dialing its own address over lo (the proxy's hairpin, or the passthrough)
		src := pod
		if rnd.IntN(3) == 0 {
			src = fc.Proxy.Passthrough
		}
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Src: src, Dst: pod, Port: port, UID: o[0], GID: o[1], ToSelf: true},
			packet{proto: "tcp", src: src, dst: pod, sport: 40000, dport: port, out: "lo", local: true, uid: o[0], gid: o[1], dstLocal: true, ctstate: "NEW"}
	case 3: // a UDP query
		dst := family(append(slices.Clone(xDsts), xNameservers...))
		if rnd.IntN(2) == 0 {
			port = 53
		}
		out := "eth0"
		if dst.IsLoopback() {
			out = "lo"
		}
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.UDP, Dst: dst, Port: port, UID: o[0], GID: o[1]},
			packet{proto: "udp", src: pod, dst: dst, sport: 40000, dport: port, out: out, local: true, uid: o[0], gid: o[1], dstLocal: dst.IsLoopback(), ctstate: "NEW"}
	}
	src := family(xSrcs) // inbound from a peer
	return redirect.Conn{Direction: redirect.DirInbound, Protocol: redirect.TCP, Src: src, Dst: pod, Port: port, ToSelf: true},
		packet{proto: "tcp", src: src, dst: pod, sport: 40000, dport: port, in: "eth0", dstLocal: true, ctstate: "NEW"}
}

// TestDecideMatchesRendering: for a few thousand generated (config,
// connection) pairs, Capture.Decide's answer equals what the iptables
// rendering of the same Capture does with the connection's first packet. The
// seed is logged; DETOUR_DECISION_SEED=<seed> replays it.
func TestDecideMatchesRendering(t *testing.T) {
	t.Parallel()
	seed := uint64(rand.Int64())
	if s, err := strconv.ParseUint(os.Getenv("DETOUR_DECISION_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("DETOUR_DECISION_SEED=%d", seed)
	rnd := rand.New(rand.NewPCG(seed, 7))
	const configs, conns = 400, 12
	seen := map[string]int{}
	pairs := 0
	for range configs {
		cfg := xConfig(t, rnd)
		facts := redirect.Facts{IPv6: true, Nameservers: xNameservers}
		p, err := redirect.NewPlan(cfg, facts)
		if err != nil {
			t.Fatalf("NewPlan: %v", err)
		}
		rules := Rules(p.Capture)
		for i, fc := range p.Capture.Families {
			ev := &evaluator{t: t, fr: rules[i]}
			for range conns {
				conn, pk := xConn(rnd, fc)
				var got outcome
				if conn.Direction == redirect.DirInbound {
					got = ev.arriving(pk)
				} else {
					got = ev.locallyGenerated(pk)
				}
				want := p.Capture.Decide(conn)
				captured := got.to == "redirect" || got.to == "tproxy"
				pairs++
				seen[fmt.Sprintf("%s %s %v", conn.Direction, conn.Protocol, want.Captured)]++
				if captured != want.Captured || (captured && got.port != want.Port) {
					t.Errorf("%+v under %s %s:\n  Decide: captured %v to port %d (%s)\n  rules:  %q to port %d by %q\nconfig %+v\n%s",
						conn, cfg.Mode, fc.Family, want.Captured, want.Port, want.Reason, got.to, got.port, got.rule, cfg, renderTables(rules[i].Tables))
					return
				}
			}
		}
	}
	t.Logf("%d pairs; outcomes %v", pairs, seen)
	for _, k := range []string{"outbound tcp true", "outbound tcp false", "inbound tcp true", "inbound tcp false", "outbound udp true", "outbound udp false"} {
		if seen[k] == 0 {
			t.Errorf("no pair was %q: the generator does not cover both outcomes (%v)", k, seen)
		}
	}
}
