package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/redirect"
)

// globalOptions are the flags every command shares.
type globalOptions struct {
	verbose  bool
	lockWait time.Duration
}

// engine returns the redirect engine for the namespace at nsPath ("" = ours).
func (g *globalOptions) engine(nsPath string, stderr io.Writer) *redirect.Engine {
	return &redirect.Engine{Logger: g.logger(stderr), NetNS: nsPath, LockWait: g.lockWait}
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
	fs.StringVar(netns, "netns", "", "act inside this network namespace: a name from `ip netns` or a path such as /proc/PID/ns/net")
}

// netnsPath turns --netns into a path: a bare name is looked up under
// /run/netns. An empty value means the caller's namespace.
func netnsPath(name string) (string, error) {
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
