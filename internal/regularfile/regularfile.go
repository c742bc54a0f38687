package regularfile

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is Open's error (inside an *fs.PathError) for a path that
// is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// Open opens the regular file at path (symlinks followed) for reading. A
// FIFO, device, socket or directory is refused with an *fs.PathError
// wrapping ErrNotRegular, without waiting for a FIFO's writer; Kind names
// what was there.
func Open(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: path, Err: &notRegular{mode: fi.Mode()}}
	}
	return f, nil
}

// notRegular is ErrNotRegular with the kind of file found.
type notRegular struct{ mode fs.FileMode }

func (e *notRegular) Error() string        { return ErrNotRegular.Error() }
func (e *notRegular) Is(target error) bool { return target == ErrNotRegular }

// Kind names what err (from Open) found instead of a regular file: "a
// directory", "a named pipe", "a socket", "a device", or the mode ("mode …"); "" when err is not Open's refusal.
func Kind(err error) string {
	var nr *notRegular
	if !errors.As(err, &nr) {
		return ""
	}
	switch m := nr.mode; {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "mode " + nr.mode.String()
}
