package main

import (
	"slices"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// Environment variables detour reads besides the settings' own
// (redirect.Field.EnvName): a near miss of a setting's name is refused, these
// are not settings and never are.
var otherEnv = []string{"DETOUR_PRESET", "DETOUR_CONFIG", "DETOUR_EBPF_PIN_DIR", "DETOUR_EBPF_CGROUP_ROOT"}

// scopeEnv are DETOUR_* variables named after a flag that has none: the
// scope of a command (where it acts) is named on its command line only.
// Ignoring DETOUR_NETNS=pod installed into the namespace detour ran in (the
// host's), and DETOUR_CGROUP captured the whole namespace: they are refused.
// The other flags of a command (not settings) have no variable either, and
// a user told that settings are DETOUR_<FLAG NAME> would guess one: ignoring
// DETOUR_DRY_RUN=1 installed what was meant as a preview. They are refused too.
//
// Each names its flag and the commands that have it (nil: every command), so
// that the refusal does not send the user to a flag their command lacks
// (DETOUR_TIMEOUT with install); TestRefusedVariableNamesTheCommandsWithItsFlag
// holds the lists to the command tree.
var scopeEnv = map[string]envFlag{
	"DETOUR_NETNS":       {"--netns", []string{"detour check", "detour explain", "detour install", "detour plan", "detour status", "detour uninstall", "detour validate"}},
	"DETOUR_CGROUP":      {"--cgroup", nil},
	"DETOUR_DRY_RUN":     {"--dry-run", []string{"detour install"}},
	"DETOUR_PERSIST":     {"--persist", []string{"detour install", "detour uninstall"}},
	"DETOUR_CAPTURE_SSH": {"--capture-ssh", []string{"detour check", "detour explain", "detour install", "detour plan", "detour validate"}},
	"DETOUR_OUTPUT":      {"--output", []string{"detour check", "detour explain", "detour install", "detour plan", "detour status", "detour uninstall"}},
	"DETOUR_LOCK_WAIT":   {"--lock-wait", nil},
	"DETOUR_VERBOSE":     {"--verbose", nil},
	"DETOUR_TIMEOUT":     {"--timeout", []string{"detour explain", "detour validate"}},
	"DETOUR_LIVE":        {"--live", []string{"detour explain"}},
	"DETOUR_STALE":       {"--stale", []string{"detour uninstall"}},
}

// envFlag is the flag a refused scopeEnv variable stands for, and the
// commands that have it (nil: every command).
type envFlag struct {
	flag     string
	commands []string
}

// scopeEnvError refuses a set scopeEnv variable (exit 2), or is nil. Every
// command that acts on a namespace asks (netnsPath), and the configuration's
// check of DETOUR_* names.
func scopeEnvError(lookup func(string) (string, bool)) error {
	names := make([]string, 0, len(scopeEnv))
	for name := range scopeEnv {
		names = append(names, name)
	}
	slices.Sort(names) // deterministic: the same one is named every time
	for _, name := range names {
		v, ok := lookup(name)
		if !ok {
			continue
		}
		f := scopeEnv[name]
		why := "only settings have one"
		if name == "DETOUR_NETNS" || name == "DETOUR_CGROUP" {
			why = "where a command acts is named on its command line"
		}
		pass := "pass " + f.flag
		if n := len(f.commands); n > 0 {
			pass += " to " + f.commands[0]
			if n > 1 {
				pass = "pass " + f.flag + " to " + strings.Join(f.commands[:n-1], ", ") + " or " + f.commands[n-1]
			}
		}
		return &sourceError{"environment", &redirect.FieldError{Field: name, Value: v,
			Reason: "is not read by detour: " + f.flag + " has no environment variable (" + why + "); " + pass + ", or unset it"}}
	}
	return nil
}

// misspeltSetting returns the setting's variable that name, a DETOUR_*
// variable that is not one, was most likely meant to be — one or two letters
// away (DETOUR_PROXY_ID, DETOUR_EXCLUDE_OUTBOUND_PORT) or its words in
// another order (DETOUR_OUTBOUND_EXCLUDE_PORTS, the YAML path's order) — or
// "" when it is not near any. detour refuses such a variable: ignoring it
// would apply a configuration the user did not write (a proxy uid left at the
// default makes the proxy's own traffic loop).
func misspeltSetting(name string) string {
	if !strings.HasPrefix(name, "DETOUR_") || slices.Contains(otherEnv, name) {
		return ""
	}
	for _, f := range redirect.Fields() {
		if f.EnvName() == name {
			return ""
		}
	}
	suffix := strings.TrimPrefix(name, "DETOUR_")
	best, bestDist := "", 3
	for _, f := range redirect.Fields() {
		want := strings.TrimPrefix(f.EnvName(), "DETOUR_")
		if sameWords(suffix, want) {
			return f.EnvName()
		}
		if d := distance(suffix, want, bestDist); d < bestDist {
			best, bestDist = f.EnvName(), d
		}
	}
	return best
}

func sameWords(a, b string) bool {
	wa, wb := strings.Split(a, "_"), strings.Split(b, "_")
	slices.Sort(wa)
	slices.Sort(wb)
	return slices.Equal(wa, wb)
}

// distance is the Levenshtein distance of a and b, or limit when it is limit
// or more.
func distance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin >= limit {
			return limit
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}
