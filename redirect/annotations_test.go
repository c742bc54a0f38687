package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFromAnnotations(t *testing.T) {
	t.Parallel()
	gid := uint32(1338)
	tests := []struct {
		name        string
		annotations map[string]string
		want        func(c *Config)
	}{
		{
			name:        "no annotations keep the base",
			annotations: nil,
			want:        func(c *Config) {},
		},
		{
			name: "foreign and opt-in annotations are not config",
			annotations: map[string]string{
				"kubectl.kubernetes.io/restartedAt": "now",
				AnnotationRedirect:                  RedirectEnabled,
			},
			want: func(c *Config) {},
		},
		{
			name: "whole document",
			annotations: map[string]string{AnnotationConfig: `
proxy: {uid: 1337, gid: 1338}
mode: tproxy
outbound: {excludePorts: [8080, "9000-9100"]}
`},
			want: func(c *Config) {
				c.Proxy.UID = 1337
				c.Proxy.GID = &gid
				c.Mode = ModeTProxy
				c.Outbound.ExcludePorts = []PortRange{{8080, 8080}, {9000, 9100}}
			},
		},
		{
			name:        "JSON document",
			annotations: map[string]string{AnnotationConfig: `{"inbound":{"excludePorts":[22]}}`},
			want:        func(c *Config) { c.Inbound.ExcludePorts = []PortRange{{22, 22}} },
		},
		{
			name: "short forms",
			annotations: map[string]string{
				"detour.io/exclude-outbound-ports": "8080,9090",
				"detour.io/exclude-outbound-cidrs": "192.0.2.0/24, 2001:db8::/32",
				"detour.io/inbound":                "false",
				"detour.io/proxy-uid":              "1337",
			},
			want: func(c *Config) {
				c.Outbound.ExcludePorts = []PortRange{{8080, 8080}, {9090, 9090}}
				c.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}
				c.Inbound.Enabled = false
				c.Proxy.UID = 1337
			},
		},
		{
			name: "short form wins over the document",
			annotations: map[string]string{
				AnnotationConfig:                   "outbound: {excludePorts: [1, 2]}\nproxy: {uid: 7}",
				"detour.io/exclude-outbound-ports": "3",
			},
			want: func(c *Config) {
				c.Outbound.ExcludePorts = []PortRange{{3, 3}}
				c.Proxy.UID = 7
			},
		},
		{
			name:        "empty short form empties a list",
			annotations: map[string]string{"detour.io/exclude-inbound-ports": ""},
			want:        func(c *Config) { c.Inbound.ExcludePorts = nil },
		},
		{
			name:        "blank exclusion list empties it too",
			annotations: map[string]string{"detour.io/exclude-outbound-uids": " "},
			want:        func(c *Config) { c.Outbound.ExcludeUIDs = nil },
		},
		{
			name:        "document may clear an include list",
			annotations: map[string]string{AnnotationConfig: "outbound: {includeCIDRs: []}"},
			want:        func(c *Config) { c.Outbound.IncludeCIDRs = nil },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			base, err := Preset("istio")
			if err != nil {
				t.Fatal(err)
			}
			want := base.Clone()
			tt.want(&want)
			got, err := FromAnnotations(base, tt.annotations)
			if err != nil {
				t.Fatalf("FromAnnotations: %v", err)
			}
			if diff := cmp.Diff(want, got, cmpAddrs); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(mustPreset(t, "istio"), base, cmpAddrs); diff != "" {
				t.Errorf("FromAnnotations changed its base:\n%s", diff)
			}
		})
	}
}

