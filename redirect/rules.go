package redirect

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
	chainCTOutput     = "DETOUR_CT_OUTPUT"     // raw: conntrack zones of locally sent DNS packets
	chainCTPrerouting = "DETOUR_CT_PREROUTING" // raw: made by earlier versions only (zones of received DNS replies); still ours, so it is removed
)

// ownedChains lists, per table, every chain name detour may create. A DETOUR_*
// chain that is not listed for its table is foreign.
var ownedChains = map[string][]string{
	"raw":    {chainCTOutput, chainCTPrerouting},
	"mangle": {chainDivert, chainInbound, chainTProxy},
	"nat":    {chainDNS, chainDNSRedirect, chainInbound, chainInRedirect, chainOutCIDRs, chainOutRedirect, chainOutput},
}

var (
	tableOrder   = []string{"raw", "mangle", "nat"}
	builtinOrder = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
)

// Fixed numbers of the TPROXY path and of the DNS conntrack zones; docs/rules.md
// lists them.
const (
	tproxyMark     = 0x2000 // one bit, so other users of the mark keep theirs
	tproxyTable    = 2000
	tproxyPriority = 2000

	// zoneUpstream holds the DNS proxy's (and bypassing users') queries to the
	// real nameservers, original direction only (their replies are in the
	// default zone); zoneApp holds the applications' captured queries and the
	// DNS proxy's replies to them.
	zoneUpstream = 1
	zoneApp      = 2

	// localDst limits a hook in PREROUTING to packets addressed to the
	// namespace itself: a host that forwards traffic for others (containers on
	// a VM, pods on a node) must not capture what it only routes.
	localDst = "-m addrtype --dst-type LOCAL"

	logRate = "10/sec"
	// multiportMax is how many ports one multiport match takes (a range counts 2).
	multiportMax = 15
)

// netProtocol is the kernel ownership tag of everything we make over netlink:
// the protocol of our ip rules and routes and of our addresses on lo. No
// routing daemon uses 215 (iproute2's rt_protos, linux/rtnetlink.h).
const netProtocol = 215

// addressLabel names the IPv4 addresses we put on lo, for people reading `ip
// addr` (which does not show an address's protocol); ownership is netProtocol.
const addressLabel = "lo:detour"

// alwaysLocal reports whether an address is local without being configured:
// all of 127.0.0.0/8, but of IPv6 loopback only ::1.
func alwaysLocal(a netip.Addr) bool {
	if a.Is4() {
		return netip.MustParsePrefix("127.0.0.0/8").Contains(a)
	}
	return a == netip.IPv6Loopback()
}

func ownsChain(table, chain string) bool { return slices.Contains(ownedChains[table], chain) }

// builder collects one family's rules.
type builder struct {
	cfg    Config
	family Family
	chains map[string]map[string][]Rule // table → chain → rules
	hooks  map[string][]Rule            // table → hooks in the order added
	notes  []string
}

func planFamily(cfg Config, facts Facts, f Family) FamilyPlan {
	b := &builder{cfg: cfg, family: f, chains: map[string]map[string][]Rule{}, hooks: map[string][]Rule{}}
	if cfg.DropInvalidPackets {
		// Before anything else in mangle PREROUTING: conntrack-INVALID TCP
		// packets are never NATed nor diverted, so they would reach the
		// application's socket behind the proxy's back and reset connections.
		// Forwarded traffic is not the workload's and is left alone.
		b.hook("mangle", "PREROUTING", "-p tcp "+localDst+" -m conntrack --ctstate INVALID", "DROP")
	}
	b.inbound()
	b.outbound()
	b.dns(facts)
	fp := FamilyPlan{Family: f, Notes: b.notes}
	if cfg.Inbound.Enabled && cfg.Mode == ModeTProxy {
		fp.Routing = &PolicyRouting{Mark: tproxyMark, Mask: tproxyMark, Table: tproxyTable, Priority: tproxyPriority}
	}
	if pt := netip.MustParsePrefix(b.passthrough()); cfg.Inbound.Enabled && !alwaysLocal(pt.Addr()) {
		// I6: the proxy binds the passthrough source; unlike 127.0.0.6, ::6 is
		// not local until someone puts it on lo.
		fp.Addresses = []netip.Prefix{pt}
	}
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
			fp.Tables = append(fp.Tables, t)
		}
	}
	return fp
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

func (b *builder) v6() bool { return b.family == IPv6 }

func (b *builder) familyName() string {
	if b.v6() {
		return "IPv6"
	}
	return "IPv4"
}

