//go:build linux

package nftables

import (
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// view is a table in text form: what Render plans and what observation reads
// back are both turned into one, and compared line by line.
type view struct {
	table  string // "" = TableName
	sets   []viewSet
	chains []viewChain
}

type viewSet struct {
	fam   redirect.Family
	lines []string
}

type viewChain struct {
	fam   redirect.Family // "" for base chains
	name  string
	decl  string
	rules []viewRule
}

type viewRule struct {
	fam  redirect.Family
	text string
}

func (rs *Ruleset) view() view {
	v := view{table: rs.name()}
	for _, s := range rs.Sets {
		v.sets = append(v.sets, viewSet{fam: s.Family, lines: s.lines(v.table)})
	}
	for _, ch := range rs.Chains {
		vc := viewChain{fam: ch.Family, name: ch.Name, decl: ch.decl(v.table)}
		for _, r := range ch.Rules {
			vc.rules = append(vc.rules, viewRule{fam: r.Family, text: r.Text()})
		}
		v.chains = append(v.chains, vc)
	}
	return v
}

// lines is the view as `nft -f` commands; with f set, only f's share.
func (v view) lines(f redirect.Family) []string {
	if len(v.sets) == 0 && len(v.chains) == 0 {
		return nil
	}
	if f != "" && !v.has(f) {
		// The table and its base chains are shared by both families: a
		// family with no chain, set or dispatch rule of its own is not
		// captured, and has no share (or an IPv4-only install would show
		// as IPv6 drift).
		return nil
	}
	table := v.table
	if table == "" {
		table = TableName
	}
	out := []string{"add table inet " + table}
	for _, s := range v.sets {
		if f == "" || s.fam == f {
			out = append(out, s.lines...)
		}
	}
	for _, ch := range v.chains {
		if f == "" || ch.fam == "" || ch.fam == f {
			out = append(out, ch.decl)
		}
	}
	for _, ch := range v.chains {
		if f != "" && ch.fam != "" && ch.fam != f {
			continue
		}
		for _, r := range ch.rules {
			if f == "" || r.fam == "" || r.fam == f {
				out = append(out, "add rule inet "+table+" "+ch.name+" "+r.text)
			}
		}
	}
	return out
}

// has reports whether anything of the table belongs to family f alone.
func (v view) has(f redirect.Family) bool {
	for _, s := range v.sets {
		if s.fam == f {
			return true
		}
	}
	for _, ch := range v.chains {
		if ch.fam == f {
			return true
		}
		for _, r := range ch.rules {
			if r.fam == f {
				return true
			}
		}
	}
	return false
}

// familyOfName reads the family from a chain's or set's name suffix.
func familyOfName(name string) redirect.Family {
	switch {
	case strings.HasSuffix(name, "4"):
		return redirect.IPv4
	case strings.HasSuffix(name, "6"):
		return redirect.IPv6
	}
	return ""
}

// familyOfRule reads the family of a base chain's dispatch rule.
func familyOfRule(text string) redirect.Family {
	switch {
	case strings.HasPrefix(text, "meta nfproto ipv4"):
		return redirect.IPv4
	case strings.HasPrefix(text, "meta nfproto ipv6"):
		return redirect.IPv6
	}
	return ""
}
