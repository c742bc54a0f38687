// Command demo shows detour at work in a throwaway lab: an "app" network namespace and
// a "remote" one joined by a veth pair. It runs a stand-in sidecar as the proxy user
// (uid 5678) that logs and forwards what it receives, installs detour with the
// built-in defaults through the real binary, sends a handful of connections, prints
// what was intercepted and what was not, validates, uninstalls and removes the lab,
// also on Ctrl-C. `make demo` builds and runs it as root. The lab's namespaces are
// named dt-demo-<pid>-…: a run first removes those of runs whose process is gone
// (killed before their cleanup), never the lab of a demo that is still running.
//
// Usage: demo [--detour PATH]; `demo sidecar …` is the stand-in sidecar itself.
package main
