package xtables

import (
	"fmt"
	"strings"
)

// Ruleset is one family's iptables-save output: its tables by name.
type Ruleset struct {
	Tables map[string]*Table
}

// Table is one "*name" … "COMMIT" block.
type Table struct {
	Name   string
	Chains map[string]*Chain
}

// Chain is a built-in chain (with a policy) or a user chain (Policy "-").
type Chain struct {
	Name   string
	Policy string // ACCEPT, DROP, or "-" for a user chain
	Rules  []*Rule
}

// Rule is one "-A" line, parsed.
type Rule struct {
	Table string
	Chain string
	// Text is the line as iptables-save printed it ("-A OUTPUT -p tcp …"),
	// without a leading counter.
	Text    string
	Matches []Match
	Target  string   // RETURN, ACCEPT, REDIRECT, a user chain, …; "" = no target
	Goto    bool     // -g: a jump that does not come back here
	Args    []Option // the target's options
}

// Match is one condition of a rule: a core one (module "" with option -p, -s,
// -d, -i, -o) or an option of a match module (-m tcp --dport 80).
type Match struct {
	Module string
	Option Option
}

// Option is one --name with its arguments, possibly negated with "!".
type Option struct {
	Negated bool
	Name    string // "-p", "--dport", "--transparent", …
	Args    []string
}

func (o Option) String() string {
	s := o.Name
	if len(o.Args) > 0 {
		s += " " + strings.Join(o.Args, " ")
	}
	if o.Negated {
		s = "! " + s
	}
	return s
}

func (m Match) String() string {
	if m.Module == "" {
		return m.Option.String()
	}
	return "-m " + m.Module + " " + m.Option.String()
}

// Parse reads iptables-save (or ip6tables-save) output. Comments, counters and
// blank lines are skipped; an "-A" line outside a table, or one for a chain the
// table did not declare, is an error naming the line.
func Parse(save string) (*Ruleset, error) {
	rs := &Ruleset{Tables: map[string]*Table{}}
	var cur *Table
	for i, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		switch {
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			cur = rs.Tables[name]
			if cur == nil {
				cur = &Table{Name: name, Chains: map[string]*Chain{}}
				rs.Tables[name] = cur
			}
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			if cur == nil {
				return nil, fmt.Errorf("line %d: chain outside a table: %q", i+1, line)
			}
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("line %d: malformed chain line %q", i+1, line)
			}
			if cur.Chains[f[0]] == nil {
				cur.Chains[f[0]] = &Chain{Name: f[0], Policy: f[1]}
			}
		default:
			if strings.HasPrefix(line, "[") { // -c counters: "[pkts:bytes] -A …"
				if j := strings.Index(line, "]"); j > 0 {
					line = strings.TrimSpace(line[j+1:])
				}
			}
			if !strings.HasPrefix(line, "-A ") {
				return nil, fmt.Errorf("line %d: unexpected %q", i+1, line)
			}
			if cur == nil {
				return nil, fmt.Errorf("line %d: rule outside a table: %q", i+1, line)
			}
			r, err := parseRule(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			r.Table = cur.Name
			c := cur.Chains[r.Chain]
			if c == nil && builtin[r.Chain] {
				// A rendering (detour plan) does not declare built-in chains.
				c = &Chain{Name: r.Chain, Policy: "ACCEPT"}
				cur.Chains[r.Chain] = c
			}
			if c == nil {
				return nil, fmt.Errorf("line %d: chain %s of table %s is not declared", i+1, r.Chain, cur.Name)
			}
			c.Rules = append(c.Rules, r)
		}
	}
	return rs, nil
}

var builtin = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// coreOptions are the options of iptables itself (not of a match module),
// by every spelling iptables-save may print.
var coreOptions = map[string]string{
	"-p": "-p", "--protocol": "-p",
	"-s": "-s", "--source": "-s",
	"-d": "-d", "--destination": "-d",
	"-i": "-i", "--in-interface": "-i",
	"-o": "-o", "--out-interface": "-o",
	"-f": "-f", "--fragment": "-f",
}

func parseRule(line string) (*Rule, error) {
	toks, err := split(line)
	if err != nil {
		return nil, err
	}
	if len(toks) < 2 {
		return nil, fmt.Errorf("malformed rule %q", line)
	}
	r := &Rule{Chain: toks[1], Text: line}
	toks = toks[2:]
	module := ""      // the match module whose options follow
	inTarget := false // after -j/-g, options belong to the target
	neg := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t == "!" {
			neg = true
			continue
		}
		// args collects the values that follow an option.
		args := func() []string {
			var a []string
			for i+1 < len(toks) && toks[i+1] != "!" && !strings.HasPrefix(toks[i+1], "-") {
				i++
				a = append(a, toks[i])
			}
			return a
		}
		switch {
		case t == "-m" || t == "--match":
			if i+1 >= len(toks) {
				return nil, fmt.Errorf("rule %q: -m without a module", line)
			}
			i++
			module, inTarget = toks[i], false
			continue
		case t == "-j" || t == "--jump" || t == "-g" || t == "--goto":
			if i+1 >= len(toks) {
				return nil, fmt.Errorf("rule %q: %s without a target", line, t)
			}
			i++
			r.Target, r.Goto, inTarget, module = toks[i], t == "-g" || t == "--goto", true, ""
			continue
		}
		if core, ok := coreOptions[t]; ok && !inTarget {
			o := Option{Negated: neg, Name: core}
			if core != "-f" {
				if i+1 >= len(toks) {
					return nil, fmt.Errorf("rule %q: %s without a value", line, t)
				}
				i++
				o.Args = []string{toks[i]}
			}
			r.Matches = append(r.Matches, Match{Option: o})
			module, neg = "", false
			continue
		}
		if !strings.HasPrefix(t, "-") {
			return nil, fmt.Errorf("rule %q: unexpected %q", line, t)
		}
		o := Option{Negated: neg, Name: t}
		neg = false
		// Values may start with "-" only in a quoted comment or log prefix,
		// which split already joined into one token; a negative number is no
		// value any option here takes.
		o.Args = args()
		switch {
		case inTarget:
			r.Args = append(r.Args, o)
		case module != "":
			r.Matches = append(r.Matches, Match{Module: module, Option: o})
		default:
			return nil, fmt.Errorf("rule %q: option %s belongs to no match module", line, t)
		}
	}
	return r, nil
}

// split cuts a rule line into words as iptables-save quotes them: double
// quotes group, a backslash escapes the next character.
func split(s string) ([]string, error) {
	var (
		out   []string
		b     strings.Builder
		in    bool // inside double quotes
		have  bool // b holds a word (possibly empty "")
		escap bool
	)
	for _, r := range s {
		switch {
		case escap:
			b.WriteRune(r)
			escap = false
		case r == '\\':
			escap, have = true, true
		case r == '"':
			in, have = !in, true
		case (r == ' ' || r == '\t') && !in:
			if have {
				out = append(out, b.String())
				b.Reset()
				have = false
			}
		default:
			b.WriteRune(r)
			have = true
		}
	}
	if in {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if have {
		out = append(out, b.String())
	}
	return out, nil
}
