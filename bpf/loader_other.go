//go:build !linux

package bpf

import (
	"errors"
	"io"

	"github.com/detour-mesh/detour/redirect"
)

// Ready reports that eBPF redirection needs Linux.
func (l *Loader) Ready() error { return errors.ErrUnsupported }

// Apply needs Linux.
func (l *Loader) Apply(Scope, redirect.Capture) (bool, error) { return false, errors.ErrUnsupported }

func (l *Loader) ApplyWith(Scope, redirect.Capture, Settings) (bool, error) {
	return false, errors.ErrUnsupported
}

// Remove needs Linux.
func (l *Loader) Remove(Scope) error { return errors.ErrUnsupported }

// RemoveGone needs Linux.
func (l *Loader) RemoveGone() error { return errors.ErrUnsupported }

// Sweep needs Linux.
func (l *Loader) Sweep() ([]string, error) { return nil, errors.ErrUnsupported }

// SweepForRemoval needs Linux.
func (l *Loader) SweepForRemoval() ([]string, error) { return nil, errors.ErrUnsupported }

// CurrentNetns needs Linux.
func CurrentNetns() (uint64, error) { return 0, errors.ErrUnsupported }

// Observe needs Linux.
func (l *Loader) Observe() (State, error) { return State{}, errors.ErrUnsupported }

// Key needs Linux.
func (l *Loader) Key(Scope) (uint64, string, error) { return 0, "", errors.ErrUnsupported }

// Lines needs Linux.
func (l *Loader) Lines(State, Scope) ([]string, error) { return nil, errors.ErrUnsupported }

// Probe needs Linux.
func (l *Loader) Probe() error { return errors.ErrUnsupported }

// CheckCgroup needs Linux.
func CheckCgroup(string) error { return errors.ErrUnsupported }

// IsHierarchyRoot needs Linux.
func IsHierarchyRoot(string) (bool, error) { return false, errors.ErrUnsupported }

// CgroupRoot needs Linux.
func CgroupRoot() (string, error) { return "", errors.ErrUnsupported }

// Drift needs Linux.
func (l *Loader) Drift(State, Scope) ([]string, error) { return nil, errors.ErrUnsupported }

// liveCgroupScopes needs Linux.
func (State) liveCgroupScopes() int { return 0 }

// EnableRunStats needs Linux.
func EnableRunStats() (io.Closer, error) { return nil, errors.ErrUnsupported }

// RunStats needs Linux.
func (l *Loader) RunStats() (map[string]RunStat, error) { return nil, errors.ErrUnsupported }

// OtherBuild needs Linux.
func (l *Loader) OtherBuild(State, Scope) (string, error) { return "", errors.ErrUnsupported }
