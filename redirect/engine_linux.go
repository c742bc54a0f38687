package redirect

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/detour-mesh/detour/internal/netns"
)

var allFamilies = []Family{IPv4, IPv6}

// iptablesBackends are the concrete backends, in the order we look at them.
var iptablesBackends = []Backend{BackendIPTablesLegacy, BackendIPTablesNFT}

// toolName is the iptables binary for a backend, family and operation
// ("save" or "restore"): iptables-nft-save, ip6tables-legacy-restore, ….
func toolName(b Backend, f Family, op string) string {
	name := "iptables"
	if f == IPv6 {
		name = "ip6tables"
	}
	kind := "legacy"
	if b == BackendIPTablesNFT {
		kind = "nft"
	}
	return name + "-" + kind + "-" + op
}

// run is one Engine call inside the namespace: it counts the processes it spawns.
type run struct {
	ctx   context.Context
	e     *Engine
	log   *slog.Logger
	procs int
}

func (e *Engine) newRun(ctx context.Context) *run {
	return &run{ctx: ctx, e: e, log: e.logger().With("netns", e.NetNS)}
}

// toolError is a failed iptables command with what it said.
type toolError struct {
	tool   string
	err    error
	stderr string
}

func (t *toolError) Error() string {
	if t.stderr == "" {
		return t.tool + ": " + t.err.Error()
	}
	return t.tool + ": " + t.err.Error() + ": " + t.stderr
}

func (t *toolError) Unwrap() error { return t.err }

// command runs a binary found on PATH now, with stdin, and returns its stdout.
func (r *run) command(stdin, name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", &toolError{tool: name, err: exec.ErrNotFound}
	}
	cmd := exec.CommandContext(r.ctx, path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	r.procs++
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "xtables lock") {
			err = fmt.Errorf("%w (%w)", ErrLockTimeout, err)
		}
		return stdout.String(), &toolError{tool: name, err: err, stderr: msg}
	}
	return stdout.String(), nil
}

// familyObs is what one family of one backend holds.
type familyObs struct {
	err     error // the save tool is missing or failed
	owned   owned
	foreign foreignState
	rules   bool   // anything at all, ours or not
	save    string // the save output, every table (explain follows packets through it)
}

type backendObs map[Family]*familyObs

// observe runs one save per family of a backend. It never writes.
func (r *run) observe(b Backend) backendObs {
	obs := backendObs{}
	for _, f := range allFamilies {
		obs[f] = r.observeFamily(b, f)
	}
	return obs
}

// observeFamily runs the save of one family of a backend.
func (r *run) observeFamily(b Backend, f Family) *familyObs {
	fo := &familyObs{owned: owned{}}
	tool := toolName(b, f, "save")
	out, err := r.command("", tool)
	fo.save = out
	if err == nil {
		var tables []*saveTable
		if tables, err = parseSave(out); err == nil {
			fo.owned, fo.foreign = ownedFromSave(tables)
			fo.rules = hasRules(tables)
		} else {
			err = fmt.Errorf("read %s output: %w", tool, err)
		}
	}
	if err != nil {
		r.log.Debug("observe", "backend", b, "family", f, "error", err)
	}
	fo.err = err
	return fo
}

func (o backendObs) ours() bool {
	for _, fo := range o {
		if !fo.owned.empty() {
			return true
		}
	}
	return false
}

func (o backendObs) rules() bool {
	for _, fo := range o {
		if fo.rules {
			return true
		}
	}
	return false
}

// observeAll looks at both backends: which one holds our rules decides, and
// our rules in both is refused.
func (r *run) observeAll() map[Backend]backendObs {
	all := map[Backend]backendObs{}
	for _, b := range iptablesBackends {
		all[b] = r.observe(b)
	}
	return all
}

