// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
//go:build ignore

// detour's cgroup socket programs: outbound TCP and DNS redirection at
// connect()/sendmsg() time, SO_ORIGINAL_DST for the proxy, and the address the
// app dialed for getpeername()/recvmsg(). The decision is read from maps that
// the Go loader fills from redirect.Capture; this file holds no policy.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

// vmlinux.h carries no #defines.
#define AF_INET 2
#define AF_INET6 10
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 // IP6T_SO_ORIGINAL_DST has the same value
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define DNS_PORT 53

// Config flags; mirror of bpf/maps.go.
#define F_OUT4 (1 << 0)
#define F_OUT6 (1 << 1)
#define F_INCLUDE_CIDRS4 (1 << 2)
#define F_INCLUDE_CIDRS6 (1 << 3)
#define F_INCLUDE_PORTS (1 << 4)
#define F_PROXY_GID (1 << 5)
#define F_DNS4 (1 << 6)
#define F_DNS6 (1 << 7)
#define F_DNS_ALL (1 << 8)
#define F_ACCEL (1 << 9)

// Sets of the id and port tries; mirror of bpf/maps.go.
#define SET_EXEMPT_UIDS 1
#define SET_EXEMPT_GIDS 2
#define SET_DNS_EXEMPT_UIDS 3
#define SET_RULE_UIDS 4
#define SET_OUT_PORTS 1
#define SET_RULE_PORTS 2

// rd reads a context field with one load at a fixed offset: the verifier
// refuses context loads through a pointer the compiler has moved.
#define rd(f) (*(volatile __u32 *)&(f))

char __license[] SEC("license") = "Dual BSD/GPL";

// scope_cfg is set by the loader for a cgroup-scoped attachment: every socket
// the programs see there uses that config. Zero means "look the config up by the
// socket's network namespace cookie" (the network-namespace scope).
volatile const __u32 scope_cfg = 0;

struct cfg {
	__u32 flags;
	__u32 proxy_uid;
	__u32 proxy_gid;
	__u16 out_port; // host order
	__u16 dns_port; // host order
};

struct orig {
	__u32 addr[4]; // network order; IPv4 as ::ffff:a.b.c.d
	__u16 port;    // network order
	__u16 family;  // AF_INET or AF_INET6: the family the app dialed
	__u8 read;     // in tuples: the proxy has asked (first, as when it was a __u16 in pinned maps)
	__u8 accel;    // the scope accelerates this connection (F_ACCEL when it was redirected)
	__u16 closed;  // in tuples: the app's socket is gone
};

struct tuple {
	__u64 netns;
	__u32 addr[4]; // the app's local address, IPv4 as ::ffff:a.b.c.d
	__u32 port;    // the app's local port, host order
};

struct cidr4_key {
	__u32 prefixlen;
	__u32 cfg;
	__u32 addr;
};

struct cidr6_key {
	__u32 prefixlen;
	__u32 cfg;
	__u32 addr[4];
};

struct id_key {
	__u32 prefixlen;
	__u32 cfg;
	__u32 set;
	__u32 id; // network order
};

struct port_key {
	__u32 prefixlen;
	__u32 cfg;
	__u16 set;
	__u16 port; // network order
};

struct dns_key {
	__u32 cfg;
	__u32 addr[4]; // IPv4 as ::ffff:a.b.c.d
};

// netns cookie -> config id (the network-namespace scope).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u32);
} scopes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct cfg);
} configs SEC(".maps");

// The tries hold every configuration's lists; a key starts with the config id,
// so one lookup answers "does this config's list contain x". Ranges are stored
// as prefix blocks. max_entries only bounds memory: entries are allocated on use.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr4_key);
	__type(value, __u8);
} cidrs4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr6_key);
	__type(value, __u8);
} cidrs6 SEC(".maps");

// ids: value is 1, or for SET_RULE_UIDS the bitmask of per-uid port rules.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct id_key);
	__type(value, __u64);
} ids SEC(".maps");

// ports: value is 1, or for SET_RULE_PORTS the bitmask of per-uid port rules.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct port_key);
	__type(value, __u64);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dns_key);
	__type(value, __u8);
} dns_servers SEC(".maps");

// The destination a redirected socket dialed; freed with the socket.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig);
} origins SEC(".maps");

// The app's end of a redirected connection -> what it dialed, for the proxy's
// SO_ORIGINAL_DST. An entry goes when both the proxy has asked and the app's
// socket has closed (an app may close before the proxy asks); LRU bounds what
// a proxy that never asks leaves behind.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct tuple);
	__type(value, struct orig);
} tuples SEC(".maps");

