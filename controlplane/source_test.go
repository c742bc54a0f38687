package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/redirect"
)

// recordingSink records what a source delivers.
type recordingSink struct {
	updates  chan *Mesh
	invalids chan error
}

func newRecordingSink() *recordingSink {
	return &recordingSink{updates: make(chan *Mesh, 10), invalids: make(chan error, 10)}
}

func (r *recordingSink) Update(_ context.Context, m *Mesh) (xds.UpdateResult, error) {
	r.updates <- m
	return xds.UpdateResult{}, nil
}

func (r *recordingSink) Invalid(err error) { r.invalids <- err }

func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const oneWorkload = `
services: [{name: a, virtualIPs: [198.51.100.1], ports: [80]}]
workloads: [{nodeId: w, addresses: [192.0.2.1], reach: [a]}]
`

func TestFileSourceWatches(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeAtomic(t, path, oneWorkload)
	sink := newRecordingSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&FileSource{Path: path, Interval: 5 * time.Millisecond, Settle: 20 * time.Millisecond}).Run(ctx, sink)
	}()

	recv := func() *Mesh {
		t.Helper()
		select {
		case m := <-sink.updates:
			return m
		case err := <-sink.invalids:
			t.Fatalf("unexpected invalid: %v", err)
		case <-time.After(testTimeout):
			t.Fatal("no update")
		}
		return nil
	}
	if m := recv(); len(m.Workloads) != 1 || m.Workloads[0].NodeID != "w" {
		t.Fatalf("first mesh = %+v", m)
	}
	writeAtomic(t, path, strings.Replace(oneWorkload, "ports: [80]", "ports: [81]", 1))
	if m := recv(); m.Services[0].Ports[0].Port != 81 {
		t.Fatalf("changed mesh has port %d, want 81", m.Services[0].Ports[0].Port)
	}
	writeAtomic(t, path, strings.Replace(oneWorkload, "ports: [80]", "ports: [80000]", 1))
	select {
	case err := <-sink.invalids:
		if !strings.Contains(err.Error(), `services[0].ports[0]: "80000" is not a port`) || !errors.Is(err, redirect.ErrInvalid) {
			t.Errorf("invalid change reported as %v", err)
		}
	case m := <-sink.updates:
		t.Fatalf("an invalid file was delivered as %+v", m)
	case <-time.After(testTimeout):
		t.Fatal("invalid change not reported")
	}
	// Fixing the file delivers again.
	writeAtomic(t, path, oneWorkload)
	if m := recv(); m.Services[0].Ports[0].Port != 80 {
		t.Fatalf("fixed mesh has port %d, want 80", m.Services[0].Ports[0].Port)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v", err)
	}
}

func TestFileSourceInvalidAtStart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeAtomic(t, path, "outboundPolicy: deny")
	err := (&FileSource{Path: path}).Run(context.Background(), newRecordingSink())
	if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), `outboundPolicy: "deny"`) {
		t.Errorf("Run = %v, want an invalid-config error naming outboundPolicy", err)
	}
	// A file that cannot be read at start is invalid input too (exit 2, like
	// `detour install --config`), and the error names it.
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	err = (&FileSource{Path: missing}).Run(context.Background(), newRecordingSink())
	if !errors.Is(err, os.ErrNotExist) || !errors.Is(err, redirect.ErrInvalid) ||
		!strings.Contains(err.Error(), fmt.Sprintf("mesh file: %q cannot be read: no such file or directory", missing)) {
		t.Errorf("Run(missing file) = %v, want an invalid-input error naming the file", err)
	}
}

