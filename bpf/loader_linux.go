package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
)

// Ready reports whether the kernel has the program and map types the
// programs need, naming the first one missing (wrapping ErrNotSupported). It
// changes nothing, and it is cheap: Engine asks every backend on every run.
// The helpers are probed by Apply before it changes anything (Probe).
func (l *Loader) Ready() error { return probe(false) }

// Probe is Ready plus the helpers each program type must offer.
func (l *Loader) Probe() error { return probe(true) }

func probe(helpers bool) error {
	prog := func(t ebpf.ProgramType) func() error { return func() error { return features.HaveProgramType(t) } }
	mp := func(t ebpf.MapType) func() error { return func() error { return features.HaveMapType(t) } }
	helper := func(t ebpf.ProgramType, h asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(t, h) }
	}
	checks := []check{
		{"program type cgroup_sock_addr", prog(ebpf.CGroupSockAddr)},
		{"program type cgroup_sockopt", prog(ebpf.CGroupSockopt)},
		{"program type sock_ops", prog(ebpf.SockOps)},
		{"program type sk_msg", prog(ebpf.SkMsg)},
		{"program type sk_lookup", prog(ebpf.SkLookup)}, // a namespace's liveness mark (alive_linux.go)
		{"map type sockhash", mp(ebpf.SockHash)},
		{"map type lpm_trie", mp(ebpf.LPMTrie)},
		{"map type sk_storage", mp(ebpf.SkStorage)},
		{"map type lru_hash", mp(ebpf.LRUHash)},
	}
	if !helpers {
		return run(checks)
	}
	checks = append(checks, []check{
		{"helper bpf_get_netns_cookie in cgroup_sock_addr", helper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)},
		{"helper bpf_get_netns_cookie in cgroup_sockopt", helper(ebpf.CGroupSockopt, asm.FnGetNetnsCookie)},
		{"helper bpf_get_netns_cookie in sock_ops", helper(ebpf.SockOps, asm.FnGetNetnsCookie)},
		{"helper bpf_sk_storage_get in cgroup_sock_addr", helper(ebpf.CGroupSockAddr, asm.FnSkStorageGet)},
		{"helper bpf_sk_storage_get in sock_ops", helper(ebpf.SockOps, asm.FnSkStorageGet)},
		{"helper bpf_sock_hash_update in sock_ops", helper(ebpf.SockOps, asm.FnSockHashUpdate)},
		{"helper bpf_msg_redirect_hash in sk_msg", helper(ebpf.SkMsg, asm.FnMsgRedirectHash)},
		{"helper bpf_get_netns_cookie in sk_msg", helper(ebpf.SkMsg, asm.FnGetNetnsCookie)},
		{"helper bpf_sk_storage_get in sk_msg", helper(ebpf.SkMsg, asm.FnSkStorageGet)},
	}...)
	return run(checks)
}

type check struct {
	name string
	err  func() error
}

func run(checks []check) error {
	for _, c := range checks {
		if err := c.err(); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("ebpf backend needs %s: %w", c.name, ErrNotSupported)
			}
			return fmt.Errorf("probe %s: %w", c.name, err)
		}
	}
	return nil
}

// Apply makes scope redirect as c says: it loads and attaches the programs
// where they are missing (bpf_link, pinned) and writes the scope's map
// entries, deleting stale ones. Re-applying a new capture updates the maps in
// place: established connections keep their recorded destinations. changed is
// false when everything already matched. Needs CAP_BPF, CAP_NET_ADMIN and
// CAP_SYS_ADMIN (bpffs, cgroup attach). It is ApplyWith with the default
// Settings.
func (l *Loader) Apply(scope Scope, c redirect.Capture) (changed bool, err error) {
	return l.ApplyWith(scope, c, Settings{})
}

