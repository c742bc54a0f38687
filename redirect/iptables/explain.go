package iptables

import (
	"fmt"
	"net/netip"

	"github.com/detour-mesh/detour/internal/xtables"
	"github.com/detour-mesh/detour/redirect"
)

// explainSave is the iptables backends' answer to `detour explain`: it follows
// the connection through one family's whole iptables-save output (raw, mangle
// and nat; detour's rules and every other tool's) with internal/xtables, and
// quotes the rule that decides. Pure.
func explainSave(b redirect.Backend, save string, c redirect.Conn) (redirect.KernelVerdict, error) {
	kv := redirect.KernelVerdict{Backend: b}
	rs, err := xtables.Parse(save)
	if err != nil {
		return kv, fmt.Errorf("read %s rules: %w", b, err)
	}
	res := rs.Evaluate(packetOf(c))
	for _, st := range res.Trace {
		line := "-t " + st.Table + " " + st.Rule
		if st.Rule == "end of chain" || st.Rule == "skipped" || st.Note != "" {
			line = fmt.Sprintf("-t %s %s: %s", st.Table, st.Chain, st.Rule)
			if st.Note != "" {
				line += " (" + st.Note + ")"
			}
		}
		kv.Path = append(kv.Path, line)
	}
	if res.Decider != nil {
		kv.Rule = "-t " + res.Decider.Table + " " + res.Decider.Text
		kv.Foreign = !ownsChain(res.Decider.Table, res.Decider.Chain) && !hasOwnerComment(res.Decider.Text)
		// The path leads up to the rule; the rule itself is not repeated.
		if n := len(kv.Path); n > 0 && kv.Path[n-1] == kv.Rule {
			kv.Path = kv.Path[:n-1]
		}
	}
	switch res.Outcome {
	case xtables.Redirected:
		kv.Captured, kv.Port, kv.Action = true, res.Port, "redirect"
	case xtables.TProxied:
		kv.Captured, kv.Port, kv.Action = true, res.Port, "tproxy"
	case xtables.DNATed:
		kv.Action = "dnat"
	case xtables.Dropped:
		kv.Action = "drop"
	case xtables.Unknown:
		kv.Uncertain = res.Unknown
	default:
		if res.Decider != nil {
			switch res.Decider.Target {
			case "RETURN":
				kv.Action = "return"
			case "ACCEPT":
				kv.Action = "accept"
			default:
				kv.Action = "jump" // a chain that let it through
			}
		}
	}
	return kv, nil
}

// packetOf is the first packet of c as the iptables rules see it.
func packetOf(c redirect.Conn) xtables.Packet {
	dst, src := c.Dst.Unmap().WithZone(""), c.Src.Unmap().WithZone("")
	p := xtables.Packet{Proto: string(c.Protocol), Src: src, Dst: dst, DPort: c.Port}
	if c.Direction == redirect.DirInbound {
		p.Hook = xtables.Prerouting
		// Without a destination the connection is taken to be to the workload.
		p.DstLocal = c.ToSelf || !dst.IsValid()
		return p
	}
	p.Hook = xtables.Output
	uid, gid := c.UID, c.GID
	p.UID, p.GID = &uid, &gid
	if dst.IsUnspecified() {
		// connect() to the unspecified address dials loopback: IPv6 ::1; IPv4
		// the bound source address, else 127.0.0.1. The rules see that.
		switch {
		case dst.Is6():
			p.Dst = netip.IPv6Loopback()
		case src.IsValid():
			p.Dst = src
		default:
			p.Dst = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	if p.Dst.IsLoopback() || c.ToSelf || dst.IsUnspecified() {
		p.Out, p.DstLocal = xtables.Loopback, true
		if !p.Src.IsValid() && p.Dst.IsLoopback() {
			p.Src = p.Dst // over lo the kernel picks the destination's own address
		}
	}
	return p
}

// familyOfConn is the family whose rules see c.
func familyOfConn(c redirect.Conn) redirect.Family {
	a := c.Dst
	if !a.IsValid() {
		a = c.Src
	}
	if a.Unmap().Is4() {
		return redirect.IPv4
	}
	return redirect.IPv6
}
