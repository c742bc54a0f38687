// Package redirect owns what detour captures and how the kernel is told.
//
// Config is the one model of "what to capture" shared by every entry point.
// Fields lists its settable leaves; Set and Decode fill it from strings and
// documents with errors that name the field and the value; Validate checks it as
// a whole.
//
// Planning is pure: NewPlan turns a Config and the facts observed about a
// network namespace into the exact rules for each IP family, with no host
// access. Applying observes what is installed, then executes one
// iptables-restore --noflush per family that differs and nothing else;
// iptables-restore commits table by table, so a family whose restore fails is
// read again and put back to what it was, with the families before it.
// Everything installed is owned by name: chains start with DETOUR_ and every rule
// in a built-in chain carries the ownership comment, so uninstall removes exactly
// that. The TPROXY policy routing and the IPv6 passthrough address are made over
// netlink in-process. docs/rules.md describes every rule and why it exists.
//
// Capture (NewCapture) is the capture decision stated once, without any
// backend's syntax: per family, which connections go to which proxy port.
// Capture.Decide answers for one connection and names the deciding setting.
//
// Config.CapturesOutbound and Config.CapturesInbound answer, without a host,
// whether the rules of a configuration send a given connection to the proxy;
// code that must agree with the rules uses them instead of re-deriving it.
//
// Install and Uninstall of one network namespace are serialized across
// processes by a lock file under /run/detour (Engine.LockDir). What is made
// over netlink carries the kernel ownership tag protocol 215.
//
// Engine runs all of a call on one OS thread locked inside Engine.NetNS
// (internal/netns): the iptables processes it spawns fork from that thread and
// the netlink sockets it opens belong to that namespace.
//
// Privileges: planning and config handling need none. Observing and applying
// need CAP_NET_ADMIN (and CAP_NET_RAW for iptables) in the target network
// namespace, CAP_SYS_ADMIN to enter it, and run the iptables binaries of the
// host found on PATH.
//
// This package must not import cmd/..., cni, controlplane or bpf.
package redirect