// ApplyWith is Apply with the scope's eBPF-only settings. Turning
// acceleration on attaches the sk_msg program (before the config asks the
// sockops program for it); turning it off affects new connections, and the
// program is detached once no scope asks for it. Connections accelerated
// before keep their path until they close, so none loses bytes.
func (l *Loader) ApplyWith(scope Scope, c redirect.Capture, set Settings) (changed bool, err error) {
	if err := scope.validate(); err != nil {
		return false, err
	}
	// A configuration the maps cannot hold is refused before anything is
	// pinned (the id is a stand-in: the entries are thrown away).
	if _, err := renderWith(0, c, set); err != nil {
		return false, err
	}
	if err := l.Probe(); err != nil {
		return false, err
	}
	if err := l.mountBPFFS(); err != nil {
		return false, err
	}
	// The scope is resolved (its cgroup checked) before anything is pinned.
	r, err := l.resolve(scope)
	if err != nil {
		return false, err
	}
	unlock, err := l.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	st, err := l.open()
	if err != nil {
		return false, err
	}
	defer st.close()
	// The scopes of cgroups and namespaces that are gone hold ids and
	// entries no command could otherwise reach short of an uninstall.
	key, kind := r.key, r.kind
	if !l.swept {
		if _, err := l.removeGone(st, key); err != nil {
			return false, err
		}
	}
	id, known, err := st.idFor(key)
	if err != nil {
		return false, err
	}
	// An enrolment someone deleted or pointed at another config goes back
	// to the id detour enrolled the scope with (a cgroup scope's programs
	// carry it), unless another scope has been given that id since.
	rec, recorded, err := st.record(key)
	if err != nil {
		return false, err
	}
	reenroll := false
	if recorded && (!known || id != rec.Config) {
		used, err := st.configUsed(rec.Config, key)
		if err != nil {
			return false, err
		}
		if !used {
			id, reenroll = rec.Config, true
		}
	}
	want, err := renderWith(id, c, set)
	if err != nil {
		return false, err
	}
	have, err := st.read(id)
	if err != nil {
		return false, err
	}
	if !known {
		// A new scope that fails half way leaves none of its entries or
		// links behind.
		defer func() {
			if err != nil {
				err = errors.Join(err, l.rollback(st, r, id))
			}
		}()
	}
	accelAttached := false
	if want.cfg.Flags&flagAccel != 0 {
		if accelAttached, err = l.attachAccel(st); err != nil {
			return false, err
		}
	}
	if !known || !slices.Equal(have.lines(), want.lines()) {
		if err := st.write(id, have, want); err != nil {
			return false, err
		}
		changed = true
	}
	if want.cfg.Flags&flagAccel == 0 && have.cfg.Flags&flagAccel != 0 {
		if err := l.detachAccelUnused(st); err != nil {
			return changed, err
		}
	}
	accelUpgraded, err := l.upgradeAccel(st)
	if err != nil {
		return changed, err
	}
	changed = changed || accelAttached || accelUpgraded
	cfgForProgs := id
	if kind == kindNetns {
		cfgForProgs = 0 // the programs look the config up by netns cookie
	}
	attached, err := l.attach(st, r, cfgForProgs)
	if err != nil {
		return changed, err
	}
	if kind == kindNetns {
		marked, err := l.markAlive(key)
		if err != nil {
			return changed, err
		}
		attached = attached || marked
	}
	if !known || reenroll {
		if err := st.scopes.Put(key, id); err != nil {
			return true, fmt.Errorf("enroll %s: %w", scope, err)
		}
	}
	if w := (record{Config: id, Digest: digest(want.lines())}); !recorded || rec != w {
		if err := st.records.Put(key, w); err != nil {
			return true, fmt.Errorf("record %s: %w", scope, err)
		}
	}
	changed = changed || attached || !known || reenroll
	l.log().Debug("ebpf apply", "scope", scope.String(), "config", id, "changed", changed)
	return changed, nil
}

// Remove deletes the scope's entries, its links when no other scope uses them,
// and every pin of detour's when no scope is left. Idempotent.
func (l *Loader) Remove(scope Scope) error {
	if err := scope.validate(); err != nil {
		return err
	}
	st, unlock, err := l.openPinned(true)
	if st == nil {
		return err
	}
	defer unlock()
	r, err := l.resolve(scope)
	if err != nil {
		st.close()
		return err
	}
	key, kind := r.key, r.kind
	if err := l.unenroll(st, key, scope); err != nil {
		st.close()
		return err
	}
	if !l.swept {
		if _, err := l.removeGone(st, 0); err != nil {
			st.close()
			return err
		}
	}
	remaining, err := st.scopeKeys()
	if err != nil {
		st.close()
		return err
	}
	keepLinks := false
	for _, k := range remaining {
		if kind == kindNetns && k&cgroupKeyBit == 0 {
			keepLinks = true
		}
	}
	if !keepLinks {
		// The links go: the connections redirected just before the scope left
		// must get their answer from the getsockopt program first.
		netns := uint64(0)
		if kind == kindNetns {
			netns = key
		}
		if left := drain(st.maps["tuples"], netns); left > 0 {
			l.log().Debug("ebpf remove: redirected connections not asked for their original destination", "scope", scope.String(), "connections", left)
		}
	}
	st.close()
	if !keepLinks {
		if err := detach(l.linkDir(r)); err != nil {
			return err
		}
	}
	if len(remaining) == 0 {
		return l.cleanup()
	}
	return nil
}