// TestFileSourceNotARegularFile: a FIFO, a directory or a process
// substitution (`--config <(…)`, a pipe) is refused at once with a clear
// error; a FIFO without a writer used to block the control plane before it
// served anything, and a pipe was read once and then reported as "empty".
func TestFileSourceNotARegularFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"fifo", fifo, "is not a regular file (a named pipe)"},
		{"directory", dir, "is not a regular file (a directory)"},
	} {
		done := make(chan error, 1)
		go func() { done <- (&FileSource{Path: tc.path, Settle: -1}).Run(context.Background(), newRecordingSink()) }()
		select {
		case err := <-done:
			if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: Run = %v, want an invalid-input error containing %q", tc.name, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Run still blocked after 10s", tc.name)
		}
	}

	// Swapped for a FIFO while watched: reported, the watch goes on.
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeAtomic(t, path, meshOf(4, 80))
	w := watch(t, path, 4096)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := mkfifo(path); err != nil {
		t.Fatal(err)
	}
	if err := w.invalid(t); !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), "is not a regular file (a named pipe)") {
		t.Errorf("FIFO reported as %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, path, meshOf(4, 81))
	wantMesh(t, w.update(t), 4, 81)
}

// meshOf returns a mesh file with n workloads w0…w(n-1) and the service
// port given.
func meshOf(n int, port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services: [{name: a, virtualIPs: [198.51.100.1], ports: [%d]}]\nworkloads:\n", port)
	for i := range n {
		fmt.Fprintf(&b, "  - nodeId: w%d\n    addresses: [192.0.2.%d]\n    reach: [a]\n", i, i+1)
	}
	return b.String()
}

// watched runs a FileSource on path until the test ends.
type watched struct {
	sink *recordingSink
}

const (
	testInterval = 5 * time.Millisecond
	testSettle   = 150 * time.Millisecond
)

func watch(t *testing.T, path string, maxSize int64) *watched {
	t.Helper()
	w := &watched{sink: &recordingSink{updates: make(chan *Mesh, 100), invalids: make(chan error, 100)}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&FileSource{Path: path, Interval: testInterval, Settle: testSettle, MaxSize: maxSize}).Run(ctx, w.sink)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	w.update(t) // the first mesh
	return w
}

// update waits for the next delivered mesh; an invalid report fails.
func (w *watched) update(t testing.TB) *Mesh {
	t.Helper()
	select {
	case m := <-w.sink.updates:
		return m
	case err := <-w.sink.invalids:
		t.Fatalf("reported invalid, want an update: %v", err)
	case <-time.After(testTimeout):
		t.Fatal("no update")
	}
	return nil
}

// invalid waits for the next invalid report; a delivered mesh fails.
func (w *watched) invalid(t testing.TB) error {
	t.Helper()
	select {
	case m := <-w.sink.updates:
		t.Fatalf("delivered a mesh with %d workloads, want it refused", len(m.Workloads))
	case err := <-w.sink.invalids:
		return err
	case <-time.After(testTimeout):
		t.Fatal("nothing reported")
	}
	return nil
}

// quiet checks that nothing is delivered or reported for a while.
func (w *watched) quiet(t testing.TB) {
	t.Helper()
	w.quietFor(t, 3*testSettle)
}

// quietFor is quiet for a source whose settle time is a third of d.
func (w *watched) quietFor(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case m := <-w.sink.updates:
		t.Fatalf("delivered a mesh with %d workloads and port %d, want nothing", len(m.Workloads), m.Services[0].Ports[0].Port)
	case err := <-w.sink.invalids:
		t.Fatalf("reported %v, want nothing", err)
	case <-time.After(d):
	}
}

func wantMesh(t testing.TB, m *Mesh, workloads, port int) {
	t.Helper()
	if len(m.Workloads) != workloads || m.Services[0].Ports[0].Port != uint16(port) {
		t.Fatalf("delivered %d workloads with port %d, want %d with port %d", len(m.Workloads), m.Services[0].Ports[0].Port, workloads, port)
	}
}