// installedBackend is the backend that holds our rules, "" when none does.
func installedBackend(obs map[Backend]backendObs) (Backend, error) {
	var found []Backend
	for _, b := range iptablesBackends {
		if obs[b].ours() {
			found = append(found, b)
		}
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%w: found in both iptables-legacy and iptables-nft (uninstall removes both)", ErrBackendConflict)
}

// blocked refuses to manage a namespace where DETOUR_* chains are not ours, or
// where a rule we do not own jumps to one of our chains (we could not delete it).
func blocked(obs map[Backend]backendObs) error {
	var chains, refs []string
	for _, b := range iptablesBackends {
		for _, f := range allFamilies {
			fo := obs[b][f]
			for _, c := range fo.foreign.chains {
				chains = append(chains, fmt.Sprintf("%s %s %s", b, f, c))
			}
			for _, c := range fo.foreign.refs {
				refs = append(refs, fmt.Sprintf("%s %s %s", b, f, c))
			}
		}
	}
	if len(chains) > 0 {
		return fmt.Errorf("%w: %s (rename or remove them; detour touches only its own)", ErrForeignChains, strings.Join(chains, ", "))
	}
	if len(refs) > 0 {
		return fmt.Errorf("rules detour does not own jump to its chains: %s (remove them first)", strings.Join(refs, "; "))
	}
	return nil
}

// choose picks the backend for an install. Read-only: it decides from what the
// saves showed and, when nothing decides, from the host's default iptables.
func (r *run) choose(want Backend, obs map[Backend]backendObs) (Backend, error) {
	installed, err := installedBackend(obs)
	if err != nil {
		return "", err
	}
	var b Backend
	switch want {
	case BackendIPTablesLegacy, BackendIPTablesNFT:
		b = want
	case BackendIPTables:
		b = r.hostDefault()
	case BackendAuto, "":
		legacy, nft := obs[BackendIPTablesLegacy].rules(), obs[BackendIPTablesNFT].rules()
		switch {
		case installed != "":
			b = installed
		case legacy && !nft: // L5: a namespace run by legacy iptables stays legacy
			b = BackendIPTablesLegacy
		case nft && !legacy:
			b = BackendIPTablesNFT
		default:
			b = r.hostDefault()
		}
	default:
		return "", fmt.Errorf("backend %s: %w", want, errors.ErrUnsupported)
	}
	if installed != "" && installed != b {
		return "", fmt.Errorf("%w: detour is installed with %s and the config asks for %s; uninstall first", ErrBackendConflict, installed, b)
	}
	if err := obs[b][IPv4].err; err != nil {
		return "", fmt.Errorf("backend %s is not usable: %w", b, err)
	}
	r.log.Debug("backend chosen", "backend", b, "asked", want, "installed", installed)
	return b, nil
}

// hostDefault is the backend plain `iptables` uses on this host: read from the
// binary's name when it is a link to xtables-nft-multi or
// xtables-legacy-multi, else from `iptables -V` ("(nf_tables)" or "(legacy)").
func (r *run) hostDefault() Backend {
	path, err := exec.LookPath("iptables")
	if err != nil {
		if _, err := exec.LookPath(toolName(BackendIPTablesNFT, IPv4, "save")); err == nil {
			return BackendIPTablesNFT
		}
		return BackendIPTablesLegacy
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		switch base := filepath.Base(real); {
		case strings.Contains(base, "nft"):
			return BackendIPTablesNFT
		case strings.Contains(base, "legacy"):
			return BackendIPTablesLegacy
		}
	}
	out, err := r.command("", "iptables", "-V")
	if err == nil && strings.Contains(out, "nf_tables") {
		return BackendIPTablesNFT
	}
	return BackendIPTablesLegacy
}

// restore feeds one transaction to iptables-restore --noflush.
func (r *run) restore(b Backend, f Family, script string) error {
	wait := int(math.Ceil(r.e.lockWait().Seconds()))
	r.log.Debug("restore", "backend", b, "family", f, "script", script)
	_, err := r.command(script, toolName(b, f, "restore"), "-w", strconv.Itoa(wait), "--noflush")
	return err
}

// step is one family's transaction and how to undo it.
type step struct {
	family   Family
	from, to owned
	script   string // transition(from, to)
	ipv6     bool   // a failure means IPv6 rules are impossible (IPv6 is planned)
}

func newStep(f Family, from, to owned) step {
	return step{family: f, from: from, to: to, script: transition(from, to)}
}

// apply runs the steps in order. iptables-restore commits each table at its
// COMMIT line, so a family's restore that fails (or is killed because the
// caller's context ended) may leave its earlier tables changed: when a step
// fails, its family is read again and put back to what it was observed to be,
// and the steps before it are rolled back too (hooks at their old positions).
func (r *run) apply(b Backend, steps []step) error {
	for i, s := range steps {
		err := r.restore(b, s.family, s.script)
		if err == nil {
			continue
		}
		if s.ipv6 && !errors.Is(err, ErrLockTimeout) {
			err = fmt.Errorf("%w: %w", ErrIPv6Unavailable, err)
		}
		errs := []error{fmt.Errorf("restore %s with %s: %w", s.family, b, err)}
		// The rollback runs even when the caller's context is done: leaving a
		// family half-way is worse than finishing late. It is still bounded.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), r.e.lockWait()+30*time.Second)
		defer cancel()
		r.ctx = ctx
		if rbErr := r.restoreObserved(b, s); rbErr != nil {
			errs = append(errs, fmt.Errorf("roll back %s: %w", s.family, rbErr))
		}
		for j := i - 1; j >= 0; j-- {
			prev := steps[j]
			if rbErr := r.restore(b, prev.family, transition(prev.to, prev.from)); rbErr != nil {
				errs = append(errs, fmt.Errorf("roll back %s: %w", prev.family, rbErr))
			} else {
				r.log.Info("rolled back", "backend", b, "family", prev.family)
			}
		}
		return errors.Join(errs...)
	}
	return nil
}

// restoreObserved puts the family of a failed step back to s.from: it reads
// what the failed restore left (the tables it committed before failing) and
// undoes exactly that; nothing runs when it committed nothing.
func (r *run) restoreObserved(b Backend, s step) error {
	now := r.observeFamily(b, s.family)
	if now.err != nil {
		return now.err
	}
	script := transition(now.owned, s.from)
	if script == "" {
		return nil
	}
	if err := r.restore(b, s.family, script); err != nil {
		return err
	}
	r.log.Info("rolled back", "backend", b, "family", s.family, "partly_committed", true)
	return nil
}

func (e *Engine) install(ctx context.Context, p Plan) (Result, error) {
	var res Result
	if len(p.Families) == 0 {
		return res, errors.New("install: the plan captures no IP family (make it with NewPlan)")
	}
	for _, fp := range p.Families {
		res.Families = append(res.Families, fp.Family)
	}
	err := netns.Do(e.NetNS, func() error {
		r := e.newRun(ctx)
		defer func() { res.Processes = r.procs }()
		lock, err := r.lockNetNS()
		if err != nil {
			return err
		}
		defer lock.unlock()
		obs := r.observeAll()
		if err := blocked(obs); err != nil {
			return err
		}
		b, err := r.choose(p.Config.Backend, obs)
		if err != nil {
			return err
		}
		res.Backend = b
		var steps []step
		for _, f := range allFamilies {
			fp, planned := p.Family(f)
			fo := obs[b][f]
			if fo.err != nil {
				if !planned {
					continue // no tool for this family: nothing of ours can be there
				}
				if f == IPv6 {
					return fmt.Errorf("observe ipv6 with %s: %w: %w", b, ErrIPv6Unavailable, fo.err)
				}
				return fmt.Errorf("observe ipv4 with %s: %w", b, fo.err)
			}
			to := owned{}
			if planned {
				to = ownedFromPlan(&fp)
			}
			if st := newStep(f, fo.owned, to); st.script != "" {
				st.ipv6 = f == IPv6 && planned
				steps = append(steps, st)
			}
		}
		routes, err := observeNet(p)
		if err != nil {
			return err
		}
		if len(steps) == 0 && !routes.changes() {
			r.log.Debug("no changes", "backend", b)
			return nil
		}
		res.Changed = true
		undo, err := routes.add()
		if err != nil {
			return err
		}
		if err := r.apply(b, steps); err != nil {
			return errors.Join(err, undo())
		}
		if err := routes.remove(); err != nil {
			return err
		}
		r.log.Info("installed", "backend", b, "families", res.Families, "transactions", len(steps))
		return nil
	})
	return res, err
}

func (e *Engine) uninstall(ctx context.Context) (Result, error) {
	var res Result
	err := netns.Do(e.NetNS, func() error {
		r := e.newRun(ctx)
		defer func() { res.Processes = r.procs }()
		lock, err := r.lockNetNS()
		if err != nil {
			return err
		}
		defer lock.unlock()
		obs := r.observeAll()
		if err := blocked(obs); err != nil {
			return err
		}
		routes, err := observeNet(Plan{})
		if err != nil {
			return err
		}
		removed := map[Family]bool{}
		for _, b := range iptablesBackends {
			var steps []step
			for _, f := range allFamilies {
				if fo := obs[b][f]; !fo.owned.empty() {
					steps = append(steps, newStep(f, fo.owned, owned{}))
					removed[f] = true
				}
			}
			if len(steps) == 0 {
				continue
			}
			res.Backend = b
			if err := r.apply(b, steps); err != nil {
				return err
			}
		}
		for _, f := range allFamilies {
			if routes.owns(f) {
				removed[f] = true
			}
		}
		if err := routes.remove(); err != nil {
			return err
		}
		for _, f := range allFamilies {
			if removed[f] {
				res.Families = append(res.Families, f)
			}
		}
		res.Changed = len(res.Families) > 0
		if res.Changed {
			r.log.Info("uninstalled", "backend", res.Backend, "families", res.Families)
		}
		return nil
	})
	return res, err
}

// installedState is what Check and Status read.
type installedState struct {
	backend Backend
	obs     backendObs
	routes  netState
}

func (s installedState) lines(f Family) []string {
	var tables []Table
	if s.obs != nil {
		tables = s.obs[f].owned.tables()
	}
	return driftLines(tables, s.routes.have(f))
}

func (s installedState) any() bool {
	return s.backend != "" || s.routes.owns(IPv4) || s.routes.owns(IPv6)
}

func (e *Engine) readInstalled(ctx context.Context, p Plan) (installedState, error) {
	var s installedState
	err := netns.Do(e.NetNS, func() error {
		obs := e.newRun(ctx).observeAll()
		b, err := installedBackend(obs)
		if err != nil {
			return err
		}
		s.backend = b
		if b != "" {
			s.obs = obs[b]
		}
		s.routes, err = observeNet(p)
		return err
	})
	return s, err
}

func (e *Engine) check(ctx context.Context, p Plan) (Drift, error) {
	var d Drift
	s, err := e.readInstalled(ctx, p)
	if err != nil {
		return d, err
	}
	if !s.any() {
		return d, ErrNotInstalled
	}
	if want := p.Config.Backend; (want == BackendIPTablesLegacy || want == BackendIPTablesNFT) && s.backend != "" && s.backend != want {
		d.Notes = append(d.Notes, fmt.Sprintf("installed with %s, planned for %s", s.backend, want))
	}
	for _, f := range allFamilies {
		var planned []string
		if fp, ok := p.Family(f); ok {
			planned = driftLines(fp.Tables, fp.netLines())
		}
		if fd, differs := familyDrift(f, s.lines(f), planned); differs {
			d.Families = append(d.Families, fd)
		}
	}
	return d, nil
}

func (e *Engine) explain(ctx context.Context, c Conn) (KernelVerdict, error) {
	s, err := e.readInstalled(ctx, Plan{})
	if err != nil {
		return KernelVerdict{}, err
	}
	if s.backend == "" {
		return KernelVerdict{}, ErrNotInstalled
	}
	fo := s.obs[familyOfConn(c)]
	if fo.err != nil {
		return KernelVerdict{}, fmt.Errorf("read %s %s rules: %w", s.backend, familyOfConn(c), fo.err)
	}
	return explainSave(s.backend, fo.save, c)
}

func (e *Engine) status(ctx context.Context) (Status, error) {
	st := Status{Rules: map[Family]string{}}
	s, err := e.readInstalled(ctx, Plan{})
	if err != nil {
		return st, err
	}
	st.Backend = s.backend
	for _, f := range allFamilies {
		var tables []Table
		if s.obs != nil {
			tables = s.obs[f].owned.tables()
		}
		if len(tables) == 0 && !s.routes.owns(f) {
			continue
		}
		text := renderTables(tables)
		for _, l := range s.routes.have(f) {
			text += l + "\n"
		}
		st.Families = append(st.Families, f)
		st.Rules[f] = text
	}
	st.Installed = len(st.Families) > 0
	return st, nil
}

func (e *Engine) facts(_ context.Context, cfg Config) (Facts, error) {
	var f Facts
	err := netns.Do(e.NetNS, func() (err error) {
		f.IPv6, err = hasIPv6()
		return err
	})
	if err != nil {
		return f, err
	}
	if cfg.DNS.Capture == DNSCaptureResolvConf {
		if f.Nameservers, err = readNameservers(cfg.DNS.ResolvConf); err != nil {
			return f, err
		}
	}
	return f, nil
}

// hasIPv6 reports whether any interface of the calling thread's network
// namespace has IPv6 enabled. net.ipv6.conf.all.disable_ipv6 is not the
// answer: writing it sets every interface, but an interface may turn IPv6 back
// on afterwards (all=1, eth0=0 leaves eth0 with IPv6). An interface whose
// disable_ipv6 is 0, or any address in if_inet6, means IPv6 traffic can flow.
// /proc/sys/net and /proc/thread-self/net follow the calling thread's
// namespace; both are missing when the kernel runs without IPv6.
func hasIPv6() (bool, error) {
	const conf = "/proc/sys/net/ipv6/conf"
	entries, err := os.ReadDir(conf)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read ipv6 state: %w", err)
	}
	for _, ent := range entries {
		if name := ent.Name(); name == "all" || name == "default" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(conf, ent.Name(), "disable_ipv6"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the interface went away meanwhile
		}
		if err != nil {
			return false, fmt.Errorf("read ipv6 state of %s: %w", ent.Name(), err)
		}
		if strings.TrimSpace(string(b)) == "0" {
			return true, nil
		}
	}
	b, err := os.ReadFile("/proc/thread-self/net/if_inet6")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read ipv6 addresses: %w", err)
	}
	return len(bytes.TrimSpace(b)) > 0, nil
}

// readNameservers returns the nameserver addresses of a resolv.conf file, in
// order, without zones. Lines that are not valid nameserver lines are skipped,
// as the resolver skips them. A file that cannot be read is invalid input: a
// *FieldError for dns.resolvConf with the path.
func readNameservers(path string) ([]netip.Addr, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is the value already
		}
		return nil, &FieldError{Field: "dns.resolvConf", Value: path, Reason: "cannot be read (dns.capture resolvconf reads its nameservers): " + err.Error()}
	}
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out = append(out, a.WithZone("").Unmap())
		}
	}
	return out, nil
}
