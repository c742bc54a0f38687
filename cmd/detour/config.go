package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/redirect"
)

// configOptions are the sources of a redirect.Config on the command line. They
// merge in this order, later wins: defaults, preset, config files, environment
// (DETOUR_*), flags.
type configOptions struct {
	preset  string
	files   []string
	values  map[string]*string // field path → flag value, for every redirect.Field
	flags   *pflag.FlagSet
	environ func(string) (string, bool) // os.LookupEnv; tests pass a map lookup
	// envNames lists the environment's variables (nil: os.Environ's).
	envNames func() []string
	// noFlag names fields that get no flag of their own, because the command
	// uses the name for something else (explain's --inbound); files and
	// environment still set them.
	noFlag map[string]bool
	// stdinDoc is the document --config - read (nil when none was).
	stdinDoc []byte
	// pipeDocs are the documents of config files that are not regular files
	// (--config <(…), /dev/stdin, a FIFO): they yield their contents once, so
	// a hand-over to detour-ebpf passes these instead of the paths.
	pipeDocs []pipeDoc
	// base, when set, is a complete config document that takes the place of
	// the defaults, the preset and the config files: explain --mesh's
	// workload's transparentProxy. baseSource names it (the flags that gave
	// it); the environment and the fields' flags still apply on top.
	base       []byte
	baseSource string
}

// pipeDoc is the document read from a config file that can be read once.
type pipeDoc struct {
	name string // as given: --config's value, or an element of DETOUR_CONFIG
	doc  []byte
}

// flagSet reports whether the flag of field f was given.
func (o *configOptions) flagSet(f redirect.Field) bool {
	return o.values[f.Path] != nil && o.flags.Changed(f.Name)
}

// bindConfigFlags adds --preset, --config and one flag per redirect.Field.
// The fields' flags get their usage and default value (for help only: a
// field's value is read only when its flag was given) from
// describeConfigFlags, which help and completion run: formatting them is most
// of what binding costs, and a run of the command never shows them.
func bindConfigFlags(fs *pflag.FlagSet, o *configOptions) {
	fs.StringVar(&o.preset, "preset", "", "start from another mesh's defaults: "+strings.Join(redirect.Presets, ", ")+" (env DETOUR_PRESET)")
	fs.StringArrayVar(&o.files, "config", nil, "YAML or JSON config file, repeatable, later wins; - reads stdin (env DETOUR_CONFIG, comma-separated)")
	fields := redirect.Fields()
	o.values = make(map[string]*string, len(fields))
	o.flags = fs
	for _, f := range fields {
		if o.noFlag[f.Name] {
			continue
		}
		v := new(string)
		o.values[f.Path] = v
		fs.StringVar(v, f.Name, "", "")
		if f.Bool {
			fs.Lookup(f.Name).NoOptDefVal = "true"
		}
	}
}

// describeConfigFlags gives the flags bindConfigFlags made in fs their usage
// and their default value as help shows them. A flag of that name that
// already has a usage is the command's own (explain's --inbound) and is left
// alone.
func describeConfigFlags(fs *pflag.FlagSet) {
	d := redirect.Default()
	for _, f := range redirect.Fields() {
		fl := fs.Lookup(f.Name)
		if fl == nil || fl.Usage != "" {
			continue
		}
		fl.Usage = fmt.Sprintf("%s (%s, env %s)", f.Usage, f.Path, f.EnvName())
		fl.DefValue = f.Get(&d)
	}
}

// sourceError says which source gave an invalid value; it still matches
// redirect.ErrInvalid (exit code 2).
type sourceError struct {
	source string
	err    error
}

