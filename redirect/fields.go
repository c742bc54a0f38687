package redirect

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	yamlv2 "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"
)

// Field is one settable leaf of Config. Every source — config documents, flags,
// environment variables and CNI annotations — sets fields through this table, so
// they all accept the same spellings and fail with the same messages.
type Field struct {
	// Path is the field's place in a config document: "outbound.excludePorts".
	Path string
	// Name is the field's short name, used as the CLI flag (--exclude-outbound-ports),
	// the environment variable (DETOUR_EXCLUDE_OUTBOUND_PORTS) and the CNI
	// annotation (detour.io/exclude-outbound-ports).
	Name string
	// Usage is a one-line description.
	Usage string
	// List fields take comma-separated values in their string form.
	List bool
	// Bool fields are switches (a flag without a value means true).
	Bool bool
	// EmptyCaptures is set on the include lists whose empty value captures
	// everything ("every destination"). A flag, a variable or an annotation
	// must not give them an empty value — an unset shell variable or template
	// value would capture all traffic instead of the few meant — so the CLI and
	// FromAnnotations refuse it (EmptyIncludeError); leaving the setting out is
	// that default. Empty exclusion lists stay accepted: they clear a preset's.
	EmptyCaptures string

	set func(c *Config, values []string) error
	get func(c *Config) string
}

// EnvName is the environment variable that sets the field.
func (f Field) EnvName() string {
	// One allocation: every start looks up each field's variable (29).
	var b strings.Builder
	b.Grow(len("DETOUR_") + len(f.Name))
	b.WriteString("DETOUR_")
	for _, c := range []byte(f.Name) {
		switch {
		case c >= 0x80:
			return "DETOUR_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		case c == '-':
			c = '_'
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// EmptyIncludeError returns an error naming the field and v when v is empty
// or blank and f is an include list whose empty value captures everything
// (EmptyCaptures), nil otherwise. hint ends the message: what to write
// instead, in the terms of the source (flag, variable, annotation).
func EmptyIncludeError(f Field, v, hint string) error {
	if f.EmptyCaptures == "" || strings.TrimSpace(v) != "" {
		return nil
	}
	return &FieldError{Field: f.Path, Value: v, Reason: "is empty, which would capture " + f.EmptyCaptures +
		" (an unset variable?): " + hint}
}

// Get returns the field's value in c in its string form (lists comma-separated).
func (f Field) Get(c *Config) string { return f.get(c) }

// Fields returns the settable fields of Config in documentation order.
func Fields() []Field { return fields }

// FieldByPath returns the field with the given document path.
func FieldByPath(path string) (Field, bool) {
	for _, f := range fields {
		if f.Path == path {
			return f, true
		}
	}
	return Field{}, false
}

// FieldByName returns the field with the given short name.
func FieldByName(name string) (Field, bool) {
	for _, f := range fields {
		if f.Name == name {
			return f, true
		}
	}
	return Field{}, false
}

// Set parses value, the field's string form, and stores it in c. List fields take
// comma-separated items; an empty value empties the list. The error is a
// *FieldError naming the field path (with the item index for lists) and the value.
func (c *Config) Set(path, value string) error {
	f, ok := FieldByPath(path)
	if !ok {
		return &FieldError{Field: path, Value: value, Reason: "is not a known field"}
	}
	values, err := splitForField(f, value)
	if err != nil {
		return err
	}
	return f.set(c, values)
}

// splitUIDPortRules splits "tcp:53,80:106,udp:53:107" into its rules: an item
// starting with a protocol name begins a new rule.
func splitUIDPortRules(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if len(out) == 0 || strings.HasPrefix(part, "tcp:") || strings.HasPrefix(part, "udp:") {
			out = append(out, part)
			continue
		}
		out[len(out)-1] += "," + part
	}
	return out
}

// Decode applies a YAML or JSON document to c: the fields it names are set, the
// others keep their value, so documents layer on top of defaults and each other.
// An unknown key, a value of the wrong shape or an invalid value is a *FieldError
// naming its path; c is unchanged when Decode fails.
func (c *Config) Decode(doc []byte) error {
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil
	}
	if n := Documents(doc); n > 1 {
		// YAML to JSON keeps the first document and drops the others
		// silently: a second one's settings would never be applied.
		return &FieldError{Field: "(document)", Value: "---", Reason: fmt.Sprintf("starts another YAML document (%d hold settings); put every setting in one document", n)}
	}
	js, err := yaml.YAMLToJSONStrict(doc)
	if m := duplicateKeyOf(err); m != nil {
		// A key given twice in one mapping: YAML and JSON parsers keep the
		// later one silently; detour refuses to guess which was meant.
		const reason = "appears twice in the same mapping; give each key once"
		line, _ := strconv.Atoi(m[1])
		line = keyLine(doc, m[2], line)
		if path, ok := firstDuplicate(doc); ok {
			return &FieldError{Field: path, Line: line, Reason: reason}
		}
		return &FieldError{Field: m[2], Line: line, Reason: reason}
	}
	if err != nil {
		return &FieldError{Field: "(document)", Value: firstLine(err.Error()), Reason: "is not valid YAML or JSON"}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return &FieldError{Field: "(document)", Value: firstLine(err.Error()), Reason: "is not valid YAML or JSON"}
	}
	if tree == nil {
		return nil
	}
	if err := LeadingZero(doc, tree); err != nil {
		return err
	}
	next := c.Clone()
	if err := next.decodeNode("", tree); err != nil {
		return err
	}
	*c = next
	return nil
}

// Documents counts the YAML documents of doc that hold something (a bare
// "---" or a comment between markers is none). It parses only a doc that
// has a document marker at all. YAML to JSON keeps the first document and
// drops the others silently: a reader of one document refuses more than one.
func Documents(doc []byte) int {
	if !bytes.Contains(doc, []byte("---")) && !bytes.Contains(doc, []byte("...")) {
		return 1
	}
	dec := yamlv2.NewDecoder(bytes.NewReader(doc))
	n := 0
	for {
		var v any
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			return n
		} else if err != nil {
			// In the first document: the decode that follows reports it.
			// After it: something follows the first document, which YAML
			// to JSON would drop as it drops a second document.
			if n > 0 {
				n++
			}
			return n
		}
		if v != nil {
			n++
		}
	}
}

