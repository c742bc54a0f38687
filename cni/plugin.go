package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/detour-mesh/detour/internal/ebpfpins"
	"github.com/detour-mesh/detour/internal/kubeapi"
	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/nftables"
)

// SupportedVersions are the CNI config versions the plugin accepts. CHECK needs
// 0.4.0 or later, STATUS and GC 1.1.0 (skel enforces both).
func SupportedVersions() version.PluginInfo {
	return version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
}

// Options configure a Plugin. The zero value is the plugin without the eBPF
// backend: the result on os.Stdout, logs where the plugin config says, pods
// read with internal/kubeapi, rules applied with the redirect engine and the
// netfilter Drivers. cmd/detour-cni sets Drivers, RemoveEBPFEnrolment and
// EBPFReady from redirect/backends in its whole build, and HandOver in its
// lean one (docs/startup.md).
type Options struct {
	// Stdout receives the result and nothing else; nil = os.Stdout.
	Stdout io.Writer
	// Stderr receives the log lines when the plugin config names no logFile;
	// nil = os.Stderr.
	Stderr io.Writer
	// Logger, when set, receives the log lines instead of logFile or Stderr.
	Logger *slog.Logger

	// Kube builds the Kubernetes client from the kubeconfig path; nil =
	// NewKubeClient with APITimeout.
	Kube func(kubeconfig string) (KubeClient, error)
	// NewRedirector returns the Redirector for a network namespace; nil =
	// EngineRedirector.
	NewRedirector func(o RedirectorOptions) Redirector
	// Drivers are the backends the engine uses (RedirectorOptions.Drivers);
	// nil = NetfilterDrivers.
	Drivers DriversFunc
	// RemoveEBPFEnrolment removes the eBPF backend's enrolment of a namespace
	// that is gone, by the cookie ADD recorded; nil = fail with ErrNoEBPF.
	RemoveEBPFEnrolment func(o RedirectorOptions, cookie uint64) error
	// FromAnnotations decodes a pod's annotations; nil = redirect.FromAnnotations.
	FromAnnotations AnnotationDecoder
	// LookPath finds the iptables tools for STATUS; nil = exec.LookPath.
	LookPath func(file string) (string, error)
	// EBPFReady is STATUS's probe of the kernel when the plugin config's
	// backend is ebpf; nil = fail with ErrNoEBPF.
	EBPFReady func() error
	// NFTablesReady is STATUS's probe of the kernel's nf_tables when the
	// plugin config's backend is nftables, or auto without a complete
	// iptables backend (auto then installs with nftables); nil = the
	// nftables backend's own probe (one netlink dump, no tool).
	NFTablesReady func() error
	// HandOver, when set, says this build has no eBPF backend: a call that
	// needs it (see needsEBPF) is given to HandOver with the reason and the
	// plugin config the runtime wrote on stdin, to be served by the plugin
	// that has the backend (cmd/detour-cni execs detour-cni-ebpf, with the
	// same CNI_* environment). It returns only when that fails; the call
	// then fails with code 50 (plugin not available). nil = every call is
	// served here.
	HandOver func(why string, stdin []byte) error
	// Now is the clock (GC's grace period, state timestamps); nil = time.Now.
	Now func() time.Time

	// APIAttempts bounds the reads of one object (pod or namespace); 0 = 5.
	APIAttempts int
	// APITimeout bounds one Kubernetes request; 0 = 5s.
	APITimeout time.Duration
	// APIBackoff is the first wait between attempts, doubled up to 2s; 0 = 250ms.
	APIBackoff time.Duration
	// Timeout bounds one whole verb; 0 = 2m.
	Timeout time.Duration
	// GCGrace keeps state files younger than this through GC, because an ADD
	// may be running while the runtime lists the valid attachments; 0 = 1m,
	// negative = no grace.
	GCGrace time.Duration
}

// Plugin is the detour-cni chained plugin. Its methods are the skel callbacks
// of each CNI verb; each call is independent (a plugin process serves one).
type Plugin struct {
	o Options
}

