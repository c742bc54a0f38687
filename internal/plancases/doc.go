// Package plancases holds the configurations that the plan goldens and the
// privileged install tests of every backend share (redirect/iptables,
// redirect/nftables), under the same names, so the renderings of one
// configuration sit side by side. Test support only: no production package
// imports it.
//
// It imports redirect and the testing package; nothing outside _test.go files
// may import it.
package plancases
