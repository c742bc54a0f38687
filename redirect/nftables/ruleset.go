//go:build linux

package nftables

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// TableName is detour's table: `table inet detour`. Everything of detour's in
// nftables is in it; nothing else is ever touched.
const TableName = "detour"

// Fixed numbers shared with the iptables backend (docs/rules.md): the TPROXY
// mark bit and the DNS conntrack zones.
const (
	zoneUpstream = 1 // the DNS proxy's and bypassing users' queries, original direction only
	zoneApp      = 2 // captured application queries and the DNS proxy's replies to them
	logRate      = 10
	logBurst     = 5
)

// Base chain priorities, as nft names them: raw -300, mangle -150, dstnat and
// the nat output chain -100.
const (
	prioRaw    = -300
	prioMangle = -150
	prioNAT    = -100
)

// Ruleset is one Capture rendered for nftables: the sets and chains of
// `table inet detour`, in the order they are created. Render makes it; it is
// pure data, the same bytes for the same Capture.
type Ruleset struct {
	// Table is the table's name; "" = TableName. The Driver sets it to its
	// Options.TableName before rendering text or applying.
	Table    string
	Mode     redirect.Mode
	Families []redirect.Family
	Sets     []*Set
	Chains   []*Chain
	Notes    []string
}

// Hook makes a chain a base chain.
type Hook struct {
	Type     string // filter or nat
	Hook     string // prerouting or output
	Priority int32
}

// Chain is one chain of the table. Family is empty for the base chains, which
// dispatch to each family's chains with `meta nfproto`.
type Chain struct {
	Name   string
	Family redirect.Family
	Hook   *Hook
	Rules  []Rule
}

// Rule is one rule; Family is the family whose capture it belongs to.
type Rule struct {
	Family redirect.Family
	stmts  []stmt
}

// Text is the rule as nft reads it.
func (r Rule) Text() string {
	parts := make([]string, len(r.stmts))
	for i, s := range r.stmts {
		parts[i] = s.text()
	}
	return strings.Join(parts, " ")
}

// Empty reports whether the ruleset installs nothing.
func (rs *Ruleset) Empty() bool { return len(rs.Chains) == 0 }

// Render states c as nftables sets and chains. A FamilyCapture whose Outbound
// and DNS are nil renders inbound capture only (the eBPF backend uses that).
// Every name and value is checked here, before anything could be queued.
func Render(c redirect.Capture) (*Ruleset, error) {
	b := &builder{rs: &Ruleset{Mode: c.Mode}, chains: map[string]*Chain{}}
	for _, fc := range c.Families {
		if fc.Family != redirect.IPv4 && fc.Family != redirect.IPv6 {
			return nil, fmt.Errorf("render: unknown family %q", fc.Family)
		}
		b.rs.Families = append(b.rs.Families, fc.Family)
		b.rs.Notes = append(b.rs.Notes, fc.Notes...)
		if err := b.family(c.Mode, fc); err != nil {
			return nil, fmt.Errorf("render %s: %w", fc.Family, err)
		}
	}
	// Base chains first (in a fixed order), then the families' chains in the
	// order they were made: a jump needs its target to exist, and chains are
	// all created before any rule.
	var base, rest []*Chain
	for _, name := range baseOrder {
		if ch, ok := b.chains[name]; ok {
			base = append(base, ch)
		}
	}
	for _, ch := range b.order {
		if ch.Hook == nil {
			rest = append(rest, ch)
		}
	}
	b.rs.Chains = append(base, rest...)
	for _, ch := range b.rs.Chains {
		for _, r := range ch.Rules {
			if len(r.Text()) > maxRuleText {
				return nil, fmt.Errorf("render: rule in chain %s is longer than %d bytes: %s", ch.Name, maxRuleText, r.Text())
			}
		}
	}
	return b.rs, nil
}

// maxRuleText bounds a rule's text, which its userdata carries (one TLV).
const maxRuleText = 250

var baseOrder = []string{"raw_output", "mangle_prerouting", "mangle_output", "nat_prerouting", "nat_output"}

