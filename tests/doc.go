// Package tests holds detour's end-to-end tests: they build the real `detour`
// binary, create network namespaces joined by veth pairs (internal/lab), install the
// redirection with the binary, and check on real packets where connections arrive.
// The scenarios are those of SCENARIOS.md; docs/scenarios.md maps each one to the test
// that proves it.
//
// Every test needs root and starts with privtest.Require; it changes firewall rules and
// routes only inside namespaces it creates, and removes them when it ends. Run them
// with `make test-e2e` or `go test ./tests/` as root; DETOUR_E2E_CASES sets how many
// random cases each scenario dials (default 16), DETOUR_E2E_SEED replays a seed that a
// failure logged, and DETOUR_E2E_PARALLEL how many namespaces work at once (default 8).
//
// Subdirectories cni/, controlplane/ and deploy/ belong to the other parts' suites.
package tests