// Socket acceleration (F_ACCEL, off by default): both ends of a redirected
// connection between the app and the proxy, by their (netns, local, remote)
// tuple. sk_msg hands a message straight to the peer socket's receive side,
// past the loopback TCP stack. Such a message is queued where read(2) and
// recvmsg(2) find it, but splice(2) reads only the TCP receive queue: a proxy
// that relays with splice never sees those bytes (docs/ebpf.md). A socket
// leaves the map when it closes.
struct sock_key {
	__u64 netns;
	__u32 local[4];  // IPv4 as ::ffff:a.b.c.d
	__u32 remote[4]; // IPv4 as ::ffff:a.b.c.d
	__u32 lport;     // host order
	__u32 rport;     // host order
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct sock_key);
	__type(value, __u64);
} accel_socks SEC(".maps");

// A socket whose message once went the normal way (its peer was not in
// accel_socks yet) keeps going that way: bytes taking two paths could
// overtake each other.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} accel_off SEC(".maps");

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

// owner returns the file-system uid and gid the socket was opened with (low
// and high half), as the iptables owner match reads them: the credentials of
// the socket's file, not of the thread that happens to call connect().
// tuple_addr sets t's address from a socket's family and address words
// (loaded by the caller, unconditionally): IPv4 as ::ffff:a.b.c.d.
static __always_inline void tuple_addr(struct tuple *t, __u32 family, __u32 ip4, __u32 a0, __u32 a1, __u32 a2,
				       __u32 a3)
{
	if (family == AF_INET) {
		t->addr[2] = bpf_htonl(0xffff);
		t->addr[3] = ip4;
	} else {
		t->addr[0] = a0;
		t->addr[1] = a1;
		t->addr[2] = a2;
		t->addr[3] = a3;
	}
}

static __always_inline __u64 owner(struct bpf_sock *bsk)
{
	struct sock *sk = bpf_rdonly_cast(bsk, bpf_core_type_id_kernel(struct sock));
	struct socket *so = sk->sk_socket;
	if (!so)
		return bpf_get_current_uid_gid();
	struct file *f = so->file;
	if (!f)
		return bpf_get_current_uid_gid();
	const struct cred *cr = f->f_cred;
	return ((__u64)cr->fsgid.val << 32) | cr->fsuid.val;
}

static __always_inline __u32 cfg_id(void *ctx)
{
	__u32 id = scope_cfg;
	if (!id) {
		__u64 cookie = bpf_get_netns_cookie(ctx);
		__u32 *p = bpf_map_lookup_elem(&scopes, &cookie);
		if (p)
			id = *p;
	}
	return id;
}

static __always_inline int in_ids(__u32 id, __u32 set, __u32 v)
{
	struct id_key k = {.prefixlen = 96, .cfg = id, .set = set, .id = bpf_htonl(v)};
	return bpf_map_lookup_elem(&ids, &k) != 0;
}

static __always_inline int is_proxy(struct cfg *c, __u32 uid, __u32 gid)
{
	return uid == c->proxy_uid || ((c->flags & F_PROXY_GID) && gid == c->proxy_gid);
}

// exempt_owner: the owner checks that precede the address checks, in Decide's order.
static __always_inline int exempt_owner(__u32 id, struct cfg *c, __u32 uid, __u32 gid, __u16 port)
{
	if (is_proxy(c, uid, gid))
		return 1;
	if (in_ids(id, SET_EXEMPT_UIDS, uid) || in_ids(id, SET_EXEMPT_GIDS, gid))
		return 1;
	struct id_key uk = {.prefixlen = 96, .cfg = id, .set = SET_RULE_UIDS, .id = bpf_htonl(uid)};
	__u64 *um = bpf_map_lookup_elem(&ids, &uk);
	if (um) {
		struct port_key pk = {.prefixlen = 64, .cfg = id, .set = SET_RULE_PORTS, .port = port};
		__u64 *pm = bpf_map_lookup_elem(&ports, &pk);
		if (pm && (*pm & *um))
			return 1;
	}
	return 0;
}

// port_selected applies outbound.includePorts / excludePorts.
static __always_inline int port_selected(__u32 id, struct cfg *c, __u16 port)
{
	struct port_key pk = {.prefixlen = 64, .cfg = id, .set = SET_OUT_PORTS, .port = port};
	int listed = bpf_map_lookup_elem(&ports, &pk) != 0;
	return (c->flags & F_INCLUDE_PORTS) ? listed : !listed;
}

