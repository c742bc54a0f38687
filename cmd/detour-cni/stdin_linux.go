//go:build detour_lean

package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// refeedStdin makes doc the process's stdin: a memfd (any size, unlike a
// pipe's buffer, and no file system needed) at offset 0 on descriptor 0.
func refeedStdin(doc []byte) error {
	fd, err := unix.MemfdCreate("detour-cni-stdin", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	defer unix.Close(fd)
	for b := doc; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			return fmt.Errorf("write memfd: %w", err)
		}
		b = b[n:]
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return fmt.Errorf("seek memfd: %w", err)
	}
	// Dup2 clears close-on-exec on descriptor 0.
	if err := unix.Dup2(fd, 0); err != nil {
		return fmt.Errorf("dup memfd to stdin: %w", err)
	}
	return nil
}