// duplicateKey matches the strict YAML parser's report of a repeated key;
// compiled on first use, not at every start of the binary.
var duplicateKey = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`line (\d+): key "([^"]*)" already set in map`)
})

// duplicateKeyOf is duplicateKey's submatches in the parser's error, nil
// when there is none: a document that parses compiles no regular expression
// (it costs a CNI ADD page faults).
func duplicateKeyOf(err error) []string {
	if err == nil {
		return nil
	}
	return duplicateKey().FindStringSubmatch(err.Error())
}

// firstDuplicate finds, in document order, the first key given twice in one
// mapping of doc, and returns its path as the fields are named
// ("outbound.excludePorts", items of lists as "[i]"). The strict parser names
// only the leaf key; its report (the first it met, in the same order) gives
// the line. It uses the YAML parser sigs.k8s.io/yaml is built on, decoding
// mappings in order with every key kept, so that the install path links no
// second YAML library (its initialization costs every start page faults).
func firstDuplicate(doc []byte) (path string, ok bool) {
	var root yamlv2.MapSlice
	if yamlv2.Unmarshal(doc, &root) != nil {
		return "", false
	}
	var walk func(n any, prefix string) (string, bool)
	walk = func(n any, prefix string) (string, bool) {
		switch n := n.(type) {
		case []any:
			for i, c := range n {
				if p, ok := walk(c, fmt.Sprintf("%s[%d]", prefix, i)); ok {
					return p, true
				}
			}
		case yamlv2.MapSlice:
			seen := map[string]bool{}
			for _, item := range n {
				k := fmt.Sprint(item.Key)
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				if seen[k] {
					return p, true
				}
				seen[k] = true
				if p, ok := walk(item.Value, p); ok {
					return p, true
				}
			}
		}
		return "", false
	}
	return walk(root, "")
}

