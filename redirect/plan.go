package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Facts are what planning needs to know about the target network namespace.
// Engine.Facts reads them; tests and `detour plan` may fill them by hand.
type Facts struct {
	// IPv6 says the namespace has a usable IPv6 stack (matters for ipFamilies auto).
	IPv6 bool `json:"ipv6"`
	// LoIPv6Disabled says lo has IPv6 disabled (net.ipv6.conf.lo.disable_ipv6=1)
	// while another interface has it: IPv6 then cannot be captured (REDIRECT
	// sends to ::1, the passthrough source ::6 lives on lo), so planning IPv6
	// is ErrIPv6Unavailable before anything is applied.
	LoIPv6Disabled bool `json:"loIPv6Disabled,omitempty"`
	// LoByRuntime says lo belongs to a container runtime's loopback network:
	// the namespace is a pod sandbox that the CNI plugin sets up, and the
	// runtime may set lo up at the same time (containerd runs the loopback
	// network and the pod's network concurrently) with a check that refuses
	// any address on lo but 127.0.0.0/8 and ::1 (the reference loopback
	// plugin's). A passthrough source that is not local by itself (::6) is then
	// made local by a route on lo in table local, not by an address: the proxy
	// binds it with IP_FREEBIND / IPV6_FREEBIND (docs/cni.md). The CNI plugin
	// sets it; Engine.Facts does not read it.
	LoByRuntime bool `json:"loByRuntime,omitempty"`
	// Nameservers are the nameservers of DNS.ResolvConf, read only for
	// dns.capture resolvconf. Both families may appear; each family's rules use
	// its own.
	Nameservers []netip.Addr `json:"nameservers"`
}

// Family is an IP family.
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

var allFamilies = []Family{IPv4, IPv6}

// Plan is what one configuration captures in one network namespace, without
// any backend's syntax: what Install makes the namespace hold (through a
// Driver), what Check compares against and what `detour plan` prints (in a
// Driver's Rendering, Plan.Format).
type Plan struct {
	Config Config `json:"config"` // the validated config it was made from
	// Facts are the facts about the namespace it was made with.
	Facts Facts `json:"facts"`
	// Capture is the capture decision every backend renders (Driver.Render).
	Capture Capture `json:"capture"`
	// Notes point out settings that do nothing, such as an exclusion that an
	// inclusion overrides (include beats exclude); `detour plan` prints them.
	Notes []string `json:"notes,omitempty"`
}

// PolicyRouting sends packets carrying Mark (under Mask) to the local stack:
// an ip rule "fwmark Mark/Mask lookup Table" at Priority, and a route
// "local default dev lo" in Table. TPROXY needs it to deliver diverted packets
// to the proxy's transparent socket.
type PolicyRouting struct {
	Mark     uint32 `json:"mark"`
	Mask     uint32 `json:"mask"`
	Table    int    `json:"table"`
	Priority int    `json:"priority"`
}

// NewPlan is pure and deterministic (same input, same bytes): no host reads, no
// exec. It validates cfg (errors match ErrInvalid and name the field and value)
// and resolves ipFamilies auto with facts.IPv6. ipFamilies ipv6 or dual with
// facts.IPv6 false is an error matching ErrIPv6Unavailable, never a silent
// IPv4-only plan.
func NewPlan(cfg Config, facts Facts) (Plan, error) {
	if err := cfg.Validate(); err != nil {
		return Plan{}, err
	}
	fams, err := planFamilies(cfg, facts)
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Config: cfg.Clone(), Facts: facts}
	p.Capture = newCapture(p.Config, facts, fams)
	p.Notes = exclusionNotes(p.Config, fams)
	return p, nil
}

