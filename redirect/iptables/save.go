package iptables

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// This file is the pure half of the iptables backend: reading iptables-save
// output, telling what in it is ours, and writing the iptables-restore
// --noflush input that turns one state of ours into another. It runs nothing.

// saveChain is one chain of iptables-save output.
type saveChain struct {
	name   string
	policy string // "ACCEPT"/"DROP" for built-in chains, "-" for user chains
	rules  []string
}

// saveTable is one table of iptables-save output, chains in save order.
type saveTable struct {
	name   string
	chains []*saveChain
}

// parseSave reads iptables-save output. Comment lines (the header, the date,
// iptables-nft's warnings) are skipped; a table iptables-nft cannot show is an
// error, because we could not see what it holds.
func parseSave(out string) ([]*saveTable, error) {
	var tables []*saveTable
	var cur *saveTable
	find := func(name string) *saveChain {
		for _, c := range cur.chains {
			if c.name == name {
				return c
			}
		}
		return nil
	}
	for i, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, " \r")
		switch {
		case line == "":
		case strings.HasPrefix(line, "#"):
			if strings.Contains(line, "is incompatible") {
				return nil, fmt.Errorf("iptables-save line %d: %s: the table holds rules iptables cannot show", i+1, strings.TrimLeft(line, "# "))
			}
		case strings.HasPrefix(line, "*"):
			cur = &saveTable{name: line[1:]}
			tables = append(tables, cur)
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d: %q outside a table", i+1, line)
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("iptables-save line %d: bad chain line %q", i+1, line)
			}
			cur.chains = append(cur.chains, &saveChain{name: f[0], policy: f[1]})
		case strings.HasPrefix(line, "-A "):
			name, spec, _ := strings.Cut(line[3:], " ")
			c := find(name)
			if c == nil {
				return nil, fmt.Errorf("iptables-save line %d: rule in undeclared chain %s", i+1, name)
			}
			c.rules = append(c.rules, spec)
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", i+1, line)
		}
	}
	return tables, nil
}

// hasForeignRules reports whether the tables hold anything of other tools:
// beyond empty built-in chains with an ACCEPT policy and beyond detour's own
// chains and hooks, a rule, a user chain or another policy.
func hasForeignRules(tables []*saveTable) bool {
	for _, t := range tables {
		for _, c := range t.chains {
			if c.policy == "-" {
				if !ownsChain(t.name, c.name) {
					return true
				}
				continue
			}
			if c.policy != "ACCEPT" {
				return true
			}
			for _, spec := range c.rules {
				if !hasOwnerComment(spec) {
					return true
				}
			}
		}
	}
	return false
}

func isBuiltin(chain string) bool { return slices.Contains(builtinOrder, chain) }

