package redirect

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routingState is our TPROXY policy routing in the namespace (the fwmark rule
// and the local default route of our table) against what a plan wants. It runs
// on the calling thread, which must be inside the namespace.
type routingState struct {
	want        map[Family]bool
	rule, route map[Family]bool
	have        map[Family][]string // present items, in the plan's text form
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

func loopbackIndex() (int, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return 0, fmt.Errorf("find loopback: %w", err)
	}
	return lo.Attrs().Index, nil
}

// observeRouting reads our routing in both families; p says which families
// want it.
func observeRouting(p Plan) (routingState, error) {
	s := routingState{want: map[Family]bool{}, rule: map[Family]bool{}, route: map[Family]bool{}, have: map[Family][]string{}}
	for _, fp := range p.Families {
		s.want[fp.Family] = fp.Routing != nil
	}
	lo, err := loopbackIndex()
	if err != nil {
		return s, err
	}
	for _, f := range allFamilies {
		rules, err := netlink.RuleListFiltered(netlinkFamily(f), &netlink.Rule{Table: tproxyTable}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			if !s.want[f] && errors.Is(err, unix.EAFNOSUPPORT) {
				continue // no IPv6 in this kernel: nothing of ours either
			}
			return s, fmt.Errorf("list %s ip rules: %w", f, err)
		}
		for _, r := range rules {
			if r.Priority == tproxyPriority && r.Mark == tproxyMark && r.Mask != nil && *r.Mask == tproxyMark {
				s.rule[f] = true
			}
		}
		routes, err := netlink.RouteListFiltered(netlinkFamily(f), &netlink.Route{Table: tproxyTable}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return s, fmt.Errorf("list %s routes of table %d: %w", f, tproxyTable, err)
		}
		for _, r := range routes {
			if r.Type == unix.RTN_LOCAL && r.LinkIndex == lo && (r.Dst == nil || isDefault(r.Dst)) {
				s.route[f] = true
			}
		}
		lines := (&PolicyRouting{Mark: tproxyMark, Mask: tproxyMark, Table: tproxyTable, Priority: tproxyPriority}).lines(f)
		if s.rule[f] {
			s.have[f] = append(s.have[f], lines[0])
		}
		if s.route[f] {
			s.have[f] = append(s.have[f], lines[1])
		}
	}
	return s, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// changes reports whether add or remove would change anything.
func (s routingState) changes() bool {
	for _, f := range allFamilies {
		if s.want[f] != s.rule[f] || s.want[f] != s.route[f] {
			return true
		}
	}
	return false
}

// add creates what the wanted families miss; undo removes exactly that.
func (s routingState) add() (undo func() error, err error) {
	var done []func() error
	undo = func() error {
		var errs []error
		for i := len(done) - 1; i >= 0; i-- {
			errs = append(errs, done[i]())
		}
		return errors.Join(errs...)
	}
	lo, err := loopbackIndex()
	if err != nil {
		return undo, err
	}
	for _, f := range allFamilies {
		if !s.want[f] {
			continue
		}
		if !s.route[f] {
			rt := ourRoute(f, lo)
			if err := netlink.RouteAdd(rt); err != nil {
				return undo, errors.Join(fmt.Errorf("add %s local route to table %d: %w", f, tproxyTable, err), undo())
			}
			done = append(done, func() error { return netlink.RouteDel(rt) })
		}
		if !s.rule[f] {
			ru := ourRule(f)
			if err := netlink.RuleAdd(ru); err != nil {
				return undo, errors.Join(fmt.Errorf("add %s ip rule fwmark %#x: %w", f, tproxyMark, err), undo())
			}
			done = append(done, func() error { return netlink.RuleDel(ru) })
		}
	}
	return undo, nil
}

// remove deletes our routing from the families that do not want it.
func (s routingState) remove() error {
	lo, err := loopbackIndex()
	if err != nil {
		return err
	}
	for _, f := range allFamilies {
		if s.want[f] {
			continue
		}
		if s.rule[f] {
			if err := netlink.RuleDel(ourRule(f)); err != nil {
				return fmt.Errorf("delete %s ip rule fwmark %#x: %w", f, tproxyMark, err)
			}
		}
		if s.route[f] {
			if err := netlink.RouteDel(ourRoute(f, lo)); err != nil {
				return fmt.Errorf("delete %s local route of table %d: %w", f, tproxyTable, err)
			}
		}
	}
	return nil
}
