package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/cni/install"
	"github.com/detour-mesh/detour/redirect"
)

// cniOptions are the flags of `detour cni install` and `detour cni uninstall`.
type cniOptions struct {
	pluginBinary      string
	ebpfPluginBinary  string
	binDir            string
	confDir           string
	kubeconfigFile    string
	pluginKubeconfig  string
	logFile           string
	logLevel          string
	passthroughOnLo   string
	excludeNamespaces []string
	preset            string
	configFile        string
	meshConfig        string
	apiServer         string
	tokenFile         string
	caFile            string
	pluginSA          string
	nodeName          string
	pluginTokenFile   string
	pluginTokenLife   time.Duration
	pollInterval      time.Duration
	cleanupOnExit     bool
	daemonSet         string
	once              bool
}

func newCNICmd(s streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cni",
		Short: "Put the detour-cni plugin in place on a Kubernetes node, or take it away",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newCNIInstallCmd(s, &cniOptions{}), newCNIUninstallCmd(s, &cniOptions{}), newCNIReadyCmd(s, &cniOptions{}))
	return cmd
}

func newCNIInstallCmd(s streams, o *cniOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install detour-cni as the last plugin of the primary CNI config and keep it there",
		Long: `Copies the detour-cni binary into the CNI bin dir, writes the plugin's kubeconfig
from the service account token and CA, and appends detour-cni as the last plugin
of the primary network configuration (the lexically first .conf, .conflist or
.json file in the conf dir; a single-plugin file becomes a .conflist). Every
file is written atomically. --preset and --config set the redirection every pod
starts from; its detour.io/* annotations apply on top.

Then it keeps running (the DaemonSet's entrypoint): when the primary CNI rewrites
its file, the binary disappears or the token rotates, it repairs within a file
notification or --poll-interval. On SIGTERM it exits leaving everything in place
(the next pod takes over without a gap), unless --cleanup-on-exit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkCNIPathFlags(cmd); err != nil {
				return err
			}
			// Every pod's base config: an empty value (a DaemonSet's unset
			// variable) must not silently mean detour's defaults (proxy uid
			// 5678 where the mesh's proxy runs as 1337).
			for _, name := range []string{"preset", "config", "mesh-config"} {
				if fl := cmd.Flags().Lookup(name); fl.Changed && fl.Value.String() == "" {
					return usageError("--%s: an empty value is refused (leave the flag out for detour's defaults)", name)
				}
			}
			// The same for the rest: an empty --exclude-namespaces would drop
			// kube-system from the exclusions, an empty --daemonset make
			// --cleanup-on-exit uninstall on every rolling update, an empty
			// --node-name or --plugin-service-account hand the plugin a token
			// valid on any node or the installer's own. --log-file and
			// --log-level document their empty value; --api-server names its
			// own fix.
			if err := rejectEmptyFlags(cmd.Flags(), "log-file", "log-level", "api-server"); err != nil {
				return err
			}
			return runCNIInstall(cmd.Context(), o, s)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.pluginBinary, "plugin-binary", defaultPluginBinary(), "the detour-cni binary to install")
	f.StringVar(&o.ebpfPluginBinary, "ebpf-plugin-binary", "", "the detour-cni-ebpf binary (the plugin with the eBPF backend, which detour-cni hands those calls to) to install next to it (default: "+install.EBPFPluginType+" next to --plugin-binary, when there)")
	addCNIDirFlags(cmd, o)
	f.StringVar(&o.pluginKubeconfig, "plugin-kubeconfig", "", "the kubeconfig path written into the plugin entry, as the node sees it (default: --kubeconfig-file)")
	f.StringVar(&o.logFile, "log-file", "/var/log/detour-cni.log", "the plugin's log file on the node (empty: stderr)")
	f.StringVar(&o.logLevel, "log-level", "", "the plugin's log level: debug, info, warn, error (empty: info)")
	f.StringVar(&o.passthroughOnLo, "passthrough-on-lo", "", "how the plugin makes the IPv6 passthrough source ::6 local in a pod: route (no address on lo, the proxy binds ::6 with freebind, as detour's control plane asks) or address (for istiod's or Kuma's Envoy; needs containerd's setup_serially); default: address with --preset istio or kuma, else route; docs/cni.md")
	f.StringSliceVar(&o.excludeNamespaces, "exclude-namespaces", []string{"kube-system"}, "namespaces whose pods the plugin never redirects (an empty value is refused: there is no value for none, see docs/kubernetes.md)")
	f.StringVar(&o.preset, "preset", "", "the preset every pod's config starts from: "+strings.Join(redirect.Presets, ", ")+" (default: none, detour's defaults)")
	f.StringVar(&o.configFile, "config", "", "a YAML or JSON config document applied on top of --preset for every pod, before its annotations")
	f.StringVar(&o.meshConfig, "mesh-config", "", "the mesh-wide config document (ConfigMap detour-config, docs/injection.md): its base redirect config, instead of --preset/--config")
	f.StringVar(&o.apiServer, "api-server", defaultAPIServer(), "the API server URL the plugin uses (default from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)")
	f.StringVar(&o.tokenFile, "token-file", install.DefaultTokenFile, "the service account token")
	f.StringVar(&o.caFile, "ca-file", install.DefaultCAFile, "the service account CA certificate")
	f.StringVar(&o.pluginSA, "plugin-service-account", "", "give the plugin its own service account (namespace/name): request its token, bound to --node-name, and renew it; empty: the plugin uses this pod's token")
	f.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "the node the plugin's token is bound to (default $NODE_NAME; unset: an unbound token; an empty value is refused)")
	f.StringVar(&o.pluginTokenFile, "plugin-token-file", "", "where the plugin's token is written (default: next to --kubeconfig-file, "+install.DefaultTokenName+")")
	f.DurationVar(&o.pluginTokenLife, "plugin-token-lifetime", install.DefaultPluginTokenLifetime, "the lifetime asked for the plugin's token; it is renewed at half of it")
	f.DurationVar(&o.pollInterval, "poll-interval", install.DefaultPollInterval, "the longest a change goes unrepaired when no file notification arrives")
	f.BoolVar(&o.cleanupOnExit, "cleanup-on-exit", false, "uninstall when the process gets SIGTERM or SIGINT (with --daemonset: only when that DaemonSet is deleted)")
	f.StringVar(&o.daemonSet, "daemonset", "", "with --cleanup-on-exit: this pod's DaemonSet (namespace/name); on SIGTERM uninstall only when it is gone, and leave everything to the next pod on a rolling update")
	f.BoolVar(&o.once, "once", false, "install once and exit instead of watching")
	return cmd
}

func newCNIUninstallCmd(s streams, o *cniOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove detour-cni's conflist entries, its kubeconfig and its binary",
		Long: `Removes every detour-cni entry from the network configurations in the conf dir
(the rest of each file is kept), then the plugin's kubeconfig and binary.
Safe to repeat: a second run changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkCNIPathFlags(cmd); err != nil {
				return err
			}
			return runCNIUninstall(cmd.Context(), o, s)
		},
	}
	addCNIDirFlags(cmd, o)
	return cmd
}

