package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Capture is the capture decision of one configuration, stated once and without
// any backend's syntax: per IP family, which connections go to which proxy port.
// Every backend renders it (iptables rules, an nftables table, eBPF maps) and
// Decide answers from it whether one connection is captured and which setting
// decided, so the backends, `detour validate`, `detour explain` and the control
// plane cannot disagree. NewCapture makes it; it holds no host state.
type Capture struct {
	Mode     Mode            `json:"mode"`
	Families []FamilyCapture `json:"families"` // IPv4 before IPv6; only the captured families
}

// FamilyCapture is one IP family's share of a Capture. Lists hold only the
// family's own entries, prefixes masked, in the order the config gives them.
type FamilyCapture struct {
	Family Family `json:"family"`
	// Proxy is the sidecar; its own traffic is never captured outbound.
	Proxy ProxyCapture `json:"proxy"`
	// Outbound is nil when no outbound TCP of this family is captured
	// (outbound.enabled false, or includeCIDRs without an entry of this family).
	Outbound *OutboundCapture `json:"outbound,omitempty"`
	// Inbound is nil when inbound.enabled is false. It also governs the proxy's
	// hairpin (the proxy dialing the workload's own address over lo).
	Inbound *InboundCapture `json:"inbound,omitempty"`
	// DNS is nil when no UDP/53 of this family is captured.
	DNS *DNSCaptureRules `json:"dns,omitempty"`
	// DropInvalid drops conntrack-INVALID TCP packets addressed to the workload.
	DropInvalid bool `json:"dropInvalid,omitempty"`
	// Log, when not nil, logs new captured connections (rate limited).
	Log *Log `json:"log,omitempty"`
	// TProxy is the policy routing of mode tproxy; nil otherwise or without inbound.
	// With it, every backend also installs the return path of the proxy's
	// original-source connections to the app (TProxyMark set, the client's
	// address as source): such packets are never captured, their connection
	// keeps the mark, and the app's replies get it back so the policy route
	// delivers them to the proxy (docs/rules.md, TPROXY mode).
	TProxy *PolicyRouting `json:"tproxy,omitempty"`
	// Notes explain what a reader of any rendering could not guess.
	Notes []string `json:"notes,omitempty"`
}

// ProxyCapture is what every direction needs to know about the sidecar.
type ProxyCapture struct {
	UID          uint32  `json:"uid"`
	GID          *uint32 `json:"gid,omitempty"`
	InboundPort  uint16  `json:"inboundPort"`
	OutboundPort uint16  `json:"outboundPort"`
	// Passthrough is the family's inbound passthrough source (127.0.0.6, ::6):
	// connections from it over lo are never captured.
	Passthrough netip.Addr `json:"passthrough"`
	// PassthroughRoute says Passthrough, when it is not local by itself (::6),
	// is made local by a route on lo in table local instead of an address on
	// lo (Facts.LoByRuntime): the proxy must bind it with IP_FREEBIND /
	// IPV6_FREEBIND, which detour's control plane asks of Envoy.
	PassthroughRoute bool `json:"passthroughRoute,omitempty"`
}

// OutboundCapture selects the workload's outbound TCP connections. The order of
// the checks is Decide's (and every rendering's): loopback and lo, the proxy,
// exempt users, per-uid ports, addresses, ports.
type OutboundCapture struct {
	Port uint16 `json:"port"` // proxy.outboundPort
	// ExemptUIDs and ExemptGIDs are outbound.excludeUIDs / excludeGIDs.
	ExemptUIDs []IDRange `json:"exemptUIDs,omitempty"`
	ExemptGIDs []IDRange `json:"exemptGIDs,omitempty"`
	// ExemptPortsForUIDs are the tcp rules of outbound.excludePortsForUIDs.
	ExemptPortsForUIDs []UIDPortRule `json:"exemptPortsForUIDs,omitempty"`
	// IncludeCIDRs, when not empty, are the only destinations captured, and
	// ExcludeCIDRs is then empty (include beats exclude).
	IncludeCIDRs []netip.Prefix `json:"includeCIDRs,omitempty"`
	ExcludeCIDRs []netip.Prefix `json:"excludeCIDRs,omitempty"`
	// IncludePorts, when not empty, are the only ports captured, and
	// ExcludePorts is then empty.
	IncludePorts []PortRange `json:"includePorts,omitempty"`
	ExcludePorts []PortRange `json:"excludePorts,omitempty"`
}

