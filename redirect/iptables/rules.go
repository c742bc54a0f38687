package iptables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// Everything detour installs is recognisable by name: our chains start with
// chainPrefix and are listed in ownedChains, and every rule we add to a built-in
// chain carries the comment ownerComment. docs/rules.md explains each chain.
const (
	chainPrefix  = "DETOUR_"
	ownerComment = "detour"

	chainInbound      = "DETOUR_INBOUND"       // nat and mangle: which inbound connections go to the proxy
	chainInRedirect   = "DETOUR_IN_REDIRECT"   // nat: REDIRECT to proxy.inboundPort
	chainOutput       = "DETOUR_OUTPUT"        // nat: which outbound TCP connections go to the proxy
	chainOutCIDRs     = "DETOUR_OUT_CIDRS"     // nat: outbound.includeCIDRs
	chainOutRedirect  = "DETOUR_OUT_REDIRECT"  // nat: REDIRECT to proxy.outboundPort
	chainDNS          = "DETOUR_DNS"           // nat: which UDP/53 queries go to the DNS proxy
	chainDNSRedirect  = "DETOUR_DNS_REDIRECT"  // nat: REDIRECT to dns.port
	chainDivert       = "DETOUR_DIVERT"        // mangle: packets of connections the proxy holds (TPROXY)
	chainTProxy       = "DETOUR_TPROXY"        // mangle: TPROXY to proxy.inboundPort
	chainTProxyReturn = "DETOUR_TPROXY_RETURN" // mangle: the app's replies to the proxy's original-source connections
	chainCTOutput     = "DETOUR_CT_OUTPUT"     // raw: conntrack zones of locally sent DNS packets
	chainCTPrerouting = "DETOUR_CT_PREROUTING" // raw: made by earlier versions only (zones of received DNS replies); still ours, so it is removed
)

// ownedChains lists, per table, every chain name detour may create. A DETOUR_*
// chain that is not listed for its table is foreign.
var ownedChains = map[string][]string{
	"raw":    {chainCTOutput, chainCTPrerouting},
	"mangle": {chainDivert, chainInbound, chainTProxy, chainTProxyReturn},
	"nat":    {chainDNS, chainDNSRedirect, chainInbound, chainInRedirect, chainOutCIDRs, chainOutRedirect, chainOutput},
}

var (
	tableOrder   = []string{"raw", "mangle", "nat"}
	builtinOrder = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
)

// Fixed numbers of the DNS conntrack zones (redirect.ZoneUpstream and
// redirect.ZoneApp) and of the rules; docs/rules.md lists them.
const (
	zoneUpstream = redirect.ZoneUpstream
	zoneApp      = redirect.ZoneApp

	// localDst limits a hook in PREROUTING to packets addressed to the
	// namespace itself: a host that forwards traffic for others (containers on
	// a VM, pods on a node) must not capture what it only routes.
	localDst = "-m addrtype --dst-type LOCAL"

	logRate = "10/sec"
	// multiportMax is how many ports one multiport match takes (a range counts 2).
	multiportMax = 15
)

func ownsChain(table, chain string) bool { return slices.Contains(ownedChains[table], chain) }

// Table is one iptables table's share of a family's rules.
type Table struct {
	Name string `json:"name"` // "raw", "mangle" or "nat"
	// Chains are our chains (DETOUR_...), sorted by name as iptables-save lists them.
	Chains []Chain `json:"chains"`
	// Hooks are the rules we add to built-in chains, each carrying the ownership
	// comment, in built-in chain order (PREROUTING, INPUT, FORWARD, OUTPUT,
	// POSTROUTING) and in the order they apply within a built-in chain.
	Hooks []Rule `json:"hooks"`
}

// Chain is one of our chains and its rules in order.
type Chain struct {
	Name  string `json:"name"`
	Rules []Rule `json:"rules"`
}

// Rule is one rule. Spec is its iptables-save form after "-A CHAIN ", so a plan
// compares to what is installed as plain text.
type Rule struct {
	Chain string `json:"chain"`
	Spec  string `json:"spec"`
}

