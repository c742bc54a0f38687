package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Sink receives the meshes a Source produces. Server implements it.
type Sink interface {
	// Update serves m if it is valid; otherwise the previous mesh stays.
	Update(ctx context.Context, m *Mesh) (UpdateResult, error)
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

// DefaultWatchInterval is how often FileSource looks at its file.
const DefaultWatchInterval = time.Second

// FileSource reads a mesh file and watches it for changes.
//
// It polls the file's content rather than using inotify: editors replace files
// by rename and Kubernetes swaps ConfigMap volumes through a symlink, both of
// which a content comparison sees and an inotify watch on the old inode does not.
type FileSource struct {
	Path string
	// Interval between reads; 0 means DefaultWatchInterval.
	Interval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Run implements Source. The first read must give a valid mesh.
func (f *FileSource) Run(ctx context.Context, sink Sink) error {
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := f.Interval
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return fmt.Errorf("read mesh file: %w", err)
	}
	m, err := DecodeMesh(b)
	if err != nil {
		return fmt.Errorf("mesh file %s: %w", f.Path, err)
	}
	if _, err := sink.Update(ctx, m); err != nil {
		return fmt.Errorf("mesh file %s: %w", f.Path, err)
	}
	last := sha256.Sum256(b)
	lastErr := ""
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, err := os.ReadFile(f.Path)
		if err != nil {
			// A file being replaced can be missing for a moment; report a
			// lasting failure once, not every interval.
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				sink.Invalid(fmt.Errorf("read mesh file: %w", err))
			}
			continue
		}
		sum := sha256.Sum256(b)
		if bytes.Equal(sum[:], last[:]) {
			continue
		}
		last = sum
		lastErr = ""
		log.Info("mesh file changed", "path", f.Path)
		m, err := DecodeMesh(b)
		if err != nil {
			sink.Invalid(fmt.Errorf("mesh file %s: %w", f.Path, err))
			continue
		}
		// An invalid mesh is logged and counted by the sink.
		_, _ = sink.Update(ctx, m)
	}
}