// InboundCapture selects the TCP connections to the workload's own addresses.
// A connection to proxy.outboundPort is never captured (the loop guard).
type InboundCapture struct {
	Port               uint16         `json:"port"` // proxy.inboundPort
	ExcludeSourceCIDRs []netip.Prefix `json:"excludeSourceCIDRs,omitempty"`
	IncludePorts       []PortRange    `json:"includePorts,omitempty"`
	ExcludePorts       []PortRange    `json:"excludePorts,omitempty"`
}

// DNSCaptureRules selects the UDP/53 queries that go to the DNS proxy.
type DNSCaptureRules struct {
	Port uint16 `json:"port"` // dns.port
	// All captures every UDP/53 query; otherwise only those to Servers.
	All     bool         `json:"all"`
	Servers []netip.Addr `json:"servers,omitempty"`
	// ExemptUIDs/ExemptGIDs are outbound.excludeUIDs/excludeGIDs (the proxy is
	// exempt too); ExemptUIDsForDNS are the uids of the udp rules of
	// outbound.excludePortsForUIDs that list port 53.
	ExemptUIDs       []IDRange `json:"exemptUIDs,omitempty"`
	ExemptGIDs       []IDRange `json:"exemptGIDs,omitempty"`
	ExemptUIDsForDNS []IDRange `json:"exemptUIDsForDNS,omitempty"`
	// ExemptPortsForUIDs are those udp rules themselves, as the config gives
	// them (a rendering may quote their ports).
	ExemptPortsForUIDs []UIDPortRule `json:"exemptPortsForUIDs,omitempty"`
	// ZoneSplit keeps captured and upstream queries in separate conntrack zones.
	ZoneSplit bool `json:"zoneSplit"`
}

// NewCapture validates cfg and states its capture decision for the families it
// captures (ipFamilies resolved with facts.IPv6, as NewPlan does). Pure.
func NewCapture(cfg Config, facts Facts) (Capture, error) {
	if err := cfg.Validate(); err != nil {
		return Capture{}, err
	}
	fams, err := planFamilies(cfg, facts)
	if err != nil {
		return Capture{}, err
	}
	return newCapture(cfg, facts, fams), nil
}

// planFamilies resolves ipFamilies: auto captures IPv6 only where the namespace
// has it; ipv6 or dual without IPv6 is ErrIPv6Unavailable, never a silent
// IPv4-only capture.
func planFamilies(cfg Config, facts Facts) ([]Family, error) {
	fams, err := wantedFamilies(cfg, facts)
	if err == nil && slices.Contains(fams, IPv6) && facts.LoIPv6Disabled {
		return nil, fmt.Errorf("ipFamilies is %s and the network namespace has IPv6, but IPv6 is disabled on lo, where captured IPv6 is delivered: %w; enable it (sysctl -w net.ipv6.conf.lo.disable_ipv6=0) or capture IPv4 only, knowingly (--ip-families ipv4)", cfg.IPFamilies, ErrIPv6Unavailable)
	}
	return fams, err
}

func wantedFamilies(cfg Config, facts Facts) ([]Family, error) {
	switch cfg.IPFamilies {
	case IPFamiliesIPv4:
		return []Family{IPv4}, nil
	case IPFamiliesIPv6, IPFamiliesDual:
		if !facts.IPv6 {
			return nil, fmt.Errorf("ipFamilies is %s but the network namespace has no usable IPv6: %w", cfg.IPFamilies, ErrIPv6Unavailable)
		}
		if cfg.IPFamilies == IPFamiliesDual {
			return []Family{IPv4, IPv6}, nil
		}
		return []Family{IPv6}, nil
	}
	if facts.IPv6 {
		return []Family{IPv4, IPv6}, nil
	}
	return []Family{IPv4}, nil
}

func newCapture(cfg Config, facts Facts, fams []Family) Capture {
	c := Capture{Mode: cfg.Mode}
	for _, f := range fams {
		c.Families = append(c.Families, familyCapture(cfg, facts, f))
	}
	return c
}