func (e *sourceError) Error() string { return e.source + ": " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// load builds the configuration. stdin backs --config -. Every error names its
// source and matches redirect.ErrInvalid, so the command exits 2 without
// touching the host.
func (o *configOptions) load(stdin io.Reader) (redirect.Config, error) {
	lookup := o.environ
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if err := o.checkEnvNames(lookup); err != nil {
		return redirect.Config{}, err
	}
	// DETOUR_CONFIG= (a manifest's unset variable) named no file and so
	// installed detour's defaults, as DETOUR_PRESET= would have.
	if v, ok := lookup("DETOUR_CONFIG"); ok && strings.TrimSpace(v) == "" && !o.flags.Changed("config") {
		return redirect.Config{}, &sourceError{"DETOUR_CONFIG", &redirect.FieldError{Field: "config", Value: v,
			Reason: "is empty, which names no file; unset it for the defaults, or name a file (with {} in it for the defaults on purpose)"}}
	}
	if o.base != nil {
		return o.loadOverBase(lookup)
	}
	preset, presetSource, presetGiven := o.preset, "--preset", o.flags.Changed("preset")
	if v, ok := lookup("DETOUR_PRESET"); ok && !presetGiven {
		preset, presetSource, presetGiven = v, "DETOUR_PRESET", true
	}
	cfg := redirect.Default()
	if presetGiven {
		// An empty preset (--preset "$PRESET" with PRESET unset) is refused, not
		// taken as "no preset": istio's proxy uid would silently become 5678.
		var err error
		if cfg, err = redirect.Preset(preset); err != nil {
			return redirect.Config{}, &sourceError{presetSource, err}
		}
	}
	files := o.files
	if env := o.envFiles(lookup); env != nil && !o.flags.Changed("config") {
		files = env
	}
	stdinUsed := false
	for _, name := range files {
		var (
			doc []byte
			err error
		)
		if name == "-" {
			if stdinUsed {
				return redirect.Config{}, &sourceError{"--config", &redirect.FieldError{Field: "config", Value: "-", Reason: "is given twice; stdin can be read once"}}
			}
			stdinUsed = true
			doc, err = redirect.ReadDocument(stdin)
			o.stdinDoc = doc
		} else if doc, err = redirect.ReadDocumentFile(name); err == nil {
			if fi, serr := os.Stat(name); serr == nil && !fi.Mode().IsRegular() {
				o.pipeDocs = append(o.pipeDocs, pipeDoc{name: name, doc: doc})
			}
		}
		if errors.Is(err, redirect.ErrDocumentTooLarge) {
			return redirect.Config{}, &sourceError{"--config", &redirect.FieldError{Field: "config", Value: name, Reason: err.Error()}}
		}
		if err != nil {
			return redirect.Config{}, &sourceError{"--config", &redirect.FieldError{Field: "config", Value: name, Reason: "cannot be read: " + unwrapPathError(err)}}
		}
		if redirect.EmptyDocument(doc) {
			return redirect.Config{}, &sourceError{"--config", &redirect.FieldError{Field: "config", Value: name, Reason: "is empty (no setting in it); leave --config out for the defaults, or write {}"}}
		}
		if err := cfg.Decode(doc); err != nil {
			return redirect.Config{}, &sourceError{"config file " + name, err}
		}
	}
	return o.applyFields(cfg, lookup)
}

// loadOverBase builds the configuration from the base document, then the
// environment and flags of single settings. A preset or config file as well
// is refused: which of the two documents was meant cannot be told.
func (o *configOptions) loadOverBase(lookup func(string) (string, bool)) (redirect.Config, error) {
	for _, src := range []struct {
		name  string
		given bool
	}{
		{"--preset", o.flags.Changed("preset")},
		{"--config", o.flags.Changed("config")},
		{"DETOUR_PRESET", isSet(lookup, "DETOUR_PRESET")},
		{"DETOUR_CONFIG", o.envFiles(lookup) != nil},
	} {
		if src.given {
			return redirect.Config{}, usageError("%s: cannot be combined with %s, which is the configuration (a setting's own flag or DETOUR_* variable still overrides that setting)", src.name, o.baseSource)
		}
	}
	cfg := redirect.Default()
	if err := cfg.Decode(o.base); err != nil {
		return redirect.Config{}, &sourceError{o.baseSource, err}
	}
	return o.applyFields(cfg, lookup)
}

// envFiles are the config files DETOUR_CONFIG names (nil: none).
func (o *configOptions) envFiles(lookup func(string) (string, bool)) []string {
	if v, ok := lookup("DETOUR_CONFIG"); ok && v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

func isSet(lookup func(string) (string, bool), name string) bool {
	_, ok := lookup(name)
	return ok
}

// overrides lists the settings whose own flag or DETOUR_* variable is given,
// as the flag or variable.
func (o *configOptions) overrides() []string {
	lookup := o.environ
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var out []string
	for _, f := range redirect.Fields() {
		switch {
		case o.flagSet(f):
			out = append(out, "--"+f.Name)
		case isSet(lookup, f.EnvName()):
			out = append(out, f.EnvName())
		}
	}
	return out
}

// applyFields sets the fields given by the environment, then those given by
// flags, and validates the result.
func (o *configOptions) applyFields(cfg redirect.Config, lookup func(string) (string, bool)) (redirect.Config, error) {
	for _, f := range redirect.Fields() {
		if o.flagSet(f) {
			continue
		}
		if v, ok := lookup(f.EnvName()); ok {
			if err := emptyInclude(f, v); err != nil {
				return redirect.Config{}, &sourceError{f.EnvName(), err}
			}
			if err := cfg.Set(f.Path, v); err != nil {
				return redirect.Config{}, &sourceError{f.EnvName(), err}
			}
		}
	}
	for _, f := range redirect.Fields() {
		if !o.flagSet(f) {
			continue
		}
		if err := emptyInclude(f, *o.values[f.Path]); err != nil {
			return redirect.Config{}, &sourceError{"--" + f.Name, err}
		}
		if err := cfg.Set(f.Path, *o.values[f.Path]); err != nil {
			return redirect.Config{}, &sourceError{"--" + f.Name, err}
		}
	}
	if err := cfg.Validate(); err != nil {
		return redirect.Config{}, err
	}
	return cfg, nil
}

// emptyInclude refuses an empty value, from a flag or a variable, for a list
// whose empty value captures everything: `--include-outbound-cidrs "$CIDRS"`
// with CIDRS unset would capture every destination instead of the few meant
// (Istio's -i "" captures none). The default is that empty list already, so
// leaving the setting out says it; a document's `[]` still clears a list a
// config file set. Empty exclusion lists stay accepted: they clear a preset's
// list (docs/config.md).
func emptyInclude(f redirect.Field, v string) error {
	return redirect.EmptyIncludeError(f, v, "leave it out for that, the default, or clear a config file's list with [] in a document")
}

func unwrapPathError(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// checkEnvNames refuses a DETOUR_* variable that is a near miss of a
// setting's (misspeltSetting), naming it and the setting it is near.
func (o *configOptions) checkEnvNames(lookup func(string) (string, bool)) error {
	names := o.envNames
	if names == nil {
		names = func() []string {
			var out []string // only DETOUR_*: misspeltSetting looks at nothing else
			for _, kv := range os.Environ() {
				if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "DETOUR_") {
					out = append(out, name)
				}
			}
			return out
		}
	}
	list := names()
	slices.Sort(list)
	for _, name := range list {
		if _, ok := scopeEnv[name]; ok {
			return scopeEnvError(lookup)
		}
		if near := misspeltSetting(name); near != "" {
			v, _ := lookup(name)
			return &sourceError{"environment", &redirect.FieldError{Field: name, Value: v,
				Reason: "is not a setting of detour (did you mean " + near + "?): correct its name or unset it"}}
		}
	}
	return nil
}
