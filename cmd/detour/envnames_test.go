package main

import (
	"testing"

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
