//go:build linux

package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// parseRule reads a rule's text back into statements. It knows exactly the
// statements Render writes; the text it reads is one whose expressions were
// verified against their fingerprint, so the statements are what the kernel
// holds.
func parseRule(text string, fam redirect.Family) (Rule, error) {
	toks, err := tokens(text)
	if err != nil {
		return Rule{}, err
	}
	r := Rule{Family: fam}
	for len(toks) > 0 {
		s, n, err := parseStmt(toks)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", text, err)
		}
		if ns, ok := s.(nfprotoStmt); ok {
			r.Family = ns.fam
		}
		r.stmts = append(r.stmts, s)
		toks = toks[n:]
	}
	return r, nil
}

// tokens splits on spaces, keeping double-quoted strings (Go syntax) whole.
func tokens(s string) ([]string, error) {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '"' {
			// An nft string: up to the next double quote, no escapes.
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("unterminated string in %q", s)
			}
			out = append(out, s[:end+2])
			s = s[end+2:]
			continue
		}
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			i = len(s)
		}
		out = append(out, s[:i])
		s = s[i:]
	}
	return out, nil
}

func at(t []string, i int) string {
	if i < len(t) {
		return t[i]
	}
	return ""
}

func parseStmt(t []string) (stmt, int, error) {
	num := func(s string) (uint64, error) { return strconv.ParseUint(s, 0, 32) }
	switch t[0] {
	case "return", "accept", "drop":
		return verdict{kind: t[0]}, 1, nil
	case "jump":
		return verdict{kind: "jump", chain: at(t, 1)}, 2, nil
	case "oifname", "iifname":
		name, err := nftUnquote(at(t, 1))
		return ifname{dir: t[0], name: name}, 2, err
	case "fib":
		return fibLocal{}, 4, nil
	case "socket":
		return socketTransparent{}, 3, nil
	case "limit":
		return limit{}, 6, nil
	case "log":
		if at(t, 1) == "prefix" {
			p, err := nftUnquote(at(t, 2))
			return logStmt{prefix: p}, 3, err
		}
		return logStmt{}, 1, nil
	case "redirect":
		p, err := strconv.ParseUint(strings.TrimPrefix(at(t, 2), ":"), 10, 16)
		return redirectTo{port: uint16(p)}, 3, err
	case "tproxy":
		p, err := strconv.ParseUint(strings.TrimPrefix(at(t, 3), ":"), 10, 16)
		return tproxyTo{fam: wordFam(at(t, 1)), port: uint16(p)}, 4, err
	case "ct":
		switch {
		case at(t, 1) == "state":
			var bits uint32
			for _, n := range strings.Split(at(t, 2), ",") {
				bits |= map[string]uint32{"invalid": ctInvalid, "established": ctEstablished, "related": ctRelated, "new": ctNew}[n]
			}
			return ctState{bits: bits}, 3, nil
		case at(t, 1) == "mark" && at(t, 2) == "&":
			v, err := num(at(t, 3))
			return markMatch{ct: true, bits: uint32(v)}, 6, err
		case at(t, 1) == "mark":
			v, err := num(at(t, 6))
			return ctMarkOr{bits: uint32(v)}, 7, err
		case at(t, 1) == "original":
			z, err := strconv.ParseUint(at(t, 4), 10, 16)
			return ctZone{zone: uint16(z), original: true}, 5, err
		}
		z, err := strconv.ParseUint(at(t, 3), 10, 16)
		return ctZone{zone: uint16(z)}, 4, err
	case "meta":
		switch at(t, 1) {
		case "l4proto":
			return l4(map[string]uint8{"tcp": tcp, "udp": udp}[at(t, 2)]), 3, nil
		case "nfproto":
			return nfproto(redirect.Family(at(t, 2))), 3, nil
		case "mark":
			if at(t, 2) == "&" {
				v, err := num(at(t, 3))
				return markMatch{bits: uint32(v)}, 6, err
			}
			v, err := num(at(t, 6))
			return markOr{bits: uint32(v)}, 7, err
		case "skuid", "skgid":
			if set, ok := strings.CutPrefix(at(t, 2), "@"); ok {
				return metaLookup{key: t[1], set: set}, 3, nil
			}
			v, err := num(at(t, 2))
			return metaCmp{key: t[1], val: uint32(v)}, 3, err
		}
	case "ip", "ip6":
		fam, field := wordFam(t[0]), at(t, 1)
		i, neq := 2, false
		if at(t, 2) == "!=" {
			i, neq = 3, true
		}
		if set, ok := strings.CutPrefix(at(t, i), "@"); ok {
			return addrLookup{field: field, fam: fam, neq: neq, set: set}, i + 1, nil
		}
		p, err := netip.ParsePrefix(at(t, i))
		if err != nil {
			a, aerr := netip.ParseAddr(at(t, i))
			if aerr != nil {
				return nil, 0, err
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		return addrCmp{field: field, fam: fam, neq: neq, prefix: p}, i + 1, nil
	case "tcp", "udp":
		if t[0] == "tcp" && at(t, 1) == "flags" {
			if want := strings.Fields(tcpNotSyn{}.text()); !slices.Equal(t[:min(len(t), len(want))], want) {
				return nil, 0, fmt.Errorf("unknown statement at %q", strings.Join(t, " "))
			}
			return tcpNotSyn{}, len(strings.Fields(tcpNotSyn{}.text())), nil
		}
		proto := map[string]uint8{"tcp": tcp, "udp": udp}[t[0]]
		field := at(t, 1)
		i, neq := 2, false
		if at(t, 2) == "!=" {
			i, neq = 3, true
		}
		if set, ok := strings.CutPrefix(at(t, i), "@"); ok {
			return portLookup{proto: proto, field: field, neq: neq, set: set}, i + 1, nil
		}
		p, err := strconv.ParseUint(at(t, i), 10, 16)
		return portCmp{proto: proto, field: field, port: uint16(p)}, i + 1, err
	}
	return nil, 0, fmt.Errorf("unknown statement at %q", strings.Join(t, " "))
}

func wordFam(w string) redirect.Family {
	if w == "ip6" {
		return redirect.IPv6
	}
	return redirect.IPv4
}

// nftUnquote is the text of an nft string (nftQuote).
func nftUnquote(q string) (string, error) {
	if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
		return "", fmt.Errorf("%q is not an nft string", q)
	}
	return q[1 : len(q)-1], nil
}
