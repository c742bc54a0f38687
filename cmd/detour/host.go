package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/internal/netns"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	verbose  bool
	lockWait time.Duration
	// cgroup is --cgroup: the eBPF backend's cgroup scope ("" = the network
	// namespace). bpfPinDir and bpfRoot come from DETOUR_EBPF_PIN_DIR and
	// DETOUR_EBPF_CGROUP_ROOT (tests and sandboxes; "" = the defaults).
	cgroup, bpfPinDir, bpfRoot string
	// ebpfEnvErr is what is wrong with those two variables (checkEBPFEnv):
	// engine returns it before anything is read or changed.
	ebpfEnvErr error
	// uninstalling is set (by bindFlags) when the command is uninstall: its
	// --cgroup may name a cgroup that is gone, whose scope it removes.
	uninstalling bool
	// delegate execs another of detour's binaries: detour-ebpf, for a lean
	// build's commands that need the eBPF backend (ebpf.go).
	delegate *delegator
	// stdinDoc is what a --config - read from stdin, for detour-ebpf to
	// read again when a lean build hands the command over.
	stdinDoc []byte
	// pipeDocs are the documents of config files that could be read only
	// once, for detour-ebpf likewise.
	pipeDocs []pipeDoc
	// deferred are flag bindings that wait until the command that runs is
	// known (later, bindFlags).
	deferred []deferredFlags
}

// deferredFlags binds some of cmd's flags.
type deferredFlags struct {
	cmd  *cobra.Command
	bind func()
}

// later defers binding flags of cmd until newRootCmd knows which command
// runs: the configuration flags (one per redirect.Field) of every command
// that plans would otherwise be built at every start of detour, for a run
// that uses one command's.
func (g *globalOptions) later(cmd *cobra.Command, bind func()) {
	g.deferred = append(g.deferred, deferredFlags{cmd: cmd, bind: bind})
}

// bindFlags binds the deferred flags of the command args select (none for
// a command without them, such as version), or of every command when args
// select none of them (the root, help, completion, a mistyped command), so
// that help and completion see every flag. Binding a command's config flags
// costs more than a short command's whole run.
func (g *globalOptions) bindFlags(root *cobra.Command, args []string) {
	target, _, err := root.Find(args)
	only := err == nil && target != root
	g.uninstalling = only && target.Name() == "uninstall"
	for _, d := range g.deferred {
		if !only || d.cmd == target {
			d.bind()
			if !only {
				// Help or completion: they show the flags' usage.
				describeConfigFlags(d.cmd.Flags())
			}
		}
	}
	g.deferred = nil
	// A command's own --help describes its flags when it runs.
	help := root.HelpFunc()
	root.SetHelpFunc(func(c *cobra.Command, args []string) {
		describeConfigFlags(c.Flags())
		help(c, args)
	})
}

// logger returns the logger the commands hand to packages: debug lines on
// stderr with -v, warnings and errors otherwise.
func (g *globalOptions) logger(stderr io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

func bindNetNSFlag(fs *pflag.FlagSet, netns *string) {
	fs.Var(nonEmpty{netns, "an empty value names no network namespace (leave --netns out to act in the current one)"}, "netns", "act inside this network namespace (`NAME|PATH`): a name from ip netns or a path such as /proc/PID/ns/net")
}

// nonEmpty is a string flag whose empty value is refused (exit 2): it is
// what a script's --netns "$NS" or --uid "$U" gives when the variable is
// unset, and taking it as the flag's default would act on something else —
// for --netns the current namespace, which on a host is the host itself.
// why says what an empty value names (nothing, by default).
type nonEmpty struct {
	p   *string
	why string
}

func (f nonEmpty) String() string {
	if f.p == nil {
		return ""
	}
	return *f.p
}

func (f nonEmpty) Set(v string) error {
	if v == "" {
		if f.why != "" {
			return errors.New(f.why)
		}
		return errors.New("an empty value names nothing (leave the flag out for its default)")
	}
	*f.p = v
	return nil
}

func (nonEmpty) Type() string { return "string" }

// lockWaitFlag is --lock-wait: a Go duration, never negative.
type lockWaitFlag struct{ p *time.Duration }

func (f lockWaitFlag) String() string {
	if f.p == nil {
		return ""
	}
	return f.p.String()
}

func (f lockWaitFlag) Set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("not a duration such as 10s or 500ms")
	}
	if d < 0 {
		return errors.New("a wait cannot be negative")
	}
	if d == 0 {
		// Not waiting: one try. The engine's and the drivers' zero
		// LockWait is their default (10s), which 0 waited before.
		d = time.Nanosecond
	}
	*f.p = d
	return nil
}

