package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// controlPlaneOptions are the flags of `detour-cp control-plane`.
type controlPlaneOptions struct {
	config         string
	source         string
	xdsAddress     string
	httpAddress    string
	tlsCert        string
	tlsKey         string
	clientCA       string
	nackBackoff    time.Duration
	memoryLimit    string
	adaptiveMemory bool // the deprecated --adaptive-memory-limit: --memory-limit adaptive
	watchInterval  time.Duration
	settle         time.Duration
	maxMeshSize    int64
	dnsSuffix      string
	dnsUpstreams   []string
	kubeconfig     string
	namespace      string
	preset         string
	baseConfig     string
	outboundPolicy string
	logLevel       string
	logFormat      string
	meshConfig     string
	inject         injectionFlags

	// listening is called with the bound addresses (tests).
	listening func(xds, http net.Addr)
}

const (
	sourceFile       = "file"
	sourceKubernetes = "kubernetes"
)

func newControlPlaneCmd(s streams, g *globalOptions) *cobra.Command {
	o := &controlPlaneOptions{}
	cmd := &cobra.Command{
		Use:   "control-plane",
		Short: "Serve Envoy sidecars their listeners and clusters over ADS (xDS)",
		Long: `control-plane serves every workload's Envoy the listeners that match the
redirection detour installs for it, over ADS (state of the world and delta on the
same port), from a mesh file it watches or from the Kubernetes API.

HTTP endpoints: /healthz, /readyz, /metrics (Prometheus) and /debug/nodes.
docs/control-plane.md and docs/mesh.md describe the layout and the mesh file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := rejectEmptyFlags(cmd.Flags(), "inject-owner"); err != nil {
				return err
			}
			// 0 given on purpose is refused like a negative size (the zero
			// value of the options, which tests use, is the default).
			if cmd.Flags().Changed("max-mesh-size") && o.maxMeshSize == 0 {
				return usageError("--max-mesh-size 0 must be positive")
			}
			// An --inject-* flag without --inject configures a webhook that
			// is not served: the pods it was meant for would start unmeshed.
			if !o.inject.enabled {
				var given []string
				cmd.Flags().Visit(func(fl *pflag.Flag) {
					if strings.HasPrefix(fl.Name, "inject-") {
						given = append(given, "--"+fl.Name)
					}
				})
				if len(given) > 0 {
					return usageError("%s configure the injection webhook, which is served only with --inject", strings.Join(given, ", "))
				}
			}
			if err := rejectOtherSourceFlags(cmd.Flags(), o.source); err != nil {
				return err
			}
			if g.verbose && !cmd.Flags().Changed("log-level") {
				o.logLevel = "debug"
			}
			return runControlPlane(cmd.Context(), o, s)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "mesh file (YAML) to serve and watch (--source file)")
	f.StringVar(&o.source, "source", sourceFile, "where the mesh comes from: file or kubernetes")
	f.StringVar(&o.xdsAddress, "xds-address", controlplane.DefaultXDSAddress, "address of the ADS gRPC server")
	f.StringVar(&o.httpAddress, "http-address", controlplane.DefaultHTTPAddress, `address of /healthz, /readyz, /metrics and /debug/nodes ("off" disables)`)
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve ADS over TLS with this certificate (PEM; read again when it changes)")
	f.StringVar(&o.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	f.StringVar(&o.clientCA, "client-ca", "", "require client certificates signed by this CA (PEM; read again when it changes); a certificate's SAN must equal the node id")
	f.DurationVar(&o.nackBackoff, "nack-backoff", xds.DefaultNACKBackoff, "how long a NACKed config is held back before it is sent again")
	f.StringVar(&o.memoryLimit, "memory-limit", string(controlplane.MemoryLimitAuto), "the Go runtime's soft memory limit: auto (90% of the container's cgroup memory limit, none without one), adaptive (a little above the live heap: lower peak memory, slower changes to many distinct workloads) or off; GOMEMLIMIT in the environment wins")
	f.BoolVar(&o.adaptiveMemory, "adaptive-memory-limit", false, "same as --memory-limit adaptive")
	_ = f.MarkDeprecated("adaptive-memory-limit", "use --memory-limit adaptive")
	f.DurationVar(&o.watchInterval, "watch-interval", controlplane.DefaultWatchInterval, "how often the mesh file is checked for changes")
	f.DurationVar(&o.settle, "settle", controlplane.DefaultSettle, "a changed mesh file is read once it has stayed the same this long (0: at the first read that sees it)")
	f.Int64Var(&o.maxMeshSize, "max-mesh-size", controlplane.DefaultMaxMeshSize, "largest mesh file read, in bytes; a larger one is refused unread")
	f.StringVar(&o.dnsSuffix, "dns-suffix", controlplane.DefaultDNSSuffix, "--source kubernetes: pods that capture DNS resolve service <name>.<namespace>.<suffix> to its cluster IPs")
	f.StringSliceVar(&o.dnsUpstreams, "dns-upstream", nil, "--source kubernetes: where other DNS queries go, address or address:port (repeatable; default: the sidecar's resolv.conf)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --source kubernetes (default: in-cluster, then $KUBECONFIG)")
	f.StringVar(&o.namespace, "namespace", "", "only this namespace with --source kubernetes (default: all)")
	f.StringVar(&o.preset, "preset", "", "--source kubernetes: pods' base redirect config starts from this preset (istio, kuma); use the CNI plugin's")
	f.StringVar(&o.baseConfig, "base-config", "", "--source kubernetes: a redirect config document applied to every pod before its annotations; use the CNI plugin's")
	f.StringVar(&o.outboundPolicy, "outbound-policy", string(controlplane.AllowAny), "--source kubernetes: allow-any or registry-only")
	f.StringVar(&o.meshConfig, "mesh-config", "", "--source kubernetes: the mesh-wide config document (ConfigMap detour-config); its preset and redirect are every pod's base (instead of --preset/--base-config) and it configures --inject")
	o.inject.bind(f)
	addControlPlaneLogFlags(cmd, &o.logLevel, &o.logFormat)
	cmd.AddCommand(newControlPlaneResourcesCmd(s))
	cmd.AddCommand(newControlPlaneRouteCmd(s))
	cmd.AddCommand(newControlPlaneTransparentProxyCmd(s))
	return cmd
}

// Flags that only one source reads. runControlPlane refuses the kubernetes
// source's settings with a mesh file by value as well.
var (
	fileSourceFlags       = []string{"watch-interval", "settle", "max-mesh-size"}
	kubernetesSourceFlags = []string{"kubeconfig"}
)

// rejectOtherSourceFlags refuses a flag given for the source not chosen: it
// would configure nothing, silently (--settle 10s with --source kubernetes,
// --kubeconfig with a mesh file).
func rejectOtherSourceFlags(fs *pflag.FlagSet, source string) error {
	other, want := kubernetesSourceFlags, "--source kubernetes"
	if source == sourceKubernetes {
		other, want = fileSourceFlags, "--source file (the mesh file); --source kubernetes reads the API"
	}
	var given []string
	for _, name := range other {
		if fs.Changed(name) {
			given = append(given, "--"+name)
		}
	}
	if len(given) == 0 {
		return nil
	}
	return usageError("%s: for %s", strings.Join(given, ", "), want)
}

func addControlPlaneLogFlags(cmd *cobra.Command, level, format *string) {
	cmd.Flags().StringVar(level, "log-level", "info", "debug, info, warn or error (-v means debug)")
	cmd.Flags().StringVar(format, "log-format", "text", "text or json")
}

// controlPlaneLogger builds the handler the command logs through (to stderr).
func controlPlaneLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError("--log-level %q is not one of debug, info, warn, error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageError("--log-format %q is not one of text, json", format)
}

// Floors of control-plane's durations.
const (
	minNACKBackoff   = 100 * time.Millisecond
	minWatchInterval = 10 * time.Millisecond
)

// runControlPlane serves until ctx ends.
func runControlPlane(ctx context.Context, o *controlPlaneOptions, s streams) (err error) {
	log, err := controlPlaneLogger(s.err, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	if o.nackBackoff <= 0 {
		return usageError("--nack-backoff %s must be positive", o.nackBackoff)
	}
	// A NACKed config resent at once to every proxy that refused it, a mesh
	// file stat'ed in a busy loop: below these floors a value is a typo
	// (1ns for 1s), not a setting.
	if o.nackBackoff < minNACKBackoff {
		return usageError("--nack-backoff %s is below %s (the default is %s)", o.nackBackoff, minNACKBackoff, xds.DefaultNACKBackoff)
	}
	if o.watchInterval <= 0 {
		return usageError("--watch-interval %s must be positive", o.watchInterval)
	}
	if o.watchInterval < minWatchInterval {
		return usageError("--watch-interval %s is below %s (the default is %s)", o.watchInterval, minWatchInterval, controlplane.DefaultWatchInterval)
	}
	if o.settle < 0 {
		return usageError("--settle %s must not be negative", o.settle)
	}
	if o.maxMeshSize < 0 {
		return usageError("--max-mesh-size %d must be positive", o.maxMeshSize)
	}
	if err := checkListenAddress("xds-address", o.xdsAddress); err != nil {
		return err
	}
	if o.httpAddress != "off" {
		if err := checkListenAddress("http-address", o.httpAddress); err != nil {
			return err
		}
	}
	listens := []listenFlag{{"xds-address", o.xdsAddress}}
	if o.httpAddress != "off" {
		listens = append(listens, listenFlag{"http-address", o.httpAddress})
	}
	if o.inject.enabled {
		if err := checkListenAddress("inject-address", o.inject.address); err != nil {
			return err
		}
		listens = append(listens, listenFlag{"inject-address", o.inject.address})
	}
	if err := checkListenOverlap(listens); err != nil {
		return err
	}
	memoryLimit := controlplane.MemoryLimit(o.memoryLimit)
	if err := memoryLimit.Validate(); err != nil {
		return usageError("--memory-limit %q is not one of auto, adaptive, off", o.memoryLimit)
	}
	if o.adaptiveMemory && memoryLimit != "" && memoryLimit != controlplane.MemoryLimitAuto && memoryLimit != controlplane.MemoryLimitAdaptive {
		// auto is also the default, so it cannot be told from a flag left out.
		return usageError("--adaptive-memory-limit means --memory-limit adaptive; it contradicts --memory-limit %s", o.memoryLimit)
	}
	if o.adaptiveMemory {
		memoryLimit = controlplane.MemoryLimitAdaptive
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return usageError("--tls-cert and --tls-key go together")
	}
	if o.clientCA != "" && o.tlsCert == "" {
		return usageError("--client-ca needs --tls-cert and --tls-key (mTLS runs over TLS)")
	}
	var src controlplane.Source
	switch o.source {
	case sourceFile:
		if o.config == "" {
			return usageError("--config is required with --source file")
		}
		if o.namespace != "" || o.preset != "" || o.baseConfig != "" || o.meshConfig != "" || (o.outboundPolicy != "" && o.outboundPolicy != string(controlplane.AllowAny)) ||
			(o.dnsSuffix != "" && o.dnsSuffix != controlplane.DefaultDNSSuffix) || len(o.dnsUpstreams) > 0 {
			return usageError("--namespace, --preset, --base-config, --mesh-config, --outbound-policy, --dns-suffix and --dns-upstream are for --source kubernetes; the mesh file says these")
		}
		if o.inject.enabled {
			return usageError("--inject needs --source kubernetes")
		}
		settle := o.settle
		if settle == 0 {
			settle = -1 // FileSource: at the first read
		}
		src = &controlplane.FileSource{Path: o.config, Interval: o.watchInterval, Settle: settle, MaxSize: o.maxMeshSize, Logger: log}
	case sourceKubernetes:
		if o.config != "" {
			return usageError("--config is for --source file; --source kubernetes reads the API")
		}
		if o.inject.enabled && o.namespace != "" {
			// The webhook's configuration selects opted-in namespaces
			// cluster-wide: pods outside o.namespace would get a sidecar this
			// control plane never configures.
			return usageError("--namespace %q with --inject: the webhook injects the pods of every opted-in namespace, but this control plane serves only %s's (their sidecars would never get a config); leave --namespace out", o.namespace, o.namespace)
		}
		var mesh meshconfig.Config
		src, mesh, err = newKubernetesSource(o, log)
		if err != nil {
			return err
		}
		if o.inject.enabled {
			// No := here: the deferred stop below must set the function's
			// own err (a shadowed one dropped the webhook's failure, and the
			// control plane stopped with exit 0 and nothing said).
			var inj *webhook.Server
			inj, err = newInjectionServer(ctx, o, mesh, log)
			if err != nil {
				return err
			}
			var stop func() error
			ctx, stop = runAlongside(ctx, inj.Run)
			defer func() {
				if werr := stop(); werr != nil && (err == nil || errors.Is(err, context.Canceled)) {
					err = werr
				}
			}()
		}
	default:
		return usageError("--source %q is not one of file, kubernetes", o.source)
	}
	err = controlplane.Run(ctx, controlplane.RunOptions{
		Source:      src,
		XDSAddress:  o.xdsAddress,
		HTTPAddress: o.httpAddress,
		TLSCert:     o.tlsCert,
		TLSKey:      o.tlsKey,
		ClientCA:    o.clientCA,
		NACKBackoff: o.nackBackoff,
		Logger:      log,
		Listening:   o.listening,

		MemoryLimit: memoryLimit,
	})
	if err != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// controlPlaneResourcesOptions are the flags of `detour-cp control-plane resources`.
type controlPlaneResourcesOptions struct {
	config string
	nodeID string
}

func newControlPlaneResourcesCmd(s streams) *cobra.Command {
	o := &controlPlaneResourcesOptions{}
	cmd := &cobra.Command{
		Use:   "resources",
		Short: "Print the listeners and clusters a node would be served, as YAML",
		Long: `resources prints, without serving anything, the exact Envoy listeners and
clusters the control plane serves the workload with --node-id from --config.
Compare them with ` + "`detour plan`" + ` for that workload's transparentProxy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printResources(o, s)
		},
	}
	cmd.Flags().StringVar(&o.config, "config", "", "mesh file (YAML)")
	cmd.Flags().StringVar(&o.nodeID, "node-id", "", "node id of the workload")
	return cmd
}

