// Package atomicfile replaces files so that a reader sees the old content or the
// new one, never a part: the CNI conflists and kubeconfig the installer writes
// while container runtimes read them, the plugin's state, the systemd unit.
// It needs only write access to the target's directory and must not import
// other detour packages.
package atomicfile
