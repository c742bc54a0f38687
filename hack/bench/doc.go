// Command bench measures what a user pays for detour on one network namespace:
// the wall time of `detour install`, of an install that changes nothing and of
// `detour uninstall` through the real binary (median and p90 of many runs, a
// fresh namespace per run), and the child processes each step starts — counted
// from outside by shims on PATH in one round, and checked against what detour
// reports. `make bench` runs it as root; it changes nothing outside the
// namespaces it creates and deletes.
package main