var baseHooks = map[string]Hook{
	"raw_output":        {Type: "filter", Hook: "output", Priority: prioRaw},
	"mangle_prerouting": {Type: "filter", Hook: "prerouting", Priority: prioMangle},
	// A route chain: a mark set here re-routes the packet (the TPROXY return path).
	"mangle_output":  {Type: "route", Hook: "output", Priority: prioMangle},
	"nat_prerouting": {Type: "nat", Hook: "prerouting", Priority: prioNAT},
	"nat_output":     {Type: "nat", Hook: "output", Priority: prioNAT},
}

type builder struct {
	rs     *Ruleset
	chains map[string]*Chain
	order  []*Chain
	fam    redirect.Family
}

func (b *builder) sfx() string {
	if b.fam == redirect.IPv6 {
		return "6"
	}
	return "4"
}

// chain returns the family chain name+suffix, creating it.
func (b *builder) chain(name string) *Chain {
	full := name + b.sfx()
	if ch, ok := b.chains[full]; ok {
		return ch
	}
	ch := &Chain{Name: full, Family: b.fam}
	b.chains[full] = ch
	b.order = append(b.order, ch)
	return ch
}

func (b *builder) add(chain *Chain, stmts ...stmt) {
	chain.Rules = append(chain.Rules, Rule{Family: b.fam, stmts: stmts})
}

// hook adds a dispatch rule of the current family to a base chain.
func (b *builder) hook(base string, stmts ...stmt) {
	ch, ok := b.chains[base]
	if !ok {
		h := baseHooks[base]
		ch = &Chain{Name: base, Hook: &h}
		b.chains[base] = ch
	}
	ch.Rules = append(ch.Rules, Rule{Family: b.fam, stmts: append([]stmt{nfproto(b.fam)}, stmts...)})
}

// set adds a named set of the current family and returns its name; kind says
// what its elements are.
func (b *builder) set(name string, kind setKind, elems []keyRange) string {
	full := name + b.sfx()
	for _, s := range b.rs.Sets {
		if s.Name == full { // the nat and the TPROXY selection share theirs
			return full
		}
	}
	b.rs.Sets = append(b.rs.Sets, &Set{Name: full, Family: b.fam, Kind: kind, Elems: mergeRanges(kind, elems)})
	return full
}

