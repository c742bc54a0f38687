package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// sshOptions keep SSH reachable on a host: the ports sshd listens on and the
// port of the session the command runs in ($SSH_CONNECTION, which sudo drops by
// default — hence the listening ports) are excluded from inbound capture, unless
// captureSSH. install, plan, check and validate apply the same exclusion, so a
// check after an install over SSH compares like with like. Inside another
// network namespace (--netns) nothing is excluded: the host's SSH is not there.
type sshOptions struct {
	captureSSH bool
	// sshConnection is $SSH_CONNECTION and procRoot is /proc; tests set both.
	sshConnection string
	procRoot      string
}

func bindSSHFlag(o *sshOptions, set func(p *bool, name string, value bool, usage string)) {
	set(&o.captureSSH, "capture-ssh", false, "on a host, capture inbound SSH too (by default the ports sshd listens on and this session's port are excluded)")
}

// sshPorts returns the SSH ports to keep out of inbound capture, sorted.
func (o *sshOptions) sshPorts() []uint16 {
	if o.captureSSH {
		return nil
	}
	proc := o.procRoot
	if proc == "" {
		proc = "/proc"
	}
	ports := sshdListenPorts(proc)
	if f := strings.Fields(o.sshConnection); len(f) == 4 {
		if p, err := redirect.ParsePort(f[3]); err == nil {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// excludeSSH adds the ports to the inbound exclusions where inbound capture
// would otherwise take them, and returns the ports it added.
func excludeSSH(cfg redirect.Config, ports []uint16) (redirect.Config, []uint16) {
	in := cfg.Inbound
	if !in.Enabled || len(in.IncludePorts) > 0 {
		// Included ports are what the user asked for.
		return cfg, nil
	}
	var added []uint16
	for _, p := range ports {
		if !slices.ContainsFunc(in.ExcludePorts, func(r redirect.PortRange) bool { return r.Contains(p) }) {
			added = append(added, p)
		}
	}
	if len(added) == 0 {
		return cfg, nil
	}
	cfg = cfg.Clone()
	for _, p := range added {
		cfg.Inbound.ExcludePorts = append(cfg.Inbound.ExcludePorts, redirect.PortRange{First: p, Last: p})
	}
	return cfg, added
}

// sshdListenPorts returns the TCP ports that processes named sshd listen on, read
// from procRoot (/proc) of the caller's network namespace. Reading other
// processes' file descriptors needs root; without it the answer is empty.
func sshdListenPorts(procRoot string) []uint16 {
	inodes := map[string]bool{}
	pids, _ := filepath.Glob(filepath.Join(procRoot, "[0-9]*"))
	for _, pid := range pids {
		comm, err := os.ReadFile(filepath.Join(pid, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "sshd" {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(pid, "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(pid, "fd", fd.Name()))
			if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	var ports []uint16
	for _, table := range []string{"net/tcp", "net/tcp6"} {
		ports = append(ports, listeningPorts(filepath.Join(procRoot, table), inodes)...)
	}
	return ports
}

// listeningPorts reads a /proc/net/tcp{,6} table and returns the local ports of
// LISTEN sockets whose inode is in inodes.
func listeningPorts(path string, inodes map[string]bool) []uint16 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var ports []uint16
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		const listen = "0A"
		if len(f) < 10 || f[3] != listen || !inodes[f[9]] {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && p != 0 {
			ports = append(ports, uint16(p))
		}
	}
	return ports
}
