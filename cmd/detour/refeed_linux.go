package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// refeedFile puts doc in an anonymous file (memfd) whose descriptor the exec
// keeps, and returns the path that opens it in the process after the exec.
func refeedFile(doc []byte) (string, error) {
	fd, err := unix.MemfdCreate("detour-config", 0) // no MFD_CLOEXEC: the exec keeps it
	if err != nil {
		return "", fmt.Errorf("create a file for a config document: %w", err)
	}
	// Written through the descriptor, not an *os.File, whose finalizer
	// would close it before the exec.
	for rest := doc; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err != nil {
			unix.Close(fd)
			return "", fmt.Errorf("write a config document: %w", err)
		}
		rest = rest[n:]
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), nil
}
