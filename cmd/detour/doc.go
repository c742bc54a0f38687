// Command detour installs a workload's traffic redirection into its sidecar
// proxy and serves the proxy its listeners. See README.md for the commands, their
// flags and exit codes (exit.go holds the codes).
//
// The main is thin: cobra commands bind flags to option structs and call plain
// run functions that tests call directly. install, uninstall, check, status and
// validate need CAP_NET_ADMIN and CAP_NET_RAW in the target namespace (and
// CAP_SYS_ADMIN to enter one with --netns); validate run as root also needs
// CAP_SETUID and CAP_SETGID to dial as a captured user; plan needs nothing.
package main