// unenroll deletes the scope's entries, its config, its enrolment and its
// record: the config it is enrolled with and, when the enrolment was
// deleted or pointed elsewhere by hand, the one detour enrolled it with (if
// no other scope uses it).
func (l *Loader) unenroll(st *store, key uint64, scope Scope) error {
	var ids []uint32
	var id uint32
	if err := st.scopes.Lookup(key, &id); err == nil {
		ids = append(ids, id)
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read scopes: %w", err)
	}
	rec, recorded, err := st.record(key)
	if err != nil {
		return err
	}
	if recorded && !slices.Contains(ids, rec.Config) {
		used, err := st.configUsed(rec.Config, key)
		if err != nil {
			return err
		}
		if !used {
			ids = append(ids, rec.Config)
		}
	}
	accel := false
	for _, id := range ids {
		have, err := st.read(id)
		if err != nil {
			return err
		}
		if err := st.write(id, have, newEntries()); err != nil {
			return err
		}
		if err := st.configs.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete config %d: %w", id, err)
		}
		accel = accel || have.cfg.Flags&flagAccel != 0
	}
	if err := st.scopes.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll %s: %w", scope, err)
	}
	if err := st.records.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unrecord %s: %w", scope, err)
	}
	if key&cgroupKeyBit == 0 {
		if err := l.unmarkAlive(key); err != nil {
			return err
		}
	}
	if accel {
		return l.detachAccelUnused(st)
	}
	return nil
}

// goneCgroups lists the cgroup scopes whose cgroup no longer exists: the
// kernel detached their links when it released the cgroup (a link's
// cgroup id reads 0 then), and nothing else can remove their entries, since
// a cgroup scope is named by its directory.
func (l *Loader) goneCgroups() ([]uint64, error) {
	var out []uint64
	dirs, _ := filepath.Glob(filepath.Join(l.opts.pinDir(), "links", kindCgroup+"@*"))
	for _, d := range dirs {
		id, err := strconv.ParseUint(strings.TrimPrefix(filepath.Base(d), kindCgroup+"@"), 10, 64)
		if err != nil {
			continue // not a directory of detour's naming
		}
		pins, err := os.ReadDir(d)
		if err != nil || len(pins) == 0 {
			continue
		}
		lk, err := link.LoadPinnedLink(filepath.Join(d, pins[0].Name()), nil)
		if err != nil {
			return nil, fmt.Errorf("load link %s: %w", pins[0].Name(), err)
		}
		info, err := lk.Info()
		lk.Close()
		if err != nil {
			return nil, fmt.Errorf("read link %s: %w", pins[0].Name(), err)
		}
		if c := info.Cgroup(); c != nil && c.CgroupId == 0 {
			// A link also reads 0 once it is detached by hand (`bpftool link
			// detach`): the cgroup of a live service is not gone.
			if l.cgroupExists(id) {
				l.warnOnce("ebpf: a cgroup scope's link reads as detached, yet its cgroup is there (was it detached by hand?); its scope is not stale; a re-install attaches it again",
					"cgroup_id", id, "link", pins[0].Name())
				continue
			}
			out = append(out, id)
		}
	}
	return out, nil
}

// detachedByHand reports whether the link pinned at pin, of a cgroup whose
// id is cg, is detached (it reads cgroup id 0) while its cgroup is there:
// `bpftool link detach` did it, not the cgroup's removal.
func (l *Loader) detachedByHand(pin string, cg uint64) bool {
	lk, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return false
	}
	info, err := lk.Info()
	lk.Close()
	if err != nil {
		return false
	}
	c := info.Cgroup()
	return c != nil && c.CgroupId == 0 && l.cgroupExists(cg)
}

