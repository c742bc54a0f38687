package deploy

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestManifestCommandsParse runs every detour command line of the manifests
// with --help appended: the real CLI parses all the flags (an unknown or
// misspelt flag fails) without running the command. A container that would
// crash-loop on its own arguments is caught here, not on a node.
func TestManifestCommandsParse(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds detour")
	}
	dir := t.TempDir()
	bins := map[string]string{}
	// `detour cni …` execs detour-cp from next to detour, as in the image.
	for _, name := range []string{"detour", "detour-cp"} {
		bin, err := privtest.Build(dir, "github.com/detour-mesh/detour/cmd/"+name)
		if err != nil {
			t.Fatal(err)
		}
		bins["/usr/local/bin/"+name] = bin
	}
	checked := 0
	for _, m := range readManifests(t, manifestDir) {
		for _, c := range podContainers(m.obj.Object) {
			if !strings.Contains(c.image, "detour") {
				continue
			}
			var bin string
			if len(c.command) > 0 {
				bin = bins[c.command[0]]
			}
			if bin == "" {
				t.Errorf("%s %s: command %q, want /usr/local/bin/detour or /usr/local/bin/detour-cp (the image's binaries)", m, c.name, c.command)
				continue
			}
			argv := append(append([]string{}, c.command[1:]...), c.args...)
			if len(argv) == 0 {
				t.Errorf("%s %s: no subcommand", m, c.name)
				continue
			}
			// A subcommand another part of detour has not shipped yet cannot be
			// checked; say so rather than fail on it.
			if !hasCommand(t, bin, argv[0]) {
				t.Logf("%s %s: `%s %s` is not in this build; its flags are unchecked", m, c.name, c.command[0], argv[0])
				continue
			}
			out, err := exec.Command(bin, append(argv, "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("%s %s: %s %s: %v\n%s", m, c.name, c.command[0], strings.Join(argv, " "), err, out)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Error("no detour command line was checked")
	}
}

// hasCommand reports whether bin has the top-level subcommand name.
func hasCommand(t *testing.T, bin, name string) bool {
	t.Helper()
	out, err := exec.Command(bin, "--help").Output()
	if err != nil {
		t.Fatalf("%s --help: %v", bin, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name && strings.HasPrefix(l, "  ") {
			return true
		}
	}
	return false
}

type container struct {
	name, image   string
	command, args []string
}

// podContainers returns the containers and init containers of a workload's pod
// template (or a pod), from the unstructured object.
func podContainers(obj map[string]any) []container {
	spec, _ := obj["spec"].(map[string]any)
	if tmpl, ok := spec["template"].(map[string]any); ok {
		spec, _ = tmpl["spec"].(map[string]any)
	}
	var out []container
	for _, key := range []string{"initContainers", "containers"} {
		list, _ := spec[key].([]any)
		for _, item := range list {
			c, _ := item.(map[string]any)
			name, _ := c["name"].(string)
			image, _ := c["image"].(string)
			out = append(out, container{name: name, image: image, command: stringList(c["command"]), args: stringList(c["args"])})
			// An exec probe is a command line of the image too: a probe that
			// cannot parse its flags keeps the pod unready forever.
			for _, probe := range []string{"readinessProbe", "livenessProbe", "startupProbe"} {
				p, _ := c[probe].(map[string]any)
				ex, _ := p["exec"].(map[string]any)
				if cmd := stringList(ex["command"]); len(cmd) > 0 {
					out = append(out, container{name: name + " " + probe, image: image, command: cmd[:1], args: cmd[1:]})
				}
			}
		}
	}
	return out
}

func stringList(v any) []string {
	list, _ := v.([]any)
	var out []string
	for _, s := range list {
		str, _ := s.(string)
		out = append(out, str)
	}
	return out
}
