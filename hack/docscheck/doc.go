// Command docscheck fails when README.md or docs/*.md point at something that is
// not there: a relative link whose file or #anchor does not exist, a `make
// TARGET` the Makefile does not define, or a backquoted repository path (such as
// `redirect/nftables/socket_linux.go`) that names no file or directory, or a
// test, benchmark or fuzz function (`TestLifecycle`) that no _test.go file
// defines. `make lint` runs it from the repository root. It reads files only.
package main
