package main

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/redirect"
)

// parseConfig runs the config sources as a command line would: flags parsed
// from args, env from the map, stdin from the string.
func parseConfig(t *testing.T, args []string, env map[string]string, stdin string) (redirect.Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o := &configOptions{
		environ:  func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		envNames: func() []string { return slices.Collect(maps.Keys(env)) },
	}
	bindConfigFlags(fs, o)
	if err := fs.Parse(args); err != nil {
		return redirect.Config{}, err
	}
	return o.load(strings.NewReader(stdin))
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := filepath.Join(dir, "first.yaml")
	second := filepath.Join(dir, "second.yaml")
	os.WriteFile(first, []byte("proxy:\n  uid: 100\n  inboundPort: 16006\noutbound:\n  excludePorts: [1]\n"), 0o644)
	os.WriteFile(second, []byte("proxy:\n  uid: 200\n"), 0o644)

	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		stdin   string
		uid     uint32
		inPort  uint16
		exclude string
	}{
		{name: "defaults", uid: 5678, inPort: 15006},
		{name: "preset", args: []string{"--preset", "istio"}, uid: 1337, inPort: 15006, exclude: "15008,15090,15021,15020"},
		{name: "files later wins over preset", args: []string{"--preset", "istio", "--config", first, "--config", second}, uid: 200, inPort: 16006, exclude: "15008,15090,15021,15020"},
		{name: "env beats files", args: []string{"--config", first}, env: map[string]string{"DETOUR_PROXY_UID": "300"}, uid: 300, inPort: 16006},
		{name: "flags beat env", args: []string{"--config", first, "--proxy-uid", "400"}, env: map[string]string{"DETOUR_PROXY_UID": "300"}, uid: 400, inPort: 16006},
		{name: "env preset and config", env: map[string]string{"DETOUR_PRESET": "istio", "DETOUR_CONFIG": second}, uid: 200, inPort: 15006, exclude: "15008,15090,15021,15020"},
		{name: "stdin", args: []string{"--config", "-"}, stdin: `{"proxy": {"uid": 9}}`, uid: 9, inPort: 15006},
		{name: "empty env clears a list", args: []string{"--preset", "istio"}, env: map[string]string{"DETOUR_EXCLUDE_INBOUND_PORTS": ""}, uid: 1337, inPort: 15006},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig(t, tt.args, tt.env, tt.stdin)
			if err != nil {
				t.Fatal(err)
			}
			f, _ := redirect.FieldByPath("inbound.excludePorts")
			if c.Proxy.UID != tt.uid || c.Proxy.InboundPort != tt.inPort || f.Get(&c) != tt.exclude {
				t.Errorf("uid %d, inboundPort %d, inbound excludes %q; want %d, %d, %q",
					c.Proxy.UID, c.Proxy.InboundPort, f.Get(&c), tt.uid, tt.inPort, tt.exclude)
			}
		})
	}
}