func (b *builder) family(mode redirect.Mode, fc redirect.FamilyCapture) error {
	b.fam = fc.Family
	if fc.Log != nil {
		if err := checkLogPrefix(fc.Log.Prefix); err != nil {
			return err
		}
	}
	if fc.DropInvalid {
		// Before anything else of ours: conntrack-INVALID TCP packets addressed
		// to the workload are never NATed nor diverted, so they would reach
		// the application's socket behind the proxy's back.
		b.hook("mangle_prerouting", l4(tcp), fibLocal{}, ctState{bits: ctInvalid}, verdict{kind: "drop"})
	}
	proxyOwners := []stmt{metaCmp{key: "skuid", val: fc.Proxy.UID}}
	if fc.Proxy.GID != nil {
		proxyOwners = append(proxyOwners, metaCmp{key: "skgid", val: *fc.Proxy.GID})
	}
	if in := fc.Inbound; in != nil {
		redir := b.chain("in_redirect")
		b.logRule(redir, fc.Log)
		b.add(redir, l4(tcp), redirectTo{port: in.Port})
		b.inboundSelection(b.chain("inbound"), fc, verdict{kind: "jump", chain: redir.Name})
		if mode == redirect.ModeTProxy && fc.TProxy != nil {
			b.tproxy(fc)
		} else {
			b.hook("nat_prerouting", l4(tcp), fibLocal{}, verdict{kind: "jump", chain: "inbound" + b.sfx()})
		}
	}
	out := &Chain{}
	var outRules []Rule
	addOut := func(stmts ...stmt) { outRules = append(outRules, Rule{Family: b.fam, stmts: stmts}) }
	if fc.Inbound != nil {
		// O8: the passthrough from 127.0.0.6 / ::6 returns untouched; the
		// proxy dialing a non-loopback address over lo is its hairpin.
		addOut(addrCmp{field: "saddr", fam: b.fam, prefix: netip.PrefixFrom(fc.Proxy.Passthrough, fc.Proxy.Passthrough.BitLen())}, ifname{dir: "oifname", name: "lo"}, verdict{kind: "return"})
		if tp := fc.TProxy; tp != nil && mode == redirect.ModeTProxy {
			// Likewise the proxy's connections to the app from the client's
			// address (original_src), which carry the TPROXY mark.
			addOut(markMatch{bits: tp.Mark}, verdict{kind: "return"})
		}
		for _, o := range proxyOwners {
			addOut(ifname{dir: "oifname", name: "lo"}, addrCmp{field: "daddr", fam: b.fam, neq: true, prefix: loopback(b.fam)}, o, verdict{kind: "jump", chain: "inbound" + b.sfx()})
		}
	}
	if o := fc.Outbound; o != nil {
		for _, ow := range proxyOwners { // O7: no loop
			addOut(ow, verdict{kind: "return"})
		}
		addOut(ifname{dir: "oifname", name: "lo"}, verdict{kind: "return"}) // O9
		if len(o.ExemptUIDs) > 0 {                                          // O5
			addOut(metaLookup{key: "skuid", set: b.set("out_exempt_uids", kindUID, idRanges(o.ExemptUIDs))}, verdict{kind: "return"})
		}
		if len(o.ExemptGIDs) > 0 {
			addOut(metaLookup{key: "skgid", set: b.set("out_exempt_gids", kindGID, idRanges(o.ExemptGIDs))}, verdict{kind: "return"})
		}
		for i, r := range o.ExemptPortsForUIDs {
			ports := b.set(fmt.Sprintf("out_uid_ports%d_", i), kindPort, portRanges(r.Ports))
			uids := b.set(fmt.Sprintf("out_uid_owners%d_", i), kindUID, idRanges(r.UIDs))
			addOut(l4(tcp), portLookup{proto: tcp, field: "dport", set: ports}, metaLookup{key: "skuid", set: uids}, verdict{kind: "return"})
		}
		if len(o.IncludeCIDRs) > 0 { // O4: include beats exclude
			addOut(addrLookup{field: "daddr", fam: b.fam, neq: true, set: b.set("out_include_cidrs", addrKind(b.fam), prefixRanges(o.IncludeCIDRs))}, verdict{kind: "return"})
		}
		if len(o.ExcludeCIDRs) > 0 { // O3
			addOut(addrLookup{field: "daddr", fam: b.fam, set: b.set("out_exclude_cidrs", addrKind(b.fam), prefixRanges(o.ExcludeCIDRs))}, verdict{kind: "return"})
		}
		b.portSelection(addOut, "out", o.IncludePorts, o.ExcludePorts) // O2, O4
		redir := b.chain("out_redirect")
		b.logRule(redir, fc.Log)
		b.add(redir, l4(tcp), redirectTo{port: o.Port})
		addOut(l4(tcp), verdict{kind: "jump", chain: redir.Name})
	}
	if len(outRules) > 0 {
		out = b.chain("output")
		out.Rules = append(out.Rules, outRules...)
		b.hook("nat_output", l4(tcp), verdict{kind: "jump", chain: out.Name})
	}
	if d := fc.DNS; d != nil {
		b.dns(fc, d, proxyOwners)
	}
	return nil
}

// inboundSelection fills chain with the inbound choices (loop guard, excluded
// sources, ports), ending in final.
func (b *builder) inboundSelection(chain *Chain, fc redirect.FamilyCapture, final ...stmt) {
	in := fc.Inbound
	// O10: a connection to the outbound port is never fed to the inbound listener.
	b.add(chain, l4(tcp), portCmp{proto: tcp, field: "dport", port: fc.Proxy.OutboundPort}, verdict{kind: "return"})
	if len(in.ExcludeSourceCIDRs) > 0 { // I4
		b.add(chain, addrLookup{field: "saddr", fam: b.fam, set: b.set("in_exclude_sources", addrKind(b.fam), prefixRanges(in.ExcludeSourceCIDRs))}, verdict{kind: "return"})
	}
	b.portSelection(func(s ...stmt) { b.add(chain, s...) }, "in", in.IncludePorts, in.ExcludePorts) // I2, I3
	b.add(chain, append([]stmt{l4(tcp)}, final...)...)
}

