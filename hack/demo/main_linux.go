package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/detour-mesh/detour/internal/lab"
)

const (
	prefix       = "dt-demo" // every namespace of the demo starts with it, then the run's pid
	proxyUID     = 5678      // the built-in proxy.uid
	appUID       = 1000      // the workload's user
	outboundPort = 15001     // built-in proxy.outboundPort
	inboundPort  = 15006     // built-in proxy.inboundPort
	excludedPort = 5432      // the port the demo excludes from outbound capture
	appPort      = 8080      // the workload's own server
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sidecar" {
		os.Exit(sidecar(os.Args[2:]))
	}
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	detour := fs.String("detour", "bin/detour", "the detour binary to demonstrate")
	_ = fs.Parse(os.Args[1:])
	// SIGPIPE too: with its output piped into something that quits (| head), the demo
	// must still remove its lab instead of dying on the next write.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	err := run(ctx, *detour, os.Stdout)
	stop()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "demo: interrupted; the lab was removed")
		} else {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
		os.Exit(1)
	}
}

// demo is one run: the lab, the sidecar and the detour binary.
type demo struct {
	out    io.Writer
	detour string
	lab    *lab.Lab
	side   *exec.Cmd
	events chan event
	stdin  io.WriteCloser
	syncN  int
	// sideDir holds the sidecar's copy of this program.
	sideDir string
}

func run(ctx context.Context, detour string, out io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: the demo creates network namespaces")
	}
	for _, c := range []string{"ip", "setpriv", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s is not installed (make deps-apt installs it)", c)
		}
	}
	if detour, err = filepath.Abs(detour); err != nil {
		return err
	}
	if _, err := os.Stat(detour); err != nil {
		return fmt.Errorf("the detour binary: %w (make build makes it)", err)
	}
	d := &demo{out: out, detour: detour}
	// Cleanup runs on every path: success, failure and Ctrl-C (ctx cancelled).
	defer func() { err = errors.Join(err, d.cleanup()) }()

	if gone, err := removeLeftovers(context.Background()); err != nil {
		return err
	} else if len(gone) > 0 {
		d.say("Removed %d namespace(s) left by an earlier run: %s", len(gone), strings.Join(gone, ", "))
	}
	if d.lab, err = lab.New(ctx, lab.Options{Prefix: runPrefix(), PodRole: "app", RemoteRole: "remote"}); err != nil {
		return err
	}
	d.say("Lab: namespace %s (app: %s, %s) and %s (remote: %s, %s, and every address of %s)",
		d.lab.Pod.Name, lab.PodIPv4, lab.PodIPv6, d.lab.Remote.Name, lab.RemoteIPv4, lab.RemoteIPv6, remoteRanges())

	// The world the app talks to, and the app's own server.
	for _, f := range lab.Families {
		for _, port := range []uint16{80, 443, excludedPort} {
			if _, err := d.lab.Remote.Serve("remote", netip.AddrPortFrom(f.Unspecified(), port), lab.ServeOptions{}); err != nil {
				return err
			}
		}
		if _, err := d.lab.Pod.Serve("app", netip.AddrPortFrom(f.Unspecified(), appPort), lab.ServeOptions{}); err != nil {
			return err
		}
	}

	d.step("detour install --exclude-outbound-ports %d   (built-in defaults otherwise)", excludedPort)
	if err := d.runDetour(ctx, 0, "install", "--exclude-outbound-ports", fmt.Sprint(excludedPort)); err != nil {
		return err
	}
	d.step("detour validate   (before the sidecar starts: it probes the outbound port itself)")
	if err := d.runDetour(ctx, 0, "validate"); err != nil {
		return err
	}
	d.step("Start the stand-in sidecar as uid %d on :%d (outbound) and :%d (inbound)", proxyUID, outboundPort, inboundPort)
	if err := d.startSidecar(ctx); err != nil {
		return err
	}

	d.step("Connections")
	rows, err := d.connections(ctx)
	if err != nil {
		return err
	}
	bad := d.table(rows)

	d.step("detour uninstall")
	if err := d.runDetour(ctx, 0, "uninstall"); err != nil {
		return err
	}
	d.step("detour validate   (nothing installed any more: exit 5 expected)")
	d.stopSidecar()
	if err := d.runDetour(ctx, 5, "validate"); err != nil {
		return err
	}
	if bad > 0 {
		return fmt.Errorf("%d connection(s) did not go where expected", bad)
	}
	d.say("\nAll connections went where expected. Removing the lab.")
	return nil
}