// exclusionNotes names every exclusion that an inclusion overrides. Include
// beats exclude (SCENARIOS O4), so an excludeCIDRs prefix inside an
// includeCIDRs prefix, or an excludePorts range inside includePorts, does
// nothing — the opposite of what istio-iptables users expect (Istio applies
// exclusions first). CIDR notes are made for the planned families only.
func exclusionNotes(c Config, fams []Family) []string {
	var notes []string
	ports := func(dir string, enabled bool, include, exclude []PortRange) {
		if !enabled {
			return
		}
		for i, ex := range exclude {
			for j, in := range include {
				if in.First <= ex.First && ex.Last <= in.Last {
					notes = append(notes, fmt.Sprintf("%s.excludePorts[%d] %s has no effect: %s.includePorts[%d] %s includes it, and include beats exclude", dir, i, ex, dir, j, in))
					break // one inclusion that covers it is enough to name
				}
				if in.First <= ex.Last && ex.First <= in.Last {
					notes = append(notes, fmt.Sprintf("%s.excludePorts[%d] %s does not exclude the ports it shares with %s.includePorts[%d] %s: include beats exclude", dir, i, ex, dir, j, in))
				}
			}
		}
	}
	o := c.Outbound
	if o.Enabled {
		for i, ex := range o.ExcludeCIDRs {
			if !slices.Contains(fams, familyOf(ex.Addr())) {
				continue
			}
			for j, in := range o.IncludeCIDRs {
				if in.Addr().Is6() != ex.Addr().Is6() || !in.Overlaps(ex) {
					continue
				}
				if in.Bits() <= ex.Bits() {
					notes = append(notes, fmt.Sprintf("outbound.excludeCIDRs[%d] %s has no effect: outbound.includeCIDRs[%d] %s includes it, and include beats exclude", i, ex, j, in))
					break
				}
				notes = append(notes, fmt.Sprintf("outbound.excludeCIDRs[%d] %s does not exclude outbound.includeCIDRs[%d] %s inside it: include beats exclude", i, ex, j, in))
			}
		}
	}
	ports("outbound", o.Enabled, o.IncludePorts, o.ExcludePorts)
	ports("inbound", c.Inbound.Enabled, c.Inbound.IncludePorts, c.Inbound.ExcludePorts)
	return notes
}

func familyOf(a netip.Addr) Family {
	if a.Is6() {
		return IPv6
	}
	return IPv4
}

// Family returns the capture of family f, if the plan captures it.
func (p Plan) Family(f Family) (FamilyCapture, bool) { return p.Capture.Family(f) }

// Families are the families the plan captures, IPv4 first.
func (p Plan) Families() []Family {
	out := make([]Family, len(p.Capture.Families))
	for i, fc := range p.Capture.Families {
		out[i] = fc.Family
	}
	return out
}

