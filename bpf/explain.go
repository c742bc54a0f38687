package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/detour-mesh/detour/redirect"
)

// kernelVerdict is what the programs do with one connection given one
// scope's entries: the same checks in the same order as detour.c, with the
// map entry (in Lines' text form) that decided.
type kernelVerdict struct {
	captured bool
	port     uint16
	rule     string   // the deciding entry; "" for a built-in rule
	why      string   // the built-in rule, when rule is ""
	path     []string // entries consulted before rule
}

// accelNote is what explain adds to a captured TCP connection of a scope
// with socket acceleration on.
const accelNote = "accelerated: sk_msg passes its bytes between app and proxy socket to socket"

// explain mirrors redirect4/redirect6 of detour.c over e (config id id),
// and says whether the sockops program accelerates the connection.
func (e entries) explain(c redirect.Conn) kernelVerdict {
	v := e.decide(c)
	if v.captured && c.Protocol == redirect.TCP && e.cfg.Flags&flagAccel != 0 {
		if v.why == "" {
			v.why = accelNote
		} else {
			v.why += "; " + accelNote
		}
	}
	return v
}

func (e entries) decide(c redirect.Conn) kernelVerdict {
	dst := c.Dst.WithZone("")
	v4 := dst.Unmap().Is4()
	cfgLine := e.lines()[0]
	switch c.Protocol {
	case redirect.TCP:
		flag := flagOut6
		if v4 {
			flag = flagOut4
		}
		if e.cfg.Flags&flag == 0 {
			return kernelVerdict{rule: cfgLine, why: "outbound capture of this family is off"}
		}
		d := dst.Unmap()
		if !d.IsValid() || d.IsLoopback() || d.IsUnspecified() {
			return kernelVerdict{why: "loopback and unspecified destinations are never redirected"}
		}
		if v := e.owner(c.UID, c.GID, c.Port, cfgLine, false); v != nil {
			return *v
		}
		var listed string
		if v4 {
			listed = e.cidr4(d)
		} else {
			listed = e.cidr6(d)
		}
		include := e.cfg.Flags&flagIncludeCIDRs6 != 0
		if v4 {
			include = e.cfg.Flags&flagIncludeCIDRs4 != 0
		}
		switch {
		case include && listed == "":
			return kernelVerdict{rule: cfgLine, why: "include CIDRs do not contain the destination"}
		case !include && listed != "":
			return kernelVerdict{rule: listed}
		}
		path := []string{}
		if listed != "" {
			path = append(path, listed)
		}
		port := e.port(setOutPorts, c.Port)
		if e.cfg.Flags&flagIncludePorts != 0 {
			if port == "" {
				return kernelVerdict{rule: cfgLine, why: "include ports do not contain the port", path: path}
			}
			return kernelVerdict{captured: true, port: e.cfg.OutPort, rule: port, path: path}
		}
		if port != "" {
			return kernelVerdict{rule: port, path: path}
		}
		return kernelVerdict{captured: true, port: e.cfg.OutPort, rule: cfgLine, path: path}
	case redirect.UDP:
		if c.Port != 53 {
			return kernelVerdict{why: "only UDP to port 53 is redirected"}
		}
		flag := flagDNS6
		if v4 {
			flag = flagDNS4
		}
		if e.cfg.Flags&flag == 0 {
			return kernelVerdict{rule: cfgLine, why: "DNS of this family is not captured"}
		}
		if v := e.owner(c.UID, c.GID, c.Port, cfgLine, true); v != nil {
			return *v
		}
		if e.cfg.Flags&flagDNSAll != 0 {
			return kernelVerdict{captured: true, port: e.cfg.DnsPort, rule: cfgLine}
		}
		k := detourDnsKey{Addr: addr16(dst.Unmap())}
		for dk := range e.dns {
			if dk.Addr == k.Addr {
				return kernelVerdict{captured: true, port: e.cfg.DnsPort, rule: "dns_servers " + dst.Unmap().String()}
			}
		}
		return kernelVerdict{rule: cfgLine, why: "not a listed nameserver"}
	}
	return kernelVerdict{why: fmt.Sprintf("protocol %s is never redirected", c.Protocol)}
}

// owner is exempt_owner (and, for DNS, its owner checks) of detour.c.
func (e entries) owner(uid, gid uint32, port uint16, cfgLine string, dns bool) *kernelVerdict {
	if uid == e.cfg.ProxyUid || (e.cfg.Flags&flagProxyGID != 0 && gid == e.cfg.ProxyGid) {
		return &kernelVerdict{rule: cfgLine, why: "the proxy's own traffic"}
	}
	if r := e.id(setExemptUIDs, uid); r != "" {
		return &kernelVerdict{rule: r}
	}
	if r := e.id(setExemptGIDs, gid); r != "" {
		return &kernelVerdict{rule: r}
	}
	if dns {
		if r := e.id(setDNSExemptUIDs, uid); r != "" {
			return &kernelVerdict{rule: r}
		}
		return nil
	}
	um, ul := e.longestID(setRuleUIDs, uid)
	pm, pl := e.longestPort(setRulePorts, port)
	if um&pm != 0 {
		return &kernelVerdict{rule: ul, path: []string{pl}}
	}
	return nil
}

func (e entries) id(set, v uint32) string {
	_, l := e.longestID(set, v)
	return l
}

func (e entries) longestID(set, v uint32) (uint64, string) {
	best, bits, line := uint64(0), -1, ""
	for k, m := range e.ids {
		b := block{first: be32(k.Id), bits: int(k.Prefixlen) - 64, width: 32}
		if k.Set == set && b.first <= v && v <= b.last() && b.bits > bits {
			best, bits, line = m, b.bits, fmt.Sprintf("ids %s %s", idSetName(set), b)
			if set == setRuleUIDs {
				line += fmt.Sprintf(" rules=%#x", m)
			}
		}
	}
	return best, line
}

func (e entries) port(set uint16, p uint16) string {
	_, l := e.longestPort(set, p)
	return l
}

func (e entries) longestPort(set uint16, p uint16) (uint64, string) {
	best, bits, line := uint64(0), -1, ""
	for k, m := range e.ports {
		b := block{first: uint32(be16(k.Port)), bits: int(k.Prefixlen) - 48, width: 16}
		if k.Set == set && b.first <= uint32(p) && uint32(p) <= b.last() && b.bits > bits {
			best, bits, line = m, b.bits, fmt.Sprintf("ports %s %s", portSetName(set), b)
			if set == setRulePorts {
				line += fmt.Sprintf(" rules=%#x", m)
			}
		}
	}
	return best, line
}

func (e entries) cidr4(a netip.Addr) string {
	best := netip.Prefix{}
	for k := range e.cidrs4 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], k.Addr)
		p := netip.PrefixFrom(netip.AddrFrom4(b), int(k.Prefixlen)-32)
		if p.Contains(a) && p.Bits() > best.Bits() {
			best = p
		}
	}
	if !best.IsValid() {
		return ""
	}
	return "cidrs4 " + best.String()
}

func (e entries) cidr6(a netip.Addr) string {
	best := netip.Prefix{}
	for k := range e.cidrs6 {
		p := netip.PrefixFrom(fromAddr16(k.Addr), int(k.Prefixlen)-32)
		if p.Contains(a) && p.Bits() > best.Bits() {
			best = p
		}
	}
	if !best.IsValid() {
		return ""
	}
	return "cidrs6 " + best.String()
}
