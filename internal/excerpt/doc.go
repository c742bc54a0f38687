// Package excerpt bounds a text quoted in an error, a log line or a debug
// page: a value, a field, a proxy's NACK can be megabytes, and is shown as its
// first bytes and its size. It must not import other detour packages.
package excerpt
