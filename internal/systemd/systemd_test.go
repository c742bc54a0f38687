package systemd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/detour-mesh/detour/internal/golden"
	"github.com/detour-mesh/detour/internal/privtest"
	"github.com/detour-mesh/detour/redirect"
)

// fakeSystemctl records the calls instead of running systemctl.
type fakeSystemctl struct {
	calls []string
	fail  string // a call that fails
}

func (f *fakeSystemctl) Run(_ context.Context, args ...string) error {
	call := strings.Join(args, " ")
	f.calls = append(f.calls, call)
	if call == f.fail {
		return errors.New("systemctl " + call + ": exit status 1: Failed")
	}
	return nil
}

func configs(t *testing.T) map[string]redirect.Config {
	t.Helper()
	istio, err := redirect.Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	custom := redirect.Default()
	for path, value := range map[string]string{
		"proxy.gid":                    "5679",
		"mode":                         "tproxy",
		"ipFamilies":                   "dual",
		"inbound.excludePorts":         "22,8000-8100",
		"inbound.excludeSourceCIDRs":   "192.0.2.0/24,2001:db8::/32",
		"outbound.excludeCIDRs":        "198.51.100.7",
		"outbound.excludeUIDs":         "0,106-108",
		"outbound.excludePortsForUIDs": "tcp:53,3000-5000:106-108",
		"dns.capture":                  "all",
		"log.enabled":                  "true",
	} {
		if err := custom.Set(path, value); err != nil {
			t.Fatalf("set %s: %v", path, err)
		}
	}
	return map[string]redirect.Config{"default": redirect.Default(), "istio": istio, "custom": custom}
}

func TestPersistUnpersist(t *testing.T) {
	t.Parallel()
	for name, cfg := range configs(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			sc := &fakeSystemctl{}
			o := Options{Config: cfg, Root: root, Systemctl: sc}
			if err := Persist(context.Background(), o); err != nil {
				t.Fatalf("Persist: %v", err)
			}
			unit := filepath.Join(root, "etc/systemd/system/detour.service")
			conf := filepath.Join(root, "etc/detour/detour.yaml")
			golden.Check(t, golden.Path(t, name+".yaml"), readFile(t, conf))
			if !strings.Contains(string(readFile(t, unit)), "ExecStart=/usr/local/bin/detour install --config /etc/detour/detour.yaml\n") {
				t.Errorf("unit does not install the written config:\n%s", readFile(t, unit))
			}
			// What the unit's `detour install --config` reads back is the same redirection.
			back := redirect.Default()
			if err := back.Decode(readFile(t, conf)); err != nil {
				t.Fatalf("the written config does not decode: %v", err)
			}
			if diff := cmp.Diff(cfg, back, cmpopts.EquateEmpty(), cmp.Comparer(func(a, b interface{ String() string }) bool { return a.String() == b.String() })); diff != "" {
				t.Errorf("config read back differs (-persisted +read):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"daemon-reload", "enable --now detour.service"}, sc.calls); diff != "" {
				t.Errorf("systemctl calls (-want +got):\n%s", diff)
			}

			// Again: the same files.
			before := string(readFile(t, unit)) + string(readFile(t, conf))
			if err := Persist(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			if after := string(readFile(t, unit)) + string(readFile(t, conf)); after != before {
				t.Error("second Persist changed the files")
			}

			sc.calls = nil
			if err := Unpersist(context.Background(), o); err != nil {
				t.Fatalf("Unpersist: %v", err)
			}
			if diff := cmp.Diff([]string{"disable --now detour.service", "daemon-reload"}, sc.calls); diff != "" {
				t.Errorf("systemctl calls (-want +got):\n%s", diff)
			}
			for _, p := range []string{unit, conf} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left after Unpersist", p)
				}
			}
			sc.calls = nil
			if err := Unpersist(context.Background(), o); err != nil || len(sc.calls) != 0 {
				t.Errorf("second Unpersist = %v with calls %q; want nothing", err, sc.calls)
			}
			assertNoTemp(t, root)
		})
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertNoTemp(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".tmp") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