func familyCapture(cfg Config, facts Facts, f Family) FamilyCapture {
	v6 := f == IPv6
	name := "IPv4"
	if v6 {
		name = "IPv6"
	}
	pt := cfg.Proxy.InboundPassthroughSource.IPv4
	if v6 {
		pt = cfg.Proxy.InboundPassthroughSource.IPv6
	}
	fc := FamilyCapture{
		Family: f,
		Proxy: ProxyCapture{UID: cfg.Proxy.UID, GID: cfg.Proxy.GID, InboundPort: cfg.Proxy.InboundPort,
			OutboundPort: cfg.Proxy.OutboundPort, Passthrough: pt, PassthroughRoute: facts.LoByRuntime},
		DropInvalid: cfg.DropInvalidPackets,
	}
	if cfg.Log.Enabled {
		l := cfg.Log
		fc.Log = &l
	}
	if in := cfg.Inbound; in.Enabled {
		fc.Inbound = &InboundCapture{Port: cfg.Proxy.InboundPort,
			ExcludeSourceCIDRs: familyPrefixes(in.ExcludeSourceCIDRs, v6)}
		fc.Inbound.IncludePorts, fc.Inbound.ExcludePorts = portSelection(in.IncludePorts, in.ExcludePorts)
		if cfg.Mode == ModeTProxy {
			fc.TProxy = &PolicyRouting{Mark: tproxyMark, Mask: tproxyMark, Table: tproxyTable, Priority: tproxyPriority}
		}
	}
	if o := cfg.Outbound; o.Enabled {
		oc := &OutboundCapture{Port: cfg.Proxy.OutboundPort, ExemptUIDs: o.ExcludeUIDs, ExemptGIDs: o.ExcludeGIDs}
		for _, r := range o.ExcludePortsForUIDs {
			if r.Protocol == TCP {
				oc.ExemptPortsForUIDs = append(oc.ExemptPortsForUIDs, r)
			}
		}
		oc.IncludePorts, oc.ExcludePorts = portSelection(o.IncludePorts, o.ExcludePorts)
		if len(o.IncludeCIDRs) > 0 {
			oc.IncludeCIDRs = familyPrefixes(o.IncludeCIDRs, v6)
			if len(oc.IncludeCIDRs) == 0 {
				fc.Notes = append(fc.Notes, fmt.Sprintf("outbound.includeCIDRs lists no %s CIDR, so no outbound %s TCP is captured", name, name))
				oc = nil
			}
		} else {
			oc.ExcludeCIDRs = familyPrefixes(o.ExcludeCIDRs, v6)
		}
		fc.Outbound = oc
	}
	if d := cfg.DNS; d.Capture != DNSCaptureOff {
		dc := &DNSCaptureRules{Port: d.Port, All: d.Capture == DNSCaptureAll, ZoneSplit: d.ConntrackZoneSplit,
			ExemptUIDs: cfg.Outbound.ExcludeUIDs, ExemptGIDs: cfg.Outbound.ExcludeGIDs}
		for _, r := range cfg.Outbound.ExcludePortsForUIDs {
			if r.Protocol == UDP && inPortRanges(r.Ports, 53) {
				dc.ExemptUIDsForDNS = append(dc.ExemptUIDsForDNS, r.UIDs...)
				dc.ExemptPortsForUIDs = append(dc.ExemptPortsForUIDs, r)
			}
		}
		if !dc.All {
			add := func(a netip.Addr) {
				if !slices.Contains(dc.Servers, a) {
					dc.Servers = append(dc.Servers, a)
				}
			}
			for _, a := range facts.Nameservers {
				a = a.Unmap().WithZone("")
				if a.Is6() != v6 {
					continue
				}
				add(a)
				if a.IsUnspecified() {
					// "nameserver 0.0.0.0" (or "::") is the local host: the
					// kernel sends a datagram to the unspecified address to
					// loopback, and that is the destination the nat and
					// nftables rules see (the eBPF hooks see the address
					// the resolver gave, so both stay listed).
					add(unspecifiedDestination(v6))
				}
			}
			if len(dc.Servers) == 0 {
				fc.Notes = append(fc.Notes, fmt.Sprintf("dns.resolvConf (%s) lists no %s nameserver, so no %s DNS query is captured", d.ResolvConf, name, name))
				dc = nil
			}
		}
		fc.DNS = dc
	}
	return fc
}

