package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/detour-mesh/detour/internal/systemd"
	"github.com/detour-mesh/detour/redirect"
)

// persistOptions carry --persist of install and uninstall. unit is the base of
// the systemd options: its zero value means the real paths and the host's
// systemctl; tests point Root at a temporary directory and set a fake Systemctl.
type persistOptions struct {
	enabled bool
	unit    systemd.Options
}

const persistUsage = "also at every boot: write /etc/detour/detour.yaml and the detour.service systemd unit, and enable it (uninstall: disable and remove them)"

// checkPersist refuses --persist where it cannot mean anything; it runs before
// anything changes.
func checkPersist(p persistOptions, nsPath, cgroup string, dryRun bool) error {
	switch {
	case !p.enabled:
		return nil
	case cgroup != "":
		// The unit runs `detour install --config …` and `detour uninstall`:
		// without --cgroup they are the network-namespace scope, which would
		// capture every process of the host at boot. (A service's cgroup
		// does not exist before the service starts, either.)
		return usageError("--persist: not with --cgroup: the boot unit installs into the whole network namespace, not a cgroup; run `detour install --cgroup …` from the service's own unit (ExecStartPre) instead")
	case dryRun:
		return usageError("--persist: not with --dry-run, which changes nothing")
	case nsPath != "":
		return usageError("--persist: not with --netns: the unit installs into the host's network namespace at boot")
	}
	return nil
}

// persist writes and enables the boot unit for cfg, the effective
// configuration just installed, run by this very binary.
func persist(ctx context.Context, p persistOptions, cfg redirect.Config, w io.Writer) error {
	o := p.unit
	o.Config = cfg
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("persist: find the detour binary: %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return fmt.Errorf("persist: find the detour binary: %w", err)
		}
		o.Binary = exe
	}
	if err := systemd.Persist(ctx, o); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "persisted: %s enabled; it installs %s at boot\n", unitName(o), configFile(o))
	return err
}

// unpersist disables and removes the boot unit and its configuration.
func unpersist(ctx context.Context, p persistOptions, w io.Writer) error {
	if err := systemd.Unpersist(ctx, p.unit); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "unpersisted: %s and %s are gone\n", unitName(p.unit), configFile(p.unit))
	return err
}

// textOut is where the --persist lines go: stdout, except with -o json, whose
// stdout is one JSON document.
func textOut(s streams, output string) io.Writer {
	if output == "json" {
		return io.Discard
	}
	return s.out
}

func unitName(o systemd.Options) string {
	if o.UnitName != "" {
		return o.UnitName
	}
	return systemd.DefaultUnitName
}

func configFile(o systemd.Options) string {
	if o.ConfigFile != "" {
		return o.ConfigFile
	}
	return systemd.DefaultConfigFile
}