// New returns a plugin with the options' defaults filled in.
func New(o Options) *Plugin {
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.APIAttempts <= 0 {
		o.APIAttempts = 5
	}
	if o.APITimeout <= 0 {
		o.APITimeout = 5 * time.Second
	}
	if o.APIBackoff <= 0 {
		o.APIBackoff = 250 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	switch {
	case o.GCGrace == 0:
		o.GCGrace = time.Minute
	case o.GCGrace < 0:
		o.GCGrace = 0
	}
	if o.Kube == nil {
		timeout := o.APITimeout
		o.Kube = func(path string) (KubeClient, error) { return NewKubeClient(path, timeout) }
	}
	if o.NewRedirector == nil {
		o.NewRedirector = EngineRedirector
	}
	if o.Drivers == nil {
		o.Drivers = NetfilterDrivers
	}
	if o.RemoveEBPFEnrolment == nil {
		o.RemoveEBPFEnrolment = func(RedirectorOptions, uint64) error { return ErrNoEBPF }
	}
	if o.FromAnnotations == nil {
		o.FromAnnotations = redirect.FromAnnotations
	}
	if o.LookPath == nil {
		o.LookPath = exec.LookPath
	}
	if o.EBPFReady == nil {
		o.EBPFReady = func() error { return ErrNoEBPF }
	}
	if o.NFTablesReady == nil {
		o.NFTablesReady = func() error { return nftables.New(nftables.Options{}).Ready(context.Background()) }
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Plugin{o: o}
}

// Funcs returns the verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// call is what every verb starts with: the parsed config, a logger, a bounded
// context and the state store.
type call struct {
	conf *Conf
	log  *slog.Logger
	// engineLog is log without netns, for the engine, whose install and
	// uninstall lines name the namespace themselves (a key given twice in
	// one JSON line).
	engineLog *slog.Logger
	ctx       context.Context
	// drivers is Options.Drivers.
	drivers DriversFunc
	store   stateStore
	start   time.Time
	// stdin is the plugin config as the runtime wrote it (for a hand-over).
	stdin  []byte
	finish func()
}

func (p *Plugin) begin(verb string, args *skel.CmdArgs) (*call, error) {
	start := p.o.Now()
	conf, unknown, err := parseConf(args.StdinData)
	if err == nil && unknown != nil && !tolerant(verb) {
		err = unknown
	}
	if err != nil {
		log := p.o.Logger
		if log == nil {
			log = slog.New(slog.NewJSONHandler(p.o.Stderr, nil))
		}
		log.Error("invalid plugin config", "verb", verb, "container_id", args.ContainerID, "error", err)
		return nil, err
	}
	log, closeLog := p.logger(conf)
	log = log.With("verb", verb, "network", conf.Name)
	engineLog := log
	if args.ContainerID != "" {
		engineLog = log.With("container_id", args.ContainerID, "ifname", args.IfName)
		log = engineLog.With("netns", args.Netns)
	}
	if unknown != nil {
		log.Warn("plugin config has unknown keys, going on: ADD, CHECK and STATUS refuse it", "error", unknown.Msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.o.Timeout)
	c := &call{
		drivers: p.o.Drivers,
		conf:    conf,
		log:     log,
		ctx:     ctx,

		engineLog: engineLog,
		store:     newStateStore(conf.StateDir, conf.Name),
		start:     start,
		stdin:     args.StdinData,
		finish: func() {
			cancel()
			closeLog()
		},
	}
	if why := p.needsEBPF(conf); why != "" {
		err := p.handOver(c, why)
		c.finish()
		return nil, err
	}
	return c, nil
}

// tolerant says whether verb goes on despite unknown plugin config keys:
// DEL and GC only remove what ADD made, and a pod whose teardown failed on a
// key that changes nothing for them would be stuck; ADD, CHECK and STATUS
// refuse them (docs/cni.md).
func tolerant(verb string) bool { return verb == "DEL" || verb == "GC" }

// needsEBPF says why a call of a plugin built without the eBPF backend
// (Options.HandOver set) must be served by the one that has it, or "" when
// it need not: the plugin config's backend is ebpf, or the eBPF backend
// holds state on this node (its maps are pinned under ebpfPinDir: some pod
// is enrolled, so DEL, CHECK and GC of a pod, and an install that switches a
// namespace away from ebpf, must see it). It is a stat, no more.
func (p *Plugin) needsEBPF(conf *Conf) string {
	if p.o.HandOver == nil {
		return ""
	}
	if base, _ := conf.baseConfig(); base.Backend == redirect.BackendEBPF {
		return "plugin config backend ebpf"
	}
	if maps, err := ebpfpins.Maps(conf.EBPFPinDir); !errors.Is(err, fs.ErrNotExist) {
		return "the eBPF backend's maps are pinned at " + maps
	}
	return ""
}

// handOver gives the call to Options.HandOver (the plugin with the eBPF
// backend). It returns only when that fails: code 50, naming why.
func (p *Plugin) handOver(c *call, why string) error {
	c.log.Debug("handing the call to the plugin with the eBPF backend", "why", why)
	err := p.o.HandOver(why, c.stdin)
	if err == nil {
		err = errors.New("hand-over returned")
	}
	err = fmt.Errorf("%s needs the eBPF backend: %w", why, err)
	c.log.Error("hand-over failed", "code", types.ErrPluginNotAvailable, "error", err)
	return newError(types.ErrPluginNotAvailable, err)
}

// redirector is the options of the Redirector for the namespace at netns.
func (c *call) redirector(netns string) RedirectorOptions {
	return RedirectorOptions{Netns: netns, EBPFPinDir: c.conf.EBPFPinDir, EBPFCgroupRoot: c.conf.EBPFCgroupRoot, Logger: c.engineLog, Drivers: c.drivers}
}

func (c *call) ms(now time.Time) float64 {
	return float64(now.Sub(c.start).Microseconds()) / 1000
}

// logger builds the call's logger: Options.Logger, else JSON lines appended to
// the config's logFile, else to Stderr. Never stdout: stdout carries the result.
func (p *Plugin) logger(conf *Conf) (*slog.Logger, func()) {
	if p.o.Logger != nil {
		return p.o.Logger, func() {}
	}
	level, _ := conf.level() // validated by ParseConf
	opts := &slog.HandlerOptions{Level: level}
	if conf.LogFile == "" {
		return slog.New(slog.NewJSONHandler(p.o.Stderr, opts)), func() {}
	}
	f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		log := slog.New(slog.NewJSONHandler(p.o.Stderr, opts))
		log.Warn("cannot open logFile, logging to stderr", "log_file", conf.LogFile, "error", err)
		return log, func() {}
	}
	return slog.New(slog.NewJSONHandler(f, opts)), func() { _ = f.Close() }
}

// Add decides for the pod named in CNI_ARGS, installs its redirection in the
// pod's network namespace when it opted in, records the attachment's state and
// prints the previous result unchanged. Any doubt fails the ADD (fail closed):
// the runtime then calls DEL and retries the sandbox.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := p.begin("ADD", args)
	if err != nil {
		return err
	}
	defer c.finish()
	out, err := passThrough(c.conf)
	if err != nil {
		c.log.Error("invalid prevResult", "error", err)
		return err
	}
	ref, isPod, err := ParsePodArgs(args.Args)
	if err != nil {
		c.log.Error("invalid CNI_ARGS", "error", err)
		return newError(types.ErrInvalidEnvironmentVariables, err)
	}

	d := decision{Reason: "not a kubernetes pod (CNI_ARGS has no K8S_POD_NAME)"}
	var pod *PodRef
	if isPod {
		pod = &ref
		c.log = c.log.With("pod", ref.String())
		kube := func() (KubeClient, error) { return p.o.Kube(c.conf.Kubeconfig) }
		r := retrier{attempts: p.o.APIAttempts, backoff: p.o.APIBackoff, log: c.log}
		d, err = decide(c.ctx, c.conf, ref, kube, r, p.o.FromAnnotations)
		if err != nil {
			c.log.Error("add failed", "code", ErrorCode(err), "error", err, "duration_ms", c.ms(p.o.Now()))
			return err
		}
	}

	if p.o.HandOver != nil && d.Redirect && d.Config.Backend == redirect.BackendEBPF {
		// The pod's own annotation chose ebpf: the plugin with the
		// backend decides again (the same inputs, the same decision).
		return p.handOver(c, "pod "+ref.String()+" asks for backend ebpf")
	}
	st := State{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Netns:       args.Netns,
		Pod:         pod,
		Redirect:    d.Redirect,
		Reason:      d.Reason,
		Added:       p.o.Now().UTC(),
	}
	// The pod's lo belongs to the runtime's loopback network, which may be
	// set up before or after this ADD: no address goes on it (docs/cni.md).
	st.PassthroughRoute = d.Redirect && c.conf.PassthroughOnLo == PassthroughRoute
	if d.Redirect {
		st.Config = &d.Config
		if d.Config.Backend == redirect.BackendEBPF {
			// The enrolment lives in the node's maps, keyed by the
			// namespace's cookie: record it, so DEL and GC can remove it
			// once the namespace is gone.
			if st.NetnsCookie, err = netnsCookie(args.Netns); err != nil {
				err = fmt.Errorf("pod %s: %w", ref, err)
				c.log.Error("add failed", "code", CodeInstall, "error", err, "duration_ms", c.ms(p.o.Now()))
				return newError(CodeInstall, err)
			}
		}
	}
	// State first: if the plugin dies during the install, DEL and GC still
	// know the attachment.
	if err := c.store.save(st); err != nil {
		c.log.Error("add failed", "error", err)
		return newError(types.ErrIOFailure, err)
	}
	if d.Redirect {
		o := c.redirector(args.Netns)
		o.PassthroughRoute = st.PassthroughRoute
		r := p.o.NewRedirector(o)
		if err := r.Install(c.ctx, d.Config); err != nil {
			// The engine rolls a failed install back; drop the state too.
			_ = c.store.remove(args.ContainerID, args.IfName)
			err = fmt.Errorf("pod %s: %w", ref, err)
			c.log.Error("add failed", "code", CodeInstall, "error", err, "duration_ms", c.ms(p.o.Now()))
			return newError(CodeInstall, err)
		}
	}
	if _, err := p.o.Stdout.Write(out); err != nil {
		return newError(types.ErrIOFailure, fmt.Errorf("write result: %w", err))
	}
	c.log.Info("added", "redirect", d.Redirect, "reason", d.Reason, "annotations_from", d.Source, "duration_ms", c.ms(p.o.Now()))
	return nil
}

// passThrough returns the bytes ADD prints: prevResult exactly as given when it
// is already in the config's version, converted to that version otherwise, and
// an empty result of the config's version when there is none.
func passThrough(conf *Conf) ([]byte, error) {
	if len(conf.PrevResult) == 0 {
		empty := &current.Result{CNIVersion: current.ImplementedSpecVersion}
		r, err := empty.GetAsVersion(conf.CNIVersion)
		if err != nil {
			return nil, newError(types.ErrIncompatibleCNIVersion, fmt.Errorf("build result: %w", err))
		}
		return printResult(r)
	}
	var head struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(conf.PrevResult, &head); err != nil {
		return nil, newError(types.ErrDecodingFailure, fmt.Errorf("decode prevResult: %w", err))
	}
	from, raw := head.CNIVersion, []byte(conf.PrevResult)
	if from == "" {
		// Results before 1.0.0 may omit their version: it is the config's.
		from = conf.CNIVersion
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, newError(types.ErrDecodingFailure, fmt.Errorf("decode prevResult: %w", err))
		}
		m["cniVersion"], _ = json.Marshal(from)
		raw, _ = json.Marshal(m)
	}
	r, err := version.NewResult(from, raw)
	if err != nil {
		return nil, newError(types.ErrDecodingFailure, fmt.Errorf("decode prevResult: %w", err))
	}
	if head.CNIVersion == conf.CNIVersion {
		return conf.PrevResult, nil
	}
	r, err = r.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return nil, newError(types.ErrIncompatibleCNIVersion, fmt.Errorf("convert prevResult %s to %s: %w", from, conf.CNIVersion, err))
	}
	return printResult(r)
}