static __always_inline int capture4(__u32 id, struct cfg *c, __u32 addr, __u16 port, __u64 ug)
{
	if (!(c->flags & F_OUT4))
		return 0;
	if ((bpf_ntohl(addr) >> 24) == 127 || addr == 0)
		return 0;
	if (exempt_owner(id, c, (__u32)ug, ug >> 32, port))
		return 0;
	struct cidr4_key k = {.prefixlen = 64, .cfg = id, .addr = addr};
	int listed = bpf_map_lookup_elem(&cidrs4, &k) != 0;
	if ((c->flags & F_INCLUDE_CIDRS4) ? !listed : listed)
		return 0;
	return port_selected(id, c, port);
}

static __always_inline int is_mapped(__u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

static __always_inline int capture6(__u32 id, struct cfg *c, __u32 *a, __u16 port, __u64 ug)
{
	if (!(c->flags & F_OUT6))
		return 0;
	if (a[0] == 0 && a[1] == 0 && a[2] == 0 && (a[3] == 0 || a[3] == bpf_htonl(1)))
		return 0; // :: and ::1
	if (exempt_owner(id, c, (__u32)ug, ug >> 32, port))
		return 0;
	struct cidr6_key k = {.prefixlen = 160, .cfg = id};
	k.addr[0] = a[0];
	k.addr[1] = a[1];
	k.addr[2] = a[2];
	k.addr[3] = a[3];
	int listed = bpf_map_lookup_elem(&cidrs6, &k) != 0;
	if ((c->flags & F_INCLUDE_CIDRS6) ? !listed : listed)
		return 0;
	return port_selected(id, c, port);
}

static __always_inline int dns_capture(__u32 id, struct cfg *c, __u32 *a, int v4, __u64 ug)
{
	if (!(c->flags & (v4 ? F_DNS4 : F_DNS6)))
		return 0;
	__u32 uid = (__u32)ug, gid = ug >> 32;
	if (is_proxy(c, uid, gid))
		return 0;
	if (in_ids(id, SET_EXEMPT_UIDS, uid) || in_ids(id, SET_EXEMPT_GIDS, gid) ||
	    in_ids(id, SET_DNS_EXEMPT_UIDS, uid))
		return 0;
	if (c->flags & F_DNS_ALL)
		return 1;
	struct dns_key k = {.cfg = id};
	k.addr[0] = a[0];
	k.addr[1] = a[1];
	k.addr[2] = a[2];
	k.addr[3] = a[3];
	return bpf_map_lookup_elem(&dns_servers, &k) != 0;
}

static __always_inline int remember(struct bpf_sock_addr *ctx, struct cfg *c, __u32 *a, __u16 port, __u16 family)
{
	struct orig *o = bpf_sk_storage_get(&origins, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return 0;
	o->addr[0] = a[0];
	o->addr[1] = a[1];
	o->addr[2] = a[2];
	o->addr[3] = a[3];
	o->port = port;
	o->family = family;
	o->accel = (c->flags & F_ACCEL) != 0;
	return 1;
}

// redirect4 and redirect6 serve connect() and, for DNS, every UDP sendmsg():
// what can never be redirected (UDP to another port than 53) leaves before
// the scope's config is looked up.
static __always_inline int redirect4(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;
	__u16 port = (__u16)ctx->user_port;
	if (proto != IPPROTO_TCP && !(proto == IPPROTO_UDP && port == bpf_htons(DNS_PORT)))
		return 1;
	__u32 id = cfg_id(ctx);
	if (!id)
		return 1;
	struct cfg *c = bpf_map_lookup_elem(&configs, &id);
	if (!c)
		return 1;
	__u32 addr = ctx->user_ip4;
	__u32 a[4] = {0, 0, bpf_htonl(0xffff), addr};
	__u16 to;
	if (proto == IPPROTO_TCP) {
		if (!capture4(id, c, addr, port, owner(ctx->sk)))
			return 1;
		to = c->out_port;
	} else {
		if (!dns_capture(id, c, a, 1, owner(ctx->sk)))
			return 1;
		to = c->dns_port;
	}
	if (!remember(ctx, c, a, port, AF_INET))
		return 1; // no storage: leave the connection alone rather than lose its destination
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(to);
	return 1;
}

static __always_inline int redirect6(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;
	__u16 port = (__u16)ctx->user_port;
	if (proto != IPPROTO_TCP && !(proto == IPPROTO_UDP && port == bpf_htons(DNS_PORT)))
		return 1;
	__u32 id = cfg_id(ctx);
	if (!id)
		return 1;
	struct cfg *c = bpf_map_lookup_elem(&configs, &id);
	if (!c)
		return 1;
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	int mapped = is_mapped(a);
	__u16 to;
	if (proto == IPPROTO_TCP) {
		if (mapped ? !capture4(id, c, a[3], port, owner(ctx->sk)) : !capture6(id, c, a, port, owner(ctx->sk)))
			return 1;
		to = c->out_port;
	} else {
		if (!dns_capture(id, c, a, mapped, owner(ctx->sk)))
			return 1;
		to = c->dns_port;
	}
	if (!remember(ctx, c, a, port, AF_INET6))
		return 1;
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(to);
	return 1;
}

SEC("cgroup/connect4")
int detour_connect4(struct bpf_sock_addr *ctx) { return redirect4(ctx); }

SEC("cgroup/connect6")
int detour_connect6(struct bpf_sock_addr *ctx) { return redirect6(ctx); }

SEC("cgroup/sendmsg4")
int detour_sendmsg4(struct bpf_sock_addr *ctx) { return redirect4(ctx); }

SEC("cgroup/sendmsg6")
int detour_sendmsg6(struct bpf_sock_addr *ctx) { return redirect6(ctx); }

// restore puts back the address the app dialed, for getpeername() and for the
// source of a DNS reply; the proxy's own sockets carry no origin.
static __always_inline int restore4(struct bpf_sock_addr *ctx)
{
	struct orig *o = bpf_sk_storage_get(&origins, ctx->sk, 0, 0);
	if (!o)
		return 1;
	ctx->user_ip4 = o->addr[3];
	ctx->user_port = o->port;
	return 1;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx)
{
	struct orig *o = bpf_sk_storage_get(&origins, ctx->sk, 0, 0);
	if (!o)
		return 1;
	ctx->user_ip6[0] = o->addr[0];
	ctx->user_ip6[1] = o->addr[1];
	ctx->user_ip6[2] = o->addr[2];
	ctx->user_ip6[3] = o->addr[3];
	ctx->user_port = o->port;
	return 1;
}

SEC("cgroup/getpeername4")
int detour_getpeername4(struct bpf_sock_addr *ctx) { return restore4(ctx); }

SEC("cgroup/getpeername6")
int detour_getpeername6(struct bpf_sock_addr *ctx) { return restore6(ctx); }

// from_dns_port: the datagram comes from the scope's DNS port (its loopback
// address is checked by the caller). A datagram from another loopback port
// (a local service the same socket talks to) keeps its own source.
static __always_inline int from_dns_port(struct bpf_sock_addr *ctx)
{
	__u32 id = cfg_id(ctx);
	if (!id)
		return 0;
	struct cfg *c = bpf_map_lookup_elem(&configs, &id);
	return c && (__u16)ctx->user_port == bpf_htons(c->dns_port);
}

// recvmsg: only a reply from the DNS proxy of a socket whose query was redirected.
SEC("cgroup/recvmsg4")
int detour_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 != bpf_htonl(0x7f000001) || !from_dns_port(ctx))
		return 1;
	return restore4(ctx);
}

