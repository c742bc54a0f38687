package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// A network-namespace scope is keyed by the namespace's cookie, and a cookie
// names nothing once its namespace is gone: no command can enter it or look
// it up. Guessing from the outside (no process in it, no bind mount of it)
// would miss what else keeps a namespace alive — a thread that entered it,
// an open file of /proc/PID/ns/net, a socket of it held by a process
// elsewhere — and nsfs inode numbers are reused. So each enrolled namespace
// carries a mark the kernel itself drops with it: a program of type
// sk_lookup that passes every lookup (it selects no socket, so the lookup goes
// on as without it), attached to the namespace by a bpf_link pinned as
// links/<aliveDir>/<cookie>. A namespace's bpf_link holds no reference on it;
// when the namespace exits, the kernel detaches the link and its info reads
// netns inode 0 (as a cgroup scope's links read cgroup id 0 once the cgroup
// is released). A mark that reads 0 is certain: the namespace is gone. A scope
// without a mark (enrolled by a detour that made none, or through Apply from
// outside its namespace) is taken to be alive.
const aliveDir = "netns-alive"

// aliveSpec passes every socket lookup: SK_PASS with no socket selected.
func aliveSpec() *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Name:         "detour_alive",
		Type:         ebpf.SkLookup,
		AttachType:   ebpf.AttachSkLookup,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	}
}

func (l *Loader) aliveDir() string { return filepath.Join(l.opts.pinDir(), "links", aliveDir) }

func (l *Loader) alivePin(cookie uint64) string {
	return filepath.Join(l.aliveDir(), strconv.FormatUint(cookie, 10))
}

// markAlive attaches the mark of the namespace whose cookie is cookie, when
// the calling thread is in it and it has no mark yet. It reports whether it
// attached one. The caller holds the lock and keeps its goroutine on the
// thread that entered the namespace.
func (l *Loader) markAlive(cookie uint64) (bool, error) {
	pin := l.alivePin(cookie)
	if ino, err := markInode(pin); err == nil && ino != 0 {
		return false, nil
	} else if err == nil {
		// A cookie is never reused: a mark that reads 0 for the namespace
		// this thread is in cannot be; replace it.
		if err := detachPin(pin); err != nil {
			return false, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	here, err := CurrentNetns()
	if err != nil {
		return false, err
	}
	if here != cookie {
		l.log().Debug("ebpf: not in the scope's network namespace: its enrolment gets no liveness mark", "netns_cookie", cookie, "here", here)
		return false, nil
	}
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return false, fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer ns.Close()
	prog, err := ebpf.NewProgram(aliveSpec())
	if err != nil {
		return false, fmt.Errorf("load the liveness mark: %w", err)
	}
	defer prog.Close()
	lk, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		return false, fmt.Errorf("attach the liveness mark to netns cookie %d: %w", cookie, err)
	}
	defer lk.Close() // the pin keeps it
	if err := os.MkdirAll(l.aliveDir(), 0o700); err != nil {
		return false, fmt.Errorf("pin directory: %w", err)
	}
	if err := lk.Pin(pin); err != nil {
		return false, fmt.Errorf("pin the liveness mark of netns cookie %d: %w", cookie, err)
	}
	return true, nil
}

// unmarkAlive detaches and unpins the namespace's mark, when it has one.
func (l *Loader) unmarkAlive(cookie uint64) error {
	if err := detachPin(l.alivePin(cookie)); err != nil {
		return err
	}
	// The directory goes with its last mark (cleanup removes it otherwise).
	if err := os.Remove(l.aliveDir()); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("unpin links: %w", err)
	}
	return nil
}

// goneNetns lists the cookies of the marked namespaces that are gone: their
// mark reads netns inode 0. A mark that cannot be read is not counted as
// gone: a namespace is never called gone on a doubt.
func (l *Loader) goneNetns() ([]uint64, error) {
	pins, err := os.ReadDir(l.aliveDir())
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil // no mark (links/ may be another object: nothing of ours is there)
	} else if err != nil {
		return nil, fmt.Errorf("read liveness marks: %w", err)
	}
	var out []uint64
	for _, p := range pins {
		cookie, err := strconv.ParseUint(p.Name(), 10, 64)
		if err != nil {
			continue // not of detour's naming
		}
		ino, err := markInode(filepath.Join(l.aliveDir(), p.Name()))
		if err != nil {
			l.log().Warn("ebpf: read a network namespace's liveness mark; taking it to be alive", "netns_cookie", cookie, "error", err)
			continue
		}
		if ino == 0 {
			out = append(out, cookie)
		}
	}
	return out, nil
}

// markInode is the netns inode a mark's link reads: the namespace's nsfs
// inode while it lives, 0 once it is gone.
func markInode(pin string) (uint32, error) {
	lk, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return 0, fmt.Errorf("load liveness mark %s: %w", pin, err)
	}
	defer lk.Close()
	info, err := lk.Info()
	if err != nil {
		return 0, fmt.Errorf("read liveness mark %s: %w", pin, err)
	}
	ns := info.NetNs()
	if ns == nil {
		return 0, fmt.Errorf("read liveness mark %s: not a network namespace's link (%v)", pin, info.Type)
	}
	return ns.NetnsInode, nil
}
