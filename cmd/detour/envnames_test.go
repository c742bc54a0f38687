package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

func TestMisspeltSetting(t *testing.T) {
	t.Parallel()
	// Not settings, and not refused: every setting's own variable, the other
	// variables detour reads, and the ones the project's tests, benchmarks
	// and CNI plugin set in the environment detour runs in.
	var fine []string
	for _, f := range redirect.Fields() {
		fine = append(fine, f.EnvName())
	}
	fine = append(fine, otherEnv...)
	fine = append(fine, "DETOUR_REQUIRE_PRIVILEGED", "DETOUR_E2E_CASES", "DETOUR_E2E_HELPER", "DETOUR_E2E_KNOWN_FAILURES",
		"DETOUR_E2E_NETNS", "DETOUR_E2E_PARALLEL", "DETOUR_E2E_SEED", "DETOUR_BENCH", "DETOUR_BENCH_CLIENTS",
		"DETOUR_BENCH_FLEET", "DETOUR_BENCH_ROLE", "DETOUR_KUBE_BIN", "DETOUR_CNI_PLUGINS_BIN", "DETOUR_CNI_HANDED_OVER",
		"DETOUR_CNI_E2E_HOSTNS", "DETOUR_BPF_TOOLCHAIN", "DETOUR_DECISION_SEED", "DETOUR_POD_NAME", "DETOUR_POD_NAMESPACE",
		"PATH", "DETOURS", "detour_proxy_uid")
	for _, name := range fine {
		if got := misspeltSetting(name); got != "" {
			t.Errorf("misspeltSetting(%s) = %s, want none", name, got)
		}
	}
	for name, want := range map[string]string{
		"DETOUR_PROXY_ID":                   "DETOUR_PROXY_UID",
		"DETOUR_PROXYUID":                   "DETOUR_PROXY_UID",
		"DETOUR_EXCLUDE_OUTBOUND_PORT":      "DETOUR_EXCLUDE_OUTBOUND_PORTS",
		"DETOUR_OUTBOUND_EXCLUDE_PORTS":     "DETOUR_EXCLUDE_OUTBOUND_PORTS",
		"DETOUR_EXCLUDE_OUTBOUND_CIDR":      "DETOUR_EXCLUDE_OUTBOUND_CIDRS",
		"DETOUR_INBOUND_PORTS":              "DETOUR_INBOUND_PORT",
		"DETOUR_DNS_CAPTUR":                 "DETOUR_DNS_CAPTURE",
		"DETOUR_MODES":                      "DETOUR_MODE",
		"DETOUR_INCLUDE_INBOUND_PORT":       "DETOUR_INCLUDE_INBOUND_PORTS",
		"DETOUR_EXCLUDE_OUTBOUND_UIDS_PORT": "",
	} {
		if got := misspeltSetting(name); got != want {
			t.Errorf("misspeltSetting(%s) = %q, want %q", name, got, want)
		}
	}
}

// TestScopeFlagsHaveNoEnvironment: every setting has a DETOUR_* variable,
// but --netns and --cgroup, the scope, do not. DETOUR_NETNS=pod was ignored:
// `detour install` then captured the namespace it ran in (the host's), and
// DETOUR_CGROUP the whole namespace instead of the cgroup. Both are refused
// (exit 2), naming the flag to use instead.
func TestScopeFlagsHaveNoEnvironment(t *testing.T) {
	for name, flag := range map[string]string{"DETOUR_NETNS": "--netns", "DETOUR_CGROUP": "--cgroup"} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, "pod")
			want := "environment: " + name + `: "pod" is not read by detour: ` + flag + " has no environment variable"
			// Read-only commands and uninstall of a namespace that does not
			// exist: a regression changes nothing on the test's host.
			for _, args := range [][]string{{"plan", "--backend", "nftables"}, {"status"}, {"check"}, {"uninstall", "--netns", "dt-does-not-exist"}} {
				code, _, stderr := runCLI(t, args...)
				if code != exitUsage || !strings.Contains(stderr, want) {
					t.Errorf("%s with %s set: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), name, code, stderr, exitUsage, want)
				}
			}
		})
	}
}

