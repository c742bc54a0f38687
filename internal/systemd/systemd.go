package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/internal/atomicfile"
	"github.com/detour-mesh/detour/redirect"
)

// Defaults of Options' zero fields.
const (
	DefaultUnitName   = "detour.service"
	DefaultUnitDir    = "/etc/systemd/system"
	DefaultConfigFile = "/etc/detour/detour.yaml"
	DefaultBinary     = "/usr/local/bin/detour"
)

// Systemctl runs systemctl. The real one is ExecSystemctl; tests use a fake
// that records the calls.
type Systemctl interface {
	// Run runs `systemctl ARGS...` and returns its failure with its output.
	Run(ctx context.Context, args ...string) error
}

// ExecSystemctl runs the host's systemctl binary.
type ExecSystemctl struct{}

// Run runs `systemctl ARGS...`.
func (ExecSystemctl) Run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Options say where the unit and its configuration go. The zero value of a
// field means its default.
type Options struct {
	// Config is the redirection the unit installs at boot (Persist only). It must
	// be valid: Persist writes nothing otherwise.
	Config redirect.Config
	// Root prefixes every path below ("" = "/"). Tests use a temporary directory.
	Root string
	// UnitDir is where the unit file goes (DefaultUnitDir).
	UnitDir string
	// UnitName is the unit's file name (DefaultUnitName).
	UnitName string
	// ConfigFile is where the configuration goes (DefaultConfigFile).
	ConfigFile string
	// Binary is the detour binary the unit runs, as the booted host sees it
	// (DefaultBinary).
	Binary string
	// Before are extra units that must start after the redirection is in place,
	// such as the workload's and the sidecar's ("myapp.service envoy.service").
	// They should also say Requires=detour.service; see docs/vm.md.
	Before []string
	// Systemctl runs systemctl. Nil means ExecSystemctl when Root is "/" (or
	// empty); with another Root it must be set.
	Systemctl Systemctl
	// Logger receives a line per change (nil: discard).
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.UnitDir == "" {
		o.UnitDir = DefaultUnitDir
	}
	if o.UnitName == "" {
		o.UnitName = DefaultUnitName
	}
	if o.ConfigFile == "" {
		o.ConfigFile = DefaultConfigFile
	}
	if o.Binary == "" {
		o.Binary = DefaultBinary
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) systemctl() (Systemctl, error) {
	if o.Systemctl != nil {
		return o.Systemctl, nil
	}
	if filepath.Clean(o.Root) != "/" {
		return nil, fmt.Errorf("root %s: the host's systemctl cannot manage it; set Options.Systemctl", o.Root)
	}
	return ExecSystemctl{}, nil
}

func (o Options) check() error {
	for _, p := range []struct{ name, path string }{{"unit dir", o.UnitDir}, {"config file", o.ConfigFile}, {"binary", o.Binary}} {
		if !filepath.IsAbs(p.path) {
			return fmt.Errorf("%s: %q is not an absolute path", p.name, p.path)
		}
		if strings.ContainsAny(p.path, "\n\r") {
			return fmt.Errorf("%s: %q holds a line break, which would end its unit directive", p.name, p.path)
		}
	}
	if !strings.HasSuffix(o.UnitName, ".service") || strings.ContainsAny(o.UnitName, "/ ") {
		return fmt.Errorf("unit name: %q is not a service unit file name", o.UnitName)
	}
	for _, b := range o.Before {
		if b == "" || strings.ContainsAny(b, "/ \n") || !strings.Contains(b, ".") {
			return fmt.Errorf("before: %q is not a unit name", b)
		}
	}
	return nil
}

func (o Options) unitPath() string   { return filepath.Join(o.Root, o.UnitDir, o.UnitName) }
func (o Options) configPath() string { return filepath.Join(o.Root, o.ConfigFile) }

// unitText is the unit Persist writes, with @BINARY@, @CONFIG@ and @BEFORE@ for
// Unit to fill in; deploy/systemd/detour.service is it rendered with the
// defaults (a test keeps the two equal). Plain replacement rather than
// text/template keeps the template engine (and the reflection that disables
// the linker's dead-method elimination) out of the install binary.
const unitText = `# detour: install the traffic redirection into the sidecar proxy at boot, before
# networking comes up and so before the workload and its sidecar start; remove it
# on stop. Written by "detour install --persist"; docs/vm.md explains it.
#
# Order the workload and the sidecar after it, and make them fail closed without
# it, with a drop-in for each (systemctl edit myapp.service):
#   [Unit]
#   Requires=detour.service
#   After=detour.service
[Unit]
Description=detour traffic redirection into the sidecar proxy
Documentation=https://github.com/detour-mesh/detour/blob/main/docs/vm.md
# Like a firewall: early, before network-pre.target, without the default
# dependencies that would order it after basic.target.
DefaultDependencies=no
Wants=network-pre.target
After=local-fs.target systemd-modules-load.service
Before=network-pre.target shutdown.target@BEFORE@
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=@BINARY@ install --config @CONFIG@
# Uninstall removes what detour owns, found by name: it needs no config.
ExecStop=@BINARY@ uninstall

[Install]
WantedBy=multi-user.target
`

// Unit renders the unit file for o. The same options always give the same bytes.
func Unit(o Options) ([]byte, error) {
	o = o.withDefaults()
	if err := o.check(); err != nil {
		return nil, err
	}
	var before strings.Builder
	for _, b := range o.Before {
		before.WriteString(" " + b)
	}
	// check refused newlines in every value, so none can add a directive.
	r := strings.NewReplacer("@BINARY@", o.Binary, "@CONFIG@", o.ConfigFile, "@BEFORE@", before.String())
	return []byte(r.Replace(unitText)), nil
}

// ConfigYAML renders cfg as the YAML document the unit's `detour install
// --config` reads back to the same Config. cfg must be valid.
func ConfigYAML(cfg redirect.Config) ([]byte, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	body, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return append([]byte("# The redirection detour.service installs at boot. Written by \"detour install --persist\".\n"), body...), nil
}

// Persist makes o.Config the redirection installed at every boot: it writes the
// configuration and the unit (each atomically, creating their directories),
// then runs `systemctl daemon-reload` and `systemctl enable --now UNIT`. Starting
// the unit runs `detour install` once more, which changes nothing when the rules
// are already in place, and marks the unit active so that stopping it (or
// shutting down) runs `detour uninstall`.
//
// An invalid o.Config is an error matching redirect.ErrInvalid, and nothing is
// written. Persist is idempotent: running it again with the same options leaves
// the same files.
func Persist(ctx context.Context, o Options) error {
	o = o.withDefaults()
	if err := o.check(); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	cfg, err := ConfigYAML(o.Config)
	if err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	unit, err := Unit(o)
	if err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	sc, err := o.systemctl()
	if err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	if err := writeAtomic(o.configPath(), cfg, 0o644); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	if err := writeAtomic(o.unitPath(), unit, 0o644); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	o.Logger.Info("wrote unit and config", "unit", o.unitPath(), "config", o.configPath())
	if err := sc.Run(ctx, "daemon-reload"); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	if err := sc.Run(ctx, "enable", "--now", o.UnitName); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	return nil
}

// Unpersist undoes Persist: when the unit file exists it runs `systemctl
// disable --now UNIT` (stopping the unit runs `detour uninstall`), removes the
// unit and the configuration and runs `systemctl daemon-reload`. It is
// idempotent: with nothing persisted it changes nothing and runs no systemctl.
func Unpersist(ctx context.Context, o Options) error {
	o = o.withDefaults()
	if err := o.check(); err != nil {
		return fmt.Errorf("unpersist: %w", err)
	}
	sc, err := o.systemctl()
	if err != nil {
		return fmt.Errorf("unpersist: %w", err)
	}
	_, statErr := os.Stat(o.unitPath())
	unitExists := statErr == nil
	if unitExists {
		if err := sc.Run(ctx, "disable", "--now", o.UnitName); err != nil {
			return fmt.Errorf("unpersist: %w", err)
		}
	}
	var errs []error
	for _, p := range []string{o.unitPath(), o.configPath()} {
		switch err := os.Remove(p); {
		case err == nil:
			o.Logger.Info("removed file", "path", p)
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unpersist: %w", err)
	}
	if unitExists {
		if err := sc.Run(ctx, "daemon-reload"); err != nil {
			return fmt.Errorf("unpersist: %w", err)
		}
	}
	return nil
}

// writeAtomic replaces path with data, creating its directory if needed.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.Write(path, data, mode)
}