// portSelection adds the port rule of one direction: with include ports, a
// port outside them returns; otherwise an excluded port returns.
func (b *builder) portSelection(add func(...stmt), dir string, include, exclude []redirect.PortRange) {
	switch {
	case len(include) > 0:
		add(l4(tcp), portLookup{proto: tcp, field: "dport", neq: true, set: b.set(dir+"_include_ports", kindPort, portRanges(include))}, verdict{kind: "return"})
	case len(exclude) > 0:
		add(l4(tcp), portLookup{proto: tcp, field: "dport", set: b.set(dir+"_exclude_ports", kindPort, portRanges(exclude))}, verdict{kind: "return"})
	}
}

// tproxy builds the mangle path of mode tproxy: packets of connections the
// proxy holds go straight to its socket; new inbound connections are handed
// to the transparent listener, or dropped when none listens (as iptables'
// TPROXY does: nft's tproxy alone would let them through uncaptured).
func (b *builder) tproxy(fc redirect.FamilyCapture) {
	ch := b.chain("tproxy")
	mark := markOr{bits: fc.TProxy.Mark}
	// Never a SYN: a new connection reusing the address and port of one the
	// proxy has just closed finds the proxy's socket in TIME_WAIT; accepted
	// here it would reach the app on the original port. tproxy below hands
	// such a SYN to the proxy's listener.
	b.add(ch, l4(tcp), tcpNotSyn{}, socketTransparent{}, mark, verdict{kind: "accept"})
	b.add(ch, ctState{bits: ctEstablished | ctRelated}, verdict{kind: "return"})
	b.add(ch, ifname{dir: "iifname", name: "lo"}, verdict{kind: "return"})
	sel := &Chain{}
	b.inboundSelection(sel, fc, verdict{kind: "jump", chain: "tproxy_divert" + b.sfx()})
	ch.Rules = append(ch.Rules, sel.Rules...)
	div := b.chain("tproxy_divert")
	if fc.Log != nil {
		b.add(div, ctState{bits: ctNew}, limit{}, logStmt{prefix: fc.Log.Prefix})
	}
	b.add(div, l4(tcp), tproxyTo{fam: b.fam, port: fc.Inbound.Port}, mark, verdict{kind: "accept"})
	b.add(div, verdict{kind: "drop"})
	b.hook("mangle_prerouting", l4(tcp), fibLocal{}, verdict{kind: "jump", chain: ch.Name})
	// The return path of the proxy's connections to the app from the client's
	// own address (Envoy's original_src with the TPROXY mark): the proxy's
	// packets carry the mark, which the connection keeps; the app's replies,
	// addressed to the client, get it back, and the policy route delivers
	// them to the proxy's socket instead of the network.
	ret := b.chain("tproxy_return")
	b.add(ret, markMatch{bits: fc.TProxy.Mark}, ctMarkOr{bits: fc.TProxy.Mark})
	b.add(ret, markMatch{ct: true, bits: fc.TProxy.Mark}, markOr{bits: fc.TProxy.Mark})
	b.hook("mangle_output", l4(tcp), verdict{kind: "jump", chain: ret.Name})
}

func (b *builder) logRule(ch *Chain, l *redirect.Log) {
	if l != nil {
		b.add(ch, limit{}, logStmt{prefix: l.Prefix})
	}
}

