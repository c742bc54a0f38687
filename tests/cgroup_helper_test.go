//go:build linux

package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
)

// helperEnv names the role of a re-executed test binary: TestMain runs
// cgroupHelper instead of the tests when it is set.
const helperEnv = "DETOUR_E2E_HELPER"

// cgroupHelper is the process the cgroup-scope tests place in a cgroup of
// their own: a socket belongs to the cgroup of the process that creates it,
// and the test process itself stays in the suite's cgroup (outside the
// scope). It runs inside a lab namespace (`ip netns exec`) and serves
// commands on stdin, one a line, answering one line each on stdout:
//
//	serve NAME ADDR:PORT   a lab server (the proxy's listeners) → ok
//	dial JSON              a lab.DialOptions dial → the Reply as JSON
//
// Errors answer "error: …". It exits when stdin closes; its servers go with it.
func cgroupHelper() int {
	name := os.Getenv("DETOUR_E2E_NETNS")
	if name == "" {
		fmt.Fprintln(os.Stderr, "cgroup helper: DETOUR_E2E_NETNS is empty")
		return 2
	}
	ns := &lab.NetNS{Name: name, Path: "/run/netns/" + name}
	lab.ServeLines(os.Stdin, os.Stdout, func(line string) (string, error) {
		verb, arg, _ := strings.Cut(line, " ")
		return helperDo(ns, verb, arg)
	})
	return 0
}

func helperDo(ns *lab.NetNS, verb, arg string) (string, error) {
	switch verb {
	case "serve":
		srv, addr, _ := strings.Cut(arg, " ")
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return "", err
		}
		if _, err := ns.Serve(srv, ap, lab.ServeOptions{}); err != nil {
			return "", err
		}
		return "ok", nil
	case "dial":
		var o lab.DialOptions
		if err := json.Unmarshal([]byte(arg), &o); err != nil {
			return "", err
		}
		r, err := ns.Dial(context.Background(), o)
		if err != nil {
			return "", err
		}
		b, err := json.Marshal(r)
		return string(b), err
	}
	return "", fmt.Errorf("unknown command %q", verb)
}

// helperProc is a running cgroupHelper.
type helperProc struct {
	t *testing.T
	*lab.Child
}

// startHelper starts the test binary as a cgroupHelper inside the pod
// namespace, born into cgroup (clone3 CLONE_INTO_CGROUP, so no socket of it
// is ever made elsewhere). It stops when the test ends.
func startHelper(t *testing.T, p *pod, cgroup string) *helperProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("ip", "netns", "exec", p.lab.Pod.Name, self)
	cmd.Env = append(os.Environ(), helperEnv+"=cgroup", "DETOUR_E2E_NETNS="+p.lab.Pod.Name)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	cmd.Stderr = os.Stderr
	c, err := lab.StartChild(cmd)
	if err != nil {
		t.Fatalf("start the cgroup helper: %v", err)
	}
	t.Cleanup(c.Stop)
	return &helperProc{t: t, Child: c}
}

func (h *helperProc) serve(name string, addr netip.AddrPort) {
	h.t.Helper()
	if _, err := h.Do("serve " + name + " " + addr.String()); err != nil {
		h.t.Fatalf("serve %s on %s in the cgroup: %v", name, addr, err)
	}
}

// dial dials from the helper, inside the cgroup.
func (h *helperProc) dial(o lab.DialOptions) (lab.Reply, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return lab.Reply{}, err
	}
	answer, err := h.Do("dial " + string(b))
	if err != nil {
		return lab.Reply{}, err
	}
	var r lab.Reply
	err = json.Unmarshal([]byte(answer), &r)
	return r, err
}
