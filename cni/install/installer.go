package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/cni"
	"github.com/detour-mesh/detour/internal/atomicfile"
	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/internal/regularfile"
	"github.com/detour-mesh/detour/redirect"
)

// Defaults of Options' zero fields.
const (
	DefaultBinDir         = "/opt/cni/bin"
	DefaultConfDir        = "/etc/cni/net.d"
	DefaultKubeconfigName = "detour-kubeconfig"
	DefaultTokenName      = "detour-cni-token"
	// DefaultPluginTokenLifetime is what the installer asks for when it
	// requests the plugin's token; it renews the token at half its life.
	DefaultPluginTokenLifetime = 24 * time.Hour
	DefaultTokenFile           = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultCAFile              = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultPollInterval        = 10 * time.Second
)

// ErrInvalidOptions matches every error of Options.Validate (errors.Is).
var ErrInvalidOptions = errors.New("invalid installer options")

// OptionError names the option (by its `detour cni install` flag), the value
// given and what is wrong with it.
type OptionError struct {
	Option, Value, Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("--%s: %q %s", e.Option, e.Value, e.Reason)
}

// Is makes every OptionError match ErrInvalidOptions.
func (e *OptionError) Is(target error) bool { return target == ErrInvalidOptions }

// Options configure an Installer. The zero value of a field means its default.
// Paths are as the installer sees them; in a DaemonSet, mount the node's
// directories at the same paths so that the paths written into the conflist hold
// on the node too (or set PluginKubeconfig).
type Options struct {
	// PluginBinary is the detour-cni binary to copy. Required.
	PluginBinary string
	// EBPFPluginBinary is detour-cni-ebpf, the plugin with the eBPF backend,
	// to which the lean detour-cni (make build's, the image's) hands the calls
	// that need that backend: it is copied into BinDir as EBPFPluginType,
	// before detour-cni. Empty: the file of that name next to PluginBinary
	// when there is one, else none (a detour-cni built without -tags
	// detour_lean has every backend and needs none).
	EBPFPluginBinary string
	// BinDir is the CNI bin directory (DefaultBinDir).
	BinDir string
	// ConfDir is the CNI conf directory (DefaultConfDir).
	ConfDir string
	// KubeconfigFile is where the plugin's kubeconfig is written
	// (ConfDir/DefaultKubeconfigName; a name without a network configuration
	// extension, so runtimes do not read it as one).
	KubeconfigFile string
	// PluginKubeconfig is the kubeconfig path written into the plugin entry, as
	// the node sees it (KubeconfigFile).
	PluginKubeconfig string
	// LogFile is the plugin's log file on the node, written into the entry
	// (empty: the plugin logs to stderr, which the runtime keeps on failure).
	LogFile string
	// LogLevel is the plugin's log level, written into the entry (empty: info).
	LogLevel string
	// ExcludeNamespaces are written into the entry: the plugin never redirects
	// their pods.
	ExcludeNamespaces []string
	// PassthroughOnLo is written into the entry (passthroughOnLo): "route" or
	// "address", for a proxy that binds the IPv6 passthrough source ::6
	// without IPV6_FREEBIND (docs/cni.md). Empty: "address" with Preset istio
	// or kuma (istiod and Kuma's control plane set no freebind), else nothing
	// (the plugin's route).
	PassthroughOnLo string
	// Preset and ConfigFile give the redirect.Config every pod starts from (a
	// preset name, then a YAML or JSON document file on top), before the pod's
	// annotations. The document is embedded into the entry as JSON; it is read
	// again on every Install, so a changed file reaches the entry.
	Preset, ConfigFile string
	// MeshConfigFile, instead of Preset and ConfigFile, is the mesh-wide
	// config document (internal/meshconfig: the ConfigMap detour-config that
	// the control plane and the injector read too); its base redirect config
	// is embedded as the entry's config and, like ConfigFile, read again on
	// every Install.
	MeshConfigFile string
	// Server is the API server URL the plugin talks to (https://host:port). Required.
	Server string
	// TokenFile and CAFile are the service account's token and CA
	// (DefaultTokenFile, DefaultCAFile).
	TokenFile, CAFile string
	// PluginServiceAccount ("namespace/name"), when set, gives the plugin its
	// own identity: the installer requests a token for that service account
	// (TokenRequest, with its own token) bound to the node NodeName (or unbound
	// when NodeName is empty) and writes it to PluginTokenFile, which the
	// plugin's kubeconfig names. The token outlives the installer pod, so
	// replacing that pod leaves the plugin a valid token; the new pod renews it
	// atomically. Empty: the kubeconfig carries the installer's own token.
	PluginServiceAccount string
	// NodeName is the node the plugin token is bound to (the pod's
	// spec.nodeName).
	NodeName string
	// PluginTokenFile is where the plugin's token is written
	// (dir of KubeconfigFile/DefaultTokenName).
	PluginTokenFile string
	// PluginTokenLifetime is the lifetime asked for (DefaultPluginTokenLifetime).
	PluginTokenLifetime time.Duration
	// PollInterval bounds how long a change goes unnoticed when no file
	// notification arrives (DefaultPollInterval).
	PollInterval time.Duration
	// CleanupOnExit makes Run uninstall when its context ends (on SIGTERM).
	CleanupOnExit bool
	// DaemonSet ("namespace/name"), with CleanupOnExit, limits the cleanup to
	// the DaemonSet's removal: when its context ends, Run reads the DaemonSet
	// (with the installer's token) and uninstalls only when it is gone or being
	// deleted. A pod that is only replaced (rolling update, eviction) leaves the
	// installation to the next pod, so pods keep being meshed in between. When
	// the API cannot tell, the installation stays (pods fail closed rather than
	// start unmeshed once its token expires).
	DaemonSet string
	// Logger receives one line per change and per failed repair (nil: discard).
	Logger *slog.Logger

	// pollOnly turns file notifications off, for tests of the poll bound.
	pollOnly bool
	// docs holds what was read of a config file that is not a regular file
	// (New sets it): see readDoc.
	docs *docCache
}