// cgroupExists reports whether the cgroup v2 hierarchy holds a cgroup of
// this id (a cgroup's id is its directory's inode and its kernfs file
// handle), by opening it by its handle. It is false when the kernel says no
// such cgroup exists, and also when it cannot be asked (no cgroup v2 mount,
// no CAP_DAC_READ_SEARCH): then the link's own word stands.
func (l *Loader) cgroupExists(id uint64) bool {
	root, err := l.opts.root()
	if err != nil {
		return false
	}
	mnt, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(mnt)
	const fileidKernfs = 0xfe // FILEID_KERNFS: the handle of a kernfs node is its 64-bit id
	h := make([]byte, 8)
	binary.NativeEndian.PutUint64(h, id)
	fd, err := unix.OpenByHandleAt(mnt, unix.NewFileHandle(fileidKernfs, h), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// openPinned opens detour's pinned maps under the loader's lock; the caller
// closes the store and unlocks. With no map pinned there is nothing to open:
// it removes what else is left of detour's pins and returns a nil store.
// removal is open's (Remove's maps may be of another build's layout).
func (l *Loader) openPinned(removal bool) (*store, func(), error) {
	if _, err := os.Stat(l.mapDir()); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, l.cleanup()
	}
	unlock, err := l.lock()
	if err != nil {
		return nil, nil, err
	}
	st, err := l.openFor(removal)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return st, unlock, nil
}

// RemoveGone removes the scopes of cgroups and network namespaces that are
// gone (their entries and links' pins), and every pin of detour's when no
// scope is left: what `uninstall --cgroup PATH` of a removed cgroup leaves
// nothing of; like Remove, over maps of another build too (openFor).
// Idempotent.
func (l *Loader) RemoveGone() error {
	st, unlock, err := l.openPinned(true)
	if st == nil {
		return err
	}
	defer unlock()
	if _, err := l.removeGone(st, 0); err != nil {
		st.close()
		return err
	}
	remaining, err := st.scopeKeys()
	st.close()
	if err != nil {
		return err
	}
	if len(remaining) == 0 {
		return l.cleanup()
	}
	return nil
}

// Sweep removes the scopes of cgroups and network namespaces that are gone
// (stale: removed or deleted without an uninstall) — their entries, their
// marks and links' pins, the network-namespace scope's programs on the
// cgroup root once no such scope is left, and every pin of detour's once no
// scope is left at all — and says what it removed, one line a scope. A
// scope whose namespace or cgroup may still be there is never touched, nor
// is anything else (what an interrupted install left is Remove's).
// Idempotent: a second run removes nothing.
func (l *Loader) Sweep() ([]string, error) { return l.sweep(false) }

// SweepForRemoval is Sweep for an uninstall (`detour uninstall`, also
// `--stale`): like Remove, it works over maps pinned by another build of
// detour whose entries are laid out as this build's (openFor). An install's
// Sweep refuses them, as its Apply does, before anything is changed.
func (l *Loader) SweepForRemoval() ([]string, error) { return l.sweep(true) }

func (l *Loader) sweep(removal bool) ([]string, error) {
	st, unlock, err := l.openPinned(removal)
	if st == nil {
		return nil, err
	}
	defer unlock()
	removed, err := l.removeGone(st, 0)
	if err != nil || len(removed) == 0 {
		st.close()
		return removed, err
	}
	left, err := st.recordedKeys()
	st.close()
	if err != nil {
		return removed, err
	}
	if len(left) == 0 {
		return removed, l.cleanup()
	}
	return removed, nil
}

// removeGone removes the scopes of cgroups that are gone (goneCgroups) and
// of network namespaces that are gone (goneNetns): their entries and their
// links' pins, and the network-namespace scope's links when no other
// network-namespace scope is enrolled or recorded (keep, when not 0, is the
// key of a scope being installed: counted as one). It says what it removed.
func (l *Loader) removeGone(st *store, keep uint64) ([]string, error) {
	var removed []string
	gone, err := l.goneCgroups()
	if err != nil {
		return nil, err
	}
	for _, id := range gone {
		if err := l.unenroll(st, cgroupKeyBit|id, Scope{Cgroup: fmt.Sprintf("(removed cgroup, id %d)", id)}); err != nil {
			return removed, err
		}
		if err := detach(filepath.Join(l.opts.pinDir(), "links", fmt.Sprintf("%s@%d", kindCgroup, id))); err != nil {
			return removed, err
		}
		removed = append(removed, fmt.Sprintf("the stale scope of a cgroup that is gone (cgroup id %d)", id))
		l.log().Info("removed the eBPF scope of a cgroup that is gone", "cgroup_id", id)
	}
	goneNs, err := l.goneNetns()
	if err != nil {
		return removed, err
	}
	for _, cookie := range goneNs {
		var id uint32
		what := fmt.Sprintf("the stale network-namespace scope of netns cookie %d (the namespace is gone)", cookie)
		if err := st.scopes.Lookup(cookie, &id); err == nil {
			what = fmt.Sprintf("the stale network-namespace scope of netns cookie %d, config %d (the namespace is gone)", cookie, id)
		}
		if err := l.unenroll(st, cookie, Scope{Netns: cookie}); err != nil {
			return removed, err
		}
		removed = append(removed, what)
		l.log().Info("removed the eBPF scope of a network namespace that is gone", "netns_cookie", cookie)
	}
	if len(goneNs) == 0 {
		return removed, nil
	}
	left, err := st.recordedKeys()
	if err != nil {
		return removed, err
	}
	if keep != 0 {
		left = append(left, keep)
	}
	if slices.ContainsFunc(left, func(k uint64) bool { return k&cgroupKeyBit == 0 }) {
		return removed, nil
	}
	// No namespace is enrolled any more: the programs on the cgroup root
	// have nothing to act for.
	dirs, _ := filepath.Glob(filepath.Join(l.opts.pinDir(), "links", kindNetns+"@*"))
	for _, d := range dirs {
		if err := detach(d); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// recordedKeys are the keys of the enrolled scopes and of the recorded ones
// (a scope whose enrolment was deleted by hand is still a scope).
func (st *store) recordedKeys() ([]uint64, error) {
	keys, err := st.scopeKeys()
	if err != nil {
		return nil, err
	}
	var (
		k uint64
		r record
	)
	it := st.records.Iterate()
	for it.Next(&k, &r) {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read map %s: %w", recordsMap, err)
	}
	return keys, nil
}

// cleanup unpins everything under PinDir; the kernel frees the programs and
// maps once no link or pin holds them.
func (l *Loader) cleanup() error {
	dirs, _ := filepath.Glob(filepath.Join(l.opts.pinDir(), "links", "*"))
	for _, d := range dirs {
		if err := detach(d); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(l.opts.pinDir()); err != nil {
		return fmt.Errorf("unpin %s: %w", l.opts.pinDir(), err)
	}
	return nil
}

const (
	kindNetns  = "netns"
	kindCgroup = "cgroup"
	// cgroupKeyBit marks a cgroup scope's key in the scopes map (netns cookies
	// are counters and never reach it). The programs never look these keys up:
	// a cgroup scope's programs carry their config id.
	cgroupKeyBit = uint64(1) << 63
)

// resolved is a scope as the maps and pins know it.
type resolved struct {
	key  uint64 // in the scopes map
	cg   uint64 // the attach cgroup's id
	path string // the attach cgroup's directory
	kind string
}

func (l *Loader) resolve(s Scope) (resolved, error) {
	if s.Cgroup != "" {
		id, err := cgroupID(s.Cgroup)
		if err != nil {
			return resolved{}, err
		}
		return resolved{key: cgroupKeyBit | id, cg: id, path: s.Cgroup, kind: kindCgroup}, nil
	}
	root, err := l.opts.root()
	if err != nil {
		return resolved{}, err
	}
	id, err := cgroupID(root)
	if err != nil {
		return resolved{}, err
	}
	return resolved{key: s.Netns, cg: id, path: root, kind: kindNetns}, nil
}

func cgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	// A file of the cgroup filesystem (cgroup.procs) is on it too.
	if st.Type != unix.CGROUP2_SUPER_MAGIC || s.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup %s: not a cgroup v2 directory", path)
	}
	return s.Ino, nil
}

func (l *Loader) mapDir() string { return filepath.Join(l.opts.pinDir(), "maps") }

func (l *Loader) linkDir(r resolved) string {
	return filepath.Join(l.opts.pinDir(), "links", fmt.Sprintf("%s@%d", r.kind, r.cg))
}

func (l *Loader) log() *slog.Logger {
	if l.opts.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.opts.Logger
}

// warnOnce logs a warning the first time this Loader meets it (the same
// message and attributes).
func (l *Loader) warnOnce(msg string, args ...any) {
	if _, seen := l.warned.LoadOrStore(fmt.Sprint(append([]any{msg}, args...)...), true); !seen {
		l.log().Warn(msg, args...)
	}
}

// mountBPFFS mounts a bpffs on the parent of PinDir when none is there and
// that directory is empty (/sys/fs/bpf on a host that has not mounted one).
// A directory with something in it is refused: a mount there would hide its
// files from every process of the mount namespace (DETOUR_EBPF_PIN_DIR=
// /tmp/detour mounted a bpffs over /tmp).
func (l *Loader) mountBPFFS() error {
	dir := filepath.Dir(l.opts.pinDir())
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	names, err := f.Readdirnames(1)
	f.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("bpffs %s: it is not a bpf filesystem, and mounting one over it would hide what it holds (%s, …): mount a bpffs there yourself, or pin below one", dir, names[0])
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	l.log().Info("mounted bpffs", "path", dir)
	return nil
}

// store holds the pinned maps.
type store struct {
	spec                                             *ebpf.CollectionSpec
	maps                                             map[string]*ebpf.Map
	scopes, configs, cidrs4, cidrs6, ids, ports, dns *ebpf.Map
	records                                          *ebpf.Map // nil in Observe's read-only store
	builds                                           *ebpf.Map // nil in Observe's read-only store (build_linux.go)
}

// load loads spec's programs over the store's maps and makes the pin
// directory dir for the links the caller attaches. The caller closes the
// collection (its pinned links keep the programs).
func (st *store) load(spec *ebpf.CollectionSpec, dir string) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps.Clone(st.maps)})
	if err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		coll.Close()
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	return coll, nil
}