func printResources(o *controlPlaneResourcesOptions, s streams) error {
	if o.config == "" || o.nodeID == "" {
		return usageError("--config and --node-id are required")
	}
	m, _, err := meshWorkload(o.config, o.nodeID)
	if err != nil {
		return err
	}
	r, err := m.Resources(o.nodeID)
	if err != nil {
		return err
	}
	out, err := r.YAML()
	if err != nil {
		return err
	}
	_, err = s.out.Write(out)
	return err
}

// meshWorkload loads the mesh file at path and finds the workload with
// nodeID; a node id no workload has is a usage error naming those it has.
func meshWorkload(path, nodeID string) (*controlplane.Mesh, controlplane.Workload, error) {
	m, err := controlplane.LoadMesh(path)
	if err != nil {
		return nil, controlplane.Workload{}, err
	}
	w, ok := m.Workload(nodeID)
	if !ok {
		return nil, controlplane.Workload{}, usageError("--node-id %q: no workload of %s has this node id (%s)", nodeID, path, nodeIDs(m))
	}
	return m, w, nil
}

func nodeIDs(m *controlplane.Mesh) string {
	ids := make([]string, 0, len(m.Workloads))
	for _, w := range m.Workloads {
		ids = append(ids, w.NodeID)
	}
	if len(ids) == 0 {
		return "it has no workloads"
	}
	return "known: " + strings.Join(ids, ", ")
}

