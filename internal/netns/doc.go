// Package netns runs code inside another network namespace.
//
// A network namespace belongs to an OS thread, not to a process: setns(2)
// moves only the calling thread. Go schedules goroutines on any thread, so Do
// runs its function on a fresh goroutine that it locks to its thread
// (runtime.LockOSThread), moves that thread into the target namespace, runs
// the function and moves the thread back. When moving back fails, the thread
// stays locked and the runtime destroys it as the goroutine exits, so no other
// goroutine ever runs in a namespace it did not ask for.
//
// What runs inside the namespace: the function itself, the sockets it opens
// (netlink included) and the child processes it starts with os/exec, which
// fork from the locked thread and inherit its namespace. What does not: any
// goroutine the function starts — it may run on another thread. Files under
// /proc/self/net describe the thread-group leader's namespace; use
// /proc/thread-self/net from inside Do. /proc/sys/net follows the calling
// thread and is fine.
//
// Privileges: entering a namespace needs CAP_SYS_ADMIN (and CAP_SYS_PTRACE over
// the namespace's owner for /proc/PID/ns/net paths). The package is Linux-only;
// on other systems Do with a path returns errors.ErrUnsupported.
//
// This package must not import anything of detour outside internal/.
package netns