SEC("cgroup/recvmsg6")
int detour_recvmsg6(struct bpf_sock_addr *ctx)
{
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	if (!(is_mapped(a) && a[3] == bpf_htonl(0x7f000001)) &&
	    !(a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1)))
		return 1;
	if (!from_dns_port(ctx))
		return 1;
	return restore6(ctx);
}

static __always_inline void local_tuple(struct bpf_sock_ops *skops, struct tuple *t)
{
	t->netns = bpf_get_netns_cookie(skops);
	__u32 family = rd(skops->family), ip4 = rd(skops->local_ip4);
	__u32 a0 = rd(skops->local_ip6[0]), a1 = rd(skops->local_ip6[1]), a2 = rd(skops->local_ip6[2]),
	      a3 = rd(skops->local_ip6[3]);
	tuple_addr(t, family, ip4, a0, a1, a2, a3);
	t->port = rd(skops->local_port);
}

// sock_key_of fills k with ctx's (netns, local, remote) tuple, or with the
// peer's when swap is set; ctx is a bpf_sock_ops or an sk_msg_md, which name
// these fields alike. remote_port holds the port in network order in its top
// half (little endian), local_port in host order.
#define sock_key_of(ctx, k, swap)                                                            \
	do {                                                                                 \
		__u32 fam_ = rd((ctx)->family), l4_ = rd((ctx)->local_ip4),                  \
		      r4_ = rd((ctx)->remote_ip4);                                           \
		__u32 l_[4] = {rd((ctx)->local_ip6[0]), rd((ctx)->local_ip6[1]),             \
			       rd((ctx)->local_ip6[2]), rd((ctx)->local_ip6[3])};            \
		__u32 r_[4] = {rd((ctx)->remote_ip6[0]), rd((ctx)->remote_ip6[1]),           \
			       rd((ctx)->remote_ip6[2]), rd((ctx)->remote_ip6[3])};          \
		__u32 lp_ = rd((ctx)->local_port), rp_ = bpf_ntohl(rd((ctx)->remote_port));  \
		if (fam_ == AF_INET) {                                                       \
			l_[0] = 0;                                                           \
			l_[1] = 0;                                                           \
			l_[2] = bpf_htonl(0xffff);                                           \
			l_[3] = l4_;                                                         \
			r_[0] = 0;                                                           \
			r_[1] = 0;                                                           \
			r_[2] = bpf_htonl(0xffff);                                           \
			r_[3] = r4_;                                                         \
		}                                                                            \
		(k)->netns = bpf_get_netns_cookie(ctx);                                      \
		for (int i_ = 0; i_ < 4; i_++) {                                             \
			(k)->local[i_] = (swap) ? r_[i_] : l_[i_];                           \
			(k)->remote[i_] = (swap) ? l_[i_] : r_[i_];                          \
		}                                                                            \
		(k)->lport = (swap) ? rp_ : lp_;                                             \
		(k)->rport = (swap) ? lp_ : rp_;                                             \
	} while (0)

