package redirect

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecodeSetsOnlyNamedFields(t *testing.T) {
	t.Parallel()
	c := Default()
	doc := `
proxy:
  uid: 1337
  gid: 1338
outbound:
  excludePorts: [80, "1000-2000"]
  excludeCIDRs: ["192.0.2.1/24", 2001:db8::/32, 198.51.100.7]
  excludePortsForUIDs: ["tcp:53,3000-5000:106-108"]
dns:
  capture: off
`
	if err := c.Decode([]byte(doc)); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	want := Default()
	want.Proxy.UID = 1337
	gid := uint32(1338)
	want.Proxy.GID = &gid
	want.Outbound.ExcludePorts = []PortRange{{80, 80}, {1000, 2000}}
	want.Outbound.ExcludeCIDRs = []netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("198.51.100.7/32"),
	}
	want.Outbound.ExcludePortsForUIDs = []UIDPortRule{{TCP, []PortRange{{53, 53}, {3000, 5000}}, []IDRange{{106, 108}}}}
	if diff := cmp.Diff(want, c, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestDecodeErrorsNameFieldAndValue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc, want string
	}{
		{"port out of range", "outbound:\n  excludePorts: [80, 443, 70000]", `outbound.excludePorts[2]: "70000" is not a port`},
		{"bad cidr", "inbound:\n  excludeSourceCIDRs: [abc]", `inbound.excludeSourceCIDRs[0]: "abc" is not a CIDR`},
		{"unknown mode", "mode: bounce", `mode: "bounce" is not one of redirect, tproxy`},
		{"unknown key", "outbound:\n  excludePortz: [1]", `outbound.excludePortz: "[1]" is not a known field`},
		{"group as scalar", "proxy: 5", `proxy: "5" is not a mapping`},
		{"list for scalar", "proxy:\n  uid: [1, 2]", `proxy.uid: "[1,2]" is a list, not a single value`},
		{"uid name", "outbound:\n  excludeUIDs: [root]", `outbound.excludeUIDs[0]: "root" is not a numeric id`},
		{"malformed yaml", "proxy: [", `(document):`},
		{"v4 passthrough as v6", "proxy:\n  inboundPassthroughSource:\n    ipv6: 127.0.0.6", `proxy.inboundPassthroughSource.ipv6: "127.0.0.6" is not an IPv6 address`},
		{"duplicate yaml key", "outbound:\n  excludePorts: [80]\n  excludePorts: [90]", `outbound.excludePorts (line 3) appears twice in the same mapping; give each key once`},
		{"duplicate json key", `{"mode": "tproxy", "mode": "redirect"}`, `mode (line 1) appears twice in the same mapping`},
		{"duplicate key whose name is also elsewhere", "outbound:\n  excludePorts: [80]\ninbound:\n  excludePorts: [22]\n  excludePorts: [23]", `inbound.excludePorts (line 5) appears twice in the same mapping`},
		{"duplicate nested key", "proxy:\n  inboundPassthroughSource:\n    ipv4: 127.0.0.6\n    ipv4: 127.0.0.7", `proxy.inboundPassthroughSource.ipv4 (line 4) appears twice in the same mapping`},
		{"duplicate json key nested", "{\"outbound\": {\"excludePorts\": [80],\n \"excludePorts\": [90]}}", `outbound.excludePorts (line 2) appears twice in the same mapping`},
		{"duplicate group", "outbound:\n  excludePorts: [80]\noutbound:\n  excludePorts: [90]", `outbound (line 3) appears twice in the same mapping`},
		{"duplicate key with a block list", "outbound:\n  excludePorts:\n    - 80\n  excludePorts:\n    - 90", `outbound.excludePorts (line 4) appears twice in the same mapping`},
		{"empty element in a string list", `{"outbound": {"excludePorts": "80,,90"}}`, `outbound.excludePorts: "80,,90" has an empty list element`},
		{"empty key", "\"\": 1", `"": "1" is not a known field (an empty key)`},
		{"empty nested key", "proxy:\n  \"\": 1", `proxy."": "1" is not a known field (an empty key)`},
		{"null scalar", "proxy:\n  uid: null", `proxy.uid: "null" is empty; give a value`},
		{"empty scalar (an empty template value)", "proxy:\n  uid:\n", `proxy.uid: "null" is empty`},
		{"null json scalar", `{"mode": null}`, `mode: "null" is empty`},
		{"null boolean", "outbound:\n  enabled: ~", `outbound.enabled: "null" is empty`},
		// The second document's settings were dropped without a word.
		{"two documents", "---\nproxy: {uid: 1337}\n---\noutbound: {excludePorts: [5432]}\n", `(document): "---" starts another YAML document (2 hold settings)`},
		{"a document after an end marker", "proxy: {uid: 1337}\n...\nmode: tproxy\n", `starts another YAML document`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			before := c.Clone()
			err := c.Decode([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode error = %v, want it to contain %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not match ErrInvalid", err)
			}
			if diff := cmp.Diff(before, c, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("failed Decode changed the config:\n%s", diff)
			}
		})
	}
}

