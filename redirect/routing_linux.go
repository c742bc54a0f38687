package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/nlmsg"
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
	loUp   bool   // a route on lo, added in a pod sandbox (Facts.LoByRuntime): set lo up first
	add    func(c *routeConn) error
	del    func(c *routeConn) error
}

// netState is every netItem of the namespace against what a plan wants. It
// runs on the calling thread, which must be inside the namespace.
type netState struct {
	items []*netItem
	lo    int // the index of lo
}

func netlinkFamily(f Family) int {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// ourRule is the TPROXY rule as we add and delete it: with our protocol, the
// kernel deletes only ours even when someone else has an identical rule.
func ourRule(f Family) ipRule {
	return ipRule{family: netlinkFamily(f), table: tproxyTable, priority: tproxyPriority,
		mark: tproxyMark, mask: tproxyMark, hasMask: true, protocol: netProtocol}
}

// passthroughRoute is the route in table local that makes the passthrough
// source a (not on any interface) local: the app's replies to it are
// delivered to the proxy's socket.
func passthroughRoute(a netip.Prefix, lo int) ipRoute {
	f := IPv4
	if a.Addr().Is6() {
		f = IPv6
	}
	return ipRoute{family: netlinkFamily(f), oif: lo, dst: a, table: unix.RT_TABLE_LOCAL,
		typ: unix.RTN_LOCAL, scope: unix.RT_SCOPE_HOST, protocol: netProtocol}
}

func ourRoute(f Family, lo int) ipRoute {
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if f == IPv6 {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return ipRoute{family: netlinkFamily(f), oif: lo, dst: dst, table: tproxyTable,
		typ: unix.RTN_LOCAL, scope: unix.RT_SCOPE_HOST, protocol: netProtocol}
}

// isRuleKey reports whether r selects what our rule selects (priority, mark,
// mask, table), whoever made it.
func isRuleKey(r ipRule) bool {
	return r.priority == tproxyPriority && r.table == tproxyTable && r.mark == tproxyMark && r.hasMask && r.mask == tproxyMark
}

// isRouteKey reports whether r takes the place of our route: the kernel keys
// routes by table, destination and metric, not by device or protocol, so a
// local default route of someone else in our table is used as it is.
func isRouteKey(r ipRoute) bool {
	return r.typ == unix.RTN_LOCAL && (!r.dst.IsValid() || r.dst.Bits() == 0)
}

// loAddr is an address on lo as a raw dump shows it.
type loAddr struct {
	prefix netip.Prefix
	proto  uint8
}

// listLoAddrs dumps the addresses of family f on link lo with their IFA_PROTO.
func listLoAddrs(c *routeConn, f Family, lo int) ([]loAddr, error) {
	hdr := make([]byte, unix.SizeofIfAddrmsg)
	hdr[0] = byte(netlinkFamily(f))
	msgs, err := retryDump(func() ([][]byte, error) { return c.Dump(unix.RTM_GETADDR, hdr) })
	if err != nil {
		return nil, err
	}
	var out []loAddr
	for _, m := range msgs {
		if len(m) < unix.SizeofIfAddrmsg {
			continue
		}
		// struct ifaddrmsg: family, prefixlen, flags, scope, index
		if int(binary.NativeEndian.Uint32(m[4:])) != lo || int(m[0]) != netlinkFamily(f) {
			continue
		}
		var a loAddr
		var local, address netip.Addr
		err := nlmsg.EachAttr(m[unix.SizeofIfAddrmsg:], func(typ uint16, data []byte) {
			switch typ {
			case unix.IFA_LOCAL:
				local, _ = netip.AddrFromSlice(data)
			case unix.IFA_ADDRESS:
				address, _ = netip.AddrFromSlice(data)
			case ifaProto:
				if len(data) > 0 {
					a.proto = data[0]
				}
			}
		})
		if err != nil {
			return nil, err
		}
		ip := local // IPv4 puts the address in IFA_LOCAL, IPv6 only in IFA_ADDRESS
		if !ip.IsValid() {
			ip = address
		}
		if !ip.IsValid() {
			continue
		}
		a.prefix = netip.PrefixFrom(ip.Unmap(), int(m[1]))
		out = append(out, a)
	}
	return out, nil
}

// loAddrRequest is the body of a request about address p on lo: its
// ifaddrmsg, IFA_LOCAL and IFA_ADDRESS.
func loAddrRequest(p netip.Prefix, lo int) nlmsg.Attrs {
	fam := IPv4
	if p.Addr().Is6() {
		fam = IPv6
	}
	hdr := make([]byte, unix.SizeofIfAddrmsg, 96)
	hdr[0] = byte(netlinkFamily(fam))
	hdr[1] = byte(p.Bits())
	binary.NativeEndian.PutUint32(hdr[4:], uint32(lo))
	ip := p.Addr().AsSlice()
	return nlmsg.Attrs(hdr).Add(unix.IFA_LOCAL, ip).Add(unix.IFA_ADDRESS, ip)
}

// addLoAddr puts p on lo tagged with our protocol: IPv4 also with our label
// (visible in `ip addr`, which does not show the protocol), IPv6 with nodad so
// the proxy can bind it at once; neither gets a prefix route.
func addLoAddr(c *routeConn, p netip.Prefix, lo int) error {
	a := loAddrRequest(p, lo)
	a[3] = unix.RT_SCOPE_HOST
	flags := uint32(unix.IFA_F_NOPREFIXROUTE)
	if p.Addr().Is6() {
		flags |= unix.IFA_F_NODAD
	} else {
		a = a.Add(unix.IFA_LABEL, append([]byte(addressLabel), 0))
	}
	a = a.U32(unix.IFA_FLAGS, flags)
	a = a.Add(ifaProto, []byte{netProtocol})
	return c.Change(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, a)
}

func delLoAddr(c *routeConn, p netip.Prefix, lo int) error {
	return c.Change(unix.RTM_DELADDR, 0, loAddrRequest(p, lo))
}

// retryDump runs a netlink dump again when the kernel reports that it was
// interrupted by a change (its result may then be inconsistent).
func retryDump[T any](dump func() (T, error)) (T, error) {
	var out T
	var err error
	for range 5 {
		out, err = dump()
		if !errors.Is(err, nlmsg.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// observeNet reads our rule, route and addresses in both families; p says
// which it wants.
func observeNet(p Plan) (netState, error) {
	var s netState
	c, err := openRoute()
	if err != nil {
		return s, err
	}
	defer c.Close()
	lo, err := c.loIndex()
	if err != nil {
		return s, fmt.Errorf("find loopback: %w", err)
	}
	s.lo = lo
	routing := &PolicyRouting{Mark: tproxyMark, Mask: tproxyMark, Table: tproxyTable, Priority: tproxyPriority}
	for _, f := range allFamilies {
		fc, planned := p.Family(f)
		wantRouting := planned && fc.TProxy != nil
		rules, err := retryDump(func() ([]ipRule, error) { return c.listRules(netlinkFamily(f)) })
		if err != nil {
			if !planned && errors.Is(err, unix.EAFNOSUPPORT) {
				continue // no IPv6 in this kernel: nothing of ours either
			}
			return s, fmt.Errorf("list %s ip rules: %w", f, err)
		}
		routes, err := retryDump(func() ([]ipRoute, error) { return c.listRoutes(netlinkFamily(f), tproxyTable) })
		if err != nil {
			return s, fmt.Errorf("list %s routes of table %d: %w", f, tproxyTable, err)
		}
		lines := routing.lines(f)
		ru, rt := ourRule(f), ourRoute(f, lo)

		// Our rule is added next to an identical one of someone else (the
		// kernel keeps both, told apart by protocol), so each owner can remove
		// its own.
		ruleOurs := slices.ContainsFunc(rules, func(r ipRule) bool { return isRuleKey(r) && r.protocol == netProtocol })
		s.items = append(s.items, &netItem{family: f, line: lines[0], want: wantRouting, exists: ruleOurs, ours: ruleOurs,
			add: func(c *routeConn) error { return c.addRule(ru) }, del: func(c *routeConn) error { return c.delRule(ru) }})
		for _, r := range rules {
			if r.protocol == netProtocol && !isRuleKey(r) {
				stray := r
				s.items = append(s.items, &netItem{family: f, line: ruleLine(f, r), exists: true, ours: true,
					del: func(c *routeConn) error { return c.delRule(stray) }})
			}
		}

		routeThere := slices.ContainsFunc(routes, isRouteKey)
		routeOurs := slices.ContainsFunc(routes, func(r ipRoute) bool { return isRouteKey(r) && r.protocol == netProtocol })
		s.items = append(s.items, &netItem{family: f, line: lines[1], want: wantRouting, exists: routeThere, ours: routeOurs, loUp: p.Facts.LoByRuntime,
			add: func(c *routeConn) error { return c.addRoute(rt) }, del: func(c *routeConn) error { return c.delRoute(rt) }})
		for _, r := range routes {
			if r.protocol == netProtocol && !isRouteKey(r) {
				stray := r
				s.items = append(s.items, &netItem{family: f, line: fmt.Sprintf("# routing: %s (table %d)", r.String(), tproxyTable), exists: true, ours: true,
					del: func(c *routeConn) error { return c.delRoute(stray) }})
			}
		}

		// The passthrough source made local by a route (Facts.LoByRuntime).
		// Only a route of ours counts: the kernel's local route of an
		// address ::6 (an older detour-cni's, which goes below) has another
		// metric, so ours is added beside it before the address goes.
		locals, err := retryDump(func() ([]ipRoute, error) { return c.listRoutes(netlinkFamily(f), unix.RT_TABLE_LOCAL) })
		if err != nil {
			return s, fmt.Errorf("list %s routes of table local: %w", f, err)
		}
		var wantedLocal netip.Prefix
		if a := fc.loRoute(); planned && a.IsValid() {
			wantedLocal = a
			pr := passthroughRoute(wantedLocal, lo)
			it := &netItem{family: f, line: passthroughRouteLine(wantedLocal), want: true, loUp: p.Facts.LoByRuntime,
				add: func(c *routeConn) error { return c.addRoute(pr) }, del: func(c *routeConn) error { return c.delRoute(pr) }}
			it.exists = slices.ContainsFunc(locals, func(r ipRoute) bool { return r.protocol == netProtocol && r.dst == wantedLocal })
			it.ours = it.exists
			s.items = append(s.items, it)
		}
		// A plan that wants the address (the CLI's: detour check --netns of a
		// pod detour-cni added with the route) takes our route to the same
		// source as its installed form, unless the address is there too.
		var wantedAddr netip.Prefix
		if a := fc.loAddress(); planned && a.IsValid() {
			wantedAddr = a
		}
		var routeForm *ipRoute
		for _, r := range locals {
			if r.protocol == netProtocol && r.dst != wantedLocal {
				if wantedAddr.IsValid() && r.dst == wantedAddr && routeForm == nil {
					routeForm = &r
					continue
				}
				stray := r
				line := "# routing: ip route add local <nil> dev lo table local"
				if r.dst.IsValid() {
					line = passthroughRouteLine(r.dst)
				}
				s.items = append(s.items, &netItem{family: f, line: line, exists: true, ours: true,
					del: func(c *routeConn) error { return c.delRoute(stray) }})
			}
		}

		addrs, err := listLoAddrs(c, f, lo)
		if err != nil {
			return s, fmt.Errorf("list %s addresses of lo: %w", f, err)
		}
		var wanted []netip.Prefix
		if wantedAddr.IsValid() {
			wanted = []netip.Prefix{wantedAddr}
		}
		for _, w := range wanted {
			it := &netItem{family: f, line: addressLine(w), want: true}
			for _, a := range addrs {
				if a.prefix == w {
					it.exists, it.ours = true, a.proto == netProtocol
				}
			}
			it.add = func(c *routeConn) error { return addLoAddr(c, w, lo) }
			it.del = func(c *routeConn) error { return delLoAddr(c, w, lo) }
			if routeForm != nil {
				form := *routeForm
				if it.exists {
					// Both forms: the address stays, the route is extra.
					s.items = append(s.items, &netItem{family: f, line: passthroughRouteLine(form.dst), exists: true, ours: true,
						del: func(c *routeConn) error { return c.delRoute(form) }})
				} else {
					it.exists, it.ours = true, true
					it.del = func(c *routeConn) error { return c.delRoute(form) }
				}
			}
			s.items = append(s.items, it)
		}
		for _, a := range addrs {
			if a.proto == netProtocol && !slices.Contains(wanted, a.prefix) {
				p := a.prefix
				s.items = append(s.items, &netItem{family: f, line: addressLine(p), exists: true, ours: true,
					del: func(c *routeConn) error { return delLoAddr(c, p, lo) }})
			}
		}
	}
	return s, nil
}

// ruleLine describes a rule of ours that the plan does not know.
func ruleLine(f Family, r ipRule) string {
	v := "-4"
	if f == IPv6 {
		v = "-6"
	}
	return fmt.Sprintf("# routing: ip %s rule add fwmark %#x/%#x lookup %d priority %d protocol %d", v, r.mark, r.mask, r.table, r.priority, netProtocol)
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
	return netState{items: items, lo: s.lo}
}

// forget is s without the pieces of ours that the plan does not want: what
// check and status of one scope show when another scope uses them.
func (s netState) forget() netView {
	return netState{items: slices.DeleteFunc(slices.Clone(s.items), func(it *netItem) bool { return !it.want && it.ours }), lo: s.lo}
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
		if len(done) == 0 {
			return nil
		}
		c, err := openRoute()
		if err != nil {
			return err
		}
		defer c.Close()
		var errs []error
		for i := len(done) - 1; i >= 0; i-- {
			errs = append(errs, done[i].del(c))
		}
		return errors.Join(errs...)
	}
	var c *routeConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	up := false // lo was set up (or found up) by this call
	for _, it := range s.items {
		if !it.want || it.exists {
			continue
		}
		if c == nil {
			if c, err = openRoute(); err != nil {
				return undo, err
			}
		}
		if it.loUp && !up {
			// The kernel refuses an IPv6 route on a device that is down, and
			// in a pod sandbox detour-cni may come before the runtime's
			// loopback network, which sets lo up: do what it does. lo is not
			// ours, so nothing sets it down again. Outside a pod sandbox
			// (detour install on a VM or a named namespace) lo is left as it
			// is: whoever made the namespace owns it.
			if err := c.setLinkUp(s.lo); err != nil {
				return undo, errors.Join(fmt.Errorf("set lo up: %w", err), undo())
			}
			up = true
		}
		if err := it.add(c); err != nil {
			return undo, errors.Join(fmt.Errorf("%s: %w", it.line[2:], err), undo())
		}
		done = append(done, it)
	}
	return undo, nil
}

// remove deletes what is ours and not wanted.
func (s netState) remove() (err error) {
	var c *routeConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for _, it := range s.items {
		if it.want || !it.ours {
			continue
		}
		if c == nil {
			if c, err = openRoute(); err != nil {
				return err
			}
		}
		if err := it.del(c); err != nil {
			return fmt.Errorf("undo %s: %w", it.line[2:], err)
		}
	}
	return nil
}