// FamilyRules is one IP family's rules: what one iptables-restore makes a
// namespace hold.
type FamilyRules struct {
	Family redirect.Family `json:"family"`
	// Notes explain choices a reader of the rules could not guess.
	Notes []string `json:"notes,omitempty"`
	// Tables holds the non-empty tables in a fixed order: raw, mangle, nat.
	Tables []Table `json:"tables"`
}

// Rules renders the capture of every family it holds, in its order. Pure.
func Rules(c redirect.Capture) []FamilyRules {
	out := make([]FamilyRules, 0, len(c.Families))
	for _, fc := range c.Families {
		out = append(out, familyRules(fc))
	}
	return out
}

// builder collects one family's rules.
type builder struct {
	fc     redirect.FamilyCapture
	chains map[string]map[string][]Rule // table → chain → rules
	hooks  map[string][]Rule            // table → hooks in the order added
	notes  []string
}

// familyRules renders one family's capture. Every choice comes from fc: the
// rules say in iptables what Capture.Decide says in words, in the same order.
func familyRules(fc redirect.FamilyCapture) FamilyRules {
	b := &builder{fc: fc, chains: map[string]map[string][]Rule{}, hooks: map[string][]Rule{}}
	if fc.DropInvalid {
		// Before anything else in mangle PREROUTING: conntrack-INVALID TCP
		// packets are never NATed nor diverted, so they would reach the
		// application's socket behind the proxy's back and reset connections.
		// Forwarded traffic is not the workload's and is left alone.
		b.hook("mangle", "PREROUTING", "-p tcp "+localDst+" -m conntrack --ctstate INVALID", "DROP")
	}
	b.inbound()
	b.notes = append(b.notes, fc.Notes...) // the capture's own notes, after the mode's
	b.outbound()
	b.dns()
	fr := FamilyRules{Family: fc.Family, Notes: b.notes}
	for _, name := range tableOrder {
		t := Table{Name: name}
		names := slices.Sorted(maps.Keys(b.chains[name])) // the order iptables-save lists them in
		for _, c := range names {
			t.Chains = append(t.Chains, Chain{Name: c, Rules: b.chains[name][c]})
		}
		for _, builtin := range builtinOrder {
			for _, h := range b.hooks[name] {
				if h.Chain == builtin {
					t.Hooks = append(t.Hooks, h)
				}
			}
		}
		if len(t.Chains) > 0 || len(t.Hooks) > 0 {
			fr.Tables = append(fr.Tables, t)
		}
	}
	return fr
}

// rule appends a rule to one of our chains; parts are joined with spaces.
func (b *builder) rule(table, chain string, parts ...string) {
	if b.chains[table] == nil {
		b.chains[table] = map[string][]Rule{}
	}
	b.chains[table][chain] = append(b.chains[table][chain], Rule{Chain: chain, Spec: strings.Join(parts, " ")})
}

// hook adds a rule to a built-in chain. The ownership comment goes after the
// matches, where iptables-save prints it, so the plan reads like the save output.
func (b *builder) hook(table, builtin, match, target string) {
	spec := match + " -m comment --comment " + ownerComment + " -j " + target
	b.hooks[table] = append(b.hooks[table], Rule{Chain: builtin, Spec: strings.TrimSpace(spec)})
}

func (b *builder) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *builder) v6() bool { return b.fc.Family == redirect.IPv6 }