// accelerate puts an established socket in accel_socks: the app's end of a
// redirected connection whose scope accelerates it, or the proxy's end of one
// (its peer's entry in tuples carries the same flag). The decision was taken
// by connect4/6 from the scope's config and travels in the origin, so the
// sockops program, which runs for every TCP socket of the scope, looks no
// config up: an active socket without an origin was not redirected, and the
// proxy's end of a redirected connection is always on loopback (the app
// dialed 127.0.0.1, ::1 or ::ffff:127.0.0.1) with its peer in tuples.
static __always_inline void accelerate(struct bpf_sock_ops *skops)
{
	struct sock_key k = {};
	sock_key_of(skops, &k, 0);
	bpf_sock_hash_update(skops, &accel_socks, &k, BPF_NOEXIST);
}

static __always_inline void accelerate_passive(struct bpf_sock_ops *skops)
{
	__u32 family = rd(skops->family), l4 = rd(skops->local_ip4);
	__u32 l0 = rd(skops->local_ip6[0]), l1 = rd(skops->local_ip6[1]), l2 = rd(skops->local_ip6[2]),
	      l3 = rd(skops->local_ip6[3]);
	if (family == AF_INET ? l4 != bpf_htonl(0x7f000001)
			      : !(l0 == 0 && l1 == 0 &&
				  ((l2 == 0 && l3 == bpf_htonl(1)) ||
				   (l2 == bpf_htonl(0xffff) && l3 == bpf_htonl(0x7f000001)))))
		return;
	struct tuple t = {.netns = bpf_get_netns_cookie(skops)};
	__u32 ip4 = rd(skops->remote_ip4);
	__u32 a0 = rd(skops->remote_ip6[0]), a1 = rd(skops->remote_ip6[1]), a2 = rd(skops->remote_ip6[2]),
	      a3 = rd(skops->remote_ip6[3]);
	tuple_addr(&t, family, ip4, a0, a1, a2, a3);
	t.port = bpf_ntohl(rd(skops->remote_port));
	struct orig *e = bpf_map_lookup_elem(&tuples, &t);
	if (e && e->accel)
		accelerate(skops);
}

