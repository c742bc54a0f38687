package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netItem is one piece of state we keep over netlink: the TPROXY fwmark rule,
// the local route of our table, or an address on lo.
type netItem struct {
	family Family
	line   string // in the plan's text form
	want   bool   // the plan asks for it
	exists bool   // it is there
	ours   bool   // it is there and we put it there (so we may remove it)
	add    func() error
	del    func() error
}

// netState is every netItem of the namespace against what a plan wants. It
// runs on the calling thread, which must be inside the namespace.
type netState struct {
	items []*netItem
}

func netlinkFamily(f Family) int {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func ourRule(f Family) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlinkFamily(f)
	r.Table = tproxyTable
	r.Priority = tproxyPriority
	r.Mark = tproxyMark
	mask := uint32(tproxyMark)
	r.Mask = &mask
	return r
}

func ourRoute(f Family, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if f == IPv6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family: netlinkFamily(f), LinkIndex: lo, Dst: dst, Table: tproxyTable,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST,
	}
}

// ourAddress is an address as we put it on lo: IPv4 with our label, IPv6 with
// nodad and noprefixroute (IPv6 addresses have no label).
func ourAddress(p netip.Prefix, lo int) *netlink.Addr {
	a := &netlink.Addr{
		IPNet:     &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		LinkIndex: lo, Scope: unix.RT_SCOPE_HOST, Flags: unix.IFA_F_NOPREFIXROUTE,
	}
	if p.Addr().Is4() {
		a.Label = addressLabel
	} else {
		a.Flags |= unix.IFA_F_NODAD
	}
	return a
}

func isOurAddress(a netlink.Addr) bool {
	ones, bits := a.Mask.Size()
	if ones != bits {
		return false
	}
	if a.IP.To4() != nil {
		return a.Label == addressLabel
	}
	const flags = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE
	return a.Flags&flags == flags
}

// observeNet reads our rule, route and addresses in both families; p says
// which it wants.
func observeNet(p Plan) (netState, error) {
	var s netState
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return s, fmt.Errorf("find loopback: %w", err)
	}
	loIdx := lo.Attrs().Index
	routing := &PolicyRouting{Mark: tproxyMark, Mask: tproxyMark, Table: tproxyTable, Priority: tproxyPriority}
	for _, f := range allFamilies {
		fp, planned := p.Family(f)
		wantRouting := planned && fp.Routing != nil
		rules, err := netlink.RuleListFiltered(netlinkFamily(f), &netlink.Rule{Table: tproxyTable}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			if !planned && errors.Is(err, unix.EAFNOSUPPORT) {
				continue // no IPv6 in this kernel: nothing of ours either
			}
			return s, fmt.Errorf("list %s ip rules: %w", f, err)
		}
		ruleThere := slices.ContainsFunc(rules, func(r netlink.Rule) bool {
			return r.Priority == tproxyPriority && r.Mark == tproxyMark && r.Mask != nil && *r.Mask == tproxyMark
		})
		routes, err := netlink.RouteListFiltered(netlinkFamily(f), &netlink.Route{Table: tproxyTable}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return s, fmt.Errorf("list %s routes of table %d: %w", f, tproxyTable, err)
		}
		routeThere := slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return r.Type == unix.RTN_LOCAL && r.LinkIndex == loIdx && (r.Dst == nil || isDefault(r.Dst))
		})
		lines := routing.lines(f)
		rt, ru := ourRoute(f, loIdx), ourRule(f)
		s.items = append(s.items,
			&netItem{family: f, line: lines[0], want: wantRouting, exists: ruleThere, ours: ruleThere,
				add: func() error { return netlink.RuleAdd(ru) }, del: func() error { return netlink.RuleDel(ru) }},
			&netItem{family: f, line: lines[1], want: wantRouting, exists: routeThere, ours: routeThere,
				add: func() error { return netlink.RouteAdd(rt) }, del: func() error { return netlink.RouteDel(rt) }},
		)

		addrs, err := netlink.AddrList(lo, netlinkFamily(f))
		if err != nil {
			return s, fmt.Errorf("list %s addresses of lo: %w", f, err)
		}
		var wanted []netip.Prefix
		if planned {
			wanted = fp.Addresses
		}
		for _, w := range wanted {
			it := &netItem{family: f, line: addressLine(w), want: true}
			for _, a := range addrs {
				if prefixOf(a) == w {
					it.exists, it.ours = true, isOurAddress(a)
				}
			}
			na := ourAddress(w, loIdx)
			it.add = func() error { return netlink.AddrAdd(lo, na) }
			it.del = func() error { return netlink.AddrDel(lo, na) }
			s.items = append(s.items, it)
		}
		for _, a := range addrs {
			if p := prefixOf(a); isOurAddress(a) && !slices.Contains(wanted, p) {
				na := ourAddress(p, loIdx)
				s.items = append(s.items, &netItem{family: f, line: addressLine(p), exists: true, ours: true,
					del: func() error { return netlink.AddrDel(lo, na) }})
			}
		}
	}
	return s, nil
}

func prefixOf(a netlink.Addr) netip.Prefix {
	ip, _ := netip.AddrFromSlice(a.IP)
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// changes reports whether add or remove would change anything.
func (s netState) changes() bool {
	return slices.ContainsFunc(s.items, func(it *netItem) bool { return it.want != it.exists || (!it.want && it.ours) })
}

// have lists, per family, what is there in the plan's text form: what we put
// there, and what the plan wants that someone else put there.
func (s netState) have(f Family) []string {
	var out []string
	for _, it := range s.items {
		if it.family == f && it.exists && (it.ours || it.want) {
			out = append(out, it.line)
		}
	}
	return out
}

// owns reports whether something of ours is there in family f.
func (s netState) owns(f Family) bool {
	return slices.ContainsFunc(s.items, func(it *netItem) bool { return it.family == f && it.ours })
}

// add creates what is wanted and missing; undo removes exactly that.
func (s netState) add() (undo func() error, err error) {
	var done []*netItem
	undo = func() error {
		var errs []error
		for i := len(done) - 1; i >= 0; i-- {
			errs = append(errs, done[i].del())
		}
		return errors.Join(errs...)
	}
	for _, it := range s.items {
		if !it.want || it.exists {
			continue
		}
		if err := it.add(); err != nil {
			return undo, errors.Join(fmt.Errorf("%s: %w", it.line[2:], err), undo())
		}
		done = append(done, it)
	}
	return undo, nil
}

// remove deletes what is ours and not wanted.
func (s netState) remove() error {
	for _, it := range s.items {
		if it.want || !it.ours {
			continue
		}
		if err := it.del(); err != nil {
			return fmt.Errorf("undo %s: %w", it.line[2:], err)
		}
	}
	return nil
}
