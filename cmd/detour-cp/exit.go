package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/redirect"
)

// Exit codes: the subset of detour's (README.md documents them) that the
// control plane and bootstrap use.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // invalid input or usage: nothing was served or printed
)

// exitError carries an exit code other than the default for its error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// usageError marks a command-line mistake (exit 2).
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode prints err (if any) and maps it to the process exit code. Messages
// start with "detour:" as they do when detour runs this binary.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "detour:", err)
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, redirect.ErrInvalid):
		return exitUsage
	case isFlagError(err):
		return exitUsage
	}
	return exitFailure
}

// rejectEmptyFlags refuses a flag given with an empty value (`--namespace ""`,
// `--dns-upstream ""`), for every string and string-list flag of f that was set
// except those named in meaningful, whose empty value is documented. An empty
// value is usually a script's unset variable: falling back to the default
// would serve something else than asked for (all namespaces, the default
// HTTP address instead of none).
func rejectEmptyFlags(f *pflag.FlagSet, meaningful ...string) error {
	var err error
	f.Visit(func(fl *pflag.Flag) {
		if err == nil && !slices.Contains(meaningful, fl.Name) {
			err = emptyFlagError(fl)
		}
	})
	return err
}

// emptyFlagError is the usage error for fl when it was given an empty value:
// an empty string, an empty list (`--exclude-namespaces ""`) or a list with an
// empty element (`a,,b`, `a,`); nil otherwise.
func emptyFlagError(fl *pflag.Flag) error {
	def := fl.DefValue
	if sv, ok := fl.Value.(pflag.SliceValue); ok {
		items := sv.GetSlice()
		if slices.Contains(items, "") {
			return usageError("--%s %q has an empty element (an unset variable?); name every item", fl.Name, strings.Join(items, ","))
		}
		if len(items) > 0 {
			return nil
		}
		def = strings.TrimSuffix(strings.TrimPrefix(def, "["), "]")
	} else if fl.Value.Type() != "string" || fl.Value.String() != "" {
		return nil
	}
	if def == "" {
		// No default to fall back on (--node-id): the flag needs a value.
		return usageError("--%s \"\" is empty; give it a value", fl.Name)
	}
	return usageError("--%s \"\" is empty; leave the flag out for its default (%s)", fl.Name, def)
}

// strictLists makes every string-list flag of cmd and its subcommands check
// each value as it is given. pflag takes `--exclude-namespaces ""` as an empty
// list, and after an earlier `--exclude-namespaces a` as nothing to add, so an
// unset variable vanishes without a trace; `a,,b` gives an empty item.
// rejectEmptyFlags sees the result, not each value.
func strictLists(cmd *cobra.Command) {
	wrap := func(fl *pflag.Flag) {
		if v, ok := fl.Value.(sliceFlag); ok && fl.Value.Type() == "stringSlice" {
			fl.Value = strictList{v, fl.DefValue}
		}
	}
	cmd.LocalFlags().VisitAll(wrap)
	cmd.PersistentFlags().VisitAll(wrap)
	for _, c := range cmd.Commands() {
		strictLists(c)
	}
}

type sliceFlag interface {
	pflag.Value
	pflag.SliceValue
}

// strictList is a string-list flag that refuses an empty value and an empty
// item (the value is split at commas, as pflag does).
type strictList struct {
	sliceFlag
	def string
}

func (l strictList) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		if def := strings.TrimSuffix(strings.TrimPrefix(l.def, "["), "]"); def != "" {
			return fmt.Errorf("an empty value names nothing (an unset variable?); leave the flag out for its default (%s)", def)
		}
		return errors.New("an empty value names nothing (an unset variable?); give it a value")
	}
	for _, item := range strings.Split(v, ",") {
		if strings.TrimSpace(item) == "" {
			return errors.New("an empty item (an unset variable?); name every item")
		}
	}
	return l.sliceFlag.Set(v)
}