func remoteRanges() string {
	var s []string
	for _, f := range lab.Families {
		for _, p := range lab.RemoteRanges[f] {
			s = append(s, p.String())
		}
	}
	return strings.Join(s, ", ")
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "\n== "+format+"\n", args...)
}

// runDetour runs `detour SUB --netns APP args…`, shows its output and expects the
// exit code want.
func (d *demo) runDetour(ctx context.Context, want int, sub string, args ...string) error {
	argv := append([]string{sub, "--netns", d.lab.Pod.Name}, args...)
	cmd := exec.CommandContext(ctx, d.detour, argv...)
	outb, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(outb), "\n"), "\n") {
		fmt.Fprintln(d.out, "   "+line)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return fmt.Errorf("detour %s: %w", sub, err)
	}
	if code != want {
		return fmt.Errorf("detour %s exited %d, want %d", strings.Join(argv, " "), code, want)
	}
	return nil
}

// startSidecar starts this program's sidecar mode as a real process with the proxy's
// uid and gid inside the app namespace, and waits until it listens.
func (d *demo) startSidecar(ctx context.Context) error {
	exe, err := sidecarBinary()
	if exe != "" {
		d.sideDir = filepath.Dir(exe)
	}
	if err != nil {
		return err
	}
	cred := &lab.Cred{UID: proxyUID, GID: proxyUID}
	d.side = d.lab.Pod.Command(ctx, cred, exe, "sidecar",
		"--outbound-port", fmt.Sprint(outboundPort), "--inbound-port", fmt.Sprint(inboundPort))
	d.side.Stderr = os.Stderr
	stdout, err := d.side.StdoutPipe()
	if err != nil {
		return err
	}
	if d.stdin, err = d.side.StdinPipe(); err != nil {
		return err
	}
	if err := d.side.Start(); err != nil {
		return fmt.Errorf("start the sidecar: %w", err)
	}
	d.events = make(chan event, 64)
	go func() {
		defer close(d.events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				d.events <- e
			}
		}
	}()
	select {
	case e, ok := <-d.events:
		if !ok || !e.Ready {
			return errors.New("the sidecar did not start")
		}
	case <-time.After(10 * time.Second):
		return errors.New("the sidecar did not start within 10s")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// sidecarBinary copies this program to a directory the proxy user can read, since it
// may have been built somewhere only root can enter.
func sidecarBinary() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "dt-demo-sidecar-")
	if err != nil {
		return "", err
	}
	exe := filepath.Join(dir, "sidecar")
	if err := os.Chmod(dir, 0o755); err != nil {
		return exe, err
	}
	return exe, os.WriteFile(exe, b, 0o755)
}

// sidecarDial asks the sidecar to connect to addr itself and returns what answered.
func (d *demo) sidecarDial(ctx context.Context, addr netip.AddrPort) (lab.Reply, error) {
	d.syncN++
	id := fmt.Sprint(d.syncN)
	if _, err := fmt.Fprintf(d.stdin, "dial %s %s\n", id, addr); err != nil {
		return lab.Reply{}, err
	}
	for {
		select {
		case e, ok := <-d.events:
			if !ok {
				return lab.Reply{}, errors.New("the sidecar stopped")
			}
			if e.Dial != id {
				continue
			}
			if e.Error != "" {
				return lab.Reply{}, errors.New(e.Error)
			}
			var r lab.Reply
			if err := json.Unmarshal(e.Reply, &r); err != nil {
				return lab.Reply{}, err
			}
			r.Client = e.Client
			return r, nil
		case <-time.After(10 * time.Second):
			return lab.Reply{}, errors.New("the sidecar did not answer within 10s")
		case <-ctx.Done():
			return lab.Reply{}, ctx.Err()
		}
	}
}