func printResult(r types.Result) ([]byte, error) {
	var b bytes.Buffer
	if err := r.PrintTo(&b); err != nil {
		return nil, newError(types.ErrIOFailure, fmt.Errorf("encode result: %w", err))
	}
	return b.Bytes(), nil
}

// Check verifies the attachment against what ADD recorded: for a redirected
// pod, the installed rules must be exactly the plan (any drift fails); a pod
// ADD skipped has nothing of ours to verify.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.begin("CHECK", args)
	if err != nil {
		return err
	}
	defer c.finish()
	if _, err := passThrough(c.conf); err != nil {
		c.log.Error("invalid prevResult", "error", err)
		return err
	}
	st, err := c.store.load(args.ContainerID, args.IfName)
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("container %s ifname %s: no state recorded by ADD in %s", args.ContainerID, args.IfName, c.store.dir)
		c.log.Error("check failed", "error", err)
		return newError(types.ErrUnknownContainer, err)
	}
	if err != nil {
		c.log.Error("check failed", "error", err)
		return newError(types.ErrIOFailure, err)
	}
	if !st.Redirect || st.Config == nil {
		c.log.Info("checked", "redirect", false, "reason", st.Reason, "duration_ms", c.ms(p.o.Now()))
		return nil
	}
	if p.o.HandOver != nil && st.Config.Backend == redirect.BackendEBPF {
		return p.handOver(c, "the attachment's backend is ebpf")
	}
	o := c.redirector(args.Netns)
	o.PassthroughRoute = st.PassthroughRoute // what ADD made, also by an older detour-cni
	r := p.o.NewRedirector(o)
	if err := r.Check(c.ctx, *st.Config); err != nil {
		code := CodeInstall
		if errors.Is(err, ErrDrift) {
			code = CodeDrift
		}
		err = fmt.Errorf("pod %s: %w", st.podName(), err)
		c.log.Error("check failed", "code", code, "error", err, "duration_ms", c.ms(p.o.Now()))
		return newError(code, err)
	}
	c.log.Info("checked", "redirect", true, "duration_ms", c.ms(p.o.Now()))
	return nil
}