// TestDecodeDocumentMarkers: markers around one document, empty documents
// and "---" inside a value are not a second document.
func TestDecodeDocumentMarkers(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{
		"---\nproxy: {uid: 1337}\n",
		"---\nproxy: {uid: 1337}\n...\n",
		"# header\n---\nproxy: {uid: 1337}\n---\n# nothing here\n",
		"proxy: {uid: 1337}\nlog: {prefix: \"a---b...\"}\n",
	} {
		c := Default()
		if err := c.Decode([]byte(doc)); err != nil || c.Proxy.UID != 1337 {
			t.Errorf("Decode(%q) = %v, uid %d; want uid 1337", doc, err, c.Proxy.UID)
		}
	}
}

func TestSetStringForms(t *testing.T) {
	t.Parallel()
	c := Default()
	for path, value := range map[string]string{
		"outbound.excludePortsForUIDs": "tcp:53,3000-5000:106-108,udp:53:107",
		"outbound.excludeUIDs":         "106, 200-210",
		"inbound.enabled":              "false",
		"proxy.gid":                    "1337",
	} {
		if err := c.Set(path, value); err != nil {
			t.Fatalf("Set(%q, %q): %v", path, value, err)
		}
	}
	f, _ := FieldByPath("outbound.excludePortsForUIDs")
	if got, want := f.Get(&c), "tcp:53,3000-5000:106-108,udp:53:107"; got != want {
		t.Errorf("excludePortsForUIDs = %q, want %q", got, want)
	}
	if c.Inbound.Enabled {
		t.Error("inbound.enabled is still true")
	}
	if err := c.Set("proxy.outboundPort", "0"); err == nil || !strings.Contains(err.Error(), `proxy.outboundPort: "0" is not a port`) {
		t.Errorf("Set port 0: %v", err)
	}
	if c.Proxy.OutboundPort != 15001 {
		t.Errorf("failed Set changed outboundPort to %d", c.Proxy.OutboundPort)
	}
}

func TestFieldsRoundTrip(t *testing.T) {
	t.Parallel()
	// Every field's string form, set again, gives the same config.
	c, err := Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	gid := uint32(7)
	c.Proxy.GID = &gid
	for _, f := range Fields() {
		d := Default()
		if err := d.Set(f.Path, f.Get(&c)); err != nil {
			t.Errorf("Set(%s, %q): %v", f.Path, f.Get(&c), err)
			continue
		}
		if got, want := f.Get(&d), f.Get(&c); got != want {
			t.Errorf("%s: round trip gave %q, want %q", f.Path, got, want)
		}
	}
}

