// Package layering holds no code: its test enforces the import rules that the
// packages' doc.go files state ("must not import …", "only this package
// imports …") and the rule that makes the install path start fast — cmd/detour
// and cmd/detour-cni depend on none of client-go, the Kubernetes API types,
// go-control-plane, the Envoy protos or gRPC.
//
// The rules are a table in layering_test.go that mirrors the doc.go comments;
// the test also fails when a doc.go states a rule the table does not hold, so
// the two cannot drift apart silently. It runs `go list` (the go command must
// be on PATH) and needs no privileges. It must not be imported.
package layering