// loopback is the family's loopback network.
func (b *builder) loopback() string {
	if b.v6() {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

func (b *builder) passthrough() string {
	a := b.fc.Proxy.Passthrough
	return netip.PrefixFrom(a, a.BitLen()).String()
}

func prefixStrings(list []netip.Prefix) []string {
	out := make([]string, len(list))
	for i, p := range list {
		out[i] = p.String()
	}
	return out
}

// proxyOwners are the owner matches of the proxy itself: its uid, and its gid
// when set.
func (b *builder) proxyOwners() []string {
	out := []string{"-m owner --uid-owner " + strconv.FormatUint(uint64(b.fc.Proxy.UID), 10)}
	if g := b.fc.Proxy.GID; g != nil {
		out = append(out, "-m owner --gid-owner "+strconv.FormatUint(uint64(*g), 10))
	}
	return out
}

// owners are the owner matches of exempt uid and gid ranges.
func owners(uids, gids []redirect.IDRange) []string {
	var out []string
	for _, r := range uids {
		out = append(out, "-m owner --uid-owner "+r.String())
	}
	for _, r := range gids {
		out = append(out, "-m owner --gid-owner "+r.String())
	}
	return out
}

// uidPortRules are outbound.excludePortsForUIDs rules as (ports, owner) pairs,
// one per multiport chunk and uid range.
func uidPortRules(rules []redirect.UIDPortRule) (out [][2]string) {
	for _, r := range rules {
		for _, ports := range multiport(r.Ports) {
			for _, u := range r.UIDs {
				out = append(out, [2]string{ports, "-m owner --uid-owner " + u.String()})
			}
		}
	}
	return out
}

// inbound builds DETOUR_INBOUND in nat (REDIRECT to the inbound port; the
// PREROUTING entry in redirect mode, the hairpin's target in both modes) and,
// in tproxy mode, the mangle TPROXY path.
func (b *builder) inbound() {
	in := b.fc.Inbound
	if in == nil {
		return
	}
	b.inboundSelection("nat", chainInRedirect)
	b.redirect("nat", chainInRedirect, "tcp", in.Port)
	if b.fc.TProxy == nil {
		b.hook("nat", "PREROUTING", "-p tcp "+localDst, chainInbound)
		return
	}
	b.note("mode tproxy: inbound TCP is diverted with TPROXY (mangle) and policy routing; outbound TCP and DNS stay REDIRECT (nat)")
	// Packets of connections the proxy already holds (its transparent sockets)
	// are marked for the local route and go straight to that socket. Never a
	// SYN: a new connection from the address and port of one the proxy has
	// just closed finds the proxy's socket in TIME_WAIT, and accepted here it
	// would be handed to whatever listens on the original port (the app);
	// TPROXY below gives such a SYN to the proxy's listener.
	b.rule("mangle", chainInbound, "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m socket --transparent -j", chainDivert)
	// Replies to connections opened from the workload (the proxy's upstream
	// connections, the app's uncaptured ones) belong to ordinary sockets: TPROXY
	// finds no transparent socket for them and drops them. Route them normally.
	b.rule("mangle", chainInbound, "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
	// Loopback traffic (the passthrough from 127.0.0.6, apps talking to
	// themselves) is never diverted; the proxy's hairpin is a nat REDIRECT.
	b.rule("mangle", chainInbound, "-i lo -j RETURN")
	b.inboundSelection("mangle", chainTProxy)
	mark := fmt.Sprintf("%#x/%#x", b.fc.TProxy.Mark, b.fc.TProxy.Mask)
	b.rule("mangle", chainDivert, "-j MARK --set-xmark", mark)
	b.rule("mangle", chainDivert, "-j ACCEPT")
	onIP := "0.0.0.0"
	if b.v6() {
		onIP = "::"
	}
	b.log("mangle", chainTProxy, "-p tcp -m conntrack --ctstate NEW")
	b.rule("mangle", chainTProxy, "-p tcp -j TPROXY --on-port", strconv.Itoa(int(in.Port)), "--on-ip", onIP, "--tproxy-mark", mark)
	b.hook("mangle", "PREROUTING", "-p tcp "+localDst, chainInbound)
	// The return path of the proxy's connections to the app from the client's
	// own address (Envoy's original_src with the TPROXY mark): the proxy's
	// packets carry the mark, which the connection keeps; the app's replies,
	// addressed to the client, get it back and the policy route delivers them
	// to the proxy's socket instead of the network.
	bit := fmt.Sprintf("%#x", b.fc.TProxy.Mask)
	b.rule("mangle", chainTProxyReturn, "-p tcp -m mark --mark", mark, "-j CONNMARK --save-mark --nfmask", bit, "--ctmask", bit)
	b.rule("mangle", chainTProxyReturn, "-p tcp -m connmark --mark", mark, "-j MARK --set-xmark", mark)
	b.hook("mangle", "OUTPUT", "-p tcp", chainTProxyReturn)
}

// inboundSelection fills DETOUR_INBOUND of table with the inbound choices,
// ending in a jump to target.
func (b *builder) inboundSelection(table, target string) {
	in := b.fc.Inbound
	// O10: a connection to the outbound port itself is never fed to the inbound
	// listener, whose passthrough would hand it back to the outbound listener.
	b.rule(table, chainInbound, "-p tcp -m tcp --dport", strconv.Itoa(int(b.fc.Proxy.OutboundPort)), "-j RETURN")
	for _, p := range prefixStrings(in.ExcludeSourceCIDRs) {
		b.rule(table, chainInbound, "-s", p, "-j RETURN")
	}
	b.ports(table, chainInbound, in.IncludePorts, in.ExcludePorts, target)
}

// ports ends a selection chain: with include ports only they jump to target
// (exclude ports no longer matter); otherwise exclude ports return and the rest
// jumps to target.
func (b *builder) ports(table, chain string, include, exclude []redirect.PortRange, target string) {
	if len(include) > 0 {
		for _, ports := range multiport(include) {
			b.rule(table, chain, "-p tcp -m multiport --dports", ports, "-j", target)
		}
		return
	}
	for _, ports := range multiport(exclude) {
		b.rule(table, chain, "-p tcp -m multiport --dports", ports, "-j RETURN")
	}
	b.rule(table, chain, "-p tcp -j", target)
}

// redirect fills a REDIRECT chain, with a rate-limited LOG first when asked.
func (b *builder) redirect(table, chain, proto string, port uint16) {
	b.log(table, chain, "")
	b.rule(table, chain, "-p", proto, "-j REDIRECT --to-ports", strconv.Itoa(int(port)))
}

func (b *builder) log(table, chain, match string) {
	l := b.fc.Log
	if l == nil {
		return
	}
	spec := strings.TrimSpace(match + " -m limit --limit " + logRate + " -j LOG")
	if l.Prefix != "" {
		spec += " --log-prefix " + saveString(l.Prefix)
	}
	b.rule(table, chain, spec)
}

// outbound builds DETOUR_OUTPUT: the hairpin and the passthrough (which belong
// to inbound capture) and the outbound TCP capture.
func (b *builder) outbound() {
	fc := b.fc
	proxy := b.proxyOwners()
	if fc.Inbound != nil {
		// O8: the proxy's passthrough to the app, sourced from 127.0.0.6 / ::6,
		// returns untouched; the proxy dialing a non-loopback address over lo
		// (the workload's own address) is inbound traffic: hairpin.
		b.rule("nat", chainOutput, "-s", b.passthrough(), "-o lo -j RETURN")
		if tp := fc.TProxy; tp != nil {
			// Likewise the proxy's connections to the app from the client's
			// address (original_src), which carry the TPROXY mark.
			b.rule("nat", chainOutput, "-m mark --mark", fmt.Sprintf("%#x/%#x", tp.Mark, tp.Mask), "-j RETURN")
		}
		for _, o := range proxy {
			b.rule("nat", chainOutput, "! -d", b.loopback(), "-o lo", o, "-j", chainInbound)
		}
	}
	if out := fc.Outbound; out != nil {
		target := chainOutRedirect
		if len(out.IncludeCIDRs) > 0 {
			for _, p := range prefixStrings(out.IncludeCIDRs) {
				b.rule("nat", chainOutCIDRs, "-d", p, "-j", chainOutRedirect)
			}
			target = chainOutCIDRs
		}
		for _, o := range proxy { // O7: no loop
			b.rule("nat", chainOutput, o, "-j RETURN")
		}
		b.rule("nat", chainOutput, "-o lo -j RETURN")              // O9
		for _, o := range owners(out.ExemptUIDs, out.ExemptGIDs) { // O5
			b.rule("nat", chainOutput, o, "-j RETURN")
		}
		for _, r := range uidPortRules(out.ExemptPortsForUIDs) {
			b.rule("nat", chainOutput, "-p tcp -m multiport --dports", r[0], r[1], "-j RETURN")
		}
		for _, p := range prefixStrings(out.ExcludeCIDRs) { // O3
			b.rule("nat", chainOutput, "-d", p, "-j RETURN")
		}
		b.ports("nat", chainOutput, out.IncludePorts, out.ExcludePorts, target) // O2, O4
		b.redirect("nat", chainOutRedirect, "tcp", out.Port)
	}
	if len(b.chains["nat"][chainOutput]) > 0 {
		b.hook("nat", "OUTPUT", "-p tcp", chainOutput)
	}
}

// dns builds the UDP/53 capture (nat) and the conntrack zone split (raw).
func (b *builder) dns() {
	d := b.fc.DNS
	if d == nil {
		return
	}
	servers := make([]string, len(d.Servers))
	for i, a := range d.Servers {
		servers[i] = netip.PrefixFrom(a, a.BitLen()).String()
	}
	b.note("dns.capture redirects UDP/53 only; TCP/53 follows the outbound TCP rules")
	// D3: the DNS proxy's own queries and those of excluded users go out untouched.
	bypass := append(b.proxyOwners(), owners(d.ExemptUIDs, d.ExemptGIDs)...)
	for _, o := range bypass {
		b.rule("nat", chainDNS, o, "-j RETURN")
	}
	udpRules := uidPortRules(d.ExemptPortsForUIDs)
	for _, r := range udpRules {
		b.rule("nat", chainDNS, "-p udp -m multiport --dports", r[0], r[1], "-j RETURN")
	}
	if d.All {
		b.rule("nat", chainDNS, "-p udp -j", chainDNSRedirect) // D1
	}
	for _, s := range servers { // D2, loopback nameservers included
		b.rule("nat", chainDNS, "-d", s, "-p udp -j", chainDNSRedirect)
	}
	b.redirect("nat", chainDNSRedirect, "udp", d.Port)
	b.hook("nat", "OUTPUT", "-p udp -m udp --dport 53", chainDNS)
	if !d.ZoneSplit {
		return
	}
	// The app's captured query and the proxy's upstream query may share a UDP
	// 4-tuple; in one conntrack zone the second would inherit the first's NAT and
	// skip (or loop through) the DNS proxy. Captured app traffic lives in
	// zoneApp (both directions: the DNS proxy's replies find it there), the
	// upstream queries of the proxy and of bypassing users in zoneUpstream for
	// their original direction only (--zone-orig): their replies are looked up
	// in the default zone, where they arrive with no rule of ours. So nothing is
	// zoned on the way in, and replies to traffic the host forwards or
	// masquerades for others keep finding their connections. CT only acts on a
	// packet's first match, so order matters.
	zone := func(n int) string { return "-j CT --zone " + strconv.Itoa(n) }
	zoneOrig := func(n int) string { return "-j CT --zone-orig " + strconv.Itoa(n) }
	dnsPort := strconv.Itoa(int(d.Port))
	for _, o := range b.proxyOwners() {
		b.rule("raw", chainCTOutput, "-p udp -m udp --sport", dnsPort, o, zone(zoneApp))
	}
	for _, o := range bypass {
		b.rule("raw", chainCTOutput, "-p udp -m udp --dport 53", o, zoneOrig(zoneUpstream))
	}
	for _, r := range udpRules {
		b.rule("raw", chainCTOutput, "-p udp -m udp --dport 53", r[1], zoneOrig(zoneUpstream))
	}
	if d.All {
		b.rule("raw", chainCTOutput, "-p udp -m udp --dport 53", zone(zoneApp))
	}
	for _, s := range servers {
		b.rule("raw", chainCTOutput, "-d", s, "-p udp -m udp --dport 53", zone(zoneApp))
	}
	b.hook("raw", "OUTPUT", "-p udp", chainCTOutput)
}

// multiport splits port ranges into multiport lists ("53,3000:5000") of at most
// multiportMax ports each, a range counting two.
func multiport(ranges []redirect.PortRange) []string {
	var out []string
	var cur []string
	n := 0
	for _, r := range ranges {
		w, s := 1, strconv.Itoa(int(r.First))
		if r.Last != r.First {
			w, s = 2, fmt.Sprintf("%d:%d", r.First, r.Last)
		}
		if n+w > multiportMax {
			out = append(out, strings.Join(cur, ","))
			cur, n = nil, 0
		}
		cur = append(cur, s)
		n += w
	}
	if len(cur) > 0 {
		out = append(out, strings.Join(cur, ","))
	}
	return out
}

// saveString quotes a string argument the way iptables-save prints it: bare
// when it holds only letters, digits, '_' and '-', otherwise in double quotes
// with ", \ and ' escaped.
func saveString(s string) string {
	bare := s != "" && strings.Trim(s, "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
	if bare {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' || r == '\'' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}