// TestFlagOnlyVariablesAreRefused: settings have a DETOUR_<FLAG NAME>
// variable, and docs/config.md says so; the command's own flags have none,
// and were ignored: DETOUR_DRY_RUN=1 detour install installed for real what
// its user meant to preview, DETOUR_CAPTURE_SSH=1 left SSH excluded and
// DETOUR_OUTPUT=json printed text. They are refused (exit 2), naming the flag.
func TestFlagOnlyVariablesAreRefused(t *testing.T) {
	for name, flag := range map[string]string{
		"DETOUR_DRY_RUN": "--dry-run", "DETOUR_PERSIST": "--persist", "DETOUR_CAPTURE_SSH": "--capture-ssh",
		"DETOUR_OUTPUT": "--output", "DETOUR_LOCK_WAIT": "--lock-wait", "DETOUR_VERBOSE": "--verbose",
		"DETOUR_TIMEOUT": "--timeout", "DETOUR_LIVE": "--live", "DETOUR_STALE": "--stale",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, "1")
			want := "environment: " + name + `: "1" is not read by detour: ` + flag + " has no environment variable"
			// Read-only commands, and commands on a namespace that does not
			// exist: a regression changes nothing on the test's host.
			for _, args := range [][]string{{"plan", "--backend", "nftables"}, {"status"}, {"install", "--netns", "dt-does-not-exist"}, {"uninstall", "--netns", "dt-does-not-exist"}} {
				code, _, stderr := runCLI(t, args...)
				if code != exitUsage || !strings.Contains(stderr, want) {
					t.Errorf("%s with %s=1: exit %d, stderr %q; want exit %d and %q", strings.Join(args, " "), name, code, stderr, exitUsage, want)
				}
			}
		})
	}
}

// TestRefusedVariableNamesTheCommandsWithItsFlag: DETOUR_TIMEOUT=5s detour
// install was told to "pass --timeout", a flag install lacks (its own error
// then). The refusal names the commands that have the flag, as the command
// tree declares them, unless every command has it.
func TestRefusedVariableNamesTheCommandsWithItsFlag(t *testing.T) {
	root := newRootCmd(streams{}, newDelegator(nil))
	for name, v := range scopeEnv {
		flag := strings.TrimPrefix(v.flag, "--")
		var have, all []string
		var walk func(c *cobra.Command)
		walk = func(c *cobra.Command) {
			for _, s := range c.Commands() {
				if s.Runnable() && !s.Hidden {
					all = append(all, s.CommandPath())
					if s.Flags().Lookup(flag) != nil || s.InheritedFlags().Lookup(flag) != nil {
						have = append(have, s.CommandPath())
					}
				}
				walk(s)
			}
		}
		walk(root)
		slices.Sort(have)
		if len(have) == 0 {
			t.Errorf("%s: no command has %s", name, v.flag)
			continue
		}
		if v.commands == nil {
			if len(have) != len(all) {
				t.Errorf("%s: declared a flag of every command, but only %v have %s", name, have, v.flag)
			}
			continue
		}
		if !slices.Equal(have, v.commands) {
			t.Errorf("%s: declared %s a flag of %v, but the commands that have it are %v", name, v.flag, v.commands, have)
		}
	}
	t.Setenv("DETOUR_TIMEOUT", "5s")
	code, _, stderr := runCLI(t, "install", "--netns", "dt-does-not-exist")
	want := `environment: DETOUR_TIMEOUT: "5s" is not read by detour: --timeout has no environment variable (only settings have one); pass --timeout to detour explain or detour validate, or unset it`
	if code != exitUsage || !strings.Contains(stderr, want) {
		t.Errorf("install with DETOUR_TIMEOUT=5s: exit %d, stderr %q; want exit %d and %q", code, stderr, exitUsage, want)
	}
}