func TestValidateConflicts(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Proxy.OutboundPort = c.Proxy.InboundPort
	c.DNS.Capture = DNSCaptureAll
	c.DNS.Port = c.Proxy.InboundPort
	c.Backend = BackendEBPF
	c.Mode = ModeTProxy
	err := c.Validate()
	for _, want := range []string{
		`proxy.outboundPort: "15006" is also proxy.inboundPort`,
		`dns.port: "15006" is also a proxy TCP port`,
		`mode: "tproxy" is not available with backend ebpf`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to contain %q", err, want)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
	accel := Default()
	accel.EBPF.Accelerate = true
	if err := accel.Validate(); err == nil || !strings.Contains(err.Error(), `ebpf.accelerate: "true" needs backend ebpf`) {
		t.Errorf("Validate() of ebpf.accelerate with backend auto = %v, want it refused", err)
	}
	accel.Backend = BackendEBPF
	if err := accel.Validate(); err != nil {
		t.Errorf("Validate() of ebpf.accelerate with backend ebpf = %v", err)
	}
}

// TestValidateRefusesNoID: 4294967295 is (uid_t)-1, no user at all; a
// Config built in Go (the control plane, the CNI plugin) that carries it is
// refused like the same value from a flag, not left to iptables to fail.
func TestValidateRefusesNoID(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Proxy.UID = 1<<32 - 1
	gid := uint32(1<<32 - 1)
	c.Proxy.GID = &gid
	c.Outbound.ExcludeUIDs = []IDRange{{First: 0, Last: 1<<32 - 1}}
	c.Outbound.ExcludePortsForUIDs = []UIDPortRule{{TCP, []PortRange{{53, 53}}, []IDRange{{1<<32 - 1, 1<<32 - 1}}}}
	err := c.Validate()
	for _, want := range []string{
		`proxy.uid: "4294967295" is not a numeric id (0-4294967294`,
		`proxy.gid: "4294967295" is not a numeric id`,
		`outbound.excludeUIDs[0]: "0-4294967295" is not a numeric id or id range (0-4294967294)`,
		`outbound.excludePortsForUIDs[0].uids[0]: "4294967295" is not a numeric id or id range`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to contain %q", err, want)
		}
	}
	c = Default()
	c.Outbound.ExcludeUIDs = []IDRange{{First: 0, Last: MaxID}}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() of excludeUIDs 0-4294967294 = %v", err)
	}
}

func TestPresets(t *testing.T) {
	t.Parallel()
	istio, err := Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	if istio.Proxy.UID != 1337 || len(istio.Inbound.ExcludePorts) != 4 || istio.Inbound.ExcludePorts[0] != (PortRange{15008, 15008}) {
		t.Errorf("istio preset = uid %d, inbound excludes %v", istio.Proxy.UID, istio.Inbound.ExcludePorts)
	}
	if _, err := Preset("linkerd"); err == nil || !strings.Contains(err.Error(), `preset: "linkerd" is not one of istio, kuma`) {
		t.Errorf("Preset(linkerd) = %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("proxy:\n  uid: 1\noutbound:\n  excludePorts: [1, \"2-3\"]\n")
	f.Add(`{"dns":{"capture":"all","port":53}}`)
	f.Add("outbound:\n  excludePortsForUIDs: tcp:1,2:3\n")
	f.Fuzz(func(t *testing.T, doc string) {
		c := Default()
		before := c.Clone()
		if err := c.Decode([]byte(doc)); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			if !cmp.Equal(before, c, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Fatal("failed Decode changed the config")
			}
			return
		}
		// Whatever decoded renders back into the same config.
		for _, fl := range Fields() {
			d := Default()
			if err := d.Set(fl.Path, fl.Get(&c)); err != nil {
				t.Fatalf("Set(%s, %q) after Decode: %v", fl.Path, fl.Get(&c), err)
			}
		}
	})
}

func FuzzParsers(f *testing.F) {
	for _, s := range []string{"80", "1-2", "192.0.2.0/24", "::1", "tcp:53:1", "4294967295", "-", "65536"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParsePortRange(s); err == nil {
			if r.First == 0 || r.Last < r.First {
				t.Fatalf("ParsePortRange(%q) = %v", s, r)
			}
			if back, err := ParsePortRange(r.String()); err != nil || back != r {
				t.Fatalf("ParsePortRange(%q) round trip = %v, %v", r.String(), back, err)
			}
		}
		if r, err := ParseIDRange(s); err == nil && r.Last < r.First {
			t.Fatalf("ParseIDRange(%q) = %v", s, r)
		}
		if p, err := ParseCIDR(s); err == nil {
			if p != p.Masked() || p.Addr().Is4In6() {
				t.Fatalf("ParseCIDR(%q) = %v", s, p)
			}
		}
		if r, err := ParseUIDPortRule(s); err == nil {
			if back, err := ParseUIDPortRule(r.String()); err != nil || back.String() != r.String() {
				t.Fatalf("ParseUIDPortRule round trip of %q: %v, %v", s, back, err)
			}
		}
	})
}