// keyLine is the line of the key named leaf whose value the strict parser
// reported at line reported (1-based): the parser names the line where the
// value starts, which for a block mapping or list is below its key. It is
// the last line at or above reported that names the key; reported when none
// does.
func keyLine(doc []byte, leaf string, reported int) int {
	lines := strings.Split(string(doc), "\n")
	for l := min(reported, len(lines)); l >= 1; l-- {
		text := lines[l-1]
		if strings.Contains(text, `"`+leaf+`"`) || strings.Contains(text, leaf+":") {
			return l
		}
	}
	return reported
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// decodeNode walks a decoded document. Mappings descend; anything else must be a
// known leaf.
func (c *Config) decodeNode(path string, node any) error {
	m, isMap := node.(map[string]any)
	if isMap {
		if path != "" && !isGroup(path) {
			if _, leaf := FieldByPath(path); leaf {
				return &FieldError{Field: path, Value: compact(node), Reason: "is a mapping, not a value"}
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys) // deterministic: the first error is always the same one
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if k == "" {
				// Not the document itself, which the empty path names.
				return &FieldError{Field: p + `""`, Value: compact(m[k]), Reason: "is not a known field (an empty key)"}
			}
			if err := c.decodeNode(p, m[k]); err != nil {
				return err
			}
		}
		return nil
	}
	if path == "" {
		return &FieldError{Field: "(document)", Value: compact(node), Reason: "is not a mapping"}
	}
	f, ok := FieldByPath(path)
	if !ok {
		if isGroup(path) {
			return &FieldError{Field: path, Value: compact(node), Reason: "is not a mapping"}
		}
		return &FieldError{Field: path, Value: compact(node), Reason: "is not a known field"}
	}
	var values []string
	switch v := node.(type) {
	case nil:
		// null (also a key with nothing after it, "uid:") is the empty
		// value: the empty list for a list, unset for proxy.gid. A field that
		// cannot be empty refuses it, as it refuses "": an empty template
		// value must not silently put back a built-in default (a preset's
		// proxy.uid 1337 would become 5678, and the proxy's own traffic loop).
		if !f.List && f.Path != "proxy.gid" {
			return &FieldError{Field: path, Value: "null", Reason: "is empty; give a value (or leave the key out)"}
		}
		if f.List {
			return f.set(c, nil)
		}
		return f.set(c, []string{""})
	case []any:
		if !f.List {
			return &FieldError{Field: path, Value: compact(node), Reason: "is a list, not a single value"}
		}
		for i, item := range v {
			s, err := scalar(item)
			if err != nil {
				return &FieldError{Field: fmt.Sprintf("%s[%d]", path, i), Value: compact(item), Reason: err.Error()}
			}
			values = append(values, s)
		}
	default:
		s, err := scalar(v)
		if err != nil {
			return &FieldError{Field: path, Value: compact(node), Reason: err.Error()}
		}
		// YAML 1.1 reads a bare `off` as false; "capture: off" means the mode.
		if b, isBool := v.(bool); isBool && path == "dns.capture" && !b {
			s = string(DNSCaptureOff)
		} else if isBool && !f.Bool {
			// A word YAML took for a boolean (prefix: yes became "true").
			return &FieldError{Field: path, Value: s, Reason: "is a YAML boolean (an unquoted on, off, yes, no, y, n, true or false): quote the value you mean"}
		}
		if f.List {
			if values, err = splitForField(f, s); err != nil {
				return err
			}
		} else {
			values = []string{s}
		}
	}
	return f.set(c, values)
}

// splitForField splits a comma-separated list value. An empty (or blank)
// value is the empty list; an empty element inside a list ("80,,90", "80,")
// is a *FieldError, never silently dropped: it is usually an unset variable.
func splitForField(f Field, s string) ([]string, error) {
	if !f.List {
		return []string{s}, nil
	}
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, v := range strings.Split(s, ",") {
		if strings.TrimSpace(v) == "" {
			return nil, &FieldError{Field: f.Path, Value: s, Reason: "has an empty list element (two commas in a row, or a comma at an end)"}
		}
	}
	if f.Path == "outbound.excludePortsForUIDs" {
		return splitUIDPortRules(s), nil
	}
	var out []string
	for _, v := range strings.Split(s, ",") {
		out = append(out, strings.TrimSpace(v))
	}
	return out, nil
}

func isGroup(path string) bool {
	switch path {
	case "proxy", "proxy.inboundPassthroughSource", "inbound", "outbound", "dns", "log":
		return true
	}
	return false
}

func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case json.Number:
		return v.String(), nil
	case bool:
		return strconv.FormatBool(v), nil
	case nil:
		return "", fmt.Errorf("is null, not a value")
	default:
		return "", fmt.Errorf("is a %s, not a value", shape(v))
	}
}