// sockops publishes a redirected connection's origin under its source address
// and port once the kernel has chosen them (the SYN is about to leave), so the
// proxy that accepts it can ask; the entry goes when the socket closes. The
// kernel runs it for every callback of every TCP socket of the scope (about
// ten per connection), so each case returns as early as it can; the state
// callbacks are asked for only for a redirected socket, from its SYN on.
SEC("sockops")
int detour_sockops(struct bpf_sock_ops *skops)
{
	struct tuple t = {};
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		struct bpf_sock *sk = skops->sk;
		if (!sk)
			return 1;
		struct orig *o = bpf_sk_storage_get(&origins, sk, 0, 0);
		local_tuple(skops, &t);
		if (!o) {
			// Not redirected: no stale entry may answer for this tuple. An
			// entry whose app socket is still open is not stale: that socket
			// shares the local address and port with this one (SO_REUSEADDR,
			// or one ephemeral port given to two destinations) and its proxy
			// may not have asked yet. The lookup takes no lock and almost
			// always misses; a delete locks the bucket with interrupts off
			// even when there is nothing to delete.
			struct orig *e = bpf_map_lookup_elem(&tuples, &t);
			if (e && e->closed)
				bpf_map_delete_elem(&tuples, &t);
			return 1;
		}
		struct orig fresh = *o;
		fresh.read = 0;
		fresh.closed = 0;
		bpf_map_update_elem(&tuples, &t, &fresh, BPF_ANY);
		// From the SYN on, so that the close of a connection that never
		// gets established marks its entry closed too.
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		struct bpf_sock *sk = skops->sk;
		if (!sk)
			return 1;
		struct orig *o = bpf_sk_storage_get(&origins, sk, 0, 0);
		if (o && o->accel)
			accelerate(skops);
		return 1;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		accelerate_passive(skops);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE) {
			local_tuple(skops, &t);
			struct orig *e = bpf_map_lookup_elem(&tuples, &t);
			if (e && e->read)
				bpf_map_delete_elem(&tuples, &t);
			else if (e)
				e->closed = 1;
		}
		return 1;
	}
	return 1;
}

// getsockopt answers SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST on the proxy's
// accepted socket: no NAT entry exists, so the kernel's own answer failed. It
// runs on every getsockopt in the cgroup, so anything else returns at once,
// and it never writes more than the caller's buffer holds.
SEC("cgroup/getsockopt")
int detour_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || rd(sk->protocol) != IPPROTO_TCP)
		return 1;
	struct tuple t = {.netns = bpf_get_netns_cookie(ctx)};
	// Load every field unconditionally: a load chosen by a branch can be
	// compiled into pointer arithmetic on the socket, which the verifier refuses.
	__u32 family = rd(sk->family), ip4 = rd(sk->dst_ip4);
	__u32 a0 = rd(sk->dst_ip6[0]), a1 = rd(sk->dst_ip6[1]), a2 = rd(sk->dst_ip6[2]), a3 = rd(sk->dst_ip6[3]);
	tuple_addr(&t, family, ip4, a0, a1, a2, a3);
	t.port = bpf_ntohs((__u16)rd(sk->dst_port));
	struct orig *o = bpf_map_lookup_elem(&tuples, &t);
	if (!o)
		return 1;
	if (ctx->level == SOL_IP) {
		struct sockaddr_in *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end || ctx->optlen < (int)sizeof(*sa) || !is_mapped(o->addr))
			return 1;
		sa->sin_family = AF_INET;
		sa->sin_port = o->port;
		sa->sin_addr.s_addr = o->addr[3];
		__builtin_memset(sa->__pad, 0, sizeof(sa->__pad));
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end || ctx->optlen < (int)sizeof(*sa))
			return 1;
		sa->sin6_family = AF_INET6;
		sa->sin6_port = o->port;
		sa->sin6_flowinfo = 0;
		sa->sin6_addr.in6_u.u6_addr32[0] = o->addr[0];
		sa->sin6_addr.in6_u.u6_addr32[1] = o->addr[1];
		sa->sin6_addr.in6_u.u6_addr32[2] = o->addr[2];
		sa->sin6_addr.in6_u.u6_addr32[3] = o->addr[3];
		sa->sin6_scope_id = 0;
		ctx->optlen = sizeof(*sa);
	}
	ctx->retval = 0;
	if (o->closed)
		bpf_map_delete_elem(&tuples, &t);
	else
		o->read = 1;
	return 1;
}

// accel hands a message of an accelerated socket to its peer's receive side
// when the peer is in accel_socks; otherwise the message goes the normal way,
// and so does every later one of this socket. It never drops a message.
SEC("sk_msg")
int detour_accel(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	if (bpf_sk_storage_get(&accel_off, sk, 0, 0))
		return SK_PASS;
	struct sock_key k = {};
	sock_key_of(msg, &k, 1);
	if (bpf_msg_redirect_hash(msg, &accel_socks, &k, BPF_F_INGRESS) != SK_PASS)
		bpf_sk_storage_get(&accel_off, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	return SK_PASS;
}