// docCache keeps the contents of config files that can be read only once.
type docCache struct {
	mu    sync.Mutex
	bytes map[string][]byte
}

// readDoc reads a config document. A regular file is read again on every
// call, so an edit (a ConfigMap update) reaches the next Install. Anything
// else — a pipe such as --config <(…) or /dev/stdin, a FIFO — yields its
// contents once: reading it again would find it drained (or, for a named FIFO,
// wait for a writer that never comes), so the first read is kept for the
// Installer's life. Options not made by New read it afresh.
func (o Options) readDoc(path string) ([]byte, error) {
	if o.docs == nil {
		return redirect.ReadDocumentFile(path)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().IsRegular() {
		return redirect.ReadDocumentFile(path)
	}
	o.docs.mu.Lock()
	defer o.docs.mu.Unlock()
	if b, ok := o.docs.bytes[path]; ok {
		return b, nil
	}
	b, err := redirect.ReadDocumentFile(path)
	if err != nil {
		return nil, err
	}
	if o.docs.bytes == nil {
		o.docs.bytes = map[string][]byte{}
	}
	o.docs.bytes[path] = b
	return b, nil
}

func (o Options) withDefaults() Options {
	if o.EBPFPluginBinary == "" && o.PluginBinary != "" {
		beside := filepath.Join(filepath.Dir(o.PluginBinary), EBPFPluginType)
		if fi, err := os.Stat(beside); err == nil && fi.Mode().IsRegular() {
			o.EBPFPluginBinary = beside
		}
	}
	if o.BinDir == "" {
		o.BinDir = DefaultBinDir
	}
	if o.ConfDir == "" {
		o.ConfDir = DefaultConfDir
	}
	if o.KubeconfigFile == "" {
		o.KubeconfigFile = filepath.Join(o.ConfDir, DefaultKubeconfigName)
	}
	if o.PluginKubeconfig == "" {
		o.PluginKubeconfig = o.KubeconfigFile
	}
	if o.TokenFile == "" {
		o.TokenFile = DefaultTokenFile
	}
	if o.PluginTokenFile == "" {
		o.PluginTokenFile = filepath.Join(filepath.Dir(o.KubeconfigFile), DefaultTokenName)
	}
	if o.PluginTokenLifetime == 0 {
		o.PluginTokenLifetime = DefaultPluginTokenLifetime
	}
	if o.CAFile == "" {
		o.CAFile = DefaultCAFile
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Validate checks the options that Install needs before anything is written.
// Errors are *OptionError values.
func (o Options) Validate() error {
	o = o.withDefaults()
	if o.PluginBinary == "" {
		return &OptionError{"plugin-binary", "", "is required"}
	}
	if fi, err := os.Stat(o.PluginBinary); err != nil {
		return &OptionError{"plugin-binary", o.PluginBinary, "cannot be read: " + pathErr(err)}
	} else if !fi.Mode().IsRegular() {
		return &OptionError{"plugin-binary", o.PluginBinary, "is not a regular file"}
	}
	if o.EBPFPluginBinary != "" {
		if fi, err := os.Stat(o.EBPFPluginBinary); err != nil {
			return &OptionError{"ebpf-plugin-binary", o.EBPFPluginBinary, "cannot be read: " + pathErr(err)}
		} else if !fi.Mode().IsRegular() {
			return &OptionError{"ebpf-plugin-binary", o.EBPFPluginBinary, "is not a regular file"}
		}
	}
	for _, d := range []struct{ flag, path string }{{"bin-dir", o.BinDir}, {"conf-dir", o.ConfDir}} {
		if fi, err := os.Stat(d.path); err != nil {
			return &OptionError{d.flag, d.path, "cannot be read: " + pathErr(err)}
		} else if !fi.IsDir() {
			return &OptionError{d.flag, d.path, "is not a directory"}
		}
	}
	if slices.Contains(confExtensions, filepath.Ext(o.KubeconfigFile)) {
		return &OptionError{"kubeconfig-file", o.KubeconfigFile, "has a network configuration extension; a runtime would read it as a CNI config"}
	}
	if !filepath.IsAbs(o.PluginKubeconfig) {
		return &OptionError{"plugin-kubeconfig", o.PluginKubeconfig, "is not an absolute path"}
	}
	if o.LogFile != "" && !filepath.IsAbs(o.LogFile) {
		return &OptionError{"log-file", o.LogFile, "is not an absolute path"}
	}
	switch o.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return &OptionError{"log-level", o.LogLevel, "is not debug, info, warn or error"}
	}
	switch o.PassthroughOnLo {
	case "", cni.PassthroughRoute, cni.PassthroughAddress:
	default:
		return &OptionError{"passthrough-on-lo", o.PassthroughOnLo, "is not route or address"}
	}
	if _, err := o.baseConfig(); err != nil {
		return err
	}
	// A lean detour-cni hands every call that needs the eBPF backend to
	// detour-cni-ebpf: without a whole build there, such calls fail (code 50).
	if o.EBPFPluginBinary != "" && leanBuild(o.EBPFPluginBinary) {
		return &OptionError{"ebpf-plugin-binary", o.EBPFPluginBinary, "is built without the eBPF backend (-tags detour_lean): detour-cni would hand it the calls it cannot serve; give the build of cmd/detour-cni without that tag"}
	}
	if o.EBPFPluginBinary == "" && o.baseBackend() == redirect.BackendEBPF && leanBuild(o.PluginBinary) {
		return &OptionError{"plugin-binary", o.PluginBinary, "is built without the eBPF backend (-tags detour_lean) and the base config says backend ebpf: put " + EBPFPluginType + " next to it or give --ebpf-plugin-binary"}
	}
	for _, ns := range o.ExcludeNamespaces {
		if !isDNSLabel(ns) {
			return &OptionError{"exclude-namespaces", ns, "is not a namespace name"}
		}
	}
	if err := checkServer(o.Server); err != nil {
		return &OptionError{"api-server", o.Server, "is not https://host:port (in a pod, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT give it)"}
	}
	if o.PollInterval < 0 {
		return &OptionError{"poll-interval", o.PollInterval.String(), "is negative"}
	}
	if o.DaemonSet != "" {
		ns, name, ok := strings.Cut(o.DaemonSet, "/")
		if !ok || !isDNSLabel(ns) || name == "" || strings.Contains(name, "/") {
			return &OptionError{"daemonset", o.DaemonSet, "is not namespace/name"}
		}
	}
	if o.PluginServiceAccount != "" {
		ns, name, ok := strings.Cut(o.PluginServiceAccount, "/")
		if !ok || !isDNSLabel(ns) || name == "" || strings.Contains(name, "/") {
			return &OptionError{"plugin-service-account", o.PluginServiceAccount, "is not namespace/name"}
		}
		if o.NodeName != "" && strings.ContainsAny(o.NodeName, "/ ") {
			return &OptionError{"node-name", o.NodeName, "is not a node name"}
		}
		if slices.Contains(confExtensions, filepath.Ext(o.PluginTokenFile)) {
			return &OptionError{"plugin-token-file", o.PluginTokenFile, "has a network configuration extension; a runtime would read it as a CNI config"}
		}
		if o.PluginTokenLifetime < 10*time.Minute {
			return &OptionError{"plugin-token-lifetime", o.PluginTokenLifetime.String(), "is shorter than 10m, the API server's minimum"}
		}
	}
	return nil
}

// baseConfig returns the document of ConfigFile as compact JSON (nil without
// one), after checking that the preset and the document make a valid
// redirect.Config, as the plugin will.
func (o Options) baseConfig() (json.RawMessage, error) {
	if o.MeshConfigFile != "" {
		if o.Preset != "" || o.ConfigFile != "" {
			return nil, &OptionError{"mesh-config", o.MeshConfigFile, "holds the preset and config: do not combine it with --preset or --config"}
		}
		b, err := o.readDoc(o.MeshConfigFile)
		if err != nil {
			return nil, &OptionError{"mesh-config", o.MeshConfigFile, readErr(err)}
		}
		mc, err := meshconfig.LoadDocument(o.MeshConfigFile, b)
		if err != nil {
			return nil, &OptionError{"mesh-config", o.MeshConfigFile, "is not a valid mesh config: " + err.Error()}
		}
		doc, err := mc.RedirectDocument()
		if err != nil {
			return nil, &OptionError{"mesh-config", o.MeshConfigFile, err.Error()}
		}
		return doc, nil
	}
	base := redirect.Default()
	if o.Preset != "" {
		p, err := redirect.Preset(o.Preset)
		if err != nil {
			return nil, &OptionError{"preset", o.Preset, "is not one of " + strings.Join(redirect.Presets, ", ")}
		}
		base = p
	}
	var doc json.RawMessage
	if o.ConfigFile != "" {
		b, err := o.readDoc(o.ConfigFile)
		if err != nil {
			return nil, &OptionError{"config", o.ConfigFile, readErr(err)}
		}
		if redirect.EmptyDocument(b) {
			return nil, &OptionError{"config", o.ConfigFile, "is empty (no setting in it); leave --config out for the defaults, or write {}"}
		}
		if err := base.Decode(b); err != nil {
			return nil, &OptionError{"config", o.ConfigFile, "is not a valid config: " + err.Error()}
		}
		js, err := yaml.YAMLToJSON(b)
		if err != nil {
			return nil, &OptionError{"config", o.ConfigFile, "is not YAML or JSON: " + err.Error()}
		}
		if len(bytes.TrimSpace(js)) > 0 && string(bytes.TrimSpace(js)) != "null" {
			doc = compactJSON(js)
		}
	}
	if err := base.Validate(); err != nil {
		return nil, &OptionError{"config", o.ConfigFile, "with --preset " + strconv.Quote(o.Preset) + " is not a valid config: " + err.Error()}
	}
	return doc, nil
}

// readRegular reads the regular file at path (symlinks followed). Anything
// else fails with regularfile.ErrNotRegular instead of being read: a FIFO in
// the conf dir, or where the token should be, would block the installer (and
// its readiness probe) in open(2) until someone writes to it, and a device
// could be endless.
func readRegular(path string) ([]byte, error) {
	f, err := regularfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// readErr is the reason a config document could not be read.
func readErr(err error) string {
	if errors.Is(err, redirect.ErrDocumentTooLarge) {
		return err.Error()
	}
	return "cannot be read: " + pathErr(err)
}

func pathErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Installer puts detour-cni in place and keeps it there. Use one per node.
// Its methods are not safe for concurrent use.
type Installer struct {
	o Options

	// copied are the binaries Install keeps in BinDir, by their name there.
	copied map[string]*copied

	// noted is what was last logged about each lasting condition (the wait
	// for the primary CNI, a token near its end, a failing repair), so that
	// a condition is logged when it starts or changes, not again at every
	// file notification: with the log written into a watched directory,
	// each line was itself a notification, and the installer logged the
	// same line as fast as it could write.
	noted map[string]string
}

// note reports whether detail is news for the condition kind (and records
// it); clear forgets the condition once it is over.
func (in *Installer) note(kind, detail string) bool {
	if in.noted[kind] == detail {
		return false
	}
	in.noted[kind] = detail
	return true
}

func (in *Installer) clear(kind string) { delete(in.noted, kind) }

// copied is one binary Install keeps in BinDir.
type copied struct {
	src     string // the file srcHash is of
	srcHash []byte
	// dst is the stat of the binary we last wrote or verified, so a
	// reconcile re-reads it only when it changed.
	dst os.FileInfo
}

// New returns an Installer for o. Install and Run check o with Validate before
// they write anything; Uninstall needs none of the install-only options.
func New(o Options) *Installer {
	o = o.withDefaults()
	o.docs = &docCache{}
	return &Installer{o: o, copied: map[string]*copied{}, noted: map[string]string{}}
}

// Validate checks the options as Options.Validate does, reading a config file
// that is a pipe only once for the Installer's whole life: call it, not
// Options.Validate, before Install when --config may be <(…) or /dev/stdin.
func (in *Installer) Validate() error { return in.o.Validate() }

// binaries are the plugin binaries Install copies into BinDir, in order:
// detour-cni-ebpf first, so that detour-cni never hands a call over to a
// binary that is not there yet. When the base config every pod starts from
// says backend ebpf, detour-cni-ebpf is also what is installed as
// detour-cni: every call of such a network needs the eBPF backend, and the
// lean plugin would hand each one over, paying two start-ups.
func (in *Installer) binaries() []struct{ src, name string } {
	var out []struct{ src, name string }
	plugin := in.o.PluginBinary
	if in.o.EBPFPluginBinary != "" {
		out = append(out, struct{ src, name string }{in.o.EBPFPluginBinary, EBPFPluginType})
		if in.baseBackend() == redirect.BackendEBPF {
			plugin = in.o.EBPFPluginBinary
		}
	}
	return append(out, struct{ src, name string }{plugin, PluginType})
}

// baseBackend is the backend of the base config the entry carries ("" when
// it cannot be read: Install reports that at its entry).
func (in *Installer) baseBackend() redirect.Backend { return in.o.baseBackend() }

// baseBackend is the backend of the base config ("" when it cannot be read).
func (o Options) baseBackend() redirect.Backend {
	doc, err := o.baseConfig()
	if err != nil {
		return ""
	}
	cfg := redirect.Default()
	if o.Preset != "" {
		if cfg, err = redirect.Preset(o.Preset); err != nil {
			return ""
		}
	}
	if len(doc) > 0 && cfg.Decode(doc) != nil {
		return ""
	}
	return cfg.Backend
}

// passthroughOnLo is the entry's passthroughOnLo: PassthroughOnLo, or, when
// it is not given, the plugin's own default for Preset where that is the
// address (cni.DefaultPassthroughOnLo: istio, kuma), written out so the entry
// says it, and empty (the plugin's route) otherwise.
func (o Options) passthroughOnLo() string {
	if o.PassthroughOnLo == "" && cni.DefaultPassthroughOnLo(o.Preset) == cni.PassthroughAddress {
		return cni.PassthroughAddress
	}
	return o.PassthroughOnLo
}

// Entry returns the plugin entry the installer writes. It fails as Validate
// does when the config file cannot be read or is invalid.
func (in *Installer) Entry() (Entry, error) {
	doc, err := in.o.baseConfig()
	if err != nil {
		return Entry{}, err
	}
	return Entry{
		Kubeconfig:        in.o.PluginKubeconfig,
		LogFile:           in.o.LogFile,
		LogLevel:          in.o.LogLevel,
		ExcludeNamespaces: in.o.ExcludeNamespaces,
		Preset:            in.o.Preset,
		Config:            doc,
		PassthroughOnLo:   in.o.passthroughOnLo(),
		Capabilities:      map[string]bool{CapabilityPodAnnotations: true},
	}, nil
}

// Install makes the node's state what it should be, in this order: the plugin
// binary, the kubeconfig, then the plugin entry in the primary conflist — so the
// entry appears only once the plugin can run. It returns one line per change
// made (none when everything was in place). A conf directory without a network
// configuration yet is not an error: the entry is added once the primary CNI
// writes its file. Install is idempotent.
func (in *Installer) Install(ctx context.Context) ([]string, error) {
	if err := in.o.Validate(); err != nil {
		return nil, err
	}
	var changes []string
	pluginToken := func() (string, error) { return in.ensurePluginToken(ctx) }
	for _, step := range []func() (string, error){in.ensureBinary, pluginToken, in.ensureKubeconfig, in.ensureEntry} {
		if err := ctx.Err(); err != nil {
			return changes, err
		}
		c, err := step()
		if c != "" {
			changes = append(changes, c)
		}
		if err != nil {
			return changes, err
		}
	}
	return changes, nil
}

// ensureBinary copies each of the plugin binaries into BinDir when it is
// not there or differs.
func (in *Installer) ensureBinary() (string, error) {
	var changes []string
	for _, b := range in.binaries() {
		c, err := in.ensureCopy(b.src, b.name)
		if c != "" {
			changes = append(changes, c)
		}
		if err != nil {
			return strings.Join(changes, "\n"), err
		}
	}
	return strings.Join(changes, "\n"), nil
}

func (in *Installer) ensureCopy(srcPath, name string) (string, error) {
	dst := filepath.Join(in.o.BinDir, name)
	c := in.copied[name]
	if c == nil || c.src != srcPath {
		c = &copied{src: srcPath}
		in.copied[name] = c
	}
	fi, err := os.Stat(dst)
	if err == nil && c.dst != nil && os.SameFile(fi, c.dst) && fi.Size() == c.dst.Size() && fi.ModTime().Equal(c.dst.ModTime()) {
		return "", nil
	}
	if c.srcHash == nil {
		h, err := hashFile(srcPath)
		if err != nil {
			return "", fmt.Errorf("read plugin binary: %w", err)
		}
		c.srcHash = h
	}
	if err == nil {
		if h, herr := hashFile(dst); herr == nil && bytes.Equal(h, c.srcHash) {
			c.dst = fi
			return "", nil
		}
	}
	src, err := os.Open(srcPath)
	if err != nil {
		return "", fmt.Errorf("read plugin binary: %w", err)
	}
	defer src.Close()
	if err := atomicfile.WriteFrom(dst, src, 0o755); err != nil {
		return "", fmt.Errorf("copy plugin binary: %w", err)
	}
	if c.dst, err = os.Stat(dst); err != nil {
		return "", fmt.Errorf("copy plugin binary: %w", err)
	}
	in.o.Logger.Info("copied plugin binary", "path", dst)
	return "wrote " + dst, nil
}

func hashFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func (in *Installer) ensureKubeconfig() (string, error) {
	ca, err := readRegular(in.o.CAFile)
	if err != nil {
		return "", fmt.Errorf("read service account CA: %w", err)
	}
	creds := Credentials{Server: in.o.Server, CA: ca}
	if in.o.PluginServiceAccount != "" {
		// The plugin reads its own token file, as the node sees it: next to
		// the kubeconfig it is given.
		creds.TokenFile = filepath.Join(filepath.Dir(in.o.PluginKubeconfig), filepath.Base(in.o.PluginTokenFile))
	} else {
		token, err := readRegular(in.o.TokenFile)
		if err != nil {
			return "", fmt.Errorf("read service account token: %w", err)
		}
		creds.Token = string(token)
		if exp, ok := TokenExpiry(string(token)); ok && time.Until(exp) < 2*in.o.PollInterval && in.note("expiry", exp.String()) {
			// The kubelet rotates projected tokens at 80% of their life; a token
			// this close to its end means rotation is not happening.
			in.o.Logger.Warn("service account token expires soon and has not been rotated", "path", in.o.TokenFile, "expiry", exp.UTC().Format(time.RFC3339))
		}
	}
	want, err := Kubeconfig(creds)
	if err != nil {
		return "", fmt.Errorf("render kubeconfig from %s and %s: %w", in.o.TokenFile, in.o.CAFile, err)
	}
	if have, err := readRegular(in.o.KubeconfigFile); err == nil && bytes.Equal(have, want) {
		return "", nil
	}
	if err := atomicfile.WriteFrom(in.o.KubeconfigFile, bytes.NewReader(want), 0o600); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	in.o.Logger.Info("wrote kubeconfig", "path", in.o.KubeconfigFile)
	return "wrote " + in.o.KubeconfigFile, nil
}

func (in *Installer) ensureEntry() (string, error) {
	files, err := confFiles(in.o.ConfDir)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		if in.note("waiting", in.o.ConfDir) {
			in.o.Logger.Info("waiting for the primary CNI to write its network configuration", "dir", in.o.ConfDir)
		}
		return "", nil
	}
	in.clear("waiting")
	entry, err := in.Entry()
	if err != nil {
		return "", err
	}
	// A symlinked primary (some distributions link the CNI's file into the
	// conf dir) is edited where it points, so the link and its owner's file stay
	// one file.
	primary, err := filepath.EvalSymlinks(files[0])
	if err != nil {
		return "", fmt.Errorf("resolve primary CNI config: %w", err)
	}
	doc, err := readRegular(primary)
	if err != nil {
		return "", fmt.Errorf("read primary CNI config: %w", err)
	}
	isList, err := IsList(doc)
	if err != nil {
		return "", fmt.Errorf("%s: %w", primary, err)
	}
	if isList {
		out, err := Insert(doc, entry)
		if err != nil {
			return "", fmt.Errorf("%s: %w", primary, err)
		}
		if bytes.Equal(out, doc) {
			return "", nil
		}
		if err := atomicfile.WriteFrom(primary, bytes.NewReader(out), fileMode(primary)); err != nil {
			return "", fmt.Errorf("insert plugin entry: %w", err)
		}
		in.o.Logger.Info("inserted plugin entry", "path", primary)
		return "inserted detour-cni into " + primary, nil
	}
	// A single-plugin file: chaining needs a conflist. The new name must stay the
	// one the runtime reads first.
	if primary != files[0] {
		return "", fmt.Errorf("%s: a symlink to a single-plugin config (%s); detour cannot convert it to a conflist in place, make the primary CNI write a .conflist", files[0], primary)
	}
	target := listName(primary)
	for _, f := range files[1:] {
		if f < target && f != target {
			return "", fmt.Errorf("%s: converting it to %s would make %s the first network configuration; rename one of them", primary, filepath.Base(target), filepath.Base(f))
		}
	}
	list, err := ConfToList(doc)
	if err != nil {
		return "", fmt.Errorf("%s: %w", primary, err)
	}
	out, err := Insert(list, entry)
	if err != nil {
		return "", fmt.Errorf("%s: %w", primary, err)
	}
	if slices.Contains(files, target) {
		in.o.Logger.Warn("replacing a conflist shadowed by the primary .conf", "path", target)
	}
	if err := atomicfile.WriteFrom(target, bytes.NewReader(out), fileMode(primary)); err != nil {
		return "", fmt.Errorf("insert plugin entry: %w", err)
	}
	if err := os.Remove(primary); err != nil {
		return "", fmt.Errorf("remove converted %s: %w", primary, err)
	}
	in.o.Logger.Info("converted the primary CNI config to a conflist and inserted the plugin entry", "from", primary, "path", target)
	return fmt.Sprintf("converted %s to %s and inserted detour-cni", primary, target), nil
}

func fileMode(path string) os.FileMode {
	if fi, err := os.Stat(path); err == nil {
		return fi.Mode().Perm()
	}
	return 0o644
}

// Uninstall removes exactly what Install put in place: every detour-cni entry in
// the conf directory's network configurations (the rest of each file is kept),
// then the kubeconfig and the plugin binary. It returns one line per change and
// is idempotent: a second run changes nothing. A file that is not valid JSON is
// left alone (it cannot hold our entry in a form a runtime reads).
//
// A converted .conf stays a .conflist: it holds the same single plugin under the
// same network name, which every runtime loads the same way.
func (in *Installer) Uninstall(ctx context.Context) ([]string, error) {
	var changes []string
	var errs []error
	files, err := confFiles(in.o.ConfDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return changes, err
		}
		if real, err := filepath.EvalSymlinks(f); err == nil {
			f = real
		}
		doc, err := readRegular(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("read CNI config: %w", err))
			continue
		}
		if isList, err := IsList(doc); err != nil || !isList {
			continue
		}
		out, removed, err := Remove(doc)
		if err != nil {
			in.o.Logger.Warn("not a conflist detour can edit; left alone", "path", f, "error", err)
			continue
		}
		if !removed {
			continue
		}
		if err := atomicfile.WriteFrom(f, bytes.NewReader(out), fileMode(f)); err != nil {
			errs = append(errs, fmt.Errorf("remove plugin entry: %w", err))
			continue
		}
		in.o.Logger.Info("removed plugin entry", "path", f)
		changes = append(changes, "removed detour-cni from "+f)
	}
	for _, f := range []string{in.o.KubeconfigFile, in.o.PluginTokenFile, filepath.Join(in.o.BinDir, PluginType), filepath.Join(in.o.BinDir, EBPFPluginType)} {
		switch err := os.Remove(f); {
		case err == nil:
			in.o.Logger.Info("removed file", "path", f)
			changes = append(changes, "removed "+f)
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, fmt.Errorf("remove %s: %w", f, err))
		}
	}
	clear(in.copied)
	return changes, errors.Join(errs...)
}

