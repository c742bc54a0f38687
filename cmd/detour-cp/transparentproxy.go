package main

import (
	"encoding/json"

	"github.com/spf13/cobra"
)

// controlPlaneTransparentProxyOptions are the flags of `detour-cp
// control-plane transparent-proxy`.
type controlPlaneTransparentProxyOptions struct {
	config, nodeID string
}

func newControlPlaneTransparentProxyCmd(s streams) *cobra.Command {
	o := &controlPlaneTransparentProxyOptions{}
	cmd := &cobra.Command{
		Use:   "transparent-proxy",
		Short: "Print a workload's redirect config as the control plane resolves it, as JSON",
		Long: `transparent-proxy prints the redirect config of the workload with --node-id in
the mesh file --config — the built-in defaults, then the mesh's transparentProxy,
then the workload's own — as one complete document, the one its listeners are made
for. ` + "`detour install --config`" + ` reads it, so the rules match the listeners;
` + "`detour explain --mesh`" + ` answers from it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printTransparentProxy(o, s)
		},
	}
	cmd.Flags().StringVar(&o.config, "config", "", "mesh file (YAML)")
	cmd.Flags().StringVar(&o.nodeID, "node-id", "", "node id of the workload")
	return cmd
}

func printTransparentProxy(o *controlPlaneTransparentProxyOptions, s streams) error {
	if o.config == "" || o.nodeID == "" {
		return usageError("--config and --node-id are required")
	}
	_, w, err := meshWorkload(o.config, o.nodeID)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(s.out)
	enc.SetIndent("", "  ")
	return enc.Encode(w.TransparentProxy)
}