// open loads the pinned maps, creating and pinning those that are missing.
func (l *Loader) open() (*store, error) { return l.openFor(false) }

// openFor is open; with removal, a pinned map of another build's layout is
// taken when its key and value sizes are this build's (a max_entries, flags
// or type of its own): a removal loads no program over the maps, it only
// reads and deletes entries, which are laid out the same. A map whose key
// or value size differs is still refused: its entries cannot be read as
// this build's.
func (l *Loader) openFor(removal bool) (*store, error) {
	spec, err := loadDetour()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(l.mapDir(), 0o700); err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	st := &store{spec: spec, maps: map[string]*ebpf.Map{}}
	// The pinned maps are checked against this build's before any is made:
	// maps of another layout (pinned by another build of detour) fail the
	// install with nothing changed.
	var missing, bad []string
	for _, name := range slices.Sorted(maps.Keys(spec.Maps)) {
		if strings.HasPrefix(name, ".") {
			continue // .rodata: per program load
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(l.mapDir(), name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, name)
			continue
		}
		if err != nil {
			st.close()
			return nil, fmt.Errorf("load pinned map %s: %w", name, err)
		}
		st.maps[name] = m
		if err := spec.Maps[name].Compatible(m); err != nil {
			if removal && m.KeySize() == spec.Maps[name].KeySize && m.ValueSize() == spec.Maps[name].ValueSize {
				l.log().Info("ebpf remove: a pinned map is of another build's layout; its entries are laid out as this build's", "map", name, "difference", err.Error())
				continue
			}
			bad = append(bad, fmt.Sprintf("%s (%v)", name, err))
		}
	}
	if len(bad) > 0 && removal {
		st.close()
		return nil, fmt.Errorf("the maps pinned under %s were made by another build of detour, with entries laid out otherwise than this build's: %s; this build cannot remove a scope's entries from them: uninstall with the detour that installed the scopes, or remove every eBPF scope of this node at once by removing the pin directory %s: %w: %w",
			l.mapDir(), strings.Join(bad, "; "), l.opts.pinDir(), ErrIncompatibleMaps, ebpf.ErrMapIncompatible)
	}
	if len(bad) > 0 {
		st.close()
		return nil, fmt.Errorf("the maps pinned under %s were made by another build of detour, with another layout than this build's programs need: %s; this build cannot replace the attached programs in place: uninstall every eBPF scope of this node with the detour that installed them (`detour uninstall` in each enrolled network namespace or a CNI DEL of each pod, `detour uninstall --cgroup PATH` for each cgroup scope), then install with this build: %w: %w",
			l.mapDir(), strings.Join(bad, "; "), ErrIncompatibleMaps, ebpf.ErrMapIncompatible)
	}
	for _, name := range missing {
		ms := spec.Maps[name].Copy()
		ms.Pinning = ebpf.PinByName
		m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: l.mapDir()})
		if err != nil {
			st.close()
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		st.maps[name] = m
	}
	st.scopes, st.configs = st.maps["scopes"], st.maps["configs"]
	st.cidrs4, st.cidrs6, st.ids, st.ports, st.dns = st.maps["cidrs4"], st.maps["cidrs6"], st.maps["ids"], st.maps["ports"], st.maps["dns_servers"]
	if st.records, err = l.openRecords(); err != nil {
		st.close()
		return nil, err
	}
	if st.builds, err = l.openBuilds(); err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