func (lockWaitFlag) Type() string { return "duration" }

func bindLockWaitFlag(fs *pflag.FlagSet, p *time.Duration) {
	*p = 10 * time.Second
	fs.Var(lockWaitFlag{p}, "lock-wait", "how long to wait for detour's per-namespace lock and for the xtables lock (each) before failing with nothing applied (0: do not wait for the namespace lock, and at most 1s for the xtables lock)")
}

// netnsPath turns --netns into a path: a bare name is looked up under
// /run/netns. An empty value means the caller's namespace. DETOUR_NETNS and
// DETOUR_CGROUP, which detour does not read, are refused (scopeEnvError).
func netnsPath(name string) (string, error) {
	if err := scopeEnvError(os.LookupEnv); err != nil {
		return "", err
	}
	if name == "" {
		return "", nil
	}
	path := name
	if !strings.Contains(name, "/") {
		path = "/run/netns/" + name
	}
	if err := netns.Check(path); errors.Is(err, netns.ErrNotNetNS) {
		return "", usageError("--netns: %q is not a network namespace", name)
	} else if err != nil {
		return "", usageError("--netns: %q is not a network namespace: %s", name, unwrapPathError(err))
	}
	return path, nil
}

func output(fs *pflag.FlagSet, o *string) {
	fs.StringVarP(o, "output", "o", "text", "output format: text or json")
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return usageError("--output: %q is not one of text, json", o)
	}
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// cgroupFlag is --cgroup: an existing cgroup v2 directory (exit 2
// otherwise), or for uninstall (*gone true) also a path that no longer
// exists: what the scope of that removed cgroup left is removed.
type cgroupFlag struct {
	p    *string
	gone *bool
}

func (f cgroupFlag) String() string {
	if f.p == nil {
		return ""
	}
	return *f.p
}

func (f cgroupFlag) Set(v string) error {
	if v == "" {
		return errors.New("an empty value names no cgroup (leave --cgroup out for the network-namespace scope)")
	}
	// One scope, however the path is spelled: a cgroup scope's inbound
	// table is named after its path, so `svc` run from the parent and
	// /sys/fs/cgroup/…/svc must be the same text.
	abs, err := filepath.Abs(v)
	if err != nil {
		return fmt.Errorf("resolve the path: %w", err)
	}
	v = abs
	// A symlink to the cgroup too (its inbound table's name, a hash of the
	// path, would differ from the target's).
	if real, err := filepath.EvalSymlinks(v); err == nil {
		v = real
	}
	if _, err := os.Stat(v); errors.Is(err, fs.ErrNotExist) {
		if f.gone != nil && *f.gone {
			*f.p = v
			return nil
		}
		return errors.New("does not exist (what the eBPF scope of a cgroup that was removed left goes with `detour uninstall --cgroup` of its path, the next eBPF install of any scope, or `detour uninstall` without --cgroup)")
	}
	if err := checkCgroup(v); err != nil {
		return errors.New("is not a cgroup v2 directory")
	}
	// An unset variable in --cgroup "/sys/fs/cgroup/$UNIT" names the root:
	// never "every process of the machine". uninstall still takes it, to
	// remove a scope a detour that allowed it left there.
	if (f.gone == nil || !*f.gone) && cgroupIsRoot(v) {
		return errors.New("is the root of the cgroup v2 hierarchy: a cgroup scope there would capture every process of the machine, in every network namespace (name a service's or slice's cgroup below it, or leave --cgroup out to capture one network namespace)")
	}
	*f.p = v
	return nil
}

func (cgroupFlag) Type() string { return "path" }

// checkEBPFEnv refuses a DETOUR_EBPF_PIN_DIR or DETOUR_EBPF_CGROUP_ROOT that
// is set but not a clean absolute path below / (exit 2). A relative pin
// directory was taken from the working directory, where the eBPF backend
// then mounted a bpffs; an empty one (a test's unset variable) meant the
// machine's own /sys/fs/bpf/detour or cgroup root.
func checkEBPFEnv(lookup func(string) (string, bool)) error {
	for _, name := range []string{"DETOUR_EBPF_PIN_DIR", "DETOUR_EBPF_CGROUP_ROOT"} {
		v, ok := lookup(name)
		switch {
		case !ok:
		case v == "":
			return usageError("%s: an empty value names no path (unset it for the default)", name)
		case !filepath.IsAbs(v) || filepath.Clean(v) != v || v == "/":
			return usageError("%s: %q is not a clean absolute path below /", name, v)
		}
	}
	return nil
}
