package redirect

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/nlmsg"
)

// detour speaks the few rtnetlink requests of the TPROXY routing and the
// addresses on lo itself (dumps of rules, routes and addresses; adding and
// deleting one) with internal/nlmsg: a general client costs every start of
// detour and detour-cni its package initialization and, on the install path, a
// receive buffer on the goroutine's stack that grows the stack to 128 KiB
// (about 40 page faults of an install, docs/startup.md).

// fraProtocol is FRA_PROTOCOL of linux/fib_rules.h (x/sys does not define it).
const fraProtocol = 21

// sizeofFibRuleHdr is struct fib_rule_hdr's size; its layout is rtmsg's
// (family, dst_len, src_len, tos, table, two reserved bytes, action, flags).
const sizeofFibRuleHdr = 12

// routeConn is a NETLINK_ROUTE socket of the calling thread's namespace that
// one observe, or one change, makes every request on.
type routeConn struct{ *nlmsg.Conn }

// openRoute opens a NETLINK_ROUTE socket in the calling thread's namespace.
func openRoute() (*routeConn, error) {
	c, err := nlmsg.Open(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	return &routeConn{c}, nil
}

// loIndex is the interface index of lo in the socket's namespace.
func (c *routeConn) loIndex() (int, error) {
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(c.FD(), unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

// setLinkUp sets the link with index idx up (IFF_UP, changing no other
// flag): a no-op when it is up already.
func (c *routeConn) setLinkUp(idx int) error {
	// struct ifinfomsg: family, pad, type, index, flags, change
	b := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(b[4:], uint32(idx))
	binary.NativeEndian.PutUint32(b[8:], unix.IFF_UP)
	binary.NativeEndian.PutUint32(b[12:], unix.IFF_UP)
	return c.Change(unix.RTM_NEWLINK, 0, b)
}

// ipRule is an ip rule as a dump shows it, with the fields detour looks at.
type ipRule struct {
	family   int
	priority int // -1: none (the kernel leaves out priority 0)
	mark     uint32
	mask     uint32
	hasMask  bool
	table    int
	protocol uint8
}

// listRules dumps the ip rules of family f.
func (c *routeConn) listRules(family int) ([]ipRule, error) {
	hdr := make([]byte, sizeofFibRuleHdr)
	hdr[0] = byte(family)
	msgs, err := c.Dump(unix.RTM_GETRULE, hdr)
	if err != nil {
		return nil, err
	}
	out := make([]ipRule, 0, len(msgs))
	for _, m := range msgs {
		if len(m) < sizeofFibRuleHdr || int(m[0]) != family {
			continue
		}
		r := ipRule{family: family, priority: -1, table: int(m[4])}
		err := nlmsg.EachAttr(m[sizeofFibRuleHdr:], func(typ uint16, data []byte) {
			switch typ {
			case unix.FRA_PRIORITY:
				r.priority = int(nlmsg.U32Attr(data))
			case unix.FRA_FWMARK:
				r.mark = nlmsg.U32Attr(data)
			case unix.FRA_FWMASK:
				r.mask, r.hasMask = nlmsg.U32Attr(data), true
			case unix.FRA_TABLE:
				r.table = int(nlmsg.U32Attr(data))
			case fraProtocol:
				if len(data) > 0 {
					r.protocol = data[0]
				}
			}
		})
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// ruleRequest is the body of a request that adds (create) or deletes r: the
// kernel deletes the rule that has every attribute given, our protocol
// included, so only ours.
func ruleRequest(r ipRule, create bool) []byte {
	hdr := make([]byte, sizeofFibRuleHdr, 64)
	hdr[0] = byte(r.family)
	hdr[5] = unix.RTPROT_BOOT // the reserved byte as vishvananda/netlink, which detour used before, set it
	if create {
		hdr[7] = unix.FR_ACT_TO_TBL
	}
	a := nlmsg.Attrs(hdr)
	if r.table >= 0 && r.table < 256 {
		hdr[4] = byte(r.table)
	}
	if r.priority >= 0 {
		a = a.U32(unix.FRA_PRIORITY, uint32(r.priority))
	}
	if r.mark != 0 || r.hasMask {
		a = a.U32(unix.FRA_FWMARK, r.mark)
	}
	if r.hasMask {
		a = a.U32(unix.FRA_FWMASK, r.mask)
	}
	if r.table >= 256 {
		a = a.U32(unix.FRA_TABLE, uint32(r.table))
	}
	if r.protocol > 0 {
		a = a.Add(fraProtocol, []byte{r.protocol})
	}
	return a
}

func (c *routeConn) addRule(r ipRule) error {
	return c.Change(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ruleRequest(r, true))
}

func (c *routeConn) delRule(r ipRule) error {
	return c.Change(unix.RTM_DELRULE, 0, ruleRequest(r, false))
}

// ipRoute is a route as a dump shows it, with the fields detour looks at and
// those that tell it apart when it is deleted.
type ipRoute struct {
	family   int
	dst      netip.Prefix // invalid: none (a default route)
	src, gw  netip.Addr   // RTA_PREFSRC, RTA_GATEWAY
	tos      uint8
	table    int
	protocol uint8
	scope    uint8
	typ      uint8
	flags    uint32
	oif      int
	priority uint32
	realm    uint32
}

// listRoutes dumps the routes of family f in table.
func (c *routeConn) listRoutes(family, table int) ([]ipRoute, error) {
	hdr := make([]byte, unix.SizeofRtMsg)
	hdr[0] = byte(family)
	msgs, err := c.Dump(unix.RTM_GETROUTE, hdr)
	if err != nil {
		return nil, err
	}
	var out []ipRoute
	for _, m := range msgs {
		if len(m) < unix.SizeofRtMsg || int(m[0]) != family {
			continue
		}
		r := ipRoute{family: family, tos: m[3], table: int(m[4]), protocol: m[5], scope: m[6], typ: m[7],
			flags: binary.NativeEndian.Uint32(m[8:])}
		if r.flags&unix.RTM_F_CLONED != 0 {
			continue // a cache entry, not a route
		}
		dstLen := int(m[1])
		err := nlmsg.EachAttr(m[unix.SizeofRtMsg:], func(typ uint16, data []byte) {
			switch typ {
			case unix.RTA_DST:
				if a, ok := netip.AddrFromSlice(data); ok {
					r.dst = netip.PrefixFrom(a, dstLen)
				}
			case unix.RTA_PREFSRC:
				r.src, _ = netip.AddrFromSlice(data)
			case unix.RTA_GATEWAY:
				r.gw, _ = netip.AddrFromSlice(data)
			case unix.RTA_OIF:
				r.oif = int(nlmsg.U32Attr(data))
			case unix.RTA_PRIORITY:
				r.priority = nlmsg.U32Attr(data)
			case unix.RTA_TABLE:
				r.table = int(nlmsg.U32Attr(data))
			case unix.RTA_FLOW:
				r.realm = nlmsg.U32Attr(data)
			}
		})
		if err != nil {
			return nil, err
		}
		if r.table == table {
			out = append(out, r)
		}
	}
	return out, nil
}

// routeRequest is the body of a request that adds or deletes r; the kernel
// deletes only a route of the protocol given.
func routeRequest(r ipRoute) []byte {
	hdr := make([]byte, unix.SizeofRtMsg, 96)
	hdr[0] = byte(r.family)
	hdr[3] = r.tos
	hdr[5], hdr[6], hdr[7] = r.protocol, r.scope, r.typ
	binary.NativeEndian.PutUint32(hdr[8:], r.flags&(unix.RTNH_F_ONLINK|unix.RTNH_F_PERVASIVE))
	a := nlmsg.Attrs(hdr)
	if r.dst.IsValid() {
		hdr[1] = byte(r.dst.Bits())
		a = a.Add(unix.RTA_DST, r.dst.Addr().AsSlice())
	}
	if r.src.IsValid() {
		a = a.Add(unix.RTA_PREFSRC, r.src.AsSlice())
	}
	if r.gw.IsValid() {
		a = a.Add(unix.RTA_GATEWAY, r.gw.AsSlice())
	}
	if r.oif > 0 {
		a = a.U32(unix.RTA_OIF, uint32(r.oif))
	}
	if r.priority > 0 {
		a = a.U32(unix.RTA_PRIORITY, r.priority)
	}
	if r.realm > 0 {
		a = a.U32(unix.RTA_FLOW, r.realm)
	}
	if r.table >= 256 {
		a = a.U32(unix.RTA_TABLE, uint32(r.table))
	} else {
		hdr[4] = byte(r.table)
	}
	return a
}

func (c *routeConn) addRoute(r ipRoute) error {
	return c.Change(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, routeRequest(r))
}

func (c *routeConn) delRoute(r ipRoute) error {
	return c.Change(unix.RTM_DELROUTE, 0, routeRequest(r))
}

// String describes r as detour's status and plan print a route of ours that
// the plan does not know (the form vishvananda/netlink's Route.String had).
func (r ipRoute) String() string {
	dst, src, gw := "<nil>", "<nil>", "<nil>"
	if r.dst.IsValid() {
		dst = r.dst.String()
	}
	if r.src.IsValid() {
		src = r.src.String()
	}
	if r.gw.IsValid() {
		gw = r.gw.String()
	}
	var flags []string
	if r.flags&unix.RTNH_F_ONLINK != 0 {
		flags = append(flags, "onlink")
	}
	if r.flags&unix.RTNH_F_PERVASIVE != 0 {
		flags = append(flags, "pervasive")
	}
	return fmt.Sprintf("{Ifindex: %d Dst: %s Src: %s Gw: %s Flags: %v Table: %d Realm: %d}", r.oif, dst, src, gw, flags, r.table, r.realm)
}
