package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/redirect"
)

func TestExplainUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no destination", []string{"explain", "--config-only"}, "--to: missing"},
		{"destination without port", []string{"explain", "--config-only", "--to", "192.0.2.1"}, `--to: "192.0.2.1" is not ADDR:PORT`},
		{"port zero", []string{"explain", "--config-only", "--to", "192.0.2.1:0"}, `--to: "192.0.2.1:0" is not ADDR:PORT`},
		{"bad uid", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "--uid", "envoy"}, `--uid: "envoy" is not a numeric uid`},
		{"bad gid", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "--gid", "-1"}, `--gid: "-1" is not a numeric gid`},
		{"tcp and udp", []string{"explain", "--config-only", "--to", "192.0.2.1:53", "--tcp", "--udp"}, "--udp: cannot be combined with --tcp"},
		{"inbound udp", []string{"explain", "--config-only", "--inbound", "--udp", "--to", "192.0.2.1:53"}, "--udp: inbound capture is TCP only"},
		{"inbound uid", []string{"explain", "--config-only", "--inbound", "--uid", "1", "--to", "192.0.2.1:80"}, "--uid/--gid: an inbound connection has no local user"},
		{"both directions", []string{"explain", "--config-only", "--inbound", "--outbound", "--to", "192.0.2.1:80"}, "--inbound: cannot be combined with --outbound"},
		{"install's capture switch", []string{"explain", "--config-only", "--outbound=false", "--to", "192.0.2.1:80"}, "--outbound=false: in explain --outbound gives the connection's direction; set outbound.enabled with DETOUR_OUTBOUND=false"},
		{"bad from", []string{"explain", "--config-only", "--inbound", "--to", "192.0.2.1:80", "--from", "client"}, `--from: "client" is not an IP address`},
		{"mixed families", []string{"explain", "--config-only", "--inbound", "--to", "192.0.2.1:80", "--from", "2001:db8::1"}, "--from: 2001:db8::1 is not of the family of --to 192.0.2.1"},
		{"live udp", []string{"explain", "--live", "--udp", "--to", "192.0.2.1:53"}, "--live: probes outbound TCP only"},
		{"mesh without node", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "--mesh", "mesh.yaml"}, "--mesh and --node-id: give both or neither"},
		{"live config only", []string{"explain", "--live", "--config-only", "--to", "192.0.2.1:80"}, "--live: cannot be combined with --config-only"},
		{"bad config value", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "--exclude-outbound-ports", "x"}, `outbound.excludePorts[0]: "x" is not a port`},
		{"bad output", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "-o", "yaml"}, `--output: "yaml" is not one of text, json`},
		// A script's --uid "$U" with U unset: never "yours" (root's), nor the
		// default client address.
		{"empty uid", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "--uid", ""}, `invalid argument "" for "--uid" flag: an empty value names nothing`},
		{"empty gid", []string{"explain", "--config-only", "--to", "192.0.2.1:80", "--gid", ""}, `invalid argument "" for "--gid" flag: an empty value names nothing`},
		{"empty from", []string{"explain", "--config-only", "--inbound", "--to", "192.0.2.1:80", "--from", ""}, `invalid argument "" for "--from" flag: an empty value names nothing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d; stderr: %s", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing on bad input", stdout)
			}
		})
	}
}

// TestExplainConfigOnly runs explain from the configuration alone (no root,
// nothing read from the namespace but its addresses and IPv6 state) for one
// case per kind of decision, and compares the text with golden files. Inbound
// cases use 127.0.0.1, the one address every namespace has, as the
// workload's; 192.0.2.1 is not the test's, so a connection to it is forwarded.
func TestExplainConfigOnly(t *testing.T) {
	t.Parallel()
	base := []string{"explain", "--config-only", "--ip-families", "ipv4", "--exclude-outbound-ports", "5432",
		"--exclude-outbound-cidrs", "198.51.100.0/24", "--exclude-outbound-uids", "1000-1009",
		"--exclude-outbound-ports-for-uids", "tcp:3000-3999:33", "--exclude-inbound-ports", "22",
		"--exclude-inbound-source-cidrs", "192.0.2.128/25", "--dns-capture", "all"}
	tests := []struct {
		name     string
		args     []string
		field    string
		captured bool
	}{
		{"outbound-captured", []string{"--to", "192.0.2.1:80", "--uid", "60000"}, "outbound.enabled", true},
		{"outbound-excluded-port", []string{"--to", "192.0.2.1:5432", "--uid", "60000"}, "outbound.excludePorts", false},
		{"outbound-excluded-cidr", []string{"--to", "198.51.100.7:80", "--uid", "60000"}, "outbound.excludeCIDRs", false},
		{"outbound-excluded-uid", []string{"--to", "192.0.2.1:80", "--uid", "1003"}, "outbound.excludeUIDs", false},
		{"outbound-ports-for-uid", []string{"--to", "192.0.2.1:3306", "--uid", "33"}, "outbound.excludePortsForUIDs", false},
		{"outbound-proxy", []string{"--to", "192.0.2.1:80", "--uid", "5678"}, "proxy.uid", false},
		{"outbound-loopback", []string{"--to", "127.0.0.1:80", "--uid", "60000"}, "", false},
		{"ipv6-not-captured", []string{"--to", "[2001:db8::1]:80", "--uid", "60000"}, "ipFamilies", false},
		{"dns-captured", []string{"--udp", "--to", "192.0.2.53:53", "--uid", "60000"}, "dns.capture", true},
		{"inbound-captured", []string{"--inbound", "--to", "127.0.0.1:8080", "--from", "203.0.113.9"}, "inbound.enabled", true},
		{"inbound-excluded-port", []string{"--inbound", "--to", "127.0.0.1:22", "--from", "203.0.113.9"}, "inbound.excludePorts", false},
		{"inbound-excluded-source", []string{"--inbound", "--to", "127.0.0.1:8080", "--from", "192.0.2.200"}, "inbound.excludeSourceCIDRs", false},
		{"inbound-forwarded", []string{"--inbound", "--to", "192.0.2.1:8080", "--from", "203.0.113.9"}, "", false},
		{"inbound-loop-guard", []string{"--inbound", "--to", "127.0.0.1:15001", "--from", "203.0.113.9"}, "proxy.outboundPort", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append(append([]string{}, base...), tt.args...)
			code, stdout, stderr := runCLI(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			golden.Check(t, golden.Path(t, tt.name), []byte(stdout))
			if !strings.Contains(stdout, "config:     "+map[bool]string{true: "redirected", false: "left alone"}[tt.captured]) {
				t.Errorf("want captured %v:\n%s", tt.captured, stdout)
			}
			if tt.field != "" && !strings.Contains(stdout, ": "+tt.field) {
				t.Errorf("the reason does not name %s:\n%s", tt.field, stdout)
			}
		})
	}
}

// TestExplainText renders explanations that compare the configuration with
// installed rules (agreeing, drifted, a foreign rule first, undecidable, a
// live probe) and compares them with golden files.
func TestExplainText(t *testing.T) {
	t.Parallel()
	cfg := redirect.Default()
	cfg.IPFamilies = redirect.IPFamiliesIPv4
	p, err := redirect.NewPlan(cfg, redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	conn := redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: netip.MustParseAddr("192.0.2.1"), Port: 80, UID: 60000, GID: 60000}
	decided := p.Capture.Decide(conn)
	hook := "-t nat -A OUTPUT -p tcp -m comment --comment detour -j DETOUR_OUTPUT"
	jump := "-t nat -A DETOUR_OUTPUT -p tcp -j DETOUR_OUT_REDIRECT"
	tests := []struct {
		name  string
		kv    *redirect.KernelVerdict
		live  *liveOutcome
		envoy *envoyRoute
	}{
		{"not-installed", nil, nil, nil},
		{"agree", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesNFT, Captured: true, Port: 15001, Action: "redirect",
			Rule: "-t nat -A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001", Path: []string{hook, jump}}, nil, nil},
		{"hand-deleted-rule", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesNFT, Action: "jump", Rule: jump,
			Path: []string{hook, "-t nat DETOUR_OUT_REDIRECT: end of chain (no rule matched; back to DETOUR_OUTPUT)"}}, nil, nil},
		{"foreign-rule-first", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesLegacy, Action: "accept",
			Rule: "-t nat -A OUTPUT -d 192.0.2.0/24 -p tcp -j ACCEPT", Foreign: true}, nil, nil},
		{"foreign-redirect", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesNFT, Captured: true, Port: 9999, Action: "redirect",
			Rule: "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 9999", Foreign: true}, nil, nil},
		{"cannot-tell", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesNFT, Rule: "-t nat -A OUTPUT -m statistic --mode random --probability 0.5 -j ACCEPT",
			Uncertain: `rule "-A OUTPUT -m statistic --mode random --probability 0.5 -j ACCEPT" uses -m statistic --mode random`}, nil, nil},
		{"live", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesNFT, Captured: true, Port: 15001, Action: "redirect",
			Rule: "-t nat -A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001", Path: []string{hook, jump}},
			&liveOutcome{Probed: true, Arrived: true, Port: 15001, OriginalDst: "192.0.2.1:80", Agrees: true}, nil},
		{"envoy", &redirect.KernelVerdict{Backend: redirect.BackendIPTablesNFT, Captured: true, Port: 15001, Action: "redirect",
			Rule: "-t nat -A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001", Path: []string{hook, jump}}, nil,
			&envoyRoute{Listener: "outbound", FilterChain: "passthrough", Cluster: "passthrough", Passthrough: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := explanation{Connection: conn, Config: decided, AnsweredBy: "config", Live: tt.live, Envoy: tt.envoy}
			e.Captured, e.To, e.Port = decided.Captured, decided.To, decided.Port
			if kv := tt.kv; kv != nil {
				e.Installed, e.Kernel = true, kv
				e.Differences = compareVerdicts(decided, *kv)
				if kv.Uncertain == "" {
					e.AnsweredBy, e.Captured, e.Port, e.To = "kernel", kv.Captured, kv.Port, ""
					if kv.Captured {
						e.To = portRole(p.Capture, kv.Port)
					}
				}
			}
			e.Agree = e.Installed && len(e.Differences) == 0
			var b bytes.Buffer
			if err := writeExplanation(&b, e, false); err != nil {
				t.Fatal(err)
			}
			golden.Check(t, golden.Path(t, tt.name), b.Bytes())
		})
	}
}

// TestExplainReadsCaptureSwitchesFromFiles: explain's --inbound and --outbound
// are directions, so inbound.enabled and outbound.enabled come from files (and
// the environment) — and they are read.
func TestExplainReadsCaptureSwitchesFromFiles(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "detour.yaml")
	if err := os.WriteFile(file, []byte("outbound: {enabled: false}\ninbound: {enabled: false}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--outbound", "--to", "192.0.2.1:80", "--uid", "60000"},
		{"--inbound", "--to", "127.0.0.1:80", "--from", "192.0.2.9"},
	} {
		code, stdout, stderr := runCLI(t, append([]string{"explain", "--config-only", "--config", file}, args...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if !strings.Contains(stdout, "config:     left alone") || !strings.Contains(stdout, ".enabled false") {
			t.Errorf("explain %v with capture off in the file:\n%s", args, stdout)
		}
	}
}
