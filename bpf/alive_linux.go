package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/netns"
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
			l.warnOnce("ebpf: read a network namespace's liveness mark; taking it to be alive", "netns_cookie", cookie, "error", err)
			continue
		}
		if ino == 0 {
			out = append(out, cookie)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	// A mark also reads 0 once its link is detached by hand (`bpftool link
	// detach`): the kernel cannot tell the two apart. A namespace that can
	// still be found is alive, whatever its mark says.
	for cookie, where := range findNetns(out) {
		l.warnOnce("ebpf: a network namespace's liveness mark reads as gone, yet the namespace is there (was the mark detached by hand?); its scope is not stale; a re-install in it marks it again",
			"netns_cookie", cookie, "found_at", where)
		out = slices.DeleteFunc(out, func(c uint64) bool { return c == cookie })
	}
	return out, nil
}

// findNetns looks for the network namespaces of cookies where they can be
// seen from here: the nsfs mounts of this mount namespace (`ip netns`'s
// names, any bind mount) and every task's /proc/PID/task/TID/ns/net. It
// enters each namespace it finds once and returns the cookies it met with
// the path it met each at. It is only a check against a mark detached by
// hand: a namespace it does not find (held by an open file, a socket, a
// mount this mount namespace does not see) may still be alive, but then its
// mark reads its inode, unless that was detached too.
func findNetns(cookies []uint64) map[uint64]string {
	found := map[uint64]string{}
	seen := map[[2]uint64]bool{}
	var paths []string
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if i := slices.Index(f, "-"); i > 4 && i+1 < len(f) && f[i+1] == "nsfs" {
				paths = append(paths, unescapeMount(f[4]))
			}
		}
	}
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	paths = append(paths, tasks...)
	for _, p := range paths {
		if len(found) == len(cookies) {
			break
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil || seen[[2]uint64{st.Dev, st.Ino}] {
			continue
		}
		seen[[2]uint64{st.Dev, st.Ino}] = true
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var cookie uint64
		err = netns.DoFd(fd, func() (err error) { cookie, err = CurrentNetns(); return err })
		unix.Close(fd)
		if err == nil && slices.Contains(cookies, cookie) {
			if _, ok := found[cookie]; !ok {
				found[cookie] = p
			}
		}
	}
	return found
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// markInode is the netns inode a mark's link reads: the namespace's nsfs
// inode while it lives, 0 once it is gone.
//
// Every eBPF install, uninstall, status, sweep and CNI ADD reads the mark of
// each enrolled namespace, and on a virtual machine each system call costs
// microseconds, so this makes three: BPF_OBJ_GET, one BPF_OBJ_GET_INFO_BY_FD
// of the info's first 24 bytes, and close. (cilium/ebpf's LoadPinnedLink then
// Info made five, reading the info twice and the descriptor's type through
// a readlink of /proc/self/fd.) Without that readlink, a map or program
// pinned in a mark's place answers the info call too, with its own info;
// what a netns link's info holds at those offsets rules both out: link type
// BPF_LINK_TYPE_NETNS (5) and attach type BPF_SK_LOOKUP (36) read, for a map
// of type 5 (percpu hash), map flags 36, which include BPF_F_STACK_BUILD_ID,
// valid for stack-trace maps only, and for a program, a translated length of
// 36 bytes, not a whole number of 8-byte instructions.
func markInode(pin string) (uint32, error) {
	path, err := unix.BytePtrFromString(pin)
	if err != nil {
		return 0, fmt.Errorf("load liveness mark %s: %w", pin, err)
	}
	// union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags
	// (0: a link is opened read-write only), path_fd.
	get := struct {
		pathname       uint64
		bpfFD, flags   uint32
		pathFD, unused uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(path)))}
	r, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&get)), unsafe.Sizeof(get))
	runtime.KeepAlive(path)
	if errno != 0 {
		return 0, fmt.Errorf("load liveness mark %s: %w", pin, errno)
	}
	fd := int(r)
	defer unix.Close(fd)
	// struct bpf_link_info up to its netns member: type, id, prog_id, then
	// the union (8-aligned), whose netns member is netns_ino, attach_type.
	var info struct {
		typ, id, prog      uint32
		_                  uint32
		netnsIno, attachTo uint32
	}
	// union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info (u64).
	attr := struct {
		bpfFD, infoLen uint32
		info           uint64
	}{uint32(fd), uint32(unsafe.Sizeof(info)), uint64(uintptr(unsafe.Pointer(&info)))}
	_, _, errno = unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&info)
	if errno != 0 {
		return 0, fmt.Errorf("read liveness mark %s: %w", pin, errno)
	}
	if info.typ != unix.BPF_LINK_TYPE_NETNS || info.attachTo != unix.BPF_SK_LOOKUP {
		return 0, fmt.Errorf("read liveness mark %s: not a network namespace's sk_lookup link", pin)
	}
	return info.netnsIno, nil
}
