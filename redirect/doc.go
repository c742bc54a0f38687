// Package redirect owns what detour captures and how the kernel is told.
//
// Config is the one model of "what to capture" shared by every entry point.
// Fields lists its settable leaves; Set and Decode fill it from strings and
// documents with errors that name the field and the value; Validate checks it as
// a whole.
//
// Planning is pure: NewPlan turns a Config and the facts observed about a
// network namespace into a Plan: the config, the facts, the backend-neutral
// Capture and notes. How the kernel is told is a Driver's business (backend.go):
// one per backend, in its own package (redirect/iptables, redirect/nftables,
// bpf), assembled in redirect/backends. A Driver renders the Capture in its own
// syntax (Render, what `detour plan` prints via Plan.Format), observes what of
// detour's it holds, applies a plan atomically per family and removes its
// state. Engine is the orchestration above them: it enters the namespace,
// takes detour's lock of it, chooses the backend (auto: sticky, read-only),
// switches backends in place (apply the new one, then remove the old one),
// uninstalls from every backend, and makes the TPROXY policy routing and the
// IPv6 passthrough address over netlink in-process for all of them. This
// package names no backend's syntax and imports no Driver.
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
// (internal/netns): the Drivers' methods run on that thread (processes they
// spawn fork from it) and the netlink sockets it opens belong to that
// namespace.
//
// Privileges: planning and config handling need none. Observing and applying
// need CAP_NET_ADMIN in the target network namespace (and what the Drivers
// need), CAP_SYS_ADMIN to enter it.
//
// This package must not import cmd/..., cni, controlplane, bpf, or any
// Driver package (redirect/iptables, redirect/nftables, redirect/backends).
package redirect