// TestEmptyListElements: "80,,90" (an unset variable between commas) is
// refused naming the field; an empty value is still the empty list.
func TestEmptyListElements(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ path, value string }{
		{"outbound.excludePorts", "80,,90"},
		{"outbound.excludePorts", "80,"},
		{"outbound.excludeCIDRs", ",192.0.2.0/24"},
		{"outbound.excludePortsForUIDs", "tcp:53:106,,udp:53:107"},
		{"inbound.includePorts", " , "},
	} {
		c := Default()
		err := c.Set(tt.path, tt.value)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.path || fe.Value != tt.value || !errors.Is(err, ErrInvalid) {
			t.Errorf("Set(%s, %q) = %v, want a *FieldError naming the field and value", tt.path, tt.value, err)
		}
	}
	c := Default()
	if err := c.Set("outbound.excludePorts", "80"); err != nil {
		t.Fatal(err)
	}
	if err := c.Set("outbound.excludePorts", ""); err != nil || len(c.Outbound.ExcludePorts) != 0 {
		t.Errorf("Set(outbound.excludePorts, \"\") = %v, %v; want the empty list", err, c.Outbound.ExcludePorts)
	}
}

// TestNullIsEmpty: a key with nothing after it (or null) is the empty value:
// it empties a list and unsets proxy.gid, and never puts back a built-in
// default over a preset's value (scalars refuse it, TestDecodeErrorsNameFieldAndValue).
func TestNullIsEmpty(t *testing.T) {
	t.Parallel()
	c, err := Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	gid := uint32(7)
	c.Proxy.GID = &gid
	if err := c.Decode([]byte("inbound:\n  excludePorts:\nproxy:\n  gid: null\n")); err != nil {
		t.Fatal(err)
	}
	if len(c.Inbound.ExcludePorts) != 0 || c.Proxy.GID != nil || c.Proxy.UID != 1337 {
		t.Errorf("after nulls: inbound.excludePorts %v, proxy.gid %v, proxy.uid %d; want empty, unset, 1337", c.Inbound.ExcludePorts, c.Proxy.GID, c.Proxy.UID)
	}
}

// TestDecodeRefusesLeadingZeroNumbers: YAML reads an unquoted number with a
// leading zero as octal, so `uid: 01337` installed proxy uid 735 (the proxy's
// own traffic then loops through itself) and `excludePorts: [0443]` excluded
// port 291 — while the same 01337 is 1337 as a flag, an environment variable
// or a quoted value. Such a number is refused, naming the field, the value and
// what YAML made of it; quoted it is decimal, 0o… is octal on purpose.
func TestDecodeRefusesLeadingZeroNumbers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, doc, want string }{
		{"uid", "proxy: {uid: 01337}", `proxy.uid: "01337" has a leading zero, which YAML reads as octal (735)`},
		{"block uid", "proxy:\n  uid: 01337\n", `proxy.uid: "01337" has a leading zero`},
		{"port in a list", "outbound:\n  excludePorts: [80, 0443]", `outbound.excludePorts[1]: "0443" has a leading zero, which YAML reads as octal (291)`},
		{"port in a block list", "outbound:\n  excludePorts:\n    - 80\n    - 0443\n", `outbound.excludePorts[1]: "0443" has a leading zero`},
		{"inbound port", "proxy: {inboundPort: 015006}", `proxy.inboundPort: "015006" has a leading zero, which YAML reads as octal (6662)`},
		{"json-looking document", `{"proxy": {"uid": 01337}}`, `proxy.uid: "01337" has a leading zero`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			err := c.Decode([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode(%q) = %v (proxy.uid %d), want an invalid-input error containing %q", tt.doc, err, c.Proxy.UID, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		name, doc string
		uid       uint32
	}{
		{"quoted leading zero is decimal", `proxy: {uid: "01337"}`, 1337},
		{"explicit octal", "proxy: {uid: 0o2471}", 1337},
		{"zero", "proxy: {uid: 0}", 0},
		{"plain", "proxy: {uid: 1337}\noutbound: {excludeCIDRs: [10.0.0.0/8, 2001:db8::/32], excludePorts: [1000-2000]}", 1337},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			if err := c.Decode([]byte(tt.doc)); err != nil || c.Proxy.UID != tt.uid {
				t.Errorf("Decode(%q) = %v, proxy.uid %d; want nil, %d", tt.doc, err, c.Proxy.UID, tt.uid)
			}
		})
	}
}