// specTokens splits a rule spec into arguments, honouring iptables-save's
// double quotes and backslash escapes.
func specTokens(spec string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped, started := false, false, false
	for _, r := range spec {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && inQuote:
			escaped = true
		case r == '"':
			inQuote = !inQuote
			started = true
		case r == ' ' && !inQuote:
			if started {
				out = append(out, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteRune(r)
			started = true
		}
	}
	if started {
		out = append(out, cur.String())
	}
	return out
}

// hasOwnerComment reports whether a rule carries our ownership comment.
func hasOwnerComment(spec string) bool {
	tok := specTokens(spec)
	for i := 0; i+1 < len(tok); i++ {
		if tok[i] == "--comment" && tok[i+1] == ownerComment {
			return true
		}
	}
	return false
}

// jumpTarget returns the chain a rule jumps or goes to, "" if none.
func jumpTarget(spec string) string {
	tok := specTokens(spec)
	for i := 0; i+1 < len(tok); i++ {
		if tok[i] == "-j" || tok[i] == "-g" {
			return tok[i+1]
		}
	}
	return ""
}

// ownedTable is what of ours one table holds (or should hold).
type ownedTable struct {
	Table
	// pos[i] is the 1-based position of Hooks[i] in its built-in chain, as
	// observed; nil for a planned table.
	pos []int
}

// owned is what of ours one family of one backend holds, by table name.
type owned map[string]*ownedTable

// foreignState lists what blocks us from managing a family.
type foreignState struct {
	chains []string // DETOUR_* chains we did not make: "nat DETOUR_FOO"
	refs   []string // foreign rules jumping to our chains
}

// ownedFromSave extracts our chains and hooks from parsed save output.
func ownedFromSave(tables []*saveTable) (owned, foreignState) {
	o := owned{}
	var fs foreignState
	for _, t := range tables {
		ot := &ownedTable{Table: Table{Name: t.name}}
		for _, c := range t.chains {
			switch {
			case c.policy != "-":
				for i, spec := range c.rules {
					if hasOwnerComment(spec) {
						ot.Hooks = append(ot.Hooks, Rule{Chain: c.name, Spec: spec})
						ot.pos = append(ot.pos, i+1)
					} else if ownsChain(t.name, jumpTarget(spec)) {
						fs.refs = append(fs.refs, fmt.Sprintf("%s: -A %s %s", t.name, c.name, spec))
					}
				}
			case strings.HasPrefix(c.name, chainPrefix) && ownsChain(t.name, c.name):
				ch := Chain{Name: c.name}
				for _, spec := range c.rules {
					ch.Rules = append(ch.Rules, Rule{Chain: c.name, Spec: spec})
				}
				ot.Chains = append(ot.Chains, ch)
			case strings.HasPrefix(c.name, chainPrefix):
				fs.chains = append(fs.chains, t.name+" "+c.name)
			default:
				for _, spec := range c.rules {
					if ownsChain(t.name, jumpTarget(spec)) {
						fs.refs = append(fs.refs, fmt.Sprintf("%s: -A %s %s", t.name, c.name, spec))
					}
				}
			}
		}
		if len(ot.Chains) == 0 && len(ot.Hooks) == 0 {
			continue
		}
		slices.SortFunc(ot.Chains, func(a, b Chain) int { return cmp.Compare(a.Name, b.Name) })
		sortHooks(ot)
		o[t.name] = ot
	}
	return o, fs
}

// sortHooks orders hooks by built-in chain (stable within one chain).
func sortHooks(ot *ownedTable) {
	idx := make([]int, len(ot.Hooks))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		return cmp.Compare(slices.Index(builtinOrder, ot.Hooks[a].Chain), slices.Index(builtinOrder, ot.Hooks[b].Chain))
	})
	hooks := make([]Rule, len(idx))
	var pos []int
	for i, j := range idx {
		hooks[i] = ot.Hooks[j]
		if ot.pos != nil {
			pos = append(pos, ot.pos[j])
		}
	}
	ot.Hooks, ot.pos = hooks, pos
}

// ownedFromRules is the planned state of one family (nil: nothing).
func ownedFromRules(fr *FamilyRules) owned {
	o := owned{}
	if fr == nil {
		return o
	}
	for _, t := range fr.Tables {
		o[t.Name] = &ownedTable{Table: t}
	}
	return o
}

func (o owned) empty() bool { return len(o) == 0 }

// tables returns the tables in tableOrder.
func (o owned) tables() []Table {
	var out []Table
	for _, name := range tableOrder {
		if t, ok := o[name]; ok {
			out = append(out, t.Table)
		}
	}
	return out
}

// tableText renders one table of o ("" when o has nothing there).
func (o owned) tableText(name string) string {
	t, ok := o[name]
	if !ok {
		return ""
	}
	return renderTables([]Table{t.Table})
}

