// Package sibling finds the binary a lean build hands a call to (detour →
// detour-ebpf, detour-cni → detour-cni-ebpf): next to the running binary,
// where `make build`, the image and `detour cni install` put it. It must not
// import other detour packages.
package sibling

import (
	"os"
	"path/filepath"
)

// Beside is the path of name in the directory of the running binary
// (executable is os.Executable or a test's stand-in; symlinks resolved), and
// whether an executable file is there. The path is "" when the running
// binary's own is unknown.
func Beside(executable func() (string, error), name string) (path string, ok bool) {
	exe, err := executable()
	if err != nil {
		return "", false
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	path = filepath.Join(filepath.Dir(exe), name)
	return path, Executable(path)
}

// Executable reports whether path is a regular file with an execute bit.
func Executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
