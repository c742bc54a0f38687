package meshconfig_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/redirect"
)

func TestParse(t *testing.T) {
	t.Parallel()
	c, err := meshconfig.Parse([]byte(`
preset: istio
redirect:
  outbound: {excludePorts: [5432]}
injection:
  redirect: init-container
  sidecar: classic
`))
	if err != nil {
		t.Fatal(err)
	}
	base := c.Base()
	if base.Proxy.UID != 1337 || len(base.Outbound.ExcludePorts) != 1 || base.Outbound.ExcludePorts[0].First != 5432 {
		t.Errorf("base %+v: want the istio preset with outbound port 5432 excluded", base)
	}
	if c.Injection.Redirect != meshconfig.RedirectInitContainer || c.Injection.Sidecar != meshconfig.SidecarClassic ||
		c.Injection.ControlPlane != meshconfig.DefaultControlPlane || c.Injection.ReadyPort != 15021 {
		t.Errorf("injection %+v", c.Injection)
	}
	// The rendered document is what the CNI plugin and the control plane take:
	// decoding it over the defaults gives the same base.
	doc, err := c.RedirectDocument()
	if err != nil {
		t.Fatal(err)
	}
	again := redirect.Default()
	if err := again.Decode(doc); err != nil {
		t.Fatal(err)
	}
	if got, want := string(mustJSON(t, again)), string(doc); got != want {
		t.Errorf("document does not round-trip:\n%s\n%s", got, want)
	}

	d := meshconfig.Default()
	if d.Base().Proxy.UID != 5678 || d.Injection.Sidecar != meshconfig.SidecarAuto || d.Injection.Redirect != meshconfig.RedirectCNI {
		t.Errorf("defaults %+v", d.Injection)
	}
}

func TestParseRefuses(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, doc, want string }{
		{"unknown key", "injecton: {}", "injecton"},
		{"bad preset", "preset: linkerd", `"linkerd"`},
		{"bad redirect field", "redirect: {proxy: {uid: x}}", "proxy.uid"},
		{"bad mode", "injection: {redirect: sidecar}", `injection.redirect: "sidecar"`},
		{"bad sidecar", "injection: {sidecar: always}", `injection.sidecar: "always"`},
		{"validate in init mode", "injection: {redirect: init-container, validate: true}", "injection.validate"},
		{"control plane", "injection: {controlPlane: nowhere}", `injection.controlPlane: "nowhere"`},
		{"ready port clash", "injection: {readyPort: 15001}", `injection.readyPort: "15001"`},
		// A key given twice: the later one used to win silently.
		{"duplicate key", "preset: istio\npreset: kuma", `key \"preset\" already set in map`},
		{"duplicate nested key", "injection: {sidecar: native, sidecar: classic}", `key \"sidecar\" already set in map`},
		// YAML reads an unquoted number with a leading zero as octal: the
		// ConfigMap's uid 01337 gave every pod proxy uid 735 (its Envoy's own
		// traffic then looped), as the CLI config and the mesh file refuse it.
		{"uid with a leading zero", "preset: istio\nredirect: {proxy: {uid: 01337}}", `redirect.proxy.uid: "01337" has a leading zero, which YAML reads as octal (735)`},
		{"port with a leading zero", "injection: {adminPort: 015000}", `injection.adminPort: "015000" has a leading zero, which YAML reads as octal (6656)`},
		// A second document was dropped silently (its settings never applied).
		{"two documents", "preset: istio\n---\ninjection: {sidecar: native}\n", `(mesh config): "---" starts another YAML document (2 hold settings)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := meshconfig.Parse([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %s", err, c.want)
			}
			if !errors.Is(err, redirect.ErrInvalid) {
				t.Errorf("error %v does not match redirect.ErrInvalid", err)
			}
		})
	}
}

func mustJSON(t *testing.T, c redirect.Config) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLoadRefusesAnEmptyFile: a file given on purpose that holds no setting
// (an empty ConfigMap key, a truncated write) is refused, naming the file,
// rather than read as the built-in defaults: with an istio preset in the
// cluster, the defaults' proxy uid 5678 against Envoy's 1337 would recapture
// every connection of the proxy.
func TestLoadRefusesAnEmptyFile(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{"", "\n  \n", "# nothing yet\n", "null\n"} {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := meshconfig.Load(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "is empty") || !errors.Is(err, redirect.ErrInvalid) {
			t.Errorf("Load(%q) = %v, want an invalid-input error naming the file and saying it is empty", doc, err)
		}
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := meshconfig.Load(path); err != nil {
		t.Errorf("Load({}) = %v, want the defaults", err)
	}
}
