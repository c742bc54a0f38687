// Package systemd makes detour's redirection persistent on a VM: Persist writes
// the detour.service unit and the configuration it installs (the effective
// redirect.Config as YAML), then reloads systemd and enables and starts the
// unit; Unpersist stops and disables it and removes both files.
//
// Every path is under Options.Root, so tests write into a temporary directory,
// and systemctl is reached only through the Systemctl interface: with a Root
// other than "/" there is no default, so a test can never run the host's
// systemctl by accident.
//
// Privileges: write access to the unit and config directories and a running
// systemd (as root) for the real systemctl.
//
// This package must not import cmd/..., cni or controlplane.
package systemd