// intercepted returns the sidecar's events logged before now (a sync round trip
// orders them) for connections from client.
func (d *demo) intercepted(ctx context.Context, client netip.AddrPort) ([]event, error) {
	d.syncN++
	id := fmt.Sprint(d.syncN)
	if _, err := fmt.Fprintf(d.stdin, "sync %s\n", id); err != nil {
		return nil, err
	}
	var out []event
	for {
		select {
		case e, ok := <-d.events:
			if !ok {
				return nil, errors.New("the sidecar stopped")
			}
			if e.Sync == id {
				return out, nil
			}
			if e.Kind != "" && e.Peer == client {
				out = append(out, e)
			}
		case <-time.After(10 * time.Second):
			return nil, errors.New("the sidecar did not answer a sync within 10s")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (d *demo) stopSidecar() {
	if d.side != nil && d.side.Process != nil {
		_ = d.side.Process.Kill()
		_ = d.side.Wait()
		d.side = nil
	}
	if d.sideDir != "" {
		_ = os.RemoveAll(d.sideDir)
		d.sideDir = ""
	}
}

// row is one demonstrated connection and what happened to it.
type row struct {
	what            string
	from, to        string
	wantIntercepted bool
	wantServer      string
	intercepted     string
	answered        string
	ok              bool
}

func (d *demo) connections(ctx context.Context) ([]row, error) {
	app := &lab.Cred{UID: appUID, GID: appUID}
	specs := []struct {
		what            string
		from            *lab.NetNS // nil: the sidecar process dials
		o               lab.DialOptions
		who             string
		wantIntercepted bool
		wantServer      string
	}{
		{"app → remote, IPv4", d.lab.Pod, lab.DialOptions{To: netip.MustParseAddrPort("198.51.100.10:80"), Cred: app}, "app uid 1000", true, "remote"},
		{"app → remote, IPv6", d.lab.Pod, lab.DialOptions{To: netip.MustParseAddrPort("[2001:db8:ffff::10]:443"), Cred: app}, "app uid 1000", true, "remote"},
		{"app → excluded port", d.lab.Pod, lab.DialOptions{To: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.20"), excludedPort), Cred: app}, "app uid 1000", false, "remote"},
		{"sidecar's own traffic", nil, lab.DialOptions{To: netip.MustParseAddrPort("198.51.100.10:80")}, "sidecar uid 5678", false, "remote"},
		{"remote → app (inbound)", d.lab.Remote, lab.DialOptions{To: netip.AddrPortFrom(lab.PodIPv4, appPort), From: netip.MustParseAddr("198.51.100.77"), FreeBind: true}, "198.51.100.77", true, "app"},
	}
	var rows []row
	for _, s := range specs {
		r := row{what: s.what, from: s.who, to: s.o.To.String(), wantIntercepted: s.wantIntercepted, wantServer: s.wantServer}
		var reply lab.Reply
		var err error
		if s.from == nil {
			reply, err = d.sidecarDial(ctx, s.o.To)
		} else {
			reply, err = s.from.Dial(ctx, s.o)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			r.answered = "failed: " + err.Error()
			rows = append(rows, r)
			continue
		}
		r.answered = fmt.Sprintf("%s (saw client %s)", reply.Server, reply.Peer.Addr())
		evs, err := d.intercepted(ctx, reply.Client)
		if err != nil {
			return nil, err
		}
		r.intercepted = "no"
		if len(evs) > 0 {
			r.intercepted = fmt.Sprintf("yes, %s port, original destination %s", evs[0].Kind, evs[0].Original)
		}
		r.ok = (len(evs) > 0) == s.wantIntercepted && reply.Server == s.wantServer &&
			(len(evs) == 0 || evs[0].Original == s.o.To)
		rows = append(rows, r)
	}
	return rows, nil
}

// table prints the rows and returns how many did not go as expected.
func (d *demo) table(rows []row) int {
	tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   connection\tfrom\tto\tintercepted by the sidecar\tanswered by\texpected")
	bad := 0
	for _, r := range rows {
		verdict := "yes"
		if !r.ok {
			verdict = "NO"
			bad++
		}
		fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%s\t%s\n", r.what, r.from, r.to, r.intercepted, r.answered, verdict)
	}
	_ = tw.Flush()
	return bad
}

// cleanup stops the sidecar, uninstalls detour and removes the lab. It ignores the
// cancelled context of a Ctrl-C: cleaning up is the point then.
func (d *demo) cleanup() error {
	d.stopSidecar()
	if d.lab == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if d.lab.Pod != nil {
		// Removing the namespace drops its rules anyway; uninstalling first is what a
		// user would do and proves it works after a failure too.
		_ = exec.CommandContext(ctx, d.detour, "uninstall", "--netns", d.lab.Pod.Name).Run()
	}
	return d.lab.Close()
}
