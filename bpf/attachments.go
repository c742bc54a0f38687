package bpf

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// attachments are the programs and where they hook in, in attach order: the
// getsockopt and sockops programs first, so a connection redirected by
// connect4 can always be answered.
var attachments = []struct {
	prog   string
	attach ebpf.AttachType
}{
	{"detour_getsockopt", ebpf.AttachCGroupGetsockopt},
	{"detour_sockops", ebpf.AttachCGroupSockOps},
	{"detour_getpeername4", ebpf.AttachCgroupInet4GetPeername},
	{"detour_getpeername6", ebpf.AttachCgroupInet6GetPeername},
	{"detour_recvmsg4", ebpf.AttachCGroupUDP4Recvmsg},
	{"detour_recvmsg6", ebpf.AttachCGroupUDP6Recvmsg},
	{"detour_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"detour_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
	{"detour_connect4", ebpf.AttachCGroupInet4Connect},
	{"detour_connect6", ebpf.AttachCGroupInet6Connect},
}

// The sk_msg program attaches to the accel_socks sockhash, not to a cgroup:
// one link for every scope, pinned under links/accelDir while some scope's
// config asks for acceleration.
const (
	accelProg = "detour_accel"
	accelMap  = "accel_socks"
	accelDir  = "sk_msg"
)

// accelLine is the sk_msg program in `detour plan`'s text form.
var accelLine = fmt.Sprintf("program %s attach sk_msg (map %s)", strings.TrimPrefix(accelProg, "detour_"), accelMap)

// attachName is the hook as the C section names it.
func attachName(a ebpf.AttachType) string {
	switch a {
	case ebpf.AttachCGroupGetsockopt:
		return "cgroup/getsockopt"
	case ebpf.AttachCGroupSockOps:
		return "sockops"
	case ebpf.AttachCgroupInet4GetPeername:
		return "cgroup/getpeername4"
	case ebpf.AttachCgroupInet6GetPeername:
		return "cgroup/getpeername6"
	case ebpf.AttachCGroupUDP4Recvmsg:
		return "cgroup/recvmsg4"
	case ebpf.AttachCGroupUDP6Recvmsg:
		return "cgroup/recvmsg6"
	case ebpf.AttachCGroupUDP4Sendmsg:
		return "cgroup/sendmsg4"
	case ebpf.AttachCGroupUDP6Sendmsg:
		return "cgroup/sendmsg6"
	case ebpf.AttachCGroupInet4Connect:
		return "cgroup/connect4"
	case ebpf.AttachCGroupInet6Connect:
		return "cgroup/connect6"
	}
	return a.String()
}

// programLine is one attached program in `detour plan`'s text form.
func programLine(prog string, attach ebpf.AttachType) string {
	return fmt.Sprintf("program %s attach %s", strings.TrimPrefix(prog, "detour_"), attachName(attach))
}