func shape(v any) string {
	switch v.(type) {
	case map[string]any:
		return "mapping"
	case []any:
		return "list"
	}
	return fmt.Sprintf("%T", v)
}

func compact(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// Clone returns a deep copy of c.
func (c Config) Clone() Config {
	out := c
	if c.Proxy.GID != nil {
		g := *c.Proxy.GID
		out.Proxy.GID = &g
	}
	out.Inbound.IncludePorts = cloneSlice(c.Inbound.IncludePorts)
	out.Inbound.ExcludePorts = cloneSlice(c.Inbound.ExcludePorts)
	out.Inbound.ExcludeSourceCIDRs = cloneSlice(c.Inbound.ExcludeSourceCIDRs)
	out.Outbound.IncludePorts = cloneSlice(c.Outbound.IncludePorts)
	out.Outbound.ExcludePorts = cloneSlice(c.Outbound.ExcludePorts)
	out.Outbound.IncludeCIDRs = cloneSlice(c.Outbound.IncludeCIDRs)
	out.Outbound.ExcludeCIDRs = cloneSlice(c.Outbound.ExcludeCIDRs)
	out.Outbound.ExcludeUIDs = cloneSlice(c.Outbound.ExcludeUIDs)
	out.Outbound.ExcludeGIDs = cloneSlice(c.Outbound.ExcludeGIDs)
	if c.Outbound.ExcludePortsForUIDs != nil {
		out.Outbound.ExcludePortsForUIDs = make([]UIDPortRule, len(c.Outbound.ExcludePortsForUIDs))
		for i, r := range c.Outbound.ExcludePortsForUIDs {
			out.Outbound.ExcludePortsForUIDs[i] = UIDPortRule{r.Protocol, cloneSlice(r.Ports), cloneSlice(r.UIDs)}
		}
	}
	return out
}

func cloneSlice[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append([]T(nil), s...)
}

// The setters below turn the string form into typed values. List setters index
// their errors (field[i]); every error names the field.

func one(path string, values []string) (string, error) {
	if len(values) != 1 {
		return "", &FieldError{Field: path, Value: strings.Join(values, ","), Reason: "takes exactly one value"}
	}
	return values[0], nil
}

func withField(path string, err error) error {
	if fe, ok := err.(*FieldError); ok {
		fe.Field = path
		return fe
	}
	return &FieldError{Field: path, Reason: err.Error()}
}

func scalarField(path string, parse func(c *Config, s string) error) func(*Config, []string) error {
	return func(c *Config, values []string) error {
		s, err := one(path, values)
		if err != nil {
			return err
		}
		if err := parse(c, s); err != nil {
			return withField(path, err)
		}
		return nil
	}
}

func listField[T any](path string, parse func(string) (T, error), dst func(c *Config) *[]T) func(*Config, []string) error {
	return func(c *Config, values []string) error {
		out := make([]T, 0, len(values))
		for i, v := range values {
			t, err := parse(v)
			if err != nil {
				return withField(fmt.Sprintf("%s[%d]", path, i), err)
			}
			out = append(out, t)
		}
		if len(out) == 0 {
			out = nil
		}
		*dst(c) = out
		return nil
	}
}

func portField(path string, dst func(c *Config) *uint16) func(*Config, []string) error {
	return scalarField(path, func(c *Config, s string) error {
		p, err := ParsePort(s)
		if err == nil {
			*dst(c) = p
		}
		return err
	})
}

func boolField(path string, dst func(c *Config) *bool) func(*Config, []string) error {
	return scalarField(path, func(c *Config, s string) error {
		b, err := parseBool(s)
		if err == nil {
			*dst(c) = b
		}
		return err
	})
}

func enumField[T ~string](path string, allowed []T, dst func(c *Config) *T) func(*Config, []string) error {
	return scalarField(path, func(c *Config, s string) error {
		v, err := parseEnum(s, allowed)
		if err == nil {
			*dst(c) = v
		}
		return err
	})
}

func addrField(path string, want int, dst func(c *Config) *netip.Addr) func(*Config, []string) error {
	return scalarField(path, func(c *Config, s string) error {
		a, err := ParseAddr(s)
		if err != nil {
			return err
		}
		if (want == 4) != a.Is4() {
			return invalid(s, fmt.Sprintf("is not an IPv%d address", want))
		}
		*dst(c) = a
		return nil
	})
}

func joinList[T fmt.Stringer](s []T) string { return joinRanges(s) }

func joinPrefixes(s []netip.Prefix) string {
	parts := make([]string, len(s))
	for i, p := range s {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

var fields = []Field{
	{
		Path: "proxy.uid", Name: "proxy-uid", Usage: "numeric uid of the sidecar; its traffic is never redirected",
		set: scalarField("proxy.uid", func(c *Config, s string) error {
			id, err := ParseID(s)
			if err == nil {
				c.Proxy.UID = id
			}
			return err
		}),
		get: func(c *Config) string { return strconv.FormatUint(uint64(c.Proxy.UID), 10) },
	},
	{
		Path: "proxy.gid", Name: "proxy-gid", Usage: "numeric gid of the sidecar, excluded too when set (empty = unset)",
		set: scalarField("proxy.gid", func(c *Config, s string) error {
			if strings.TrimSpace(s) == "" || s == "null" {
				c.Proxy.GID = nil
				return nil
			}
			id, err := ParseID(s)
			if err == nil {
				c.Proxy.GID = &id
			}
			return err
		}),
		get: func(c *Config) string {
			if c.Proxy.GID == nil {
				return ""
			}
			return strconv.FormatUint(uint64(*c.Proxy.GID), 10)
		},
	},
	{
		Path: "proxy.inboundPort", Name: "inbound-port", Usage: "port the proxy receives redirected inbound connections on",
		set: portField("proxy.inboundPort", func(c *Config) *uint16 { return &c.Proxy.InboundPort }),
		get: func(c *Config) string { return strconv.Itoa(int(c.Proxy.InboundPort)) },
	},
	{
		Path: "proxy.outboundPort", Name: "outbound-port", Usage: "port the proxy receives redirected outbound connections on",
		set: portField("proxy.outboundPort", func(c *Config) *uint16 { return &c.Proxy.OutboundPort }),
		get: func(c *Config) string { return strconv.Itoa(int(c.Proxy.OutboundPort)) },
	},
	{
		Path: "proxy.inboundPassthroughSource.ipv4", Name: "inbound-passthrough-source-ipv4",
		Usage: "IPv4 source the proxy uses towards the local app; never recaptured",
		set:   addrField("proxy.inboundPassthroughSource.ipv4", 4, func(c *Config) *netip.Addr { return &c.Proxy.InboundPassthroughSource.IPv4 }),
		get:   func(c *Config) string { return c.Proxy.InboundPassthroughSource.IPv4.String() },
	},
	{
		Path: "proxy.inboundPassthroughSource.ipv6", Name: "inbound-passthrough-source-ipv6",
		Usage: "IPv6 source the proxy uses towards the local app; never recaptured",
		set:   addrField("proxy.inboundPassthroughSource.ipv6", 6, func(c *Config) *netip.Addr { return &c.Proxy.InboundPassthroughSource.IPv6 }),
		get:   func(c *Config) string { return c.Proxy.InboundPassthroughSource.IPv6.String() },
	},
	{
		Path: "mode", Name: "mode", Usage: "redirect (nat REDIRECT) or tproxy (mangle TPROXY for inbound, keeps client addresses)",
		set: enumField("mode", modes, func(c *Config) *Mode { return &c.Mode }),
		get: func(c *Config) string { return string(c.Mode) },
	},
	{
		Path: "backend", Name: "backend", Usage: "auto, iptables, iptables-legacy, iptables-nft, nftables or ebpf (opt-in; auto never picks it)",
		set: enumField("backend", backends, func(c *Config) *Backend { return &c.Backend }),
		get: func(c *Config) string { return string(c.Backend) },
	},
	{
		Path: "ebpf.accelerate", Name: "ebpf-accelerate", Bool: true,
		Usage: "backend ebpf only: pass app-proxy bytes socket to socket (sk_msg); a proxy relaying with splice(2) loses them",
		set:   boolField("ebpf.accelerate", func(c *Config) *bool { return &c.EBPF.Accelerate }),
		get:   func(c *Config) string { return strconv.FormatBool(c.EBPF.Accelerate) },
	},
	{
		Path: "ipFamilies", Name: "ip-families", Usage: "auto (IPv6 whenever the namespace has it), ipv4, ipv6 or dual",
		set: enumField("ipFamilies", families, func(c *Config) *IPFamilies { return &c.IPFamilies }),
		get: func(c *Config) string { return string(c.IPFamilies) },
	},
	{
		Path: "inbound.enabled", Name: "inbound", Bool: true, Usage: "capture inbound connections",
		set: boolField("inbound.enabled", func(c *Config) *bool { return &c.Inbound.Enabled }),
		get: func(c *Config) string { return strconv.FormatBool(c.Inbound.Enabled) },
	},
	{
		Path: "inbound.includePorts", Name: "include-inbound-ports", List: true,
		EmptyCaptures: "every inbound port",
		Usage:         "capture only these inbound ports (left out = all; an empty value is refused)",
		set:           listField("inbound.includePorts", ParsePortRange, func(c *Config) *[]PortRange { return &c.Inbound.IncludePorts }),
		get:           func(c *Config) string { return joinList(c.Inbound.IncludePorts) },
	},
	{
		Path: "inbound.excludePorts", Name: "exclude-inbound-ports", List: true,
		Usage: "never capture these inbound ports",
		set:   listField("inbound.excludePorts", ParsePortRange, func(c *Config) *[]PortRange { return &c.Inbound.ExcludePorts }),
		get:   func(c *Config) string { return joinList(c.Inbound.ExcludePorts) },
	},
	{
		Path: "inbound.excludeSourceCIDRs", Name: "exclude-inbound-source-cidrs", List: true,
		Usage: "never capture inbound connections from these sources",
		set:   listField("inbound.excludeSourceCIDRs", ParseCIDR, func(c *Config) *[]netip.Prefix { return &c.Inbound.ExcludeSourceCIDRs }),
		get:   func(c *Config) string { return joinPrefixes(c.Inbound.ExcludeSourceCIDRs) },
	},
	{
		Path: "outbound.enabled", Name: "outbound", Bool: true, Usage: "capture outbound connections",
		set: boolField("outbound.enabled", func(c *Config) *bool { return &c.Outbound.Enabled }),
		get: func(c *Config) string { return strconv.FormatBool(c.Outbound.Enabled) },
	},
	{
		Path: "outbound.includePorts", Name: "include-outbound-ports", List: true,
		EmptyCaptures: "every destination port",
		Usage:         "capture only these destination ports (left out = all; an empty value is refused)",
		set:           listField("outbound.includePorts", ParsePortRange, func(c *Config) *[]PortRange { return &c.Outbound.IncludePorts }),
		get:           func(c *Config) string { return joinList(c.Outbound.IncludePorts) },
	},
	{
		Path: "outbound.excludePorts", Name: "exclude-outbound-ports", List: true,
		Usage: "never capture these destination ports",
		set:   listField("outbound.excludePorts", ParsePortRange, func(c *Config) *[]PortRange { return &c.Outbound.ExcludePorts }),
		get:   func(c *Config) string { return joinList(c.Outbound.ExcludePorts) },
	},
	{
		Path: "outbound.includeCIDRs", Name: "include-outbound-cidrs", List: true,
		EmptyCaptures: "every destination",
		Usage:         "capture only these destinations (left out = all; an empty value is refused); IPv4 and IPv6 mixed",
		set:           listField("outbound.includeCIDRs", ParseCIDR, func(c *Config) *[]netip.Prefix { return &c.Outbound.IncludeCIDRs }),
		get:           func(c *Config) string { return joinPrefixes(c.Outbound.IncludeCIDRs) },
	},
	{
		Path: "outbound.excludeCIDRs", Name: "exclude-outbound-cidrs", List: true,
		Usage: "never capture these destinations; IPv4 and IPv6 mixed",
		set:   listField("outbound.excludeCIDRs", ParseCIDR, func(c *Config) *[]netip.Prefix { return &c.Outbound.ExcludeCIDRs }),
		get:   func(c *Config) string { return joinPrefixes(c.Outbound.ExcludeCIDRs) },
	},
	{
		Path: "outbound.excludeUIDs", Name: "exclude-outbound-uids", List: true,
		Usage: "never capture traffic of these numeric uids (106 or 106-108)",
		set:   listField("outbound.excludeUIDs", ParseIDRange, func(c *Config) *[]IDRange { return &c.Outbound.ExcludeUIDs }),
		get:   func(c *Config) string { return joinList(c.Outbound.ExcludeUIDs) },
	},
	{
		Path: "outbound.excludeGIDs", Name: "exclude-outbound-gids", List: true,
		Usage: "never capture traffic of these numeric gids (106 or 106-108)",
		set:   listField("outbound.excludeGIDs", ParseIDRange, func(c *Config) *[]IDRange { return &c.Outbound.ExcludeGIDs }),
		get:   func(c *Config) string { return joinList(c.Outbound.ExcludeGIDs) },
	},
	{
		Path: "outbound.excludePortsForUIDs", Name: "exclude-outbound-ports-for-uids", List: true,
		Usage: "never capture these ports for these uids: proto:ports:uids, e.g. tcp:53,3000-5000:106-108",
		set:   listField("outbound.excludePortsForUIDs", ParseUIDPortRule, func(c *Config) *[]UIDPortRule { return &c.Outbound.ExcludePortsForUIDs }),
		get:   func(c *Config) string { return joinList(c.Outbound.ExcludePortsForUIDs) },
	},
	{
		Path: "dns.capture", Name: "dns-capture", Usage: "off, resolvconf (the nameservers in dns.resolvConf) or all (every UDP/53)",
		set: enumField("dns.capture", dnsCapture, func(c *Config) *DNSCapture { return &c.DNS.Capture }),
		get: func(c *Config) string { return string(c.DNS.Capture) },
	},
	{
		Path: "dns.port", Name: "dns-port", Usage: "port the proxy's DNS server listens on (UDP)",
		set: portField("dns.port", func(c *Config) *uint16 { return &c.DNS.Port }),
		get: func(c *Config) string { return strconv.Itoa(int(c.DNS.Port)) },
	},
	{
		Path: "dns.resolvConf", Name: "dns-resolv-conf", Usage: "resolv.conf whose nameservers dns capture=resolvconf captures",
		set: scalarField("dns.resolvConf", func(c *Config, s string) error {
			if strings.TrimSpace(s) == "" {
				return invalid(s, "is empty; name a resolv.conf file")
			}
			c.DNS.ResolvConf = s
			return nil
		}),
		get: func(c *Config) string { return c.DNS.ResolvConf },
	},
	{
		Path: "dns.conntrackZoneSplit", Name: "dns-conntrack-zone-split", Bool: true,
		Usage: "keep the proxy's and the app's DNS flows in separate conntrack zones",
		set:   boolField("dns.conntrackZoneSplit", func(c *Config) *bool { return &c.DNS.ConntrackZoneSplit }),
		get:   func(c *Config) string { return strconv.FormatBool(c.DNS.ConntrackZoneSplit) },
	},
	{
		Path: "dropInvalidPackets", Name: "drop-invalid-packets", Bool: true,
		Usage: "drop packets conntrack marks INVALID before they reach the proxy's ports",
		set:   boolField("dropInvalidPackets", func(c *Config) *bool { return &c.DropInvalidPackets }),
		get:   func(c *Config) string { return strconv.FormatBool(c.DropInvalidPackets) },
	},
	{
		Path: "log.enabled", Name: "log", Bool: true, Usage: "log captured connections to the kernel log",
		set: boolField("log.enabled", func(c *Config) *bool { return &c.Log.Enabled }),
		get: func(c *Config) string { return strconv.FormatBool(c.Log.Enabled) },
	},
	{
		Path: "log.prefix", Name: "log-prefix", Usage: "prefix of kernel log lines (at most 28 characters)",
		set: scalarField("log.prefix", func(c *Config, s string) error {
			c.Log.Prefix = s
			return nil
		}),
		get: func(c *Config) string { return c.Log.Prefix },
	},
}
