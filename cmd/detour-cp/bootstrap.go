package main

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/redirect"
)

// bootstrapOptions are the flags of `detour-cp bootstrap`.
type bootstrapOptions struct {
	nodeID       string
	controlPlane string
	delta        bool
	adminAddress string
	exposeAdmin  bool
	cluster      string
	mesh         string
	configs      []string
	preset       string
	ca           string
	serverName   string
	tlsCert      string
	tlsKey       string
	output       string
}

func newBootstrapCmd(s streams) *cobra.Command {
	o := &bootstrapOptions{}
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Print the Envoy bootstrap of a workload (ADS to the control plane)",
		Long: `bootstrap prints a complete Envoy bootstrap for one workload: its node (id,
metadata with the proxy ports of its redirect config), an admin listener on
127.0.0.1, and ADS over gRPC to the control plane for listeners and clusters.

The proxy ports come from the workload's transparentProxy in --mesh, or from
--config/--preset (the same documents ` + "`detour install`" + ` reads).

  detour bootstrap --node-id app --control-plane 127.0.0.1:18000 --mesh mesh.yaml > envoy.yaml
  envoy -c envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := rejectEmptyFlags(cmd.Flags()); err != nil {
				return err
			}
			return printBootstrap(o, s)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.nodeID, "node-id", "", "node id of the workload (Envoy node.id); required")
	f.StringVar(&o.controlPlane, "control-plane", "", "host:port of the control plane's ADS server; required")
	f.BoolVar(&o.delta, "delta", false, "use incremental (delta) xDS instead of state of the world")
	f.StringVar(&o.adminAddress, "admin-address", "127.0.0.1:15000", "Envoy admin listener (ip:port); a loopback address unless --expose-admin")
	f.BoolVar(&o.exposeAdmin, "expose-admin", false, "allow a non-loopback --admin-address (anyone who reaches it can stop the proxy and read its config)")
	f.StringVar(&o.cluster, "cluster", "detour", "Envoy node.cluster")
	f.StringVar(&o.mesh, "mesh", "", "mesh file: take the workload's labels and redirect config from it")
	f.StringArrayVar(&o.configs, "config", nil, "redirect config document(s) for the proxy ports (repeatable; instead of --mesh)")
	f.StringVar(&o.preset, "preset", "", "start from a preset redirect config: istio or kuma (instead of --mesh)")
	f.StringVar(&o.ca, "ca", "", "connect over TLS, verifying the control plane with this CA bundle (path as Envoy sees it)")
	f.StringVar(&o.serverName, "server-name", "", "TLS server name of the control plane (default: its host)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "client certificate for mTLS (its SAN must be the node id)")
	f.StringVar(&o.tlsKey, "tls-key", "", "private key of --tls-cert")
	f.StringVarP(&o.output, "output", "o", "yaml", "yaml or json")
	return cmd
}

func printBootstrap(o *bootstrapOptions, s streams) error {
	if o.nodeID == "" || o.controlPlane == "" {
		return usageError("--node-id and --control-plane are required")
	}
	if strings.TrimSpace(o.nodeID) != o.nodeID {
		// The mesh file's and the Kubernetes source's rule: such a node id is
		// never served.
		return usageError("--node-id %q is not a node id (non-empty, no surrounding spaces)", o.nodeID)
	}
	if o.serverName != "" && o.ca == "" {
		return usageError("--server-name needs --ca (it is the TLS server name checked against the control plane's certificate)")
	}
	if o.mesh != "" && (len(o.configs) > 0 || o.preset != "") {
		return usageError("--mesh gives the workload's config; do not combine it with --config or --preset")
	}
	if o.output != "yaml" && o.output != "json" {
		return usageError("--output %q is not one of yaml, json", o.output)
	}
	if err := checkAdminAddress(o, s); err != nil {
		return err
	}
	bo := controlplane.BootstrapOptions{
		NodeID:       o.nodeID,
		Cluster:      o.cluster,
		ControlPlane: o.controlPlane,
		Delta:        o.delta,
		AdminAddress: o.adminAddress,
		CACert:       o.ca,
		ServerName:   o.serverName,
		ClientCert:   o.tlsCert,
		ClientKey:    o.tlsKey,
		Config:       redirect.Default(),
	}
	switch {
	case o.mesh != "":
		_, w, err := meshWorkload(o.mesh, o.nodeID)
		if err != nil {
			return err
		}
		bo.Config, bo.Labels = w.TransparentProxy, w.Labels
	default:
		if o.preset != "" {
			c, err := redirect.Preset(o.preset)
			if err != nil {
				return err
			}
			bo.Config = c
		}
		for _, path := range o.configs {
			doc, err := readBootstrapConfig(path, s)
			if err != nil {
				return err
			}
			if redirect.EmptyDocument(doc) {
				return usageError("--config %q is empty (no setting in it); leave it out for the defaults, or write {}", path)
			}
			if err := bo.Config.Decode(doc); err != nil {
				return fmt.Errorf("config %s: %w", path, err)
			}
		}
		if err := bo.Config.Validate(); err != nil {
			return err
		}
	}
	b, err := controlplane.Bootstrap(bo)
	if err != nil {
		return err
	}
	var out []byte
	if o.output == "json" {
		out, err = protojson.MarshalOptions{Multiline: true}.Marshal(b)
		out = append(out, '\n')
	} else {
		out, err = controlplane.BootstrapYAML(b)
	}
	if err != nil {
		return err
	}
	_, err = s.out.Write(out)
	return err
}

// checkAdminAddress refuses an --admin-address that is not a loopback
// address unless --expose-admin says so, and then warns on stderr: Envoy's
// admin interface is unauthenticated, and whoever reaches it can quit the
// proxy (/quitquitquit), drain its listeners, change its log levels and dump
// its config, certificates included (/config_dump, /certs). A value that is
// not ip:port is left to controlplane.Bootstrap, which names it.
func checkAdminAddress(o *bootstrapOptions, s streams) error {
	ap, err := netip.ParseAddrPort(o.adminAddress)
	if err != nil || ap.Addr().Unmap().IsLoopback() {
		return nil
	}
	const risk = "exposes Envoy's admin interface, which has no authentication, to the network: anyone who reaches it can stop the proxy and dump its config and secrets"
	if !o.exposeAdmin {
		return usageError("--admin-address %q is not a loopback address; it %s (use 127.0.0.1 or ::1, or give --expose-admin to listen there anyway)", o.adminAddress, risk)
	}
	fmt.Fprintf(s.err, "detour: warning: --admin-address %q (with --expose-admin) %s\n", o.adminAddress, risk)
	return nil
}

// readBootstrapConfig reads a config document; "-" is stdin.
func readBootstrapConfig(path string, s streams) ([]byte, error) {
	if path == "-" {
		b, err := io.ReadAll(s.in)
		if err != nil {
			return nil, fmt.Errorf("read config from stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("read config: %w", err))
	}
	return b, nil
}
