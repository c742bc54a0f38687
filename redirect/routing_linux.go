package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// What we make over netlink carries the kernel's own ownership tag, netProtocol:
// the protocol of the ip rule (FRA_PROTOCOL, Linux ≥ 4.17) and of the route
// (rtm_protocol), and the protocol of the address on lo (IFA_PROTO, Linux ≥ 6.1).
// Only what carries it is ours and is ever removed: an address, rule or route
// that merely looks like ours (a VIP on lo with nodad and noprefixroute, a rule
// at priority 2000) is someone else's.

// ifaProto is IFA_PROTO of linux/if_addr.h (x/sys does not define it yet).
const ifaProto = 11

// netItem is one piece of state we keep over netlink: the TPROXY fwmark rule,
// the local route of our table, or an address on lo.
type netItem struct {
	family Family
	line   string // in the plan's text form
	want   bool   // the plan asks for it
	exists bool   // it is there (ours, or for routes and addresses an equal one of someone else)
	ours   bool   // it is there carrying our tag (so we may remove it)
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

// ourRule is the TPROXY rule as we add and delete it: with our protocol, the
// kernel deletes only ours even when someone else has an identical rule.
func ourRule(f Family) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlinkFamily(f)
	r.Table = tproxyTable
	r.Priority = tproxyPriority
	r.Mark = tproxyMark
	mask := uint32(tproxyMark)
	r.Mask = &mask
	r.Protocol = netProtocol
	return r
}

func ourRoute(f Family, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if f == IPv6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family: netlinkFamily(f), LinkIndex: lo, Dst: dst, Table: tproxyTable,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Protocol: netProtocol,
	}
}

// isRuleKey reports whether r selects what our rule selects (priority, mark,
// mask, table), whoever made it.
func isRuleKey(r netlink.Rule) bool {
	return r.Priority == tproxyPriority && r.Table == tproxyTable && r.Mark == tproxyMark && r.Mask != nil && *r.Mask == tproxyMark
}

// isRouteKey reports whether r takes the place of our route: the kernel keys
// routes by table, destination and metric, not by device or protocol, so a
// local default route of someone else in our table is used as it is.
func isRouteKey(r netlink.Route) bool {
	return r.Type == unix.RTN_LOCAL && (r.Dst == nil || isDefault(r.Dst))
}

// loAddr is an address on lo as a raw dump shows it.
type loAddr struct {
	prefix netip.Prefix
	proto  uint8
}

// listLoAddrs dumps the addresses of family f on link lo with their IFA_PROTO,
// which netlink.AddrList does not read.
func listLoAddrs(f Family, lo int) ([]loAddr, error) {
	msgs, err := retryDump(func() ([][]byte, error) {
		req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfAddrmsg(netlinkFamily(f)))
		return req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	})
	if err != nil {
		return nil, err
	}
	var out []loAddr
	for _, m := range msgs {
		if len(m) < unix.SizeofIfAddrmsg {
			continue
		}
		msg := nl.DeserializeIfAddrmsg(m)
		if int(msg.Index) != lo || int(msg.Family) != netlinkFamily(f) {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[msg.Len():])
		if err != nil {
			return nil, err
		}
		var a loAddr
		var local, address netip.Addr
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.IFA_LOCAL:
				local, _ = netip.AddrFromSlice(at.Value)
			case unix.IFA_ADDRESS:
				address, _ = netip.AddrFromSlice(at.Value)
			case ifaProto:
				if len(at.Value) > 0 {
					a.proto = at.Value[0]
				}
			}
		}
		ip := local // IPv4 puts the address in IFA_LOCAL, IPv6 only in IFA_ADDRESS
		if !ip.IsValid() {
			ip = address
		}
		if !ip.IsValid() {
			continue
		}
		a.prefix = netip.PrefixFrom(ip.Unmap(), int(msg.Prefixlen))
		out = append(out, a)
	}
	return out, nil
}

// addLoAddr puts p on lo tagged with our protocol: IPv4 also with our label
// (visible in `ip addr`, which does not show the protocol), IPv6 with nodad so
// the proxy can bind it at once; neither gets a prefix route.
func addLoAddr(p netip.Prefix, lo int) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	fam := IPv4
	if p.Addr().Is6() {
		fam = IPv6
	}
	msg := nl.NewIfAddrmsg(netlinkFamily(fam))
	msg.Prefixlen = uint8(p.Bits())
	msg.Scope = unix.RT_SCOPE_HOST
	msg.Index = uint32(lo)
	req.AddData(msg)
	ip := p.Addr().AsSlice()
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, ip))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, ip))
	flags := uint32(unix.IFA_F_NOPREFIXROUTE)
	if fam == IPv6 {
		flags |= unix.IFA_F_NODAD
	} else {
		req.AddData(nl.NewRtAttr(unix.IFA_LABEL, nl.ZeroTerminated(addressLabel)))
	}
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, flags)
	req.AddData(nl.NewRtAttr(unix.IFA_FLAGS, b))
	req.AddData(nl.NewRtAttr(ifaProto, []byte{netProtocol}))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func delLoAddr(p netip.Prefix, lo netlink.Link) error {
	return netlink.AddrDel(lo, &netlink.Addr{
		IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
	})
}