// Run installs, then keeps the installation in place until ctx ends: it repairs
// on every file notification in the conf and bin directories and the token's
// directory, and at least every PollInterval. A failed first install is
// returned; later failures are logged and retried. When ctx ends, Run uninstalls
// if CleanupOnExit is set and returns nil.
func (in *Installer) Run(ctx context.Context) error {
	// Watch before the first install: a change made between that install and
	// the watcher's start would otherwise wait for the next poll.
	events, closeWatch := in.watch()
	defer closeWatch()
	if _, err := in.Install(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(in.o.PollInterval)
	defer tick.Stop()
	repair := func(why string) {
		changes, err := in.Install(ctx)
		if err == nil {
			in.clear("repair")
		}
		if err != nil && ctx.Err() == nil {
			if in.note("repair", err.Error()) {
				in.o.Logger.Error("repair failed; retrying on the next change", "trigger", why, "error", err)
			}
		} else if len(changes) > 0 {
			in.o.Logger.Info("repaired", "trigger", why, "changes", strings.Join(changes, "; "))
		}
	}
	for {
		select {
		case <-ctx.Done():
			if !in.o.CleanupOnExit {
				return nil
			}
			// ctx is over: give the cleanup its own bounded time.
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if in.o.DaemonSet != "" && !in.daemonSetGone(cctx) {
				return nil
			}
			_, err := in.Uninstall(cctx)
			return err
		case name := <-events:
			repair(name)
		case <-tick.C:
			repair("poll")
		}
	}
}

// watch reports the names of changed files in the directories the installer
// depends on, ignoring its own temporary files. Without notifications (the
// watcher cannot start, or pollOnly) the channel stays silent and the poll
// interval bounds repairs.
func (in *Installer) watch() (<-chan string, func()) {
	out := make(chan string)
	if in.o.pollOnly {
		return out, func() {}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		in.o.Logger.Warn("file notifications unavailable; polling only", "error", err, "interval", in.o.PollInterval)
		return out, func() {}
	}
	dirs := []string{in.o.ConfDir, in.o.BinDir, filepath.Dir(in.o.TokenFile), filepath.Dir(in.o.CAFile), filepath.Dir(in.o.KubeconfigFile)}
	slices.Sort(dirs)
	for _, d := range slices.Compact(dirs) {
		if err := w.Add(d); err != nil {
			in.o.Logger.Warn("cannot watch directory; polling it", "dir", d, "error", err)
		}
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				base := filepath.Base(ev.Name)
				if strings.HasPrefix(base, ".") && strings.HasSuffix(base, ".tmp") {
					continue
				}
				select {
				case out <- ev.Name:
				case <-done:
					return
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				in.o.Logger.Warn("file notification error", "error", err)
			}
		}
	}()
	return out, func() { close(done); w.Close() }
}

