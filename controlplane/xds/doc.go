// Package xds serves Envoy proxies their listeners and clusters over ADS:
// the serving half of the control plane, given snapshots that package
// controlplane generates from the mesh.
//
// A Snapshot is one node's resources, each a Resource holding its encoding
// once (NewResource; SnapshotBuilder versions a node's resources by content
// hash). Server.SetSnapshots replaces the served set and answers the open
// watches of the nodes whose versions changed. The Server serves ADS (SotW,
// ordered, and delta) and gRPC's health service over a gRPC-over-HTTP/2
// transport of its own (h2server.go, h2conn.go, h2write.go, h2frame.go: one
// goroutine per connection, a writer started only while there is something
// to write, one keepalive sweeper; gRPC-go's server kept four goroutines and
// a few dozen KiB per connection), with a stream handler of its own (ads.go: requests
// handled as the connection reads them, pushes sent by a few paced workers,
// pace.go) over a cache of its own (cache.go) that answers from the
// resources encoded once per change, holds NACKed configs back instead of
// resending them in a loop (backoff.go), and a codec (codec.go) that writes delta responses without
// copying their resources. Subscriptions are go-control-plane's
// stream.Subscription. A tracker (tracker.go) follows every stream and
// node, enforces the mTLS node identity, and feeds the Prometheus metrics
// (metrics.go) and /debug/nodes. The go-control-plane behaviour these rely
// on is pinned by contract_test.go. gRPC-go serves nothing: the package
// uses its status codes, health messages and buffer types, and the tests its
// clients (interoperability with them is what h2_test.go checks).
//
// Privileges: none. The package listens on the listeners it is given.
//
// It must not import controlplane (the generation side imports it, not the
// other way round), controlplane/kube, redirect, cmd/..., cni or bpf.
package xds