func (st *store) close() {
	for _, m := range st.maps {
		m.Close()
	}
	if st.records != nil {
		st.records.Close()
	}
	if st.builds != nil {
		st.builds.Close()
	}
}

func (st *store) scopeKeys() ([]uint64, error) {
	var (
		k    uint64
		v    uint32
		keys []uint64
	)
	it := st.scopes.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read scopes: %w", err)
	}
	return keys, nil
}

// idFor returns the scope's config id, or the smallest free one.
func (st *store) idFor(key uint64) (uint32, bool, error) {
	var id uint32
	if err := st.scopes.Lookup(key, &id); err == nil {
		return id, true, nil
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, false, fmt.Errorf("read scopes: %w", err)
	}
	used := map[uint32]bool{}
	var (
		k uint64
		v uint32
	)
	it := st.scopes.Iterate()
	for it.Next(&k, &v) {
		used[v] = true
	}
	if err := it.Err(); err != nil {
		return 0, false, fmt.Errorf("read scopes: %w", err)
	}
	// Nor the id of another scope whose enrolment was deleted by hand: a
	// cgroup scope's programs still read its entries, and its install takes
	// the id back.
	var r record
	rit := st.records.Iterate()
	for rit.Next(&k, &r) {
		if k != key {
			used[r.Config] = true
		}
	}
	if err := rit.Err(); err != nil {
		return 0, false, fmt.Errorf("read map %s: %w", recordsMap, err)
	}
	for id = 1; used[id]; id++ {
	}
	return id, false, nil
}