// dns builds the UDP/53 capture (nat) and the conntrack zone split (raw).
func (b *builder) dns(fc redirect.FamilyCapture, d *redirect.DNSCaptureRules, proxyOwners []stmt) {
	var bypass []stmt
	bypass = append(bypass, proxyOwners...)
	if len(d.ExemptUIDs) > 0 {
		bypass = append(bypass, metaLookup{key: "skuid", set: b.set("dns_exempt_uids", kindUID, idRanges(d.ExemptUIDs))})
	}
	if len(d.ExemptGIDs) > 0 {
		bypass = append(bypass, metaLookup{key: "skgid", set: b.set("dns_exempt_gids", kindGID, idRanges(d.ExemptGIDs))})
	}
	if len(d.ExemptUIDsForDNS) > 0 {
		bypass = append(bypass, metaLookup{key: "skuid", set: b.set("dns_exempt_port_uids", kindUID, idRanges(d.ExemptUIDsForDNS))})
	}
	var servers string
	if !d.All {
		var rs []keyRange
		for _, a := range d.Servers {
			rs = append(rs, prefixRange(netip.PrefixFrom(a, a.BitLen())))
		}
		servers = b.set("dns_servers", addrKind(b.fam), rs)
	}
	redir := b.chain("dns_redirect")
	b.logRule(redir, fc.Log)
	b.add(redir, l4(udp), redirectTo{port: d.Port})
	ch := b.chain("dns")
	for _, o := range bypass { // D3
		b.add(ch, o, verdict{kind: "return"})
	}
	if d.All { // D1
		b.add(ch, verdict{kind: "jump", chain: redir.Name})
	} else { // D2
		b.add(ch, addrLookup{field: "daddr", fam: b.fam, set: servers}, verdict{kind: "jump", chain: redir.Name})
	}
	b.hook("nat_output", l4(udp), portCmp{proto: udp, field: "dport", port: 53}, verdict{kind: "jump", chain: ch.Name})
	if !d.ZoneSplit {
		return
	}
	// An app's captured query and the proxy's upstream query may share a UDP
	// 4-tuple: captured app traffic lives in zone 2 (both directions), the
	// upstream queries in zone 1 for their original direction only, so their
	// replies find them in the default zone (docs/rules.md). Each rule
	// returns: the first zone set is the one that counts.
	zc := b.chain("ct_output")
	for _, o := range proxyOwners {
		b.add(zc, l4(udp), portCmp{proto: udp, field: "sport", port: d.Port}, o, ctZone{zone: zoneApp}, verdict{kind: "return"})
	}
	for _, o := range bypass {
		b.add(zc, l4(udp), portCmp{proto: udp, field: "dport", port: 53}, o, ctZone{zone: zoneUpstream, original: true}, verdict{kind: "return"})
	}
	if d.All {
		b.add(zc, l4(udp), portCmp{proto: udp, field: "dport", port: 53}, ctZone{zone: zoneApp}, verdict{kind: "return"})
	} else {
		b.add(zc, addrLookup{field: "daddr", fam: b.fam, set: servers}, l4(udp), portCmp{proto: udp, field: "dport", port: 53}, ctZone{zone: zoneApp}, verdict{kind: "return"})
	}
	b.hook("raw_output", l4(udp), verdict{kind: "jump", chain: zc.Name})
}

func loopback(f redirect.Family) netip.Prefix {
	if f == redirect.IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
}

func addrKind(f redirect.Family) setKind {
	if f == redirect.IPv6 {
		return kindIPv6
	}
	return kindIPv4
}

func checkLogPrefix(p string) error {
	if len(p) > 127 {
		return fmt.Errorf("log.prefix %q is longer than nftables takes (127)", p)
	}
	for _, r := range p {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("log.prefix %q holds a character nftables text cannot carry", p)
		}
	}
	// nft's strings have no escapes: the ruleset `detour plan` prints (and
	// check compares) could not say it.
	if strings.Contains(p, `"`) {
		return &redirect.FieldError{Field: "log.prefix", Value: p, Reason: `holds a double quote, which nftables' text cannot carry (its strings have no escapes): leave it out with backend nftables and ebpf, whose inbound table is nftables'`}
	}
	return nil
}

// Text renders the ruleset as `nft -f` input: one command per line (table,
// sets with their elements, chains, rules), so a line-by-line comparison with
// what is installed shows exactly what differs. Deterministic.
func (rs *Ruleset) Text() string {
	var b strings.Builder
	for _, n := range rs.Notes {
		b.WriteString("# note: " + n + "\n")
	}
	for _, l := range rs.Lines("") {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// Lines is the ruleset's text, one command a line; with family set, only that
// family's share (its sets and chains, and its rules in the base chains,
// whose declarations every family shares).
func (rs *Ruleset) Lines(f redirect.Family) []string { return rs.view().lines(f) }

// name is the table's name.
func (rs *Ruleset) name() string {
	if rs.Table == "" {
		return TableName
	}
	return rs.Table
}

func (ch *Chain) decl(table string) string {
	if ch.Hook == nil {
		return "add chain inet " + table + " " + ch.Name
	}
	return fmt.Sprintf("add chain inet %s %s { type %s hook %s priority %d; policy accept; }", table, ch.Name, ch.Hook.Type, ch.Hook.Hook, ch.Hook.Priority)
}