// TestFileSourceWriters: every way of writing the mesh file delivers the
// finished file once, and nothing half-written, truncated or empty.
func TestFileSourceWriters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, path string, w *watched) (void string) // void: why the attempt shows nothing
	}{
		{"in place", func(t *testing.T, path string, w *watched) string {
			if err := os.WriteFile(path, []byte(meshOf(4, 81)), 0o644); err != nil {
				t.Fatal(err)
			}
			wantMesh(t, w.update(t), 4, 81)
			w.quiet(t)
			return ""
		}},
		{"rename", func(t *testing.T, path string, w *watched) string {
			writeAtomic(t, path, meshOf(4, 81))
			wantMesh(t, w.update(t), 4, 81)
			w.quiet(t)
			return ""
		}},
		{"slow writer", func(t *testing.T, path string, w *watched) string {
			// Pieces a few intervals apart, the pauses a tenth of the settle
			// time: every intermediate state parses (or not) and must not be
			// served. Each state lasts at most from the start of its write to
			// the end of the next; when that took longer than the settle time (a
			// loaded machine stretched the pause: seen at load 24), the
			// half-written file may rightly be served and the attempt shows
			// nothing.
			content := meshOf(4, 81)
			var longest time.Duration
			last := time.Now()
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(content); i += len(content) / 6 {
				start := time.Now()
				if _, err := f.WriteString(content[i:min(i+len(content)/6, len(content))]); err != nil {
					t.Fatal(err)
				}
				longest, last = max(longest, time.Since(last)), start
				time.Sleep(testSettle / 10)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if longest >= testSettle {
				return fmt.Sprintf("a half-written state lasted up to %s, not less than the settle time (%s)", longest, testSettle)
			}
			wantMesh(t, w.update(t), 4, 81)
			w.quiet(t)
			return ""
		}},
		{"truncated", func(t *testing.T, path string, w *watched) string {
			// A file cut after its first workload still parses: it would
			// remove three of the four proxies' configs.
			full := meshOf(4, 80)
			cut := full[:strings.Index(full, "  - nodeId: w1")]
			if err := os.WriteFile(path, []byte(cut), 0o644); err != nil {
				t.Fatal(err)
			}
			err := w.invalid(t)
			if !errors.Is(err, ErrHeldBack) || !strings.Contains(err.Error(), "removes 3 of the 4 served workloads (w1, w2, w3)") {
				t.Errorf("truncated file reported as %v", err)
			}
			w.quiet(t)
			// Saying so in the file applies it.
			writeAtomic(t, path, "allowMassRemoval: true\n"+cut)
			wantMesh(t, w.update(t), 1, 80)
			// Removing half is not held back.
			writeAtomic(t, path, meshOf(2, 80))
			wantMesh(t, w.update(t), 2, 80)
			writeAtomic(t, path, meshOf(1, 80))
			wantMesh(t, w.update(t), 1, 80)
			return ""
		}},
		{"emptied", func(t *testing.T, path string, w *watched) string {
			if err := os.WriteFile(path, []byte("# nothing yet\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := w.invalid(t)
			if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), `(document): "" is empty`) {
				t.Errorf("empty file reported as %v", err)
			}
			w.quiet(t)
			return ""
		}},
		{"deleted and recreated", func(t *testing.T, path string, w *watched) string {
			// Gone for less than the settle time: nothing to say (unless a
			// loaded machine stretched the absence to the settle time).
			start := time.Now()
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			time.Sleep(testSettle / 10)
			if err := os.WriteFile(path, []byte(meshOf(4, 80)), 0o644); err != nil {
				t.Fatal(err)
			}
			if gone := time.Since(start); gone >= testSettle {
				return fmt.Sprintf("the file was gone for up to %s, not less than the settle time (%s)", gone, testSettle)
			}
			w.quiet(t)
			// Gone for longer: reported, the previous mesh stays.
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := w.invalid(t); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("deleted file reported as %v", err)
			}
			if err := os.WriteFile(path, []byte(meshOf(4, 81)), 0o644); err != nil {
				t.Fatal(err)
			}
			wantMesh(t, w.update(t), 4, 81)
			// Recreated with the content served before the deletion: given again,
			// so the sink clears the error it reported.
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			w.invalid(t)
			if err := os.WriteFile(path, []byte(meshOf(4, 81)), 0o644); err != nil {
				t.Fatal(err)
			}
			wantMesh(t, w.update(t), 4, 81)
			return ""
		}},
		{"too large", func(t *testing.T, path string, w *watched) string {
			big := meshOf(4, 81) + "# " + strings.Repeat("x", 4096) + "\n"
			writeAtomic(t, path, big)
			err := w.invalid(t)
			if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), "is larger than the maximum mesh file size, 4096 bytes") {
				t.Errorf("large file reported as %v", err)
			}
			return ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for attempt := 1; ; attempt++ {
				path := filepath.Join(t.TempDir(), "mesh.yaml")
				writeAtomic(t, path, meshOf(4, 80))
				w := watch(t, path, 4096)
				void := tc.write(t, path, w)
				if void == "" {
					return
				}
				if attempt == 3 {
					t.Skipf("attempt %d: %s; the machine is too loaded for this case", attempt, void)
				}
				t.Logf("attempt %d shows nothing, again: %s", attempt, void)
			}
		})
	}
}

func TestFileSourceStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		want          string
	}{
		{"empty", "", `(document): "" is empty`},
		{"too large", meshOf(4, 80) + "# " + strings.Repeat("x", 2048), "is larger than the maximum mesh file size, 1024 bytes"},
	} {
		path := filepath.Join(dir, tc.name)
		writeAtomic(t, path, tc.content)
		err := (&FileSource{Path: path, MaxSize: 1024, Settle: -1}).Run(context.Background(), newRecordingSink())
		if !errors.Is(err, redirect.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an invalid-input error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestDecodeMeshBoundsErrors: a file with a great many bad entries reports the
// first ones and how many more, not all of them.
func TestDecodeMeshBoundsErrors(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("services:\n")
	const n = 100000
	for i := range n {
		fmt.Fprintf(&b, "  - {name: s%d, virtualIPs: [198.51.100.1], ports: [70000]}\n", i)
	}
	_, err := DecodeMesh([]byte(b.String()))
	if !errors.Is(err, redirect.ErrInvalid) {
		t.Fatalf("DecodeMesh = %v, want invalid", err)
	}
	msg := err.Error()
	lines := strings.Split(msg, "\n")
	if len(lines) != MaxReportedErrors+1 || len(msg) > 4096 {
		t.Fatalf("error has %d lines and %d bytes, want %d lines and a few KiB:\n%.2000s", len(lines), len(msg), MaxReportedErrors+1, msg)
	}
	if !strings.HasPrefix(lines[0], `services[0].ports[0]: "70000" is not a port`) {
		t.Errorf("first error = %q", lines[0])
	}
	if want := fmt.Sprintf("and %d more errors", n-MaxReportedErrors); !strings.Contains(lines[MaxReportedErrors], want) {
		t.Errorf("last line = %q, want it to say %q", lines[MaxReportedErrors], want)
	}

	// One huge value (or key) is cut too: it is echoed in the log and in every
	// /debug/nodes response.
	huge := strings.Repeat("x", 3<<20)
	for _, doc := range []string{"outboundPolicy: " + huge, "? " + huge + "\n: 1\n", "workloads: [{nodeId: w, addresses: [" + huge + "]}]"} {
		_, err := DecodeMesh([]byte(doc))
		if !errors.Is(err, redirect.ErrInvalid) || len(err.Error()) > 1024 || !strings.Contains(err.Error(), fmt.Sprintf("… (%d bytes)", len(huge))) {
			t.Errorf("DecodeMesh(huge value) = %d bytes of error, want at most 1 KiB saying the value's size:\n%.400s", len(err.Error()), err)
		}
	}
}

// TestFileSourceNeverSettles: a file that never stops changing (a writer
// appending forever) is never applied; once it has been changing for longer
// than WarnChangingAfter that is reported, once, and when it settles it is
// applied, even as the content served before, so the report is cleared.
func TestFileSourceNeverSettles(t *testing.T) {
	t.Parallel()
	// The writes meant to keep the file changing are a tenth of the settle
	// time apart; when a loaded machine stretched one pause to the settle
	// time, the file rightly settled and the attempt shows nothing: run again.
	for attempt := 1; ; attempt++ {
		a := &attemptTB{TB: t}
		var p pauses
		done := make(chan struct{})
		go func() {
			defer close(done)
			neverSettles(a, &p)
		}()
		<-done
		if len(a.failures) == 0 {
			return
		}
		if p.longest < neverSettlesSettle {
			for _, f := range a.failures {
				t.Error(f)
			}
			return
		}
		void := fmt.Sprintf("the file stayed the same for up to %s, not less than the settle time (%s); %s", p.longest, neverSettlesSettle, strings.Join(a.failures, "; "))
		if attempt == 3 {
			t.Skipf("attempt %d: %s; the machine is too loaded for this test", attempt, void)
		}
		t.Logf("attempt %d shows nothing, again: %s", attempt, void)
	}
}

// Longer than the other tests' settle time: the test's own sleeps (a tenth
// of it) must stay shorter than it on a loaded machine, or a change meant to
// be still changing settles.
const neverSettlesSettle = 400 * time.Millisecond

// neverSettles is one attempt of TestFileSourceNeverSettles; p measures how
// long the file stayed the same while it was meant to be changing.
func neverSettles(t testing.TB, p *pauses) {
	const settle = neverSettlesSettle
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeAtomic(t, path, meshOf(4, 80))
	sink := &recordingSink{updates: make(chan *Mesh, 100), invalids: make(chan error, 100)}
	w := &watched{sink: sink}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	const after = 10 * settle // the least WarnChangingAfter can be
	go func() {
		done <- (&FileSource{Path: path, Interval: testInterval, Settle: settle, WarnChangingAfter: after}).Run(ctx, sink)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	wantMesh(t, w.update(t), 4, 80)

	stop, stopped := make(chan struct{}), make(chan struct{})
	stopWriter := sync.OnceFunc(func() {
		close(stop)
		<-stopped
	})
	defer stopWriter() // also when the attempt ends early
	go func() {
		defer close(stopped)
		defer p.settle() // changing until now
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(settle / 10):
			}
			start := time.Now()
			if _, err := fmt.Fprintf(f, "# line %d\n", i); err != nil {
				t.Error(err)
				return
			}
			p.wrote(start)
		}
	}()
	start := time.Now()
	err := w.invalid(t)
	if since := time.Since(start); since < after-settle {
		t.Errorf("reported after %s, before WarnChangingAfter (%s)", since, after)
	}
	if !errors.Is(err, ErrUnsettled) || !strings.Contains(err.Error(), "mesh file "+path+": has been changing for ") ||
		!strings.Contains(err.Error(), "(it is read once it stays the same for 400ms); the previous mesh stays served") {
		t.Errorf("reported %v", err)
	}
	w.quietFor(t, 3*settle) // still changing: said once
	stopWriter()
	wantMesh(t, w.update(t), 4, 80)
	w.quietFor(t, 3*settle)

	// Changing for a while and back to the served content before the
	// bound: nothing to say, nothing to apply.
	served, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	write := func(content string) {
		start := time.Now()
		writeAtomic(t, path, content)
		p.wrote(start)
	}
	write(meshOf(4, 81))
	time.Sleep(settle / 10)
	write(string(served))
	p.settle()
	w.quietFor(t, 3*settle)

	// Flapping between another content and the served one past the bound,
	// then settling as the served one: given again, so the sink clears
	// what it showed.
	deadline := time.Now().Add(after + 2*settle)
	for i := 0; time.Now().Before(deadline); i++ {
		write(meshOf(4, 81+i%2))
		time.Sleep(settle / 10)
		write(string(served))
		time.Sleep(settle / 10)
	}
	p.settle()
	if err := w.invalid(t); !errors.Is(err, ErrUnsettled) {
		t.Errorf("reported %v, want ErrUnsettled", err)
	}
	wantMesh(t, w.update(t), 4, 80)
	w.quietFor(t, 3*settle)
}

// pauses measures how long a file meant to keep changing stayed the same:
// each state lasts at most from the start of its write to the end of the next.
type pauses struct {
	mu      sync.Mutex
	last    time.Time // the start of the last write; zero: not changing
	longest time.Duration
}

// wrote records a write that started at start and has ended.
func (p *pauses) wrote(start time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.last.IsZero() {
		p.longest = max(p.longest, time.Since(p.last))
	}
	p.last = start
}

// settle records that the file is meant to settle from now on.
func (p *pauses) settle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.last.IsZero() {
		p.longest = max(p.longest, time.Since(p.last))
	}
	p.last = time.Time{}
}

// attemptTB is t for one attempt of a timing-based test: it keeps the
// attempt's failures instead of reporting them (Fatal ends the attempt's
// goroutine), so that the test tells a failure from an attempt that proved
// nothing. The attempt must run in a goroutine of its own.
type attemptTB struct {
	testing.TB
	mu       sync.Mutex
	failures []string
}

func (a *attemptTB) Errorf(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failures = append(a.failures, fmt.Sprintf(format, args...))
}
func (a *attemptTB) Error(args ...any) { a.Errorf("%s", fmt.Sprint(args...)) }
func (a *attemptTB) Fatalf(format string, args ...any) {
	a.Errorf(format, args...)
	runtime.Goexit()
}
func (a *attemptTB) Fatal(args ...any) { a.Error(args...); runtime.Goexit() }
func (a *attemptTB) FailNow()          { a.Error("FailNow"); runtime.Goexit() }
func (a *attemptTB) Fail()             { a.Error("Fail") }
func (a *attemptTB) Failed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.failures) > 0
}