func TestPersistRefuses(t *testing.T) {
	t.Parallel()
	bad := redirect.Default()
	bad.Proxy.InboundPort = 0
	tests := []struct {
		name    string
		o       func(root string, sc Systemctl) Options
		want    string
		invalid bool
	}{
		{"invalid config", func(root string, sc Systemctl) Options {
			return Options{Config: bad, Root: root, Systemctl: sc}
		}, "proxy.inboundPort", true},
		{"temp root without a systemctl", func(root string, _ Systemctl) Options {
			return Options{Config: redirect.Default(), Root: root}
		}, "set Options.Systemctl", false},
		{"relative config file", func(root string, sc Systemctl) Options {
			return Options{Config: redirect.Default(), Root: root, Systemctl: sc, ConfigFile: "detour.yaml"}
		}, `config file: "detour.yaml" is not an absolute path`, false},
		{"bad before", func(root string, sc Systemctl) Options {
			return Options{Config: redirect.Default(), Root: root, Systemctl: sc, Before: []string{"my app"}}
		}, `before: "my app" is not a unit name`, false},
		{"line break in the binary", func(root string, sc Systemctl) Options {
			return Options{Config: redirect.Default(), Root: root, Systemctl: sc, Binary: "/usr/bin/detour\nExecStartPre=/bin/sh"}
		}, `binary: "/usr/bin/detour\nExecStartPre=/bin/sh" holds a line break`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			sc := &fakeSystemctl{}
			err := Persist(context.Background(), tc.o(root, sc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Persist = %v, want an error containing %q", err, tc.want)
			}
			if errors.Is(err, redirect.ErrInvalid) != tc.invalid {
				t.Errorf("errors.Is(err, redirect.ErrInvalid) = %v, want %v", !tc.invalid, tc.invalid)
			}
			if entries, _ := os.ReadDir(root); len(entries) != 0 || len(sc.calls) != 0 {
				t.Errorf("a refused Persist wrote %d entries and ran %q", len(entries), sc.calls)
			}
		})
	}
}

func TestPersistSystemctlFailure(t *testing.T) {
	t.Parallel()
	sc := &fakeSystemctl{fail: "enable --now detour.service"}
	err := Persist(context.Background(), Options{Config: redirect.Default(), Root: t.TempDir(), Systemctl: sc})
	if err == nil || !strings.Contains(err.Error(), "enable --now detour.service") {
		t.Errorf("Persist = %v, want the systemctl failure", err)
	}
}

func TestUnit(t *testing.T) {
	t.Parallel()
	u, err := Unit(Options{})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, golden.Path(t, "default"), u)
	// The file shipped in deploy/systemd is the default rendering.
	shipped := readFile(t, filepath.Join("..", "..", "deploy", "systemd", "detour.service"))
	if diff := cmp.Diff(string(u), string(shipped)); diff != "" {
		t.Errorf("deploy/systemd/detour.service is not Unit(Options{}) (-rendered +shipped):\n%s", diff)
	}
	u, err = Unit(Options{Binary: "/opt/detour/bin/detour", ConfigFile: "/etc/myapp/detour.yaml", Before: []string{"envoy.service", "myapp.service"}})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, golden.Path(t, "custom"), u)
}

// TestUnitVerifies has systemd's own parser check the unit: systemd-analyze
// verify prints a line for every directive it does not understand.
func TestUnitVerifies(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		// make deps-apt installs it; CI must not skip this check.
		privtest.Skip(t, "systemd-analyze not installed (Debian's systemd package has it)")
	}
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true binary to stand in for detour")
	}
	u, err := Unit(Options{Binary: bin, Before: []string{"envoy.service"}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "detour.service")
	if err := os.WriteFile(p, u, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", p).CombinedOutput()
	// Units named in Before= need not exist; anything else is a defect.
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.Contains(l, "envoy.service") {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(problems, "\n"))
	}
}