func (st State) podName() string {
	if st.Pod == nil {
		return "(none)"
	}
	return st.Pod.String()
}

// Del removes the attachment's redirection and state. It succeeds when there
// is nothing to remove: called twice, after a failed ADD, or with the network
// namespace already gone (its rules went with it).
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := p.begin("DEL", args)
	if err != nil {
		return err
	}
	defer c.finish()
	// ADD records the state before it installs anything, so without state
	// (ADD failed before, or this is the second DEL) nothing of ours is in the
	// namespace; a pod ADD skipped was never touched either.
	st, err := c.store.load(args.ContainerID, args.IfName)
	known := err == nil
	uninstall := known && st.Redirect
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// An unreadable state file must not block the DEL: assume the worst.
		c.log.Warn("unreadable state, uninstalling anyway", "error", err)
		uninstall = true
	}
	if p.o.HandOver != nil && known && (st.NetnsCookie != 0 || st.Config != nil && st.Config.Backend == redirect.BackendEBPF) {
		return p.handOver(c, "the attachment's backend is ebpf")
	}
	removed := false
	if uninstall {
		gone, err := netnsGone(args.Netns)
		if err != nil {
			c.log.Warn("cannot tell whether the netns exists, trying to uninstall", "error", err)
		}
		switch {
		case !gone:
			if err := p.o.NewRedirector(c.redirector(args.Netns)).Uninstall(c.ctx); err != nil {
				c.log.Error("del failed", "code", CodeInstall, "error", err, "duration_ms", c.ms(p.o.Now()))
				return newError(CodeInstall, err)
			}
			removed = true
		case st.NetnsCookie != 0:
			// The namespace's rules went with it, but an eBPF enrolment
			// lives in the node's maps.
			if err := p.o.RemoveEBPFEnrolment(c.redirector(""), st.NetnsCookie); err != nil {
				c.log.Error("del failed", "code", CodeInstall, "error", err, "duration_ms", c.ms(p.o.Now()))
				return newError(CodeInstall, err)
			}
			removed = true
		}
	}
	if err := c.store.remove(args.ContainerID, args.IfName); err != nil {
		c.log.Error("del failed", "error", err)
		return newError(types.ErrIOFailure, err)
	}
	c.log.Info("deleted", "had_state", known, "uninstalled", removed, "duration_ms", c.ms(p.o.Now()))
	return nil
}

