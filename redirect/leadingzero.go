package redirect

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	yamlv2 "go.yaml.in/yaml/v2"
)

// LeadingZero refuses an unquoted integer with a leading zero in doc (tree is
// doc as decoded, numbers as json.Number; the error is a *FieldError naming the
// path in tree, such as outbound.excludePorts[1]). Config.Decode and the mesh
// file (controlplane.DecodeMesh) both call it: YAML 1.1, which the parser follows,
// reads 01337 as octal 735, while the same 01337 is 1337 as a flag, an
// environment variable or a quoted value. A uid read that way makes the proxy's
// own traffic loop; a port, a port nobody meant. Quoted it is decimal, and
// 0o2471 is octal on purpose.
func LeadingZero(doc []byte, tree any) error {
	if !mayHoldLeadingZero(doc) {
		return nil // the common case: no parse of its own
	}
	var raw rawYAML
	if yamlv2.Unmarshal(doc, &raw) != nil {
		return nil
	}
	return walkLeadingZero("", raw.v, tree)
}

// mayHoldLeadingZero reports whether doc has a 0 that starts a token and is
// followed by an octal digit: a cheap test before parsing doc again.
func mayHoldLeadingZero(doc []byte) bool {
	for i := 0; i+1 < len(doc); i++ {
		if doc[i] != '0' || doc[i+1] < '0' || doc[i+1] > '7' {
			continue
		}
		if i == 0 {
			return true
		}
		switch p := doc[i-1]; {
		case p >= '0' && p <= '9', p >= 'a' && p <= 'z', p >= 'A' && p <= 'Z', p == '.', p == ':', p == '_':
		default:
			return true
		}
	}
	return false
}

// rawYAML is a document as YAML wrote it: mappings, lists, and every scalar
// as its text (the parser gives a string target a scalar's text unresolved).
type rawYAML struct{ v any }

func (r *rawYAML) UnmarshalYAML(unmarshal func(any) error) error {
	var m map[string]rawYAML
	if unmarshal(&m) == nil {
		r.v = m
		return nil
	}
	var l []rawYAML
	if unmarshal(&l) == nil {
		r.v = l
		return nil
	}
	var s string
	if unmarshal(&s) == nil {
		r.v = s
	}
	return nil
}

func walkLeadingZero(path string, raw, tree any) error {
	switch t := tree.(type) {
	case map[string]any:
		m, _ := raw.(map[string]rawYAML)
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys) // deterministic: the first error is always the same one
		for _, k := range keys {
			v := t[k]
			p := k
			if path != "" {
				p = path + "." + k
			}
			if err := walkLeadingZero(p, m[k].v, v); err != nil {
				return err
			}
		}
	case []any:
		l, _ := raw.([]rawYAML)
		for i, v := range t {
			if i < len(l) {
				if err := walkLeadingZero(fmt.Sprintf("%s[%d]", path, i), l[i].v, v); err != nil {
					return err
				}
			}
		}
	case json.Number:
		s, _ := raw.(string)
		digits := strings.ReplaceAll(strings.TrimLeft(s, "+-"), "_", "")
		if len(digits) < 2 || digits[0] != '0' || strings.Trim(digits, "01234567") != "" {
			return nil
		}
		dec := strings.TrimLeft(digits, "0")
		if dec == "" {
			return nil // 00 is 0 either way
		}
		return &FieldError{Field: path, Value: s, Reason: fmt.Sprintf(
			"has a leading zero, which YAML reads as octal (%s): write %s for decimal (or quote it), 0o%s for octal", t, dec, dec)}
	}
	return nil
}