func newCNIReadyCmd(s streams, o *cniOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ready",
		Short: "Exit 0 when pods created now go through detour-cni (the DaemonSet's readiness probe)",
		Long: `Checks, reading only, that the detour-cni binary is in the bin dir, its
kubeconfig is in place and the primary network configuration ends with the
detour-cni entry. Exit 0 and "ready", or exit 1 saying what is missing. Give it
the same --bin-dir, --conf-dir and --kubeconfig-file as ` + "`detour cni install`" + `.
When detour-cni-ebpf is next to detour-cni here, it must be in the bin dir too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkCNIPathFlags(cmd); err != nil {
				return err
			}
			// detour-cni-ebpf is needed when the image has it next to detour-cni.
			o.pluginBinary = defaultPluginBinary()
			if err := install.New(o.installerOptions(nil)).Ready(); err != nil {
				return err
			}
			_, err := fmt.Fprintln(s.out, "ready")
			return err
		},
	}
	addCNIDirFlags(cmd, o)
	return cmd
}

func addCNIDirFlags(cmd *cobra.Command, o *cniOptions) {
	f := cmd.Flags()
	f.StringVar(&o.binDir, "bin-dir", install.DefaultBinDir, "the CNI bin directory")
	f.StringVar(&o.confDir, "conf-dir", install.DefaultConfDir, "the CNI conf directory")
	f.StringVar(&o.kubeconfigFile, "kubeconfig-file", "", "where the plugin's kubeconfig is written (default: <conf-dir>/"+install.DefaultKubeconfigName+")")
}

// checkCNIPathFlags refuses, before anything is read or written, a node path
// flag given an empty value — what --bin-dir "$BIN_DIR" gives when BIN_DIR is
// unset, which must not silently mean /opt/cni/bin — and a relative one, which
// would depend on the working directory and put a relative path into the
// plugin entry.
func checkCNIPathFlags(cmd *cobra.Command) error {
	for _, name := range []string{"bin-dir", "conf-dir", "kubeconfig-file", "plugin-binary", "ebpf-plugin-binary", "plugin-kubeconfig", "token-file", "ca-file", "plugin-token-file"} {
		fl := cmd.Flags().Lookup(name)
		if fl == nil || !fl.Changed {
			continue
		}
		v := fl.Value.String()
		switch {
		case v == "":
			return usageError("--%s: an empty value names no path (leave the flag out for its default)", name)
		case !filepath.IsAbs(v):
			return usageError("--%s: %q is not an absolute path", name, v)
		}
	}
	return nil
}

// defaultPluginBinary is detour-cni next to the running detour binary, where the
// image puts it.
func defaultPluginBinary() string {
	exe, err := os.Executable()
	if err != nil {
		return "detour-cni"
	}
	return filepath.Join(filepath.Dir(exe), install.PluginType)
}

func defaultAPIServer() string {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return ""
	}
	return install.ServerURL(host, port)
}

func (o *cniOptions) installerOptions(logger *slog.Logger) install.Options {
	return install.Options{
		PluginBinary:         o.pluginBinary,
		EBPFPluginBinary:     o.ebpfPluginBinary,
		BinDir:               o.binDir,
		ConfDir:              o.confDir,
		KubeconfigFile:       o.kubeconfigFile,
		PluginKubeconfig:     o.pluginKubeconfig,
		LogFile:              o.logFile,
		LogLevel:             o.logLevel,
		PassthroughOnLo:      o.passthroughOnLo,
		Preset:               o.preset,
		ConfigFile:           o.configFile,
		MeshConfigFile:       o.meshConfig,
		ExcludeNamespaces:    o.excludeNamespaces,
		Server:               o.apiServer,
		TokenFile:            o.tokenFile,
		CAFile:               o.caFile,
		PluginServiceAccount: o.pluginSA,
		NodeName:             o.nodeName,
		PluginTokenFile:      o.pluginTokenFile,
		PluginTokenLifetime:  o.pluginTokenLife,
		PollInterval:         o.pollInterval,
		CleanupOnExit:        o.cleanupOnExit,
		DaemonSet:            o.daemonSet,
		Logger:               logger,
	}
}

// minPollInterval is the floor of --poll-interval.
const minPollInterval = 100 * time.Millisecond

// runCNIInstall installs once (--once) or runs the installer loop until ctx ends.
func runCNIInstall(ctx context.Context, o *cniOptions, s streams) error {
	if o.pollInterval <= 0 {
		return usageError("--poll-interval: %q is not a positive duration", o.pollInterval)
	}
	// Below it, every node's installer re-reads its files in a busy loop:
	// a typo (1ns for 1s), not a setting.
	if o.pollInterval < minPollInterval {
		return usageError("--poll-interval: %q is below %s (the default is %s)", o.pollInterval, minPollInterval, install.DefaultPollInterval)
	}
	logger := slog.New(slog.NewTextHandler(s.err, nil))
	// The Installer validates: it reads a --config that is a pipe once.
	in := install.New(o.installerOptions(logger))
	if err := in.Validate(); err != nil {
		return withCode(exitUsage, err)
	}
	if o.once {
		changes, err := in.Install(ctx)
		if err == nil {
			// Install leaves a conf dir without a network configuration to the
			// watch loop; --once does not wait, and pods created now would
			// start unmeshed: not a success.
			if _, perr := install.Primary(o.confDir); errors.Is(perr, install.ErrNoPrimary) {
				err = fmt.Errorf("the plugin entry is not installed: %w yet (the primary CNI writes it); run again once it is there, or without --once to wait for it", perr)
			}
		}
		printChanges(s.out, changes, err)
		return cniError(err)
	}
	return cniError(in.Run(ctx))
}

func runCNIUninstall(ctx context.Context, o *cniOptions, s streams) error {
	in := install.New(o.installerOptions(slog.New(slog.NewTextHandler(s.err, nil))))
	changes, err := in.Uninstall(ctx)
	printChanges(s.out, changes, err)
	return cniError(err)
}

func cniError(err error) error {
	if errors.Is(err, install.ErrInvalidOptions) {
		return withCode(exitUsage, err)
	}
	return err
}

// printChanges prints the changes made; "nothing to change" only when the
// run succeeded without any (a failed run says so on stderr).
func printChanges(w io.Writer, changes []string, err error) {
	if len(changes) == 0 && err == nil {
		fmt.Fprintln(w, "nothing to change")
		return
	}
	for _, c := range changes {
		fmt.Fprintln(w, c)
	}
}
