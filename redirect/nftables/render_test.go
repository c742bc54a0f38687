//go:build linux

package nftables

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/redirect"
)

func mustCapture(t testing.TB, tc plancases.Case) redirect.Capture {
	t.Helper()
	c, err := redirect.NewCapture(cfgWith(t, tc.Preset, tc.Sets...), tc.Facts)
	if err != nil {
		t.Fatalf("NewCapture: %v", err)
	}
	return c
}

func TestRender(t *testing.T) {
	t.Parallel()
	for _, tc := range planCases() {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			rs, err := Render(mustCapture(t, tc))
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			// The golden file is what `detour plan --backend nftables` prints.
			p, err := redirect.NewPlan(cfgWith(t, tc.Preset, tc.Sets...), tc.Facts)
			if err != nil {
				t.Fatal(err)
			}
			r, err := New(Options{}).Render(p)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, golden.Path(t, tc.Name), []byte(p.Format(r)))
			for _, fr := range r.Families {
				if !slices.Equal(fr.Lines, rs.Lines(fr.Family)) {
					t.Errorf("%s: Rendering lines differ from the ruleset's", fr.Family)
				}
			}
			again, err := Render(mustCapture(t, tc))
			if err != nil || again.Text() != rs.Text() {
				t.Errorf("Render is not deterministic (err %v)", err)
			}
			// Every rule must marshal: nothing is queued that could fail half-way.
			if _, err := rs.ruleMessages(); err != nil {
				t.Errorf("marshal: %v", err)
			}
			// What observation reads back (a rule's text) parses to the same
			// statements, the same expressions.
			for _, ch := range rs.Chains {
				for _, r := range ch.Rules {
					back, err := parseRule(r.Text(), r.Family)
					if err != nil {
						t.Fatalf("parse: %v", err)
					}
					want, _ := r.ruleExprs()
					got, err := back.ruleExprs()
					if err != nil || back.Text() != r.Text() || !slices.EqualFunc(want, got, bytes.Equal) {
						t.Errorf("rule %q parses back as %q (err %v)", r.Text(), back.Text(), err)
					}
				}
			}
		})
	}
}

// TestLogPrefixText: `detour plan --backend nftables` prints `nft -f` input,
// and nft's strings have no escapes: what is between the quotes is the
// prefix. A backslash was printed doubled (Go quoting: nft reads "a\\b" as
// a\\b, not the a\b detour installs), and a double quote as \" (nft refuses
// the line). A backslash is printed as it is; a double quote, which nft's
// text cannot carry, is refused naming log.prefix (exit 2).
func TestLogPrefixText(t *testing.T) {
	t.Parallel()
	render := func(prefix string) (*Ruleset, error) {
		c := redirect.Default()
		c.Log = redirect.Log{Enabled: true, Prefix: prefix}
		capture, err := redirect.NewCapture(c, redirect.Facts{})
		if err != nil {
			t.Fatalf("NewCapture: %v", err)
		}
		return Render(capture)
	}
	rs, err := render(`a\b`)
	if err != nil {
		t.Fatalf("prefix a\\b: %v", err)
	}
	if text := rs.Text(); !strings.Contains(text, `log prefix "a\b"`+"\n") {
		t.Errorf("prefix a\\b: want the rule text log prefix \"a\\b\":\n%s", text)
	}
	logged := 0
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			if !strings.Contains(r.Text(), "log prefix") {
				continue
			}
			logged++
			back, err := parseRule(r.Text(), r.Family)
			if err != nil || back.Text() != r.Text() {
				t.Errorf("rule %q parsed back as %q (%v)", r.Text(), back.Text(), err)
			}
		}
	}
	if logged == 0 {
		t.Error("no rule logs")
	}
	_, err = render(`a"b`)
	if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), `log.prefix: "a\"b"`) {
		t.Errorf("prefix a\"b: err %v; want an invalid-input error naming log.prefix and the value", err)
	}
}
