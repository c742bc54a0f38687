package main

import (
	"encoding/json"
	"net/netip"

	"github.com/spf13/cobra"
)

// controlPlaneRouteOptions are the flags of `detour-cp control-plane route`.
type controlPlaneRouteOptions struct {
	config, nodeID, to string
	inbound            bool
}

func newControlPlaneRouteCmd(s streams) *cobra.Command {
	o := &controlPlaneRouteOptions{}
	cmd := &cobra.Command{
		Use:   "route",
		Short: "Print, as JSON, the listener, filter chain and cluster that serve one captured connection",
		Long: `route reads the resources the control plane serves the workload with --node-id
from --config, and prints which listener, filter chain and cluster take a connection
to --to once capture handed it to the proxy (outbound, or --inbound). ` + "`detour explain --mesh`" + `
runs it for the Envoy side of its answer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printRoute(o, s)
		},
	}
	cmd.Flags().StringVar(&o.config, "config", "", "mesh file (YAML)")
	cmd.Flags().StringVar(&o.nodeID, "node-id", "", "node id of the workload")
	cmd.Flags().StringVar(&o.to, "to", "", "the connection's original destination, ADDR:PORT")
	cmd.Flags().BoolVar(&o.inbound, "inbound", false, "a connection to the workload instead of one it opens")
	return cmd
}

func printRoute(o *controlPlaneRouteOptions, s streams) error {
	if o.config == "" || o.nodeID == "" {
		return usageError("--config and --node-id are required")
	}
	dst, err := netip.ParseAddrPort(o.to)
	if err != nil || dst.Port() == 0 {
		return usageError("--to: %q is not ADDR:PORT", o.to)
	}
	m, _, err := meshWorkload(o.config, o.nodeID)
	if err != nil {
		return err
	}
	r, err := m.Resources(o.nodeID)
	if err != nil {
		return err
	}
	rt, err := r.Route(o.inbound, dst.Addr(), dst.Port())
	if err != nil {
		return err
	}
	enc := json.NewEncoder(s.out)
	enc.SetIndent("", "  ")
	return enc.Encode(rt)
}