// listenFlag is a listen address and the flag that gave it.
type listenFlag struct{ flag, addr string }

// checkListenOverlap refuses two listen addresses (checked by
// checkListenAddress) on the same port whose hosts overlap — the same host,
// or either the wildcard: the second listener would fail with "address in
// use" (exit 1) after the first started serving.
func checkListenOverlap(ls []listenFlag) error {
	for i, a := range ls {
		ha, pa, _ := net.SplitHostPort(a.addr)
		for _, b := range ls[i+1:] {
			hb, pb, _ := net.SplitHostPort(b.addr)
			if pa != pb || pa == "0" {
				continue
			}
			if ha == hb || wildcardHost(ha) || wildcardHost(hb) {
				return usageError("--%s %q and --%s %q: both listen on port %s", a.flag, a.addr, b.flag, b.addr, pa)
			}
		}
	}
	return nil
}

// wildcardHost reports whether a listen address's host is every address.
func wildcardHost(h string) bool {
	ip := net.ParseIP(h)
	return h == "" || (ip != nil && ip.IsUnspecified())
}

// checkListenAddress refuses, before anything is served, a listen address
// that is not host:port with a numeric port (exit 2): listening on it failed
// (exit 1), and an empty port (":", a script's ":$PORT" with PORT unset)
// listened on a random one. An empty host is every address, as in Go; port
// 0 is a random port asked for on purpose (tests).
func checkListenAddress(flag, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return usageError("--%s %q is not host:port", flag, addr)
	}
	if port == "" {
		return usageError("--%s %q has no port", flag, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usageError("--%s %q: %q is not a port (0-65535)", flag, addr, port)
	}
	return nil
}