var cmpAddrs = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func mustPreset(t *testing.T, name string) Config {
	t.Helper()
	c, err := Preset(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFromAnnotationsErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		annotations map[string]string
		want        []string // every one must appear in the message
	}{
		{
			name:        "bad port in short form",
			annotations: map[string]string{"detour.io/exclude-outbound-ports": "8080,70000"},
			want:        []string{"detour.io/exclude-outbound-ports", `"8080,70000"`, `outbound.excludePorts[1]: "70000" is not a port`},
		},
		{
			name:        "misspelt short form",
			annotations: map[string]string{"detour.io/exclude-outbound-port": "8080"},
			want:        []string{`detour.io/exclude-outbound-port: "8080" is not a detour annotation`},
		},
		{
			name:        "bad value in document",
			annotations: map[string]string{AnnotationConfig: "mode: bounce"},
			want:        []string{"annotation detour.io/config", `mode: "bounce" is not one of redirect, tproxy`},
		},
		{
			name:        "document is not YAML",
			annotations: map[string]string{AnnotationConfig: "proxy: ["},
			want:        []string{"annotation detour.io/config", "(document)"},
		},
		{
			name:        "bad boolean",
			annotations: map[string]string{"detour.io/inbound": "maybe"},
			want:        []string{"detour.io/inbound", `inbound.enabled: "maybe" is not a boolean`},
		},
		{
			name: "conflict between fields",
			annotations: map[string]string{
				"detour.io/inbound-port":  "15001",
				"detour.io/outbound-port": "15001",
			},
			want: []string{"config from annotations", `proxy.outboundPort: "15001" is also proxy.inboundPort`},
		},
		{
			name: "first failing annotation in key order",
			annotations: map[string]string{
				"detour.io/exclude-outbound-ports": "x",
				"detour.io/exclude-inbound-ports":  "y",
			},
			want: []string{`detour.io/exclude-inbound-ports "y"`},
		},
		// An include list's empty value captures everything: a template's
		// unset value must not widen the capture (as on the command line).
		{
			name:        "empty include-outbound-cidrs",
			annotations: map[string]string{"detour.io/include-outbound-cidrs": ""},
			want:        []string{`annotation detour.io/include-outbound-cidrs ""`, `outbound.includeCIDRs: "" is empty, which would capture every destination`},
		},
		{
			name:        "blank include-outbound-cidrs",
			annotations: map[string]string{"detour.io/include-outbound-cidrs": "  "},
			want:        []string{`annotation detour.io/include-outbound-cidrs "  "`, "would capture every destination"},
		},
		{
			name:        "empty include-outbound-ports",
			annotations: map[string]string{"detour.io/include-outbound-ports": ""},
			want:        []string{`annotation detour.io/include-outbound-ports ""`, "would capture every destination port"},
		},
		{
			name:        "blank include-inbound-ports",
			annotations: map[string]string{"detour.io/include-inbound-ports": "\t"},
			want:        []string{`annotation detour.io/include-inbound-ports "\t"`, "would capture every inbound port"},
		},
		{
			name: "empty include list over a document that set it",
			annotations: map[string]string{
				AnnotationConfig:                   "outbound: {includeCIDRs: [192.0.2.0/24]}",
				"detour.io/include-outbound-cidrs": "",
			},
			want: []string{`annotation detour.io/include-outbound-cidrs ""`, "would capture every destination"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := FromAnnotations(Default(), tt.annotations)
			if err == nil {
				t.Fatal("FromAnnotations succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not match ErrInvalid", err)
			}
		})
	}
}

func TestRedirectRequested(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		annotations map[string]string
		want        bool
		wantErr     string
	}{
		{name: "absent", annotations: map[string]string{"other": "x"}, want: false},
		{name: "enabled", annotations: map[string]string{AnnotationRedirect: "enabled"}, want: true},
		{name: "disabled", annotations: map[string]string{AnnotationRedirect: "disabled"}, want: false},
		{name: "typo", annotations: map[string]string{AnnotationRedirect: "enable"}, wantErr: `detour.io/redirect: "enable" is not enabled or disabled`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := RedirectRequested(tt.annotations)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("error = %v, want one containing %q matching ErrInvalid", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("RedirectRequested = %v, %v; want %v, nil", got, err, tt.want)
			}
		})
	}
}

func TestEveryFieldHasAValidAnnotationName(t *testing.T) {
	t.Parallel()
	// Kubernetes limits the name part of an annotation key to 63 characters of
	// [A-Za-z0-9-_.], starting and ending with an alphanumeric.
	for _, f := range Fields() {
		key := FieldAnnotation(f)
		name := strings.TrimPrefix(key, AnnotationPrefix)
		if len(name) > 63 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") {
			t.Errorf("field %s: annotation %q is not a valid Kubernetes annotation key", f.Path, key)
		}
		c := Default()
		_, err := FromAnnotations(c, map[string]string{key: f.Get(&c)})
		if f.EmptyCaptures != "" && f.Get(&c) == "" {
			// The default of an include list is empty, which an annotation
			// must not say (an unset template value): leaving it out does.
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("field %s: empty include annotation = %v, want it refused", f.Path, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("field %s: annotation with its default value: %v", f.Path, err)
		}
	}
}

// TestAnnotationErrorsAreBounded: an annotation may hold up to 256 KB, and
// its error was quoted whole — in the CNI plugin's log at every sandbox
// retry, in the webhook's refusal, in the control plane's log and
// /debug/nodes. The value is quoted as its first 200 bytes and its size, as
// the mesh file's errors are.
func TestAnnotationErrorsAreBounded(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x1,", 60_000)
	for _, tc := range []struct {
		name string
		ann  map[string]string
	}{
		{"bad short form", map[string]string{"detour.io/exclude-outbound-ports": huge}},
		{"empty include", map[string]string{"detour.io/include-outbound-ports": strings.Repeat(" ", 200_000)}},
		{"unknown key", map[string]string{"detour.io/exclude-outbound-portz": huge}},
		{"redirect value", map[string]string{AnnotationRedirect: huge}},
		{"value in the config document", map[string]string{AnnotationConfig: `{"proxy": {"uid": "` + strings.Repeat("9", 200_000) + `"}}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := FromAnnotations(Default(), tc.ann)
			if tc.ann[AnnotationRedirect] != "" {
				_, err = RedirectRequested(tc.ann)
			}
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v, want an invalid-input error", err)
			}
			var size int
			for _, v := range tc.ann {
				size = len(v)
			}
			if tc.ann[AnnotationConfig] != "" {
				size = 200_000 // the value, not the document
			}
			if msg := err.Error(); len(msg) > 1024 || !strings.Contains(msg, fmt.Sprintf("… (%d bytes)", size)) {
				t.Errorf("error of %d bytes (%.120q…), want the value's first bytes and its size (%d bytes)", len(msg), msg, size)
			}
		})
	}
}
