package cni

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/redirect"
)

// TestAddAnnotations runs ADD with the real decoder, redirect.FromAnnotations:
// whole documents, short forms, and bad values that must fail the ADD naming
// the annotation and the value.
func TestAddAnnotations(t *testing.T) {
	t.Parallel()
	excl := redirect.Default()
	excl.Outbound.ExcludePorts = []redirect.PortRange{{First: 5432, Last: 5432}, {First: 8000, Last: 8100}}
	doc := redirect.Default()
	doc.Proxy.UID = 1337
	doc.Inbound.ExcludePorts = []redirect.PortRange{{First: 15090, Last: 15090}}
	both := doc
	both.Proxy.UID = 4242
	accel := redirect.Default()
	accel.Backend = redirect.BackendEBPF
	accel.EBPF.Accelerate = true

	tests := []struct {
		name        string
		annotations map[string]string
		want        *redirect.Config
		wantMsg     []string // substrings of the error (code CodeInvalidAnnotation)
	}{
		{name: "defaults", annotations: map[string]string{}, want: ptr(redirect.Default())},
		{name: "short form", annotations: map[string]string{"detour.io/exclude-outbound-ports": "5432,8000-8100"}, want: &excl},
		{name: "whole document", annotations: map[string]string{"detour.io/config": "proxy:\n  uid: 1337\ninbound:\n  excludePorts: [15090]\n"}, want: &doc},
		{name: "short form wins over the document", annotations: map[string]string{"detour.io/config": `{"proxy":{"uid":1337},"inbound":{"excludePorts":[15090]}}`, "detour.io/proxy-uid": "4242"}, want: &both},
		{name: "bad port", annotations: map[string]string{"detour.io/exclude-outbound-ports": "5432,70000"}, wantMsg: []string{"detour.io/exclude-outbound-ports", "70000"}},
		{name: "bad document", annotations: map[string]string{"detour.io/config": "proxy:\n  inboundPort: nope\n"}, wantMsg: []string{"detour.io/config", "proxy.inboundPort", "nope"}},
		{name: "misspelt annotation", annotations: map[string]string{"detour.io/exclude-outbound-port": "5432"}, wantMsg: []string{"detour.io/exclude-outbound-port", "5432"}},
		{name: "acceleration without ebpf", annotations: map[string]string{"detour.io/ebpf-accelerate": "true"}, wantMsg: []string{"ebpf.accelerate", "needs backend ebpf"}},
		{name: "acceleration with ebpf", annotations: map[string]string{"detour.io/backend": "ebpf", "detour.io/ebpf-accelerate": "true"}, want: &accel},
		{name: "empty include list", annotations: map[string]string{"detour.io/include-outbound-cidrs": ""}, wantMsg: []string{`detour.io/include-outbound-cidrs ""`, "would capture every destination"}},
		{name: "blank include list", annotations: map[string]string{"detour.io/include-inbound-ports": " "}, wantMsg: []string{`detour.io/include-inbound-ports " "`, "would capture every inbound port"}},
		{name: "empty exclusion list", annotations: map[string]string{"detour.io/exclude-outbound-ports": ""}, want: ptr(redirect.Default())},
		{name: "node file named by the pod", annotations: map[string]string{"detour.io/dns-capture": "resolvconf", "detour.io/dns-resolv-conf": "/etc/shadow"}, wantMsg: []string{"dns.resolvConf", "/etc/shadow", "cannot be set by a pod annotation"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ann := map[string]string{redirect.AnnotationRedirect: redirect.RedirectEnabled}
			for k, v := range tt.annotations {
				ann[k] = v
			}
			e := newEnv(t, []any{pod("plain", "web", ann)}...)
			err := e.p.Add(e.args("c1", podArgs("plain", "web"), e.conf("1.1.0", prevResults["1.1.0"], nil)))
			if tt.wantMsg != nil {
				if ErrorCode(err) != CodeInvalidAnnotation {
					t.Fatalf("err = %v (code %d), want code %d", err, ErrorCode(err), CodeInvalidAnnotation)
				}
				for _, m := range tt.wantMsg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q does not name %q", err, m)
					}
				}
				if len(e.net.Calls()) != 0 || e.stdout.Len() != 0 {
					t.Errorf("engine calls %v, stdout %q after a bad annotation", e.net.Calls(), e.stdout.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(*tt.want, e.net.installed[testNetns], cmpNet); d != "" {
				t.Errorf("installed config (-want +got):\n%s", d)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
