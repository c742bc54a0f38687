package atomicfile

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write replaces path with data; see WriteFrom.
func Write(path string, data []byte, mode os.FileMode) error {
	return WriteFrom(path, bytes.NewReader(data), mode)
}

// WriteVolatile replaces path with data like Write, without waiting for the
// disk (no fsync): a reader, or a writer killed half-way, still never sees a
// part, but a power loss or kernel crash may lose the new content. It is for
// records of what itself does not survive a machine crash (a network
// namespace's attachment), where the sync would only add latency.
func WriteVolatile(path string, data []byte, mode os.FileMode) error {
	return write(path, bytes.NewReader(data), mode, false)
}

// WriteFrom replaces path with the bytes r yields: it writes a temporary file in
// the same directory (a hidden name with a .tmp extension, which no container
// runtime reads as a network configuration), syncs it, gives it mode and renames
// it over path. On failure the temporary file is removed and path is untouched.
// The directory must exist.
func WriteFrom(path string, r io.Reader, mode os.FileMode) error {
	return write(path, r, mode, true)
}

func write(path string, r io.Reader, mode os.FileMode, sync bool) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = io.Copy(f, r); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if sync {
		if err = f.Sync(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