// ErrNotReady matches every reason Ready gives for a node that cannot run the
// plugin yet.
var ErrNotReady = errors.New("detour-cni is not ready")

// Ready reports whether a pod created now on this node would go through the
// plugin: the binary is in the bin dir, the kubeconfig is in place and the
// primary network configuration is a conflist whose last plugin is detour-cni.
// It only reads (the DaemonSet's readiness probe runs it); a failure matches
// ErrNotReady and says what is missing.
func (in *Installer) Ready() error {
	notReady := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrNotReady, fmt.Sprintf(format, args...))
	}
	for _, b := range in.binaries() {
		bin := filepath.Join(in.o.BinDir, b.name)
		if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return notReady("no executable %s", bin)
		}
	}
	if _, err := os.Stat(in.o.KubeconfigFile); err != nil {
		return notReady("no kubeconfig %s", in.o.KubeconfigFile)
	}
	primary, err := Primary(in.o.ConfDir)
	if err != nil {
		return notReady("%v", err)
	}
	real, err := filepath.EvalSymlinks(primary)
	if err != nil {
		return notReady("resolve %s: %v", primary, err)
	}
	doc, err := readRegular(real)
	if err != nil {
		return notReady("%v", err)
	}
	_, plugins, err := parseList(doc)
	if err != nil {
		return notReady("%s is not a conflist detour-cni can be chained in: %v", real, err)
	}
	ours := ownIndexes(plugins)
	if len(ours) == 0 || ours[len(ours)-1] != len(plugins)-1 {
		return notReady("%s does not end with the detour-cni entry", real)
	}
	if len(ours) == len(plugins) {
		return notReady("%s has no plugin before detour-cni: pods would get no interface", real)
	}
	return nil
}

// leanBuild reports whether path is a Go program built with -tags
// detour_lean (the plugin without the eBPF backend), from the build settings
// Go records in every binary; false when it cannot tell (not a Go program).
func leanBuild(path string) bool {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-tags" && slices.Contains(strings.Split(s.Value, ","), "detour_lean") {
			return true
		}
	}
	return false
}
