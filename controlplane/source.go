package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/detour-mesh/detour/controlplane/xds"
)

// Sink receives the meshes a Source produces. Server implements it.
type Sink interface {
	// Update serves m if it is valid; otherwise the previous mesh stays.
	Update(ctx context.Context, m *Mesh) (xds.UpdateResult, error)
	// Invalid records a change that could not become a mesh at all.
	Invalid(err error)
}

// Source produces the mesh: from a file (FileSource) or from the Kubernetes API
// (controlplane/kube).
type Source interface {
	// Run gives sink the current mesh, then every change, until ctx ends. It
	// returns an error when the first mesh cannot be produced (an invalid first
	// mesh matches redirect.ErrInvalid); later failures are given to
	// sink.Invalid and the previous mesh stays.
	Run(ctx context.Context, sink Sink) error
}

// ReadySource is a Source whose mesh can go stale while it runs (the
// Kubernetes source whose watch is refused). Run serves Ready's error on
// /readyz (503) and /debug/nodes while it returns one.
type ReadySource interface {
	Source
	// Ready returns why the mesh the source gives may be stale, or nil.
	Ready() error
}

// DefaultWatchInterval is how often FileSource looks at its file.
const DefaultWatchInterval = time.Second

// DefaultSettle is how long FileSource waits for a changed file to stop
// changing before it reads it as the new mesh.
const DefaultSettle = time.Second

// DefaultWarnChangingAfter is how long a mesh file may keep changing, never
// staying the same for Settle, before FileSource reports that it is not being
// applied (ErrUnsettled, given to Sink.Invalid once). The bound is ten times
// Settle when that is longer.
const DefaultWarnChangingAfter = 30 * time.Second

// ErrUnsettled matches the report of a mesh file that has been changing for
// longer than FileSource.WarnChangingAfter: none of its states is applied
// until it stays the same for Settle.
var ErrUnsettled = errors.New("not applied: the file does not stop changing")

// ErrHeldBack matches a mesh change FileSource did not apply because it
// removes more than half of the served workloads, and the file does not say
// allowMassRemoval: true.
var ErrHeldBack = errors.New("held back")

// FileSource reads a mesh file and watches it for changes.
//
// It polls the file's content rather than using inotify: editors replace files
// by rename and Kubernetes swaps ConfigMap volumes through a symlink, both of
// which a content comparison sees and an inotify watch on the old inode does not.
//
// Whoever writes the file, and however, only a finished file is served:
//   - a change is read as the new mesh once the file has read the same for
//     Settle (from the read that first saw it to a read at least Settle
//     later, every read between the same; at start, two reads Settle
//     apart), so a slow writer's half-written file is never decoded; a
//     missing or unreadable file is reported only when it stays so for
//     Settle;
//   - an empty document is invalid (DecodeMesh);
//   - a file larger than MaxSize is refused before it is read;
//   - a change that removes more than half of the served workloads is held
//     back (ErrHeldBack, given to Sink.Invalid) unless the file says
//     allowMassRemoval: true — a truncated file that still parses looks like
//     that;
//   - an invalid change is given to Sink.Invalid with at most
//     MaxReportedErrors errors and a count of the rest;
//   - a file that keeps changing for longer than WarnChangingAfter is
//     reported once (ErrUnsettled, given to Sink.Invalid); when it settles it
//     is read again, even if it settled as the content already served, so
//     the report is cleared (or replaced by the settled file's own error).
//
// In every case the previous mesh stays served.
type FileSource struct {
	Path string
	// Interval between reads; 0 means DefaultWatchInterval.
	Interval time.Duration
	// Settle is how long a change must stay the same before it is read; 0
	// means DefaultSettle, a negative value applies a change at the first
	// read that sees it.
	Settle time.Duration
	// WarnChangingAfter is how long the file may keep changing before that
	// is reported; 0 means DefaultWarnChangingAfter. It is at least ten
	// times Settle. With a negative Settle nothing waits, so nothing is
	// reported.
	WarnChangingAfter time.Duration
	// MaxSize is the largest file read, in bytes; 0 means DefaultMaxMeshSize.
	MaxSize int64
	// Logger; nil discards.
	Logger *slog.Logger
}

// observation is what one read of the file saw: its content's hash and the
// content, or why it could not be read.
type observation struct {
	key string // "sha256:<sum>" or "error:<message>"
	b   []byte
	err error
}

func (f *FileSource) observe(limit int64) observation {
	file, err := openWatchedMeshFile(f.Path)
	if err != nil {
		return observation{key: "error:" + err.Error(), err: err}
	}
	defer file.Close()
	b, err := readMeshFile(file, f.Path, limit)
	if err != nil {
		return observation{key: "error:" + err.Error(), err: err}
	}
	sum := sha256.Sum256(b)
	return observation{key: "sha256:" + hex.EncodeToString(sum[:]), b: b}
}

