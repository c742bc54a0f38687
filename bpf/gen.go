package bpf

// vmlinux.h comes from the running kernel's BTF (make generate writes it; it is
// not committed). The generated detour_bpfel.{go,o} are committed so that
// `go build` needs no clang.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type cfg -type orig -type tuple -type cidr4_key -type cidr6_key -type id_key -type port_key -type dns_key -type sock_key detour detour.c -- -I.