// iptablesBackends are the backends the engine can use; STATUS needs the four
// tools of one of them (iptables-nft-save, ip6tables-nft-restore, …).
var iptablesBackends = []string{"nft", "legacy"}

// missingIPTables returns, when no iptables backend has its four tools on
// PATH, the missing tools of each; nil when one has them all.
func missingIPTables(lookPath func(string) (string, error)) []string {
	var missing []string
	for _, b := range iptablesBackends {
		m := missingTools(lookPath, b)
		if len(m) == 0 {
			return nil
		}
		missing = append(missing, m...)
	}
	return missing
}

// missingTools returns the tools of the backend that are not on PATH.
func missingTools(lookPath func(string) (string, error), backend string) []string {
	var missing []string
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, op := range []string{"save", "restore"} {
			name := fam + "-" + backend + "-" + op
			if _, err := lookPath(name); err != nil {
				missing = append(missing, name)
			}
		}
	}
	return missing
}

// Status reports whether the plugin can serve ADD: the kubeconfig exists and
// loads, the backend the plugin config names can install — iptables (and its
// variants): the four tools of one iptables backend are on PATH; nftables:
// the kernel's nf_tables answers; auto: either; ebpf: the kernel has what the
// eBPF programs need, ebpfCgroupRoot is a cgroup v2 directory and
// ebpfPinDir's directory exists — and the
// state dir is usable. Each
// failure is CNI code 50 (not available). It does not call the API server.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := p.begin("STATUS", args)
	if err != nil {
		return err
	}
	defer c.finish()
	var problems []string
	if _, err := os.Stat(c.conf.Kubeconfig); err != nil {
		problems = append(problems, fmt.Sprintf("kubeconfig %s: %v", c.conf.Kubeconfig, errors.Unwrap(err)))
	} else if cfg, err := kubeapi.Load(c.conf.Kubeconfig); err != nil {
		problems = append(problems, fmt.Sprintf("kubeconfig %s: %v", c.conf.Kubeconfig, err))
	} else if _, err := kubeapi.New(cfg, kubeapi.Options{}); err != nil {
		problems = append(problems, fmt.Sprintf("kubeconfig %s: %v", c.conf.Kubeconfig, err))
	}
	if base, _ := c.conf.baseConfig(); base.Backend == redirect.BackendEBPF {
		// The eBPF backend runs no tool (its inbound table is netlink).
		if err := p.o.EBPFReady(); err != nil {
			problems = append(problems, fmt.Sprintf("backend ebpf: %v", err))
		}
		if err := ebpfPaths(c.conf.EBPFPinDir, c.conf.EBPFCgroupRoot); err != nil {
			problems = append(problems, fmt.Sprintf("backend ebpf: %v", err))
		}
	} else if base.Backend == redirect.BackendNFTables {
		// The nftables backend runs no tool either.
		if err := p.o.NFTablesReady(); err != nil {
			problems = append(problems, fmt.Sprintf("backend nftables: %v", err))
		}
	} else if missing := missingIPTables(p.o.LookPath); len(missing) > 0 {
		problem := "no complete iptables backend on PATH (missing " + strings.Join(missing, ", ") + ")"
		switch base.Backend {
		case redirect.BackendAuto, "":
			// auto installs with nftables where no iptables backend is usable.
			if err := p.o.NFTablesReady(); err != nil {
				problems = append(problems, fmt.Sprintf("%s, and backend nftables: %v", problem, err))
			}
		default:
			problems = append(problems, problem)
		}
	}
	if err := os.MkdirAll(c.store.dir, 0o700); err != nil {
		problems = append(problems, fmt.Sprintf("state dir: %v", err))
	}
	if len(problems) > 0 {
		err := errors.New("detour-cni not ready: " + strings.Join(problems, "; "))
		c.log.Warn("not ready", "error", err)
		return newError(types.ErrPluginNotAvailable, err)
	}
	c.log.Debug("ready")
	return nil
}