// transition returns the iptables-restore --noflush input that turns our state
// from into to, touching only tables that differ; "" when nothing differs.
// Per table, in one COMMIT: declaring a chain creates it or (with --noflush)
// flushes it; our old hooks are deleted by their exact spec, never by position;
// chains no longer wanted are deleted; the new rules are added. New hooks go
// where to.pos says (a rollback restores the exact old positions), else where
// the first old hook of that built-in chain was, else at the end of the chain.
func transition(from, to owned) string {
	var b strings.Builder
	for _, name := range tableOrder {
		if from.tableText(name) == to.tableText(name) {
			continue
		}
		f, t := from[name], to[name]
		if f == nil {
			f = &ownedTable{}
		}
		if t == nil {
			t = &ownedTable{}
		}
		b.WriteString("*" + name + "\n")
		var chains []string
		for _, c := range f.Chains {
			chains = append(chains, c.Name)
		}
		for _, c := range t.Chains {
			if !slices.Contains(chains, c.Name) {
				chains = append(chains, c.Name)
			}
		}
		slices.Sort(chains)
		for _, c := range chains {
			b.WriteString(":" + c + " - [0:0]\n")
		}
		for _, h := range f.Hooks {
			b.WriteString("-D " + h.Chain + " " + h.Spec + "\n")
		}
		for _, c := range f.Chains {
			if !slices.ContainsFunc(t.Chains, func(x Chain) bool { return x.Name == c.Name }) {
				b.WriteString("-X " + c.Name + "\n")
			}
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				b.WriteString("-A " + r.Chain + " " + r.Spec + "\n")
			}
		}
		b.WriteString(hookInserts(f, t))
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func hookInserts(f, t *ownedTable) string {
	var b strings.Builder
	if t.pos != nil {
		idx := make([]int, len(t.Hooks))
		for i := range idx {
			idx[i] = i
		}
		// Ascending positions: each insert leaves the earlier ones where they are.
		slices.SortStableFunc(idx, func(a, c int) int {
			if n := cmp.Compare(t.Hooks[a].Chain, t.Hooks[c].Chain); n != 0 {
				return n
			}
			return cmp.Compare(t.pos[a], t.pos[c])
		})
		for _, i := range idx {
			fmt.Fprintf(&b, "-I %s %d %s\n", t.Hooks[i].Chain, t.pos[i], t.Hooks[i].Spec)
		}
		return b.String()
	}
	next := map[string]int{} // built-in chain → position for the next hook
	for i, h := range f.Hooks {
		if f.pos == nil {
			break
		}
		if p, ok := next[h.Chain]; !ok || f.pos[i] < p {
			next[h.Chain] = f.pos[i]
		}
	}
	for _, h := range t.Hooks {
		p, ok := next[h.Chain]
		if !ok {
			b.WriteString("-A " + h.Chain + " " + h.Spec + "\n")
			continue
		}
		b.WriteString("-I " + h.Chain + " " + strconv.Itoa(p) + " " + h.Spec + "\n")
		next[h.Chain] = p + 1
	}
	return b.String()
}

// renderTables is tables in iptables-restore form: per table the chain
// declarations, the hooks and our chains' rules (the order iptables-save
// lists them in), each table ending in COMMIT.
func renderTables(tables []Table) string {
	var b strings.Builder
	for _, t := range tables {
		b.WriteString("*" + t.Name + "\n")
		for _, c := range t.Chains {
			b.WriteString(":" + c.Name + " - [0:0]\n")
		}
		for _, r := range t.Hooks {
			b.WriteString("-A " + r.Chain + " " + r.Spec + "\n")
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				b.WriteString("-A " + r.Chain + " " + r.Spec + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// driftLines turns tables into self-contained lines ("-t nat -N
// DETOUR_OUTPUT", "-t nat -A OUTPUT …") so a difference reads without its
// context: FamilyRendering.Lines and Installed.Lines.
func driftLines(tables []Table) []string {
	var out []string
	for _, t := range tables {
		for _, c := range t.Chains {
			out = append(out, "-t "+t.Name+" -N "+c.Name)
		}
		for _, r := range t.Hooks {
			out = append(out, "-t "+t.Name+" -A "+r.Chain+" "+r.Spec)
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				out = append(out, "-t "+t.Name+" -A "+r.Chain+" "+r.Spec)
			}
		}
	}
	return out
}