// Run implements Source. The first mesh must be valid; it is read once the
// file has stopped changing, like every later one.
func (f *FileSource) Run(ctx context.Context, sink Sink) error {
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := f.Interval
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	settle := f.Settle
	if settle == 0 {
		settle = DefaultSettle
	}
	limit := f.MaxSize
	if limit <= 0 {
		limit = DefaultMaxMeshSize
	}
	warnAfter := f.WarnChangingAfter
	if warnAfter <= 0 {
		warnAfter = DefaultWarnChangingAfter
	}
	warnAfter = max(warnAfter, 10*settle)

	// The first mesh: the file must read the same twice, settle apart.
	o := f.observe(limit)
	for settle > 0 {
		if o.err != nil {
			return o.err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(settle):
		}
		next := f.observe(limit)
		if next.key == o.key {
			break
		}
		log.Info("mesh file still changing; waiting for it to settle", "path", f.Path)
		o = next
	}
	if o.err != nil {
		return o.err
	}
	m, err := DecodeMesh(o.b)
	if err != nil {
		return fmt.Errorf("mesh file %s: %w", f.Path, err)
	}
	if _, err := sink.Update(ctx, m); err != nil {
		return fmt.Errorf("mesh file %s: %w", f.Path, err)
	}
	served := nodeIDs(m)
	handled := o.key // the state last acted on: applied, rejected or reported
	pending, pendingSince := "", time.Time{}
	// changingSince is when the file first read other than handled, while it
	// has not settled since; reported once it is longer ago than warnAfter.
	changingSince, reported := time.Time{}, false

	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		o := f.observe(limit)
		now := time.Now()
		if o.key == handled {
			// Back to the state acted on: settled once it stays so (a file
			// flapping between it and others is still changing).
			if o.key != pending {
				pending, pendingSince = o.key, now
			}
			if now.Sub(pendingSince) >= settle {
				changingSince = time.Time{}
			}
			continue
		}
		if changingSince.IsZero() {
			changingSince = now
		}
		if o.key != pending {
			pending, pendingSince = o.key, now
			if settle > 0 {
				if !reported && now.Sub(changingSince) >= warnAfter {
					// Said once; the next settled state is acted on
					// whatever it is, so the report does not outlive it.
					reported, handled = true, ""
					sink.Invalid(fmt.Errorf("mesh file %s: has been changing for %s: %w (it is read once it stays the same for %s); the previous mesh stays served",
						f.Path, now.Sub(changingSince).Round(time.Millisecond), ErrUnsettled, settle))
				}
				continue
			}
		}
		if now.Sub(pendingSince) < settle {
			continue
		}
		handled, pending = o.key, ""
		changingSince, reported = time.Time{}, false
		if o.err != nil {
			sink.Invalid(o.err)
			continue
		}
		log.Info("mesh file changed", "path", f.Path)
		m, err := DecodeMesh(o.b)
		if err != nil {
			sink.Invalid(fmt.Errorf("mesh file %s: %w", f.Path, err))
			continue
		}
		if err := checkRemoval(served, m); err != nil {
			sink.Invalid(fmt.Errorf("mesh file %s: %w", f.Path, err))
			continue
		}
		// An invalid mesh is logged and counted by the sink.
		if _, err := sink.Update(ctx, m); err == nil {
			served = nodeIDs(m)
		}
	}
}

func nodeIDs(m *Mesh) map[string]bool {
	ids := make(map[string]bool, len(m.Workloads))
	for _, w := range m.Workloads {
		ids[w.NodeID] = true
	}
	return ids
}

// checkRemoval holds back a mesh that removes more than half of the served
// workloads, unless it allows that itself.
func checkRemoval(served map[string]bool, m *Mesh) error {
	if m.AllowMassRemoval || len(served) == 0 {
		return nil
	}
	next := nodeIDs(m)
	var gone []string
	for id := range served {
		if !next[id] {
			gone = append(gone, id)
		}
	}
	if len(gone)*2 <= len(served) {
		return nil
	}
	slices.Sort(gone)
	example := strings.Join(gone[:min(len(gone), 3)], ", ")
	if len(gone) > 3 {
		example += ", …"
	}
	return fmt.Errorf("workloads: the change removes %d of the %d served workloads (%s): %w as a likely truncated or half-written file; "+
		"add allowMassRemoval: true to the file to apply it", len(gone), len(served), example, ErrHeldBack)
}
