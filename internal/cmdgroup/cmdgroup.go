// Package cmdgroup holds what detour's command trees (detour, detour-cp)
// share about commands that only group others. It must not import other
// detour packages.
package cmdgroup

import "github.com/spf13/cobra"

// RefuseUnknownSubcommands makes each command below c that only groups
// others (completion, cni) refuse an argument that names none of them, exit 2
// like an unknown command of the root: cobra shows such a command's help and
// exits 0, so `completion nope` or a mistyped `cni instal` looked like success.
// Without an argument it still shows its help.
func RefuseUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		if sub.HasSubCommands() && !sub.Runnable() {
			sub.Args = cobra.NoArgs
			sub.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
		RefuseUnknownSubcommands(sub)
	}
}