// GC drops the state of every attachment of this network that the runtime no
// longer lists (older than GCGrace). It does not enter network namespaces: by
// the spec, those of stale attachments may be gone or reused.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := p.begin("GC", args)
	if err != nil {
		return err
	}
	defer c.finish()
	// An eBPF enrolment lives in the node's maps, not in the namespace:
	// remove it with the state, by its cookie (never reused).
	release := func(st State) error {
		if st.NetnsCookie == 0 {
			return nil
		}
		if p.o.HandOver != nil {
			// GC is safe to repeat: the plugin with the eBPF backend
			// starts it again.
			return p.handOver(c, "attachment "+st.ContainerID+" has an eBPF enrolment")
		}
		return p.o.RemoveEBPFEnrolment(c.redirector(""), st.NetnsCookie)
	}
	dropped, err := c.store.gc(c.conf.ValidAttachments, p.o.GCGrace, p.o.Now(), release)
	for _, a := range dropped {
		c.log.Info("dropped stale state", "attachment", a)
	}
	if te := (*types.Error)(nil); errors.As(err, &te) && te.Code == types.ErrPluginNotAvailable {
		return te // a failed hand-over, logged by handOver
	}
	if err != nil {
		c.log.Error("gc incomplete", "error", err)
		return newError(types.ErrIOFailure, err)
	}
	c.log.Info("gc done", "valid", len(c.conf.ValidAttachments), "dropped", len(dropped), "duration_ms", c.ms(p.o.Now()))
	return nil
}
