// Package privtest is the one entry point of privileged tests: Require skips a
// test without root, or fails it when DETOUR_REQUIRE_PRIVILEGED=1 (CI sets it,
// so privileged tests can never silently skip there), and NetNS gives each test a
// fresh network namespace that is removed when the test ends, failed or not.
//
// Tests using it never change the root network namespace.
package privtest