// Format is the plan as `detour plan` prints it in one backend's rendering: a
// header line naming the mode, the backend the config asks for and the
// families, the plan's notes, then per family a header line, the backend's
// text of the family (r) and the policy routing and addresses on lo that
// Engine makes for every backend.
func (p Plan) Format(r Rendering) string {
	var b strings.Builder
	c := p.Config
	fams := make([]string, len(p.Capture.Families))
	for i, f := range p.Capture.Families {
		fams[i] = string(f.Family)
	}
	fmt.Fprintf(&b, "# detour plan: mode %s, backend %s, ipFamilies %s (%s)\n", c.Mode, c.Backend, c.IPFamilies, strings.Join(fams, ", "))
	for _, n := range p.Notes {
		b.WriteString("# note: " + n + "\n")
	}
	for _, fc := range p.Capture.Families {
		fmt.Fprintf(&b, "\n### %s\n", fc.Family)
		fr, _ := r.Family(fc.Family)
		b.WriteString(fr.Text)
		for _, l := range fc.NetLines() {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// NetLines are the family's policy routing and addresses on lo, which Engine
// makes over netlink for every backend, in the text form plans, Status and
// Check use ("# routing: …", "# address: …").
func (fc FamilyCapture) NetLines() []string {
	out := fc.TProxy.lines(fc.Family)
	if a := fc.loRoute(); a.IsValid() {
		out = append(out, passthroughRouteLine(a))
	}
	if a := fc.loAddress(); a.IsValid() {
		out = append(out, addressLine(a))
	}
	return out
}

// passthroughLocal is the inbound passthrough source when something must make
// it local (I6: the proxy binds it; unlike 127.0.0.6, ::6 is not local until
// someone does); invalid when nothing is needed.
func (fc FamilyCapture) passthroughLocal() netip.Prefix {
	pt := fc.Proxy.Passthrough
	if fc.Inbound == nil || !pt.IsValid() || alwaysLocal(pt) {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(pt, pt.BitLen())
}

// loAddress is the passthrough source when it is put on lo as an address.
func (fc FamilyCapture) loAddress() netip.Prefix {
	if fc.Proxy.PassthroughRoute {
		return netip.Prefix{}
	}
	return fc.passthroughLocal()
}

// loRoute is the passthrough source when it is made local by a route on lo
// (ProxyCapture.PassthroughRoute).
func (fc FamilyCapture) loRoute() netip.Prefix {
	if !fc.Proxy.PassthroughRoute {
		return netip.Prefix{}
	}
	return fc.passthroughLocal()
}

// passthroughRouteLine is the route that makes the passthrough source a local
// without an address: table local delivers what is sent to a (the app's
// replies to the proxy).
func passthroughRouteLine(a netip.Prefix) string {
	v := "-4"
	if a.Addr().Is6() {
		v = "-6"
	}
	return fmt.Sprintf("# routing: ip %s route add local %s dev lo table local proto %d", v, a, netProtocol)
}

func addressLine(a netip.Prefix) string {
	proto := " proto " + strconv.Itoa(netProtocol)
	if a.Addr().Is4() {
		return "# address: ip -4 addr add " + a.String() + " dev lo label " + addressLabel + " noprefixroute" + proto
	}
	return "# address: ip -6 addr add " + a.String() + " dev lo nodad noprefixroute" + proto
}

// lines is the routing in the text form plans, Status and Check use.
func (r *PolicyRouting) lines(f Family) []string {
	if r == nil {
		return nil
	}
	v, dst := "-4", "0.0.0.0/0"
	if f == IPv6 {
		v, dst = "-6", "::/0"
	}
	return []string{
		fmt.Sprintf("# routing: ip %s rule add fwmark %#x/%#x lookup %d priority %d protocol %d", v, r.Mark, r.Mask, r.Table, r.Priority, netProtocol),
		fmt.Sprintf("# routing: ip %s route add local %s dev lo table %d proto %d", v, dst, r.Table, netProtocol),
	}
}

var (
	// ErrNotInstalled means nothing of ours is in the network namespace.
	ErrNotInstalled = errors.New("detour is not installed")
	// ErrForeignChains means a DETOUR_* chain exists that detour did not make:
	// detour refuses to change or remove it.
	ErrForeignChains = errors.New("DETOUR_* chains that detour does not own")
	// ErrIPv6Unavailable means IPv6 is wanted (ipFamilies ipv6 or dual) or present
	// (auto) but IPv6 rules cannot be installed. Set ipFamilies ipv4 to capture
	// IPv4 only, knowingly.
	ErrIPv6Unavailable = errors.New("IPv6 is present or wanted but IPv6 rules cannot be installed")
	// ErrLockTimeout means the xtables lock, or detour's own lock of the
	// network namespace (held by another Install or Uninstall of it), was not
	// acquired within Engine.LockWait; nothing was changed.
	ErrLockTimeout = errors.New("lock not acquired in time")
	// ErrBackendConflict means detour's state is in more than one backend
	// (iptables-legacy and iptables-nft, or any two: a switch cut short).
	ErrBackendConflict = errors.New("detour's rules are in more than one backend")
	// ErrInboundTaken means another scope of detour captures inbound in the
	// network namespace (NetSharer): one capture per namespace may, or each
	// would redirect every inbound connection of it.
	ErrInboundTaken = errors.New("another scope of detour captures inbound in this network namespace")
)