// read collects config id's entries from the maps.
func (st *store) read(id uint32) (entries, error) {
	e := newEntries()
	if err := st.configs.Lookup(id, &e.cfg); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return e, fmt.Errorf("read config %d: %w", id, err)
	}
	if err := collect(st.cidrs4, e.cidrs4, func(k detourCidr4Key) bool { return k.Cfg == id }); err != nil {
		return e, err
	}
	if err := collect(st.cidrs6, e.cidrs6, func(k detourCidr6Key) bool { return k.Cfg == id }); err != nil {
		return e, err
	}
	if err := collect(st.ids, e.ids, func(k detourIdKey) bool { return k.Cfg == id }); err != nil {
		return e, err
	}
	if err := collect(st.ports, e.ports, func(k detourPortKey) bool { return k.Cfg == id }); err != nil {
		return e, err
	}
	if err := collect(st.dns, e.dns, func(k detourDnsKey) bool { return k.Cfg == id }); err != nil {
		return e, err
	}
	return e, nil
}

func collect[K comparable, V any](m *ebpf.Map, into map[K]V, keep func(K) bool) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if keep(k) {
			into[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read map %s: %w", m, err)
	}
	return nil
}

// write turns have into want: new and changed entries first, then the stale
// ones go, and the config last, so a lookup never sees a list half gone.
func (st *store) write(id uint32, have, want entries) error {
	if err := syncMap(st.cidrs4, have.cidrs4, want.cidrs4); err != nil {
		return err
	}
	if err := syncMap(st.cidrs6, have.cidrs6, want.cidrs6); err != nil {
		return err
	}
	if err := syncMap(st.ids, have.ids, want.ids); err != nil {
		return err
	}
	if err := syncMap(st.ports, have.ports, want.ports); err != nil {
		return err
	}
	if err := syncMap(st.dns, have.dns, want.dns); err != nil {
		return err
	}
	if want.cfg == (detourCfg{}) {
		return nil
	}
	if err := st.configs.Put(id, want.cfg); err != nil {
		return fmt.Errorf("write config %d: %w", id, err)
	}
	return nil
}

func syncMap[K, V comparable](m *ebpf.Map, have, want map[K]V) error {
	for k, v := range want {
		if hv, ok := have[k]; ok && hv == v {
			continue
		}
		if err := m.Put(k, v); err != nil {
			return fmt.Errorf("write map %s: %w", m, err)
		}
	}
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from map %s: %w", m, err)
		}
	}
	return nil
}

// attach loads the programs for one attach point and links them to the cgroup,
// unless their pinned links are all there. It reports whether it attached.
func (l *Loader) attach(st *store, r resolved, cfg uint32) (bool, error) {
	dir := l.linkDir(r)
	path := r.path
	missing := false
	for _, a := range attachments {
		pin := filepath.Join(dir, a.prog)
		if _, err := os.Stat(pin); err != nil {
			missing = true
		} else if l.detachedByHand(pin, r.cg) {
			// Pinned but no longer attached: unpin it, so it is attached again.
			if err := detachPin(pin); err != nil {
				return false, err
			}
			missing = true
		}
	}
	upgrade, was := false, ""
	if !missing {
		var err error
		if upgrade, was, err = st.stale(dir); err != nil {
			return false, err
		}
		if !upgrade {
			return false, nil
		}
	}
	spec := st.spec.Copy()
	if err := spec.Variables["scope_cfg"].Set(cfg); err != nil {
		return false, fmt.Errorf("set scope_cfg: %w", err)
	}
	coll, err := st.load(spec, dir)
	if err != nil {
		return false, err
	}
	defer coll.Close()
	// Links pinned already are given this build's programs in place: of
	// another build (or of an older detour, which noted none) when none is
	// missing, and of whatever build when some are, so that the note below
	// holds for each.
	replaced, err := replace(dir, coll)
	if err != nil {
		return true, err
	}
	if upgrade && replaced {
		l.log().Info("ebpf: replaced the attached programs of another build", "links", filepath.Base(dir), "build", BuildName(), "was", was)
	}
	for _, a := range attachments {
		pin := filepath.Join(dir, a.prog)
		if _, err := os.Stat(pin); err == nil {
			continue
		}
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: a.attach, Program: coll.Programs[a.prog]})
		if err != nil {
			return true, fmt.Errorf("attach %s to %s: %w", a.prog, path, err)
		}
		err = lk.Pin(pin)
		lk.Close() // without the pin, closing detaches it
		if errors.Is(err, fs.ErrExist) {
			continue // another detour attached it meanwhile
		}
		if err != nil {
			return true, fmt.Errorf("pin link %s: %w", a.prog, err)
		}
	}
	if err := st.noteBuild(dir); err != nil {
		return true, err
	}
	return true, nil
}