func TestConfigErrorsNameSourceFieldAndValue(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("outbound:\n  excludeCIDRs: [192.0.2.0/24, abc]\n"), 0o644)
	broken := filepath.Join(dir, "broken.yaml")
	os.WriteFile(broken, []byte("proxy: [\n"), 0o644)
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o644)
	comments := filepath.Join(dir, "comments.yaml")
	os.WriteFile(comments, []byte("# proxy:\n#   uid: 1337\n---\n"), 0o644)
	huge := filepath.Join(dir, "huge.yaml")
	os.WriteFile(huge, bytes.Repeat([]byte("# padding\n"), redirect.MaxDocument/10+1), 0o644)

	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		wants []string
	}{
		{"flag port", []string{"--exclude-outbound-ports", "80,443,70000"}, nil, []string{"--exclude-outbound-ports", `outbound.excludePorts[2]: "70000" is not a port`}},
		{"flag mode", []string{"--mode", "bounce"}, nil, []string{"--mode", `mode: "bounce" is not one of redirect, tproxy`}},
		// An unset variable made these capture everything.
		{"empty include cidrs flag", []string{"--include-outbound-cidrs", ""}, nil, []string{"--include-outbound-cidrs", `outbound.includeCIDRs: "" is empty, which would capture every destination`}},
		{"blank include ports flag", []string{"--include-outbound-ports", " "}, nil, []string{"--include-outbound-ports", `outbound.includePorts: " " is empty, which would capture every destination port`}},
		{"empty include inbound ports env", nil, map[string]string{"DETOUR_INCLUDE_INBOUND_PORTS": ""}, []string{"DETOUR_INCLUDE_INBOUND_PORTS", `inbound.includePorts: "" is empty, which would capture every inbound port`}},
		{"env uid", nil, map[string]string{"DETOUR_PROXY_UID": "envoy"}, []string{"DETOUR_PROXY_UID", `proxy.uid: "envoy" is not a numeric id`}},
		{"file cidr", []string{"--config", bad}, nil, []string{"config file " + bad, `outbound.excludeCIDRs[1]: "abc" is not a CIDR`}},
		{"malformed yaml", []string{"--config", broken}, nil, []string{"config file " + broken, "is not valid YAML or JSON"}},
		{"unreadable file", []string{"--config", filepath.Join(dir, "missing.yaml")}, nil, []string{"missing.yaml", "cannot be read: no such file or directory"}},
		// /dev/zero used to be read until memory ran out.
		{"endless device", []string{"--config", "/dev/zero"}, nil, []string{"--config", `config: "/dev/zero" is larger than 16 MiB`}},
		{"file over 16 MiB", []string{"--config", huge}, nil, []string{"--config", `config: "` + huge + `" is larger than 16 MiB`}},
		{"empty file", []string{"--config", empty}, nil, []string{"--config", `config: "` + empty + `" is empty`}},
		{"comments only", []string{"--config", comments}, nil, []string{"--config", `config: "` + comments + `" is empty`}},
		{"empty file from env", nil, map[string]string{"DETOUR_CONFIG": empty}, []string{`config: "` + empty + `" is empty`}},
		// It installed the defaults (proxy uid 5678), as DETOUR_PRESET= would have.
		{"empty DETOUR_CONFIG", nil, map[string]string{"DETOUR_CONFIG": ""}, []string{"DETOUR_CONFIG", `config: "" is empty, which names no file`}},
		{"misspelt env", nil, map[string]string{"DETOUR_PROXY_ID": "1337"}, []string{"environment", `DETOUR_PROXY_ID: "1337" is not a setting of detour (did you mean DETOUR_PROXY_UID?)`}},
		{"singular env", nil, map[string]string{"DETOUR_EXCLUDE_OUTBOUND_PORT": "22"}, []string{`DETOUR_EXCLUDE_OUTBOUND_PORT: "22" is not a setting of detour (did you mean DETOUR_EXCLUDE_OUTBOUND_PORTS?)`}},
		{"env in path order", nil, map[string]string{"DETOUR_OUTBOUND_EXCLUDE_PORTS": "22"}, []string{`(did you mean DETOUR_EXCLUDE_OUTBOUND_PORTS?)`}},
		{"unknown preset", []string{"--preset", "linkerd"}, nil, []string{`preset: "linkerd" is not one of istio, kuma`}},
		{"empty preset", []string{"--preset", ""}, nil, []string{"--preset", `preset: "" is not one of istio, kuma`}},
		{"empty env preset", nil, map[string]string{"DETOUR_PRESET": ""}, []string{"DETOUR_PRESET", `preset: "" is not one of istio, kuma`}},
		{"conflict", []string{"--inbound-port", "15001"}, nil, []string{`proxy.outboundPort: "15001" is also proxy.inboundPort`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseConfig(t, tt.args, tt.env, "")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !errors.Is(err, redirect.ErrInvalid) {
				t.Errorf("error %v does not match redirect.ErrInvalid (exit code 2)", err)
			}
			if got := exitCode(err, &strings.Builder{}); got != exitUsage {
				t.Errorf("exit code %d, want %d", got, exitUsage)
			}
		})
	}
}

func TestExcludeSSH(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ports   []uint16
		mutate  func(*redirect.Config)
		want    []uint16
		exclude string
	}{
		{name: "ssh ports", ports: []uint16{22, 2222}, want: []uint16{22, 2222}, exclude: "22,2222"},
		{name: "no ssh"},
		{name: "already excluded", ports: []uint16{2222}, mutate: func(c *redirect.Config) { c.Inbound.ExcludePorts = []redirect.PortRange{{First: 2000, Last: 3000}} }, exclude: "2000-3000"},
		{name: "include list decides", ports: []uint16{22}, mutate: func(c *redirect.Config) { c.Inbound.IncludePorts = []redirect.PortRange{{First: 80, Last: 80}} }},
		{name: "inbound off", ports: []uint16{22}, mutate: func(c *redirect.Config) { c.Inbound.Enabled = false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := redirect.Default()
			if tt.mutate != nil {
				tt.mutate(&c)
			}
			got, added := excludeSSH(c, tt.ports)
			f, _ := redirect.FieldByPath("inbound.excludePorts")
			if !slices.Equal(added, tt.want) || f.Get(&got) != tt.exclude {
				t.Errorf("excludeSSH = added %v, excludes %q; want %v, %q", added, f.Get(&got), tt.want, tt.exclude)
			}
		})
	}
}