// TestDecodeRefusesBooleansForWords: YAML reads an unquoted on, off, yes, no,
// y, n as a boolean. `log: {prefix: yes}` logged with the prefix "true", and
// `dns: {capture: on}` was refused as `dns.capture: "true"`, a value nobody
// wrote. A boolean where a word is wanted is refused, saying so; `capture:
// off`, and any other YAML false (no, n, false), stays the mode off, as
// documented; a YAML true names no mode (resolvconf or all) and is refused.
func TestDecodeRefusesBooleansForWords(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, doc, want string }{
		{"capture on", "dns: {capture: on}", `dns.capture: "true" is a YAML boolean (an unquoted on, off, yes, no, y, n, true or false): quote the value you mean`},
		{"capture yes", "dns: {capture: yes}", `dns.capture: "true" is a YAML boolean`},
		{"prefix yes", "log: {enabled: true, prefix: yes}", `log.prefix: "true" is a YAML boolean`},
		{"mode no", "mode: no", `mode: "false" is a YAML boolean`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			if err := c.Decode([]byte(tt.doc)); err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Errorf("Decode(%q) = %v (log.prefix %q); want an invalid-input error containing %q", tt.doc, err, c.Log.Prefix, tt.want)
			}
		})
	}
	// Any YAML false is the mode off, as docs/config.md says: a user who
	// wrote `capture: no` or `capture: false` means no DNS capture.
	for _, doc := range []string{"dns: {capture: no}", "dns: {capture: false}", "dns: {capture: n}", "dns: {capture: False}", `{"dns": {"capture": false}}`} {
		c := Default()
		c.DNS.Capture = DNSCaptureAll
		if err := c.Decode([]byte(doc)); err != nil || c.DNS.Capture != DNSCaptureOff {
			t.Errorf("Decode(%q) = %v, dns.capture %q; want nil, off", doc, err, c.DNS.Capture)
		}
	}
	c := Default()
	if err := c.Decode([]byte("dns: {capture: off}\nlog: {enabled: yes, prefix: \"yes\"}\ninbound: {enabled: off}")); err != nil || c.DNS.Capture != DNSCaptureOff || c.Log.Prefix != "yes" || !c.Log.Enabled || c.Inbound.Enabled {
		t.Errorf("Decode of capture: off, a quoted prefix and boolean switches = %v, %+v %+v %v", err, c.DNS, c.Log, c.Inbound.Enabled)
	}
}

// TestValidateBoundsItsErrors: a config with thousands of bad entries (a
// 256 KB detour.io/config annotation holds that many) is refused with its
// first errors and a count, each value quoted bounded — the error goes to the
// CNI plugin's log at every sandbox retry, into the webhook's refusal and the
// control plane's /debug/nodes.
func TestValidateBoundsItsErrors(t *testing.T) {
	t.Parallel()
	c := Default()
	long := make([]PortRange, 3000)
	for i := range long {
		long[i] = PortRange{First: uint16(1000 + i), Last: uint16(1000 + i)}
	}
	for i := 0; i < 5000; i++ {
		c.Outbound.ExcludePortsForUIDs = append(c.Outbound.ExcludePortsForUIDs, UIDPortRule{Protocol: "sctp", Ports: long})
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() of 5,000 bad excludePortsForUIDs (no uid, protocol sctp: two errors each) = nil")
	}
	msg := err.Error()
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("Validate() = %.200s, does not match ErrInvalid", msg)
	}
	for _, want := range []string{"outbound.excludePortsForUIDs[0]", `has protocol "sctp"`, "and 9980 more errors"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Validate() = %.500s…, want it to contain %q", msg, want)
		}
	}
	if len(msg) > 16<<10 {
		t.Errorf("Validate() error is %d bytes, want at most 16 KiB: %.300s…", len(msg), msg)
	}
}