// retryDump runs a netlink dump again when the kernel reports that it was
// interrupted by a change (its result may then be inconsistent).
func retryDump[T any](dump func() (T, error)) (T, error) {
	var out T
	var err error
	for range 5 {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
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
		fc, planned := p.Family(f)
		wantRouting := planned && fc.TProxy != nil
		rules, err := retryDump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlinkFamily(f)) })
		if err != nil {
			if !planned && errors.Is(err, unix.EAFNOSUPPORT) {
				continue // no IPv6 in this kernel: nothing of ours either
			}
			return s, fmt.Errorf("list %s ip rules: %w", f, err)
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(netlinkFamily(f), &netlink.Route{Table: tproxyTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return s, fmt.Errorf("list %s routes of table %d: %w", f, tproxyTable, err)
		}
		lines := routing.lines(f)
		ru, rt := ourRule(f), ourRoute(f, loIdx)

		// Our rule is added next to an identical one of someone else (the
		// kernel keeps both, told apart by protocol), so each owner can remove
		// its own.
		ruleOurs := slices.ContainsFunc(rules, func(r netlink.Rule) bool { return isRuleKey(r) && r.Protocol == netProtocol })
		s.items = append(s.items, &netItem{family: f, line: lines[0], want: wantRouting, exists: ruleOurs, ours: ruleOurs,
			add: func() error { return netlink.RuleAdd(ru) }, del: func() error { return netlink.RuleDel(ru) }})
		for _, r := range rules {
			if r.Protocol == netProtocol && !isRuleKey(r) {
				stray := netlink.NewRule()
				stray.Family, stray.Priority, stray.Table, stray.Mark, stray.Mask, stray.Protocol = netlinkFamily(f), r.Priority, r.Table, r.Mark, r.Mask, netProtocol
				s.items = append(s.items, &netItem{family: f, line: ruleLine(f, r), exists: true, ours: true,
					del: func() error { return netlink.RuleDel(stray) }})
			}
		}

		routeThere := slices.ContainsFunc(routes, isRouteKey)
		routeOurs := slices.ContainsFunc(routes, func(r netlink.Route) bool { return isRouteKey(r) && r.Protocol == netProtocol })
		s.items = append(s.items, &netItem{family: f, line: lines[1], want: wantRouting, exists: routeThere, ours: routeOurs,
			add: func() error { return netlink.RouteAdd(rt) }, del: func() error { return netlink.RouteDel(rt) }})
		for _, r := range routes {
			if r.Protocol == netProtocol && !isRouteKey(r) {
				stray := r
				s.items = append(s.items, &netItem{family: f, line: fmt.Sprintf("# routing: %s (table %d)", r.String(), tproxyTable), exists: true, ours: true,
					del: func() error { return netlink.RouteDel(&stray) }})
			}
		}

		addrs, err := listLoAddrs(f, loIdx)
		if err != nil {
			return s, fmt.Errorf("list %s addresses of lo: %w", f, err)
		}
		var wanted []netip.Prefix
		if a := fc.loAddress(); planned && a.IsValid() {
			wanted = []netip.Prefix{a}
		}
		for _, w := range wanted {
			it := &netItem{family: f, line: addressLine(w), want: true}
			for _, a := range addrs {
				if a.prefix == w {
					it.exists, it.ours = true, a.proto == netProtocol
				}
			}
			it.add = func() error { return addLoAddr(w, loIdx) }
			it.del = func() error { return delLoAddr(w, lo) }
			s.items = append(s.items, it)
		}
		for _, a := range addrs {
			if a.proto == netProtocol && !slices.Contains(wanted, a.prefix) {
				p := a.prefix
				s.items = append(s.items, &netItem{family: f, line: addressLine(p), exists: true, ours: true,
					del: func() error { return delLoAddr(p, lo) }})
			}
		}
	}
	return s, nil
}

// ruleLine describes a rule of ours that the plan does not know.
func ruleLine(f Family, r netlink.Rule) string {
	v := "-4"
	if f == IPv6 {
		v = "-6"
	}
	mask := uint32(0)
	if r.Mask != nil {
		mask = *r.Mask
	}
	return fmt.Sprintf("# routing: ip %s rule add fwmark %#x/%#x lookup %d priority %d protocol %d", v, r.Mark, mask, r.Table, r.Priority, netProtocol)
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// changes reports whether add or remove would change anything.
func (s netState) changes() bool {
	return slices.ContainsFunc(s.items, func(it *netItem) bool { return it.want != it.exists || (!it.want && it.ours) })
}

// drops reports whether remove would delete something of ours.
func (s netState) drops() bool {
	return slices.ContainsFunc(s.items, func(it *netItem) bool { return !it.want && it.ours })
}

// keepOurs is s with every piece of ours that is there counted as wanted:
// remove leaves it and changes does not report it.
func (s netState) keepOurs() netView {
	items := make([]*netItem, len(s.items))
	for i, it := range s.items {
		c := *it
		c.want = c.want || c.ours
		items[i] = &c
	}
	return netState{items: items}
}

// forget is s without the pieces of ours that the plan does not want: what
// check and status of one scope show when another scope uses them.
func (s netState) forget() netView {
	return netState{items: slices.DeleteFunc(slices.Clone(s.items), func(it *netItem) bool { return !it.want && it.ours })}
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