// loopback is the family's loopback network.
func (b *builder) loopback() string {
	if b.v6() {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

func (b *builder) passthrough() string {
	a := b.cfg.Proxy.InboundPassthroughSource.IPv4
	if b.v6() {
		a = b.cfg.Proxy.InboundPassthroughSource.IPv6
	}
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// prefixes keeps the family's entries of a mixed IPv4/IPv6 list.
func (b *builder) prefixes(list []netip.Prefix) []string {
	var out []string
	for _, p := range list {
		if p.Addr().Is6() == b.v6() {
			out = append(out, p.Masked().String())
		}
	}
	return out
}

// proxyOwners are the owner matches of the proxy itself: its uid, and its gid
// when set.
func (b *builder) proxyOwners() []string {
	out := []string{"-m owner --uid-owner " + strconv.FormatUint(uint64(b.cfg.Proxy.UID), 10)}
	if g := b.cfg.Proxy.GID; g != nil {
		out = append(out, "-m owner --gid-owner "+strconv.FormatUint(uint64(*g), 10))
	}
	return out
}

// excludedOwners are the owner matches of outbound.excludeUIDs and excludeGIDs.
func (b *builder) excludedOwners() []string {
	var out []string
	for _, r := range b.cfg.Outbound.ExcludeUIDs {
		out = append(out, "-m owner --uid-owner "+r.String())
	}
	for _, r := range b.cfg.Outbound.ExcludeGIDs {
		out = append(out, "-m owner --gid-owner "+r.String())
	}
	return out
}

// uidPortRules are the outbound.excludePortsForUIDs rules of one protocol as
// (ports, owner) pairs, one per multiport chunk and uid range.
func (b *builder) uidPortRules(proto Protocol) (out [][2]string) {
	for _, r := range b.cfg.Outbound.ExcludePortsForUIDs {
		if r.Protocol != proto {
			continue
		}
		if proto == UDP && !slices.ContainsFunc(r.Ports, func(p PortRange) bool { return p.Contains(53) }) {
			// Only UDP/53 is ever captured: a UDP rule without port 53 has nothing to exempt.
			continue
		}
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
	in := b.cfg.Inbound
	if !in.Enabled {
		return
	}
	b.inboundSelection("nat", chainInRedirect)
	b.redirect("nat", chainInRedirect, "tcp", b.cfg.Proxy.InboundPort)
	if b.cfg.Mode == ModeRedirect {
		b.hook("nat", "PREROUTING", "-p tcp "+localDst, chainInbound)
		return
	}
	b.note("mode tproxy: inbound TCP is diverted with TPROXY (mangle) and policy routing; outbound TCP and DNS stay REDIRECT (nat)")
	// Packets of connections the proxy already holds (its transparent sockets)
	// are marked for the local route and go straight to that socket.
	b.rule("mangle", chainInbound, "-p tcp -m socket --transparent -j", chainDivert)
	// Replies to connections opened from the workload (the proxy's upstream
	// connections, the app's uncaptured ones) belong to ordinary sockets: TPROXY
	// finds no transparent socket for them and drops them. Route them normally.
	b.rule("mangle", chainInbound, "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
	// Loopback traffic (the passthrough from 127.0.0.6, apps talking to
	// themselves) is never diverted; the proxy's hairpin is a nat REDIRECT.
	b.rule("mangle", chainInbound, "-i lo -j RETURN")
	b.inboundSelection("mangle", chainTProxy)
	mark := fmt.Sprintf("%#x/%#x", tproxyMark, tproxyMark)
	b.rule("mangle", chainDivert, "-j MARK --set-xmark", mark)
	b.rule("mangle", chainDivert, "-j ACCEPT")
	onIP := "0.0.0.0"
	if b.v6() {
		onIP = "::"
	}
	b.log("mangle", chainTProxy, "-p tcp -m conntrack --ctstate NEW")
	b.rule("mangle", chainTProxy, "-p tcp -j TPROXY --on-port", strconv.Itoa(int(b.cfg.Proxy.InboundPort)), "--on-ip", onIP, "--tproxy-mark", mark)
	b.hook("mangle", "PREROUTING", "-p tcp "+localDst, chainInbound)
}

// inboundSelection fills DETOUR_INBOUND of table with the inbound choices,
// ending in a jump to target.
func (b *builder) inboundSelection(table, target string) {
	in := b.cfg.Inbound
	// O10: a connection to the outbound port itself is never fed to the inbound
	// listener, whose passthrough would hand it back to the outbound listener.
	b.rule(table, chainInbound, "-p tcp -m tcp --dport", strconv.Itoa(int(b.cfg.Proxy.OutboundPort)), "-j RETURN")
	for _, p := range b.prefixes(in.ExcludeSourceCIDRs) {
		b.rule(table, chainInbound, "-s", p, "-j RETURN")
	}
	b.ports(table, chainInbound, in.IncludePorts, in.ExcludePorts, target)
}

// ports ends a selection chain: with include ports only they jump to target
// (exclude ports no longer matter); otherwise exclude ports return and the rest
// jumps to target.
func (b *builder) ports(table, chain string, include, exclude []PortRange, target string) {
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
	l := b.cfg.Log
	if !l.Enabled {
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
	cfg := b.cfg
	if !cfg.Inbound.Enabled && !cfg.Outbound.Enabled {
		return
	}
	out := cfg.Outbound
	owners := b.proxyOwners()
	if cfg.Inbound.Enabled {
		// O8: the proxy's passthrough to the app, sourced from 127.0.0.6 / ::6,
		// returns untouched; the proxy dialing a non-loopback address over lo
		// (the workload's own address) is inbound traffic: hairpin.
		b.rule("nat", chainOutput, "-s", b.passthrough(), "-o lo -j RETURN")
		for _, o := range owners {
			b.rule("nat", chainOutput, "! -d", b.loopback(), "-o lo", o, "-j", chainInbound)
		}
	}
	capture := out.Enabled
	target := chainOutRedirect
	var excludeCIDRs []string
	if capture && len(out.IncludeCIDRs) > 0 {
		include := b.prefixes(out.IncludeCIDRs)
		if len(include) == 0 {
			b.note("outbound.includeCIDRs lists no %s CIDR, so no outbound %s TCP is captured", b.familyName(), b.familyName())
			capture = false
		}
		for _, p := range include {
			b.rule("nat", chainOutCIDRs, "-d", p, "-j", chainOutRedirect)
		}
		target = chainOutCIDRs
	} else if capture {
		excludeCIDRs = b.prefixes(out.ExcludeCIDRs)
	}
	if capture {
		for _, o := range owners { // O7: no loop
			b.rule("nat", chainOutput, o, "-j RETURN")
		}
		b.rule("nat", chainOutput, "-o lo -j RETURN") // O9
		for _, o := range b.excludedOwners() {        // O5
			b.rule("nat", chainOutput, o, "-j RETURN")
		}
		for _, r := range b.uidPortRules(TCP) {
			b.rule("nat", chainOutput, "-p tcp -m multiport --dports", r[0], r[1], "-j RETURN")
		}
		for _, p := range excludeCIDRs { // O3
			b.rule("nat", chainOutput, "-d", p, "-j RETURN")
		}
		b.ports("nat", chainOutput, out.IncludePorts, out.ExcludePorts, target) // O2, O4
		b.redirect("nat", chainOutRedirect, "tcp", cfg.Proxy.OutboundPort)
	}
	if len(b.chains["nat"][chainOutput]) > 0 {
		b.hook("nat", "OUTPUT", "-p tcp", chainOutput)
	}
}

// dns builds the UDP/53 capture (nat) and the conntrack zone split (raw).
func (b *builder) dns(facts Facts) {
	d := b.cfg.DNS
	if d.Capture == DNSCaptureOff {
		return
	}
	var servers []string
	if d.Capture == DNSCaptureResolvConf {
		for _, a := range facts.Nameservers {
			a = a.Unmap().WithZone("")
			if a.Is6() != b.v6() {
				continue
			}
			if s := netip.PrefixFrom(a, a.BitLen()).String(); !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		if len(servers) == 0 {
			b.note("dns.resolvConf (%s) lists no %s nameserver, so no %s DNS query is captured", d.ResolvConf, b.familyName(), b.familyName())
			return
		}
	}
	b.note("dns.capture redirects UDP/53 only; TCP/53 follows the outbound TCP rules")
	// D3: the DNS proxy's own queries and those of excluded users go out untouched.
	bypass := append(b.proxyOwners(), b.excludedOwners()...)
	for _, o := range bypass {
		b.rule("nat", chainDNS, o, "-j RETURN")
	}
	udpRules := b.uidPortRules(UDP)
	for _, r := range udpRules {
		b.rule("nat", chainDNS, "-p udp -m multiport --dports", r[0], r[1], "-j RETURN")
	}
	if d.Capture == DNSCaptureAll {
		b.rule("nat", chainDNS, "-p udp -j", chainDNSRedirect) // D1
	}
	for _, s := range servers { // D2, loopback nameservers included
		b.rule("nat", chainDNS, "-d", s, "-p udp -j", chainDNSRedirect)
	}
	b.redirect("nat", chainDNSRedirect, "udp", d.Port)
	b.hook("nat", "OUTPUT", "-p udp -m udp --dport 53", chainDNS)
	if !d.ConntrackZoneSplit {
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
	if d.Capture == DNSCaptureAll {
		b.rule("raw", chainCTOutput, "-p udp -m udp --dport 53", zone(zoneApp))
	}
	for _, s := range servers {
		b.rule("raw", chainCTOutput, "-d", s, "-p udp -m udp --dport 53", zone(zoneApp))
	}
	b.hook("raw", "OUTPUT", "-p udp", chainCTOutput)
}

// multiport splits port ranges into multiport lists ("53,3000:5000") of at most
// multiportMax ports each, a range counting two.
func multiport(ranges []PortRange) []string {
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