// attachAccel attaches the sk_msg program to the accel_socks sockhash
// (bpf_link, pinned under links/sk_msg) unless it is there. It reports
// whether it attached.
func (l *Loader) attachAccel(st *store) (bool, error) {
	dir := filepath.Join(l.opts.pinDir(), "links", accelDir)
	pin := filepath.Join(dir, accelProg)
	if _, err := os.Stat(pin); err == nil {
		return false, nil
	}
	coll, err := st.load(st.spec.Copy(), dir)
	if err != nil {
		return false, err
	}
	defer coll.Close()
	lk, err := link.AttachRawLink(link.RawLinkOptions{
		Target: st.maps[accelMap].FD(), Program: coll.Programs[accelProg], Attach: ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return false, fmt.Errorf("attach %s to map %s: %w", accelProg, accelMap, err)
	}
	err = lk.Pin(pin)
	lk.Close()
	if errors.Is(err, fs.ErrExist) {
		return true, nil // another detour attached it meanwhile
	}
	if err != nil {
		return true, fmt.Errorf("pin link %s: %w", accelProg, err)
	}
	return true, st.noteBuild(dir)
}

// upgradeAccel gives the pinned sk_msg link this build's program when it
// runs another build's, whether or not the scope being installed asks for
// acceleration (the link serves every scope). It reports whether it did.
func (l *Loader) upgradeAccel(st *store) (bool, error) {
	dir := filepath.Join(l.opts.pinDir(), "links", accelDir)
	if _, err := os.Stat(filepath.Join(dir, accelProg)); err != nil {
		return false, nil
	}
	upgrade, was, err := st.stale(dir)
	if err != nil || !upgrade {
		return false, err
	}
	coll, err := st.load(st.spec.Copy(), dir)
	if err != nil {
		return false, err
	}
	defer coll.Close()
	if _, err := replace(dir, coll); err != nil {
		return true, err
	}
	l.log().Info("ebpf: replaced the attached programs of another build", "links", accelDir, "build", BuildName(), "was", was)
	return true, st.noteBuild(dir)
}

// detachAccelUnused detaches the sk_msg program when no config asks for
// acceleration any more. Sockets already in accel_socks keep the program
// (the kernel holds it for them) until they close.
func (l *Loader) detachAccelUnused(st *store) error {
	var (
		id uint32
		c  detourCfg
	)
	it := st.configs.Iterate()
	for it.Next(&id, &c) {
		if c.Flags&flagAccel != 0 {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read configs: %w", err)
	}
	return detach(filepath.Join(l.opts.pinDir(), "links", accelDir))
}

// detach detaches every pinned link in dir at once (unpinning alone frees a
// link only later, from a work queue) and removes the pins.
func detach(dir string) error {
	pins, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read links: %w", err)
	}
	for _, p := range pins {
		if err := detachPin(filepath.Join(dir, p.Name())); err != nil {
			return err
		}
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("unpin links: %w", err)
	}
	return forgetBuild(filepath.Dir(filepath.Dir(dir)), dir)
}

// detachPin detaches the pinned link at path at once and removes the pin;
// no pin there is nothing to do.
func detachPin(path string) error {
	lk, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load link %s: %w", path, err)
	}
	err = lk.Detach()
	lk.Close()
	if err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}

// lock serializes detour's changes to the pins across processes (CNI ADDs of
// many pods run in parallel, and config ids are allocated from the maps): an
// exclusive flock on the bpffs directory that holds PinDir.
func (l *Loader) lock() (func(), error) { return l.flock(unix.LOCK_EX) }

// rlock is lock for a reader (Observe): it waits while another process
// creates or removes the pins, so it never sees them half made.
func (l *Loader) rlock() (func(), error) { return l.flock(unix.LOCK_SH) }

func (l *Loader) flock(how int) (func(), error) {
	dir := filepath.Dir(l.opts.pinDir())
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := unix.Flock(fd, how); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}

// rollback removes what a failed Apply of a new scope wrote: its entries,
// its config and, when no enrolled scope uses them, its links.
func (l *Loader) rollback(st *store, r resolved, id uint32) error {
	var errs []error
	if have, err := st.read(id); err == nil {
		errs = append(errs, st.write(id, have, newEntries()))
	}
	if err := st.configs.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	if err := st.records.Delete(r.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	if r.kind == kindNetns {
		errs = append(errs, l.unmarkAlive(r.key))
	}
	keys, err := st.scopeKeys()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if len(keys) == 0 {
		// No scope is left: the pins (maps made for this install, links it
		// attached) would belong to none, as after Remove of the last one.
		return errors.Join(append(errs, l.cleanup())...)
	}
	errs = append(errs, l.detachAccelUnused(st))
	inUse := false
	for _, k := range keys {
		if r.kind == kindNetns && k&cgroupKeyBit == 0 {
			inUse = true
		}
	}
	if !inUse {
		errs = append(errs, detach(l.linkDir(r)))
	}
	return errors.Join(errs...)
}