// unspecifiedDestination is where the kernel sends a datagram addressed to
// the unspecified address of a family: 127.0.0.1 or ::1.
func unspecifiedDestination(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// portSelection applies "include beats exclude": with include ports the
// exclusions no longer matter.
func portSelection(include, exclude []PortRange) (in, ex []PortRange) {
	if len(include) > 0 {
		return include, nil
	}
	return nil, exclude
}

func familyPrefixes(list []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range list {
		if p.Addr().Is6() == v6 {
			out = append(out, p.Masked())
		}
	}
	return out
}

// Family returns the capture of family f, if f is captured.
func (c Capture) Family(f Family) (FamilyCapture, bool) {
	for _, fc := range c.Families {
		if fc.Family == f {
			return fc, true
		}
	}
	return FamilyCapture{}, false
}

// Direction is which way a connection goes relative to the workload.
type Direction string

const (
	// DirOutbound: a process of the workload opens the connection.
	DirOutbound Direction = "outbound"
	// DirInbound: a client elsewhere connects to the workload's own address.
	DirInbound Direction = "inbound"
)

// Conn describes one new connection (or, for UDP, one query) as Decide sees it.
type Conn struct {
	Direction Direction `json:"direction"`
	Protocol  Protocol  `json:"protocol"` // TCP or UDP
	// Src is the client of an inbound connection; for outbound it only matters
	// over lo (the proxy's passthrough source).
	Src  netip.Addr `json:"src,omitempty"`
	Dst  netip.Addr `json:"dst"`
	Port uint16     `json:"port"` // destination port
	// UID and GID own the socket of an outbound connection (file-system ids,
	// primary group), as the kernel's owner match reads them.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// ToSelf says Dst is one of the workload's own non-loopback addresses, so an
	// outbound connection routes over lo: captured only as the proxy's hairpin.
	// An inbound connection with a Dst is captured only when ToSelf holds (any
	// other destination is forwarded); without a Dst it is assumed to be the
	// workload's.
	ToSelf bool `json:"toSelf,omitempty"`
}

// Verdict is Decide's answer: where the connection goes and why.
type Verdict struct {
	Captured bool `json:"captured"`
	// To says which proxy port receives it: "outbound", "inbound" or "dns"
	// (empty when not captured), and Port is that port.
	To   string `json:"to,omitempty"`
	Port uint16 `json:"port,omitempty"`
	// Reason is the deciding setting in the user's terms.
	Reason Reason `json:"reason"`
}

// Reason names what decided a verdict: a config field and the value that
// matched (Field "outbound.excludePorts", Value "5432"), or a built-in rule
// (Field empty: loopback, the loop guard).
type Reason struct {
	Field string `json:"field,omitempty"`
	Value string `json:"value,omitempty"`
	Text  string `json:"text"`
}

func (r Reason) String() string {
	switch {
	case r.Field == "":
		return r.Text
	case r.Value == "":
		return r.Field + ": " + r.Text
	}
	return r.Field + " " + r.Value + ": " + r.Text
}

func reason(field, value, format string, args ...any) Reason {
	return Reason{Field: field, Value: value, Text: fmt.Sprintf(format, args...)}
}

// Decide answers, without a host, what the rendered rules do with one new
// connection: it follows the order every backend's rules follow, and names the
// first setting that decides. Connections of a family the capture does not hold
// are never captured (ipFamilies).
func (c Capture) Decide(conn Conn) Verdict {
	dst, src := conn.Dst.Unmap().WithZone(""), conn.Src.Unmap().WithZone("")
	fam := familyOf(dst)
	if conn.Direction == DirInbound && src.IsValid() {
		fam = familyOf(src)
	}
	fc, ok := c.Family(fam)
	if !ok {
		return Verdict{Reason: reason("ipFamilies", "", "%s is not captured", fam)}
	}
	if conn.Direction == DirInbound {
		if dst.IsValid() && !conn.ToSelf && !dst.IsLoopback() {
			// Only connections to the workload's own addresses are inbound;
			// the host merely forwards the rest (I7).
			return Verdict{Reason: reason("", "", "%s is not an address of the workload: forwarded traffic is never captured", dst)}
		}
		return fc.decideInbound(src, conn.Port)
	}
	if conn.Protocol == UDP {
		return fc.decideDNS(dst, conn.Port, conn.UID, conn.GID)
	}
	if conn.ToSelf && !dst.IsLoopback() {
		// Over lo to the workload's own address: the proxy's hairpin is inbound
		// traffic (O8); anyone else's is left alone (O9).
		if src.IsValid() && src == fc.Proxy.Passthrough {
			return Verdict{Reason: reason("proxy.inboundPassthroughSource", src.String(), "the proxy's passthrough to the app is never captured")}
		}
		if fc.isProxy(conn.UID, conn.GID) {
			if fc.Inbound == nil {
				return Verdict{Reason: reason("inbound.enabled", "false", "the proxy's hairpin is inbound traffic, and inbound capture is off")}
			}
			v := fc.decideInbound(dst, conn.Port)
			if v.Captured {
				v.Reason = reason("proxy.uid", strconv.FormatUint(uint64(fc.Proxy.UID), 10), "the proxy dialing the workload's own address over lo is its hairpin: inbound capture")
			}
			return v
		}
		return Verdict{Reason: reason("", "", "the workload's own address routes over lo, which outbound capture leaves alone")}
	}
	return fc.decideOutbound(dst, conn.Port, conn.UID, conn.GID)
}

func (fc FamilyCapture) isProxy(uid, gid uint32) bool {
	return uid == fc.Proxy.UID || (fc.Proxy.GID != nil && gid == *fc.Proxy.GID)
}

func (fc FamilyCapture) proxyReason(uid, gid uint32) Reason {
	if uid == fc.Proxy.UID {
		return reason("proxy.uid", strconv.FormatUint(uint64(uid), 10), "the proxy's own traffic is never captured")
	}
	return reason("proxy.gid", strconv.FormatUint(uint64(gid), 10), "the proxy's own traffic is never captured")
}

func (fc FamilyCapture) decideOutbound(dst netip.Addr, port uint16, uid, gid uint32) Verdict {
	o := fc.Outbound
	switch {
	case !dst.IsValid():
		return Verdict{Reason: reason("", "", "no destination address")}
	case dst.IsLoopback():
		return Verdict{Reason: reason("", "", "loopback: %s is never captured", dst)}
	case dst.IsUnspecified():
		return Verdict{Reason: reason("", "", "unspecified destination %s routes over lo, which outbound capture leaves alone", dst)}
	case o == nil:
		return Verdict{Reason: fc.noOutboundReason()}
	case fc.isProxy(uid, gid):
		return Verdict{Reason: fc.proxyReason(uid, gid)}
	}
	if r, ok := firstID(o.ExemptUIDs, uid); ok {
		return Verdict{Reason: reason("outbound.excludeUIDs", r.String(), "uid %d is excluded", uid)}
	}
	if r, ok := firstID(o.ExemptGIDs, gid); ok {
		return Verdict{Reason: reason("outbound.excludeGIDs", r.String(), "gid %d is excluded", gid)}
	}
	for _, r := range o.ExemptPortsForUIDs {
		if inPortRanges(r.Ports, port) && inIDRanges(r.UIDs, uid) {
			return Verdict{Reason: reason("outbound.excludePortsForUIDs", r.String(), "tcp port %d of uid %d is excluded", port, uid)}
		}
	}
	if len(o.IncludeCIDRs) > 0 {
		p, ok := firstPrefix(o.IncludeCIDRs, dst)
		if !ok {
			return Verdict{Reason: reason("outbound.includeCIDRs", "", "does not contain %s", dst)}
		}
		if v, decided := portVerdict("outbound", o.IncludePorts, o.ExcludePorts, port); decided {
			return v
		}
		return Verdict{Captured: true, To: "outbound", Port: o.Port, Reason: reason("outbound.includeCIDRs", p.String(), "contains %s", dst)}
	}
	if p, ok := firstPrefix(o.ExcludeCIDRs, dst); ok {
		return Verdict{Reason: reason("outbound.excludeCIDRs", p.String(), "contains %s", dst)}
	}
	if v, decided := portVerdict("outbound", o.IncludePorts, o.ExcludePorts, port); decided {
		return v
	}
	if pr, ok := firstPort(o.IncludePorts, port); ok {
		return Verdict{Captured: true, To: "outbound", Port: o.Port, Reason: reason("outbound.includePorts", pr.String(), "contains port %d", port)}
	}
	return Verdict{Captured: true, To: "outbound", Port: o.Port, Reason: reason("outbound.enabled", "true", "outbound TCP is captured and no exclusion matches")}
}

func (fc FamilyCapture) noOutboundReason() Reason {
	for _, n := range fc.Notes {
		if len(n) > len("outbound.includeCIDRs") && n[:len("outbound.includeCIDRs")] == "outbound.includeCIDRs" {
			return reason("outbound.includeCIDRs", "", "lists no %s prefix", fc.Family)
		}
	}
	return reason("outbound.enabled", "false", "outbound capture is off")
}

// portVerdict decides by port: with include ports, a port outside them is not
// captured (and decided); otherwise an excluded port is not captured. When the
// port is selected, decided is false and the caller names the capture.
func portVerdict(dir string, include, exclude []PortRange, port uint16) (Verdict, bool) {
	if len(include) > 0 {
		if !inPortRanges(include, port) {
			return Verdict{Reason: reason(dir+".includePorts", "", "does not contain port %d", port)}, true
		}
		return Verdict{}, false
	}
	for _, r := range exclude {
		if r.Contains(port) {
			return Verdict{Reason: reason(dir+".excludePorts", r.String(), "port %d is excluded", port)}, true
		}
	}
	return Verdict{}, false
}

func (fc FamilyCapture) decideInbound(src netip.Addr, port uint16) Verdict {
	in := fc.Inbound
	switch {
	case in == nil:
		return Verdict{Reason: reason("inbound.enabled", "false", "inbound capture is off")}
	case port == fc.Proxy.OutboundPort:
		return Verdict{Reason: reason("proxy.outboundPort", strconv.Itoa(int(port)), "a connection to the outbound port is never captured inbound (loop guard)")}
	case !src.IsValid():
		return Verdict{Reason: reason("", "", "no source address")}
	case src.IsLoopback():
		return Verdict{Reason: reason("", "", "loopback: %s never arrives from outside", src)}
	case src == fc.Proxy.Passthrough:
		return Verdict{Reason: reason("proxy.inboundPassthroughSource", src.String(), "the proxy's passthrough to the app is never captured")}
	}
	if p, ok := firstPrefix(in.ExcludeSourceCIDRs, src); ok {
		return Verdict{Reason: reason("inbound.excludeSourceCIDRs", p.String(), "contains %s", src)}
	}
	if v, decided := portVerdict("inbound", in.IncludePorts, in.ExcludePorts, port); decided {
		return v
	}
	r := reason("inbound.enabled", "true", "inbound TCP is captured and no exclusion matches")
	if len(in.IncludePorts) > 0 {
		pr, _ := firstPort(in.IncludePorts, port)
		r = reason("inbound.includePorts", pr.String(), "contains port %d", port)
	}
	return Verdict{Captured: true, To: "inbound", Port: in.Port, Reason: r}
}

// decideDNS decides a UDP packet: only UDP/53 is ever captured, to dns.port.
func (fc FamilyCapture) decideDNS(dst netip.Addr, port uint16, uid, gid uint32) Verdict {
	d := fc.DNS
	switch {
	case port != 53:
		return Verdict{Reason: reason("", "", "only UDP to port 53 is ever captured")}
	case d == nil:
		if len(fc.Notes) > 0 {
			for _, n := range fc.Notes {
				if len(n) > len("dns.resolvConf") && n[:len("dns.resolvConf")] == "dns.resolvConf" {
					return Verdict{Reason: reason("dns.resolvConf", "", "lists no %s nameserver", fc.Family)}
				}
			}
		}
		return Verdict{Reason: reason("dns.capture", "off", "DNS is not captured")}
	case fc.isProxy(uid, gid):
		return Verdict{Reason: fc.proxyReason(uid, gid)}
	}
	if r, ok := firstID(d.ExemptUIDs, uid); ok {
		return Verdict{Reason: reason("outbound.excludeUIDs", r.String(), "uid %d is excluded", uid)}
	}
	if r, ok := firstID(d.ExemptGIDs, gid); ok {
		return Verdict{Reason: reason("outbound.excludeGIDs", r.String(), "gid %d is excluded", gid)}
	}
	if r, ok := firstID(d.ExemptUIDsForDNS, uid); ok {
		return Verdict{Reason: reason("outbound.excludePortsForUIDs", r.String(), "udp port 53 of uid %d is excluded", uid)}
	}
	if d.All {
		return Verdict{Captured: true, To: "dns", Port: d.Port, Reason: reason("dns.capture", "all", "every UDP/53 query is captured")}
	}
	if slices.Contains(d.Servers, dst) {
		return Verdict{Captured: true, To: "dns", Port: d.Port, Reason: reason("dns.capture", "resolvconf", "%s is a nameserver of dns.resolvConf", dst)}
	}
	return Verdict{Reason: reason("dns.capture", "resolvconf", "%s is not a nameserver of dns.resolvConf", dst)}
}

func firstID(rs []IDRange, id uint32) (IDRange, bool) {
	for _, r := range rs {
		if r.Contains(id) {
			return r, true
		}
	}
	return IDRange{}, false
}

func firstPort(rs []PortRange, p uint16) (PortRange, bool) {
	for _, r := range rs {
		if r.Contains(p) {
			return r, true
		}
	}
	return PortRange{}, false
}

// firstPrefix finds a's first prefix of its own family (an IPv4-mapped prefix
// belongs to IPv6 and matches no IPv4 address).
func firstPrefix(ps []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	for _, p := range ps {
		if p.Addr().Is6() == a.Is6() && p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
