package netns

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotNetNS is returned by Check for a path that exists but is not a network
// namespace (a regular file, an unmounted bind-mount point, another namespace).
var ErrNotNetNS = errors.New("not a network namespace")

// nsGetNSType is NS_GET_NSTYPE, _IO(0xb7, 0x3) in linux/nsfs.h.
const nsGetNSType = 0xb703

// Check returns nil when path names a network namespace. A missing path is an
// error matching fs.ErrNotExist; anything else that is not a network namespace
// matches ErrNotNetNS. It needs read access to path and nothing else.
func Check(path string) error {
	// O_NONBLOCK: a FIFO at path must be refused, not waited on for a
	// writer; a namespace file ignores the flag.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	typ, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil || typ != unix.CLONE_NEWNET {
		return fmt.Errorf("%s: %w", path, ErrNotNetNS)
	}
	return nil
}
